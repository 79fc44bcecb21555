"""The hooks of a run with ``--dbguard-report PATH`` (registered by :mod:`.report`): each
test's statements timed from its setup to its teardown, its outcome, isolation and leak check
gathered, and one JSON file written at the end by the process that owns the run (a single run,
or the xdist controller, which merges the part each worker sends in its ``workeroutput``). With
``-v``, a short section of the slowest tests by database time. The document itself (its fields,
the merge, the atomic write) is ``report_document``'s.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Mapping
from typing import Any, Final

import pytest

from pytest_dbguard import __version__
from pytest_dbguard.db.isolation import isolation_of
from pytest_dbguard.guards.connection_guards import tables_left
from pytest_dbguard.guards.statement_timing import StatementTimer
from pytest_dbguard.run import report_document
from pytest_dbguard.run.state import DbguardRun

PER_TEST: Final = 5  # slowest statements kept for each test
PER_RUN: Final = 20  # slowest statements kept for the whole run
SUMMARY_TESTS: Final = 5  # tests in the -v section
SUMMARY_TITLE: Final = "dbguard: slowest tests by database time"


def _next_outcome(previous: str | None, report: pytest.TestReport) -> str:
    """The test's outcome so far, after the report of one more phase."""
    xfail = hasattr(report, "wasxfail")
    if report.when == "setup" or previous is None:
        if report.failed:
            return "error"
        if report.skipped:
            return "xfailed" if xfail else "skipped"
        return "passed"
    if report.when == "call" and previous == "passed":
        if report.failed:
            return "failed"
        if report.skipped:
            return "xfailed" if xfail else "skipped"
        return "xpassed" if xfail else "passed"
    if report.when == "teardown" and report.failed and previous in ("passed", "xpassed"):
        return "error"
    return previous


def isolation_label(item: pytest.Item) -> str:
    """The isolation the test ran under: pytest-django's transaction (``django``) or its
    flush after the test (``django-transactional``) for Django database tests, a Django
    ``TestCase`` or ``TransactionTestCase`` method the same way, else dbguard's."""
    manager = item.config.pluginmanager
    if manager.hasplugin("django") or manager.hasplugin("pytest_django.plugin"):
        cls, django_test = getattr(item, "cls", None), sys.modules.get("django.test")
        if isinstance(cls, type) and django_test is not None:  # the class's module imported it
            if issubclass(cls, django_test.TestCase):
                return "django"
            if issubclass(cls, django_test.TransactionTestCase):
                return "django-transactional"
        names = getattr(item, "fixturenames", ())
        marker = item.get_closest_marker("django_db")
        if (
            "transactional_db" in names
            or "live_server" in names
            or (marker is not None and marker.kwargs.get("transaction"))
        ):
            return "django-transactional"
        if marker is not None or "db" in names:
            return "django"
    return isolation_of(item)


