"""``--dbguard-keep-failed`` in a run: which tests failed (the report hook records it on the item),
keeping a failed test's data before its rollback or truncate (the isolation fixtures call
``keep`` with the test's view, read by ``db.kept_failed``), the report section with a ready
``psql`` command, and the line at the end of the run.

A passing test costs nothing: no query is made unless the test's setup or call failed.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Final

import pytest

from pytest_dbguard.run import environment
from pytest_dbguard.run.state import DbguardRun, run_of, the_run

if TYPE_CHECKING:
    from pytest_dbguard.db.kept_failed import View

# Printed with the failure: pytest shows a passing teardown's sections whose title says teardown.
SECTION_TITLE: Final = "dbguard: the failed test's data (teardown)"
PROPERTY: Final = "dbguard_kept_database"  # in the teardown report (and junit xml)
NOT_KEPT: Final = (
    "{nodeid} failed, but dbguard could not keep its data: {reason}. The test's rollback went "
    "ahead as usual."
)

UNCHANGED: Final = (
    "{nodeid} failed; its view of the database is the run's schema as built (the test left no "
    "row of its own there), so no copy was kept."
)

_failed_key: Final = pytest.StashKey[bool]()  # the item's setup or call failed
_section_key: Final = pytest.StashKey[str]()  # what the teardown report says about it


def pytest_configure(config: pytest.Config) -> None:
    run = run_of(config)
    if run is not None and run.settings.keep_failed:
        config.pluginmanager.register(KeptReports(run), "dbguard-kept-failed")


class KeptReports:
    """Hooks of a run with ``--dbguard-keep-failed``: every process (the xdist controller too,
    from its workers' reports) learns what was kept, and the end of the run says where, test by
    test (a failed setup's report shows no teardown section: this is where it is named)."""

    def __init__(self, run: DbguardRun) -> None:
        self.run = run
        self.tests: list[tuple[str, str]] = []  # (test id, kept database)

    # Registered only with --dbguard-keep-failed: a makereport wrapper is a cost every test pays.
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.when in ("setup", "call") and report.failed:
            item.stash[_failed_key] = True
        elif report.when == "teardown" and (section := item.stash.get(_section_key, None)):
            report.sections.append((SECTION_TITLE, section))
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # The teardown's report only: a unittest case keeps its data during the call, and every
        # report made after that (the call's, a subtest's) carries the property too.
        if report.when != "teardown":
            return
        for name, value in report.user_properties:
            if name == PROPERTY:
                self.run.kept_failed.append(str(value))
                self.tests.append((report.nodeid, str(value)))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        run = self.run
        if not self.tests:
            return
        count = len(self.tests)
        line = f"dbguard: kept {count} failed test database{'s' if count != 1 else ''}"
        if run.plan.embedded and not run.settings.reuse:
            line += (
                "; the embedded PostgreSQL cluster stays running for them after this run: "
                "`dbguard stop` (run from this project) stops it"
            )
        elif run.plan.embedded:
            line += "; they live in the cluster --dbguard-reuse keeps: `dbguard stop` stops it"
        else:
            line += "; they stay on the server: `dbguard janitor --older-than 0 URL` drops them"
        terminalreporter.write_line(line)
        for nodeid, name in self.tests:
            terminalreporter.write_line(f"  {nodeid}: {_psql(run, name)}")


def wants_copy(item: pytest.Item) -> bool:
    """Whether the test failed and its data is to be kept (and is not yet). Where nothing can be
    kept (SQLite, worker schemas) the report says so, and no query is made."""
    run = run_of(item.config)
    if (
        run is None
        or not run.settings.keep_failed
        or not item.stash.get(_failed_key, False)
        or _section_key in item.stash
    ):
        return False
    if run.plan.server_url is None or run.plan.schema is not None:
        why = (
            "SQLite test files are not kept"
            if run.plan.server_url is None
            else "the role may not create databases (worker schemas in one database)"
        )
        item.stash[_section_key] = NOT_KEPT.format(nodeid=item.nodeid, reason=why)
        return False
    return True


def mark_failed(item: pytest.Item) -> None:
    """The test failed, as known before its report says so (a unittest case, from its outcome)."""
    item.stash[_failed_key] = True


def failed_so_far(item: pytest.Item) -> bool:
    """Whether a report of the test has said it failed (a subtest's, before the test ends)."""
    return item.stash.get(_failed_key, False)


def not_read(item: pytest.Item, error: Exception) -> None:
    """The test's view could not be read (its transaction was aborted, say): the report says so."""
    not_kept(item, f"reading its rows failed ({_first_line(error)})")


def not_kept(item: pytest.Item, reason: str) -> None:
    """The failed test's data cannot be kept, for ``reason``: its report says so."""
    item.stash[_section_key] = NOT_KEPT.format(nodeid=item.nodeid, reason=reason)


def keep(item: pytest.Item, view: View) -> None:
    """Copy ``view`` into a new marked database on the run's server; the report names it, with a
    ``psql`` command and the tables the test changed. Never fails the test: a failure to keep
    is said in the report instead."""
    # Only a run with a failed test to keep loads these; the isolation fixtures import this
    # module in every run, --collect-only included.
    from pytest_dbguard.db import databases, kept_failed, maintenance
    from pytest_dbguard.run import lifecycle, templates

    run = the_run(item.config)
    plan, state = run.plan, run.session
    assert plan.server_url is not None and state is not None  # wants_copy saw to it
    try:
        with maintenance.shared(plan.server_url) as connection:  # the run's one, not a second
            name = kept_failed.free_name(connection, plan.database)
        template = state.provisioned.template if state.provisioned is not None else None
        template_run = None
        if template is None:
            # A run that built its schema in place has no template: the first failed test's
            # copy builds one (a Django project's whole migrate), every later one clones it.
            # Named once: its fingerprint reads every migration file of a Django project.
            if state.failed_template is None:
                state.failed_template = templates.template_for(plan, run.settings, state)
            template, template_run = state.failed_template

        def provision() -> None:
            assert plan.server_url is not None and state is not None and template is not None
            with lifecycle.building_in(plan, run.settings, state, template) as build:
                databases.provision_database(
                    plan.server_url,
                    name,
                    template,
                    build,
                    run=plan.run,
                    worker=plan.worker,
                    template_run=template_run,
                    failed_test=item.nodeid,
                )

        if state.schema_hook is not None:
            # Django's migrate may build the template: on a thread of its own, whose Django
            # connections are new ones, not the test's, which are still inside its transaction.
            _on_own_thread(provision)
        else:
            provision()
        try:
            changed = kept_failed.copy_view(plan.server_url.with_database(name), view)
        except Exception:
            databases.drop_database(plan.server_url, name)  # no half copy left behind
            raise
        if not (changed.rows or changed.sequences or changed.not_copied):
            # A copy of the schema as built: nothing to look at, and with the embedded server
            # it would keep the cluster running after the run.
            databases.drop_database(plan.server_url, name)
            item.stash[_section_key] = UNCHANGED.format(nodeid=item.nodeid)
            return
    except Exception as error:  # the test's own failure matters more than its copy
        reason = f"copying failed ({_first_line(error)})"
        item.stash[_section_key] = NOT_KEPT.format(nodeid=item.nodeid, reason=reason)
        return
    item.user_properties.append((PROPERTY, name))
    item.stash[_section_key] = _section(run, item.nodeid, name, changed)


def _on_own_thread(work: Callable[[], None]) -> None:
    """Run ``work`` on a new thread and wait for it; its exception is raised here."""
    import threading

    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=run, name="dbguard-keep-failed")
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


def _section(run: DbguardRun, nodeid: str, name: str, view: View) -> str:
    lines = [
        f"{nodeid} failed; its view of the database ({view.describe()}) is kept in {name}:",
        "  " + _psql(run, name),
    ]
    if view.not_copied:
        lines.append(
            f"  not copied: {', '.join(view.not_copied)} (tables created after dbguard built the "
            "run's schema, by the test or a fixture, which the copy, cloned from that schema, "
            "does not have: let dbguard build them, with dbguard_metadata or dbguard_alembic_ini)"
        )
    if environment.embedded_cluster(run) is not None:
        lines.append(
            "  (the embedded server's socket in its run folder needs no password; the cluster "
            "stays running after this run until `dbguard stop`)"
        )
    else:
        lines.append(
            "  (the password is not shown: psql asks for it, or set PGPASSWORD to the password "
            f"of the run's URL ({run.settings.source_of('url')}); `dbguard janitor "
            "--older-than 0 URL` drops the copy)"
        )
    return "\n".join(lines)


def _psql(run: DbguardRun, name: str) -> str:
    """A ``psql`` command for database ``name`` on the run's server, never with a password: the
    embedded server through its run folder's socket, an external one over TCP."""
    url = run.plan.server_url
    assert url is not None
    cluster = environment.embedded_cluster(run)
    host = str(cluster.root) if cluster is not None else url.host or "localhost"
    command = ["psql", "-h", host, "-p", str(url.port or 5432), "-U", str(url.username)]
    return shlex.join([*command, "-d", name])


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
