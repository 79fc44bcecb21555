"""Where dbguard's one summary line is shown: right after the collection line, in every mode.

A single run (and each xdist worker) waits for the server only after collection, so its line
follows ``collected N items``; the xdist controller knows the server once xdist has started the
workers (at its test loop), but holds its line back until the first test starts, which is after
``N workers [M items]``. Under ``-q`` the line is shown only when something is worth knowing: a
reused cluster or template, worker schemas instead of databases, or a slow start.
"""

from __future__ import annotations

from typing import Final

import pytest

from pytest_dbguard.run import lifecycle
from pytest_dbguard.run.state import DbguardRun, run_of

SLOW_MS: Final = 1000.0  # a server start or readiness wait longer than this is worth a line


def noteworthy(run: DbguardRun) -> bool:
    """Whether the line says something a ``-q`` run should still see."""
    state = run.session
    assert state is not None
    return (
        run.settings.reuse
        or run.plan.schema is not None
        or state.ready_attempts > 1
        or max(state.ready_ms, state.server_start_ms) > SLOW_MS
    )


def shown(config: pytest.Config) -> list[str]:
    """The summary line, unless ``-q`` asked for quiet and nothing is worth knowing."""
    run = run_of(config)
    if run is None or run.session is None:
        return []
    if config.get_verbosity() < 0 and not noteworthy(run):
        return []
    return lifecycle.summary_lines(config)


def after_collection(config: pytest.Config) -> list[str]:
    """A single run's (or worker's) line, for ``pytest_report_collectionfinish``."""
    run = run_of(config)
    if run is None or run.session is None:
        return []
    return shown(config) if run.session.runs_tests else []


class ControllerLine:
    """The xdist controller's line, written once, when the first test starts."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.written = False

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        if self.written:
            return
        self.written = True
        run = run_of(self.config)
        if run is not None and run.session is not None:
            lifecycle.wait_for_template_build(run.session)  # done by now: the line tells its end
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        for line in shown(self.config):
            reporter.write_line(line)


def register_for_controller(config: pytest.Config) -> None:
    """In the xdist controller, show the line after the workers' collection line."""
    if config.pluginmanager.getplugin("dsession") is not None:
        config.pluginmanager.register(ControllerLine(config), "dbguard-summary-line")