class RunReport:
    """Hooks of a run with ``--dbguard-report``: each test timed and recorded, the file written."""

    def __init__(self, config: pytest.Config, run: DbguardRun, timer: StatementTimer) -> None:
        self.config = config
        self.run = run
        self.timer = timer
        self.tests: list[dict[str, Any]] = []
        self.worker_parts: list[Mapping[str, Any]] = []
        self.missing_workers: list[str] = []
        self.report: dict[str, Any] | None = None  # the document, once written
        self.write_error: str | None = None
        # The test running now (a process runs one at a time): its outcome and duration so far.
        self._item: pytest.Item | None = None
        self._outcome: str | None = None
        self._duration = 0.0

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        # dbguard's own set-up (the test database) has imported SQLAlchemy by now; the check
        # only makes sure that the listener is never what imports it.
        if not self.timer.installed and "sqlalchemy.engine" in sys.modules:
            self.timer.install()
        self.timer.begin(self._test_id(item))
        self._item, self._outcome, self._duration = item, None, 0.0
        return (yield)

    # Each phase's final report (xfail's mark on it); after the teardown phase, the leak check's
    # finding is on the item. In the xdist controller, which runs no test, there is no item.
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        item = self._item
        if item is None or report.nodeid != item.nodeid:
            return
        self._outcome = _next_outcome(self._outcome, report)
        self._duration += report.duration
        if report.when == "teardown":
            self._item = None
            self._record(item)

    def _record(self, item: pytest.Item) -> None:
        timing = self.timer.end()
        self.tests.append(
            report_document.per_test_entry(
                self._test_id(item),
                worker=self.run.plan.worker,
                outcome=self._outcome or "passed",
                isolation=isolation_label(item),
                duration_ms=self._duration * 1000,
                statements=timing.statements,
                database_ms=timing.database_ms,
                slowest=timing.slowest,
                leaked_tables=tables_left(item),
            )
        )

    def _test_id(self, item: pytest.Item) -> str:
        """The test's id, any password of this run in it masked (``parametrize`` with a URL)."""
        from pytest_dbguard.run.redaction import secrets_of

        return secrets_of(self.config).scrub(item.nodeid)

    def own_part(self) -> dict[str, Any]:
        """This process's start-up timings, tests and slowest statements."""
        return report_document.part(
            _process_entry(self.run),
            self.tests,
            report_document.statement_entries(self.timer.run_slowest()),
        )

    # Before dbguard's own session finish, which forgets the database this process got; an
    # xdist worker's part goes with xdist's "finished" event, sent after every implementation.
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        workeroutput = getattr(self.config, "workeroutput", None)  # only in an xdist worker
        if isinstance(workeroutput, dict):
            workeroutput[report_document.WORKER_PART_KEY] = self.own_part()
            return
        path = self.run.settings.report
        if path is None:
            return
        parts = [self.own_part(), *self.worker_parts]
        self.report = _document(self.run, parts, self.missing_workers, exitstatus)
        try:
            report_document.write(path, self.report)
        except OSError as error:
            self.write_error = report_document.WRITE_FAILED.format(path=path, error=error)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.write_error is not None:
            terminalreporter.write_line(self.write_error, red=True)
        if self.report is None or terminalreporter.config.get_verbosity() < 1:
            return
        tests = sorted(self.report["tests"], key=lambda test: -test["database_ms"])
        terminalreporter.write_sep("=", SUMMARY_TITLE)
        for test in tests[:SUMMARY_TESTS]:
            count = test["statements"]
            terminalreporter.write_line(
                f"{test['database_ms']:10.1f} ms {count:6d} statement{'' if count == 1 else 's'}"
                f"  {test['nodeid']}"
            )
        totals = self.report["totals"]
        written = "" if self.write_error else f"; report written to {self.run.settings.report}"
        terminalreporter.write_line(
            f"dbguard: {totals['tests']} tests ran {totals['statements']} statements in "
            f"{totals['database_ms']:.1f} ms of database time{written}"
        )


class WorkerParts:
    """xdist controller hook: each worker's part of the report, as its ``workeroutput`` brings it."""

    def __init__(self, report: RunReport) -> None:
        self.report = report

    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        output = getattr(node, "workeroutput", None)
        found = output.get(report_document.WORKER_PART_KEY) if isinstance(output, dict) else None
        if isinstance(found, dict):
            self.report.worker_parts.append(found)
        else:  # it crashed or was stopped before its session finished: its tests are missing
            gateway = getattr(node, "gateway", None)
            self.report.missing_workers.append(str(getattr(gateway, "id", node)))


def _process_entry(run: DbguardRun) -> dict[str, Any]:
    """This process's start-up: readiness, and the database it got (none in the controller)."""
    state = run.session
    runs_tests = state is not None and state.runs_tests
    name = run.plan.worker if runs_tests else report_document.CONTROLLER
    answered = state is not None and state.answered
    provisioned = state.provisioned if state is not None else None
    template: tuple[str | None, float | None, bool | None] = (
        (provisioned.template, provisioned.template_ms, provisioned.template_built)
        if provisioned
        else (None, None, None)
    )
    if state is not None and state.early_build is not None:  # the xdist controller built it
        template = state.early_build
    return report_document.process_entry(
        name,
        ready_ms=state.ready_ms if answered and state is not None else None,
        ready_attempts=state.ready_attempts if answered and state is not None else None,
        database=(provisioned.schema or provisioned.database) if provisioned else None,
        layout=provisioned.mode if provisioned else None,
        template=template[0],
        template_ms=template[1],
        template_built=template[2],
        clone_ms=provisioned.clone_ms if provisioned else None,
    )


def _document(
    run: DbguardRun, parts: list[Mapping[str, Any]], missing_workers: list[str], exitstatus: int
) -> dict[str, Any]:
    """The whole report of the run: the server, its timings, and every process's part."""
    plan, state = run.plan, run.session
    url = plan.server_url
    if url is None:
        server: dict[str, Any] = {"kind": "sqlite", "folder": str(plan.sqlite_dir)}
    else:
        server = {
            "kind": "embedded" if plan.embedded else "external",
            "host": url.host,
            "port": url.port,
            "driver": url.driver,
            "version": (state.server_version or None) if state is not None else None,
        }
    start = state.server_start_ms if state is not None and plan.embedded else 0.0
    return report_document.document(
        run=plan.run,
        server=server,
        isolation=run.settings.isolation,
        server_start_ms=start or None,
        parts=parts,
        missing_workers=missing_workers,
        exit_status=int(exitstatus),
        per_run=PER_RUN,
        version=__version__,
    )
