"""Django's "DateTimeField X received a naive datetime" warnings, folded into one summary line
per model field and test file.

A suite that loads fixtures with naive values gets one ``RuntimeWarning`` per row (hundreds),
which bury every other warning. Each one is taken out of pytest's warnings summary as it is
recorded (in the xdist controller too, which receives the workers' warnings) and counted; the
terminal summary gets one line per field and file. With ``dbguard_naive_datetime = off`` they
are left as they are.
"""

from __future__ import annotations

import collections
import os
import re
import warnings
from typing import Any, Final

import pytest

PLUGIN_NAME: Final = "dbguard-django-naive-warnings"
DJANGO_NAIVE: Final = re.compile(
    r"DateTimeField (?P<field>\S+) received a naive datetime .* while time zone support is active"
)
SUMMARY: Final = (
    "dbguard: Django DateTimeFields received {total} naive datetime(s) while USE_TZ = True "
    "(Django's RuntimeWarning, one line per field and file; bind aware datetimes, e.g. "
    "django.utils.timezone.now()):"
)


class NaiveFieldWarnings:
    """Counts Django's naive-datetime warnings per (field, file) and keeps them out of the list."""

    def __init__(self, config: pytest.Config) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.config = config

    @pytest.hookimpl(trylast=True)  # after the terminal reporter has added it to its list
    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, nodeid: str
    ) -> None:
        if not issubclass(warning_message.category, RuntimeWarning):
            return
        found = DJANGO_NAIVE.search(str(warning_message.message))
        if found is None:
            return
        where = nodeid.split("::", 1)[0] or os.path.relpath(warning_message.filename)
        self.counts[(found["field"], where)] += 1
        self._drop_from_summary(str(warning_message.message))

    def _drop_from_summary(self, text: str) -> None:
        # pytest's TerminalReporter lists the warnings for its summary in ``stats``.
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        shown: list[Any] = reporter.stats.get("warnings", []) if reporter is not None else []
        for index in range(len(shown) - 1, -1, -1):
            if text in str(getattr(shown[index], "message", "")):
                del shown[index]
                break

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.counts:
            return
        total = sum(self.counts.values())
        terminalreporter.write_line(SUMMARY.format(total=total))
        for (field, where), count in sorted(self.counts.items()):
            terminalreporter.write_line(f"  {field} in {where}: {count}")


def register(config: pytest.Config) -> None:
    """Fold the warnings in this process (the one that prints the summary)."""
    manager = config.pluginmanager
    if manager.get_plugin(PLUGIN_NAME) is None:
        plugin = NaiveFieldWarnings(config)
        manager.register(plugin, PLUGIN_NAME)
