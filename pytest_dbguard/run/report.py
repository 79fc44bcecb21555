"""``--dbguard-report PATH``: without the option nothing is registered and nothing imported (no
listener, no timing, no cost); with it, the hooks of :mod:`.report_recorder`.
"""

from __future__ import annotations

from typing import Final

import pytest

from pytest_dbguard.compat import xdist_loaded
from pytest_dbguard.run.state import run_of

PLUGIN_NAME: Final = "dbguard-report"
RELAY_NAME: Final = "dbguard-report-relay"


def pytest_configure(config: pytest.Config) -> None:
    run = run_of(config)
    if run is None or run.settings.report is None:
        return  # the option is off: nothing is registered, nothing timed
    from pytest_dbguard.guards.statement_timing import StatementTimer
    from pytest_dbguard.run.report_recorder import PER_RUN, PER_TEST, RunReport, WorkerParts

    run.statement_timer = StatementTimer(per_test=PER_TEST, per_run=PER_RUN)
    plugin = RunReport(config, run, run.statement_timer)
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    if xdist_loaded(config):  # its hook exists only then
        config.pluginmanager.register(WorkerParts(plugin), RELAY_NAME)


def pytest_unconfigure(config: pytest.Config) -> None:
    run = run_of(config)
    if run is not None and run.statement_timer is not None:
        run.statement_timer.remove()
        run.statement_timer = None
