"""Per-test isolation: rollback (outer transaction + savepoints), truncate, or none; the test's
one connection shared by ``dbguard_connection`` and ``dbguard_session``; a test's markers read
once. Emptying what a ``truncate`` test wrote is :mod:`pytest_dbguard.db.truncation`'s; it and
:mod:`pytest_dbguard.db.kept_failed` are imported only by a run that truncates or keeps a failed
test's rows (each import costs every run about 1 ms).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, NamedTuple

import pytest

from pytest_dbguard.exceptions import DbguardError
from pytest_dbguard.run import failed_tests, markers, worker_failures
from pytest_dbguard.run.state import run_of

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine, RootTransaction
    from sqlalchemy.orm import Session

    from pytest_dbguard.db.truncation import Truncator

TRUNCATE_FIXTURE: Final = "_dbguard_truncate"


# NamedTuples, not frozen dataclasses: every run defines them (see the package docstring).
class DbguardMarks(NamedTuple):
    """What a test's ``@pytest.mark.dbguard`` markers (its own, its class's, its module's) say."""

    isolation: str | None  # the closest marker that names one; None: the run's default
    allow: tuple[str, ...]  # the databases all of them allow, added up
    without: tuple[pytest.Mark, ...] = ()  # the ``dbguard_without`` markers, checked at setup

    @classmethod
    def read(cls, item: pytest.Item) -> DbguardMarks:
        """Both markers in one walk over the markers of every node above the test; a
        ``dbguard`` marker with bad arguments raises ``pytest.UsageError`` or ``TypeError``."""
        isolation: str | None = None
        allow: list[str] = []
        without: list[pytest.Mark] = []
        for marker in item.iter_markers():
            if marker.name == "dbguard":
                markers.dbguard(*marker.args, **marker.kwargs)
                if isolation is None and "isolation" in marker.kwargs:
                    isolation = str(marker.kwargs["isolation"])
                allow += marker.kwargs.get("allow", ())
            elif marker.name == "dbguard_without":
                without.append(marker)
        return cls(isolation, tuple(allow), tuple(without))


_marks_key: Final = pytest.StashKey[DbguardMarks]()


def marks_of(item: pytest.Item) -> DbguardMarks:
    """The test's dbguard markers, read once (at collection, by :func:`read_collected`): its
    guards and fixtures all ask (a walk over the markers of every node above it each time,
    otherwise)."""
    marks = item.stash.get(_marks_key, None)
    if marks is None:
        marks = item.stash[_marks_key] = DbguardMarks.read(item)
    return marks


def read_collected(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Read and check every collected test's dbguard markers, so that a typo fails before any
    test (``--collect-only``, an IDE's refresh, says so too), in the one walk over each test's
    markers that the run needs (the last collection hook: others may still add markers)."""
    for item in items:
        try:
            item.stash[_marks_key] = DbguardMarks.read(item)
        except TypeError as error:
            worker_failures.fail_session(
                config, f"{item.nodeid}: @pytest.mark.dbguard{error}".replace("dbguard()", "")
            )
        except pytest.UsageError as error:
            named = str(error) if item.nodeid in str(error) else f"{item.nodeid}: {error}"
            worker_failures.fail_session(config, named)


def isolation_of(
    item: pytest.Item, marks: DbguardMarks | None = None, *, default: str | None = None
) -> str:
    """The test's isolation: its ``@pytest.mark.dbguard(isolation=...)``, else the run's default
    (``default`` when the caller holds it: no lookup of the run for every test).

    The closest marker that names an isolation wins: a test's own ``dbguard(allow=...)`` keeps
    its class's or module's isolation."""
    isolation = (marks or marks_of(item)).isolation
    if isolation is not None:
        return isolation
    if default is not None:
        return default
    run = run_of(item.config)
    return run.settings.isolation if run is not None else "rollback"


class RunningTest:
    """The test whose setup, call or teardown is running, set by the per-test hook: the isolation
    fixtures read it instead of asking for ``request``, which costs pytest 9 a new fixture
    definition (and a signature) each time it is resolved, several times per test.

    A plain class with slots, not a dataclass (nothing compiled at import; quick attributes)."""

    __slots__ = ("held", "item", "marks")

    def __init__(self) -> None:
        self.item: pytest.Item | None = None
        self.marks: DbguardMarks | None = None  # the item's, read at collection
        self.held: HeldConnection | None = None  # the test's connection, once a fixture opened it

    def now(self) -> pytest.Item:
        if self.item is None:
            raise DbguardError(
                "dbguard's function-scoped fixtures run inside a test; this one ran outside of "
                "any test's setup (was it called directly, not requested by a test?)"
            )
        return self.item


_running_key: Final = pytest.StashKey[RunningTest]()


def running_test(config: pytest.Config) -> RunningTest:
    """The run's record of the test running now."""
    running = config.stash.get(_running_key, None)
    if running is None:
        running = config.stash[_running_key] = RunningTest()
    return running


class HeldConnection:
    """One test's connection, in its outer transaction under rollback isolation."""

    __slots__ = ("connection", "item", "transaction")

    def __init__(
        self,
        item: pytest.Item,
        connection: Connection,
        transaction: RootTransaction | None,  # None: truncate or none isolation, real commits
    ) -> None:
        self.item = item
        self.connection = connection
        self.transaction = transaction


class ConnectionSource(NamedTuple):
    """What ``dbguard_connection`` and ``dbguard_session`` need for every test: the engine, and the
    record of the running test.

    The two fixtures share the test's one connection through :meth:`hold`, rather than the
    session fixture requesting the connection fixture: each function-scoped fixture in a chain
    costs every test about 0.22M instructions of pytest's own (setup, finalizers, scope checks),
    a third of what dbguard added per test (``benchmarks/ci_path.py --only i``).
    """

    engine: Engine
    running: RunningTest
    isolation: str = "rollback"  # the run's default, for tests whose markers name none
    keep_failed: bool = False  # --dbguard-keep-failed: failed tests' rows may be copied

    def hold(self) -> tuple[HeldConnection, bool]:
        """The running test's connection, and whether this caller opened it (and releases it
        at its teardown; the other fixture, set up later, is torn down earlier)."""
        item = self.running.now()
        held = self.running.held
        if held is not None and held.item is item:
            return held, False
        connection = self.engine.connect()
        rollback = isolation_of(item, self.running.marks, default=self.isolation) == "rollback"
        transaction = connection.begin() if rollback else None
        self.running.held = held = HeldConnection(item, connection, transaction)
        return held, True

    def release(self, held: HeldConnection) -> None:
        """After the test: keep a failed test's rows if asked, roll back, close."""
        self.running.held = None
        item, connection, transaction = held.item, held.connection, held.transaction
        if transaction is None:
            connection.close()
            return
        try:
            if self.keep_failed and failed_tests.wants_copy(item):  # before the rollback
                keep_view(item, connection)
        finally:
            try:
                if transaction.is_active:
                    transaction.rollback()
            except Exception as error:
                item.warn(pytest.PytestWarning(f"dbguard could not roll back: {error}"))
            connection.close()


class ConnectionSources:
    """The run's connection sources, one per ``dbguard_url`` value: an engine made on the first
    test that asks, kept until :meth:`dispose` at the end of the session.

    A registry rather than a session fixture between ``dbguard_url`` and the tests' fixtures:
    pytest resolves every dependency of a cached session fixture again for every test that
    uses it (about 0.1M instructions per link). Keyed by the URL string, so a project's own
    ``dbguard_url`` fixture still decides where the tests' connections go.
    """

    def __init__(self, running: RunningTest, *, isolation: str, keep_failed: bool) -> None:
        self.running = running
        self.isolation = isolation
        self.keep_failed = keep_failed
        self._sources: dict[str, ConnectionSource] = {}

    def for_url(self, dbguard_url: str) -> ConnectionSource:
        source = self._sources.get(dbguard_url)
        if source is None:
            # Here, not at the top: --collect-only and --fixtures import this module, not engines.
            from pytest_dbguard.db.engines import (
                discard_dead_connections,
                engine_for,
                take_parked_engine,
            )
            from pytest_dbguard.db.urls import url_of

            url = url_of(dbguard_url, source="dbguard_url")
            # The engine that built the schema, if kept. No pool_pre_ping round trip on every
            # test: dead pooled connections are found by a look at their socket instead.
            engine = take_parked_engine(url) or engine_for(url)
            if not url.is_sqlite:
                discard_dead_connections(engine)
            source = ConnectionSource(engine, self.running, self.isolation, self.keep_failed)
            self._sources[dbguard_url] = source
        return source

    def dispose(self) -> None:
        """Close every engine (before the run's database is dropped)."""
        while self._sources:
            self._sources.popitem()[1].engine.dispose()


@pytest.fixture(scope="session")
def _dbguard_cleaner(dbguard_engine: Engine) -> Iterator[Truncator | None]:
    """Session: the truncator on a small internal pool (its statements are not counted as the test's)."""
    from pytest_dbguard.db.engines import INTERNAL_OPTIONS
    from pytest_dbguard.db.truncation import Truncator

    internal = dbguard_engine.execution_options(**INTERNAL_OPTIONS)
    yield None if internal.dialect.name == "sqlite" else Truncator(internal)


@pytest.fixture
def _dbguard_truncate(
    request: pytest.FixtureRequest, dbguard_engine: Engine, _dbguard_cleaner: Truncator | None
) -> Iterator[None]:
    """Function: after a ``truncate`` test, empties what it wrote (its rows, its sequences'
    steps); what was there before it (the schema's seed rows, a session fixture's data, rows an
    ``isolation="none"`` test kept) stays."""
    from pytest_dbguard.db.engines import INTERNAL_OPTIONS
    from pytest_dbguard.db.truncation import sqlite_clean

    if _dbguard_cleaner is not None:
        _dbguard_cleaner.keep_what_is_there()
    yield
    if _dbguard_cleaner is not None and failed_tests.wants_copy(request.node):
        with dbguard_engine.execution_options(**INTERNAL_OPTIONS).connect() as connection:
            keep_view(request.node, connection, _dbguard_cleaner)
    try:
        if _dbguard_cleaner is None:
            sqlite_clean(dbguard_engine)
        else:
            _dbguard_cleaner.clean()
    except Exception as error:  # the test's own outcome must not be lost to a cleanup failure
        request.node.warn(
            pytest.PytestWarning(f"dbguard could not truncate after {request.node.nodeid}: {error}")
        )


def connection_for_test(source: ConnectionSource) -> Iterator[Connection]:
    """The body of ``dbguard_connection`` (made per run in :mod:`pytest_dbguard.db.fixtures`)."""
    held, opened = source.hold()
    try:
        yield held.connection
    finally:
        if opened:
            source.release(held)


def session_for_test(source: ConnectionSource) -> Iterator[Session]:
    """The body of ``dbguard_session``: a Session joined to the test's connection and its
    transaction, with SAVEPOINTs for the test's commits."""
    from sqlalchemy.orm import Session

    held, opened = source.hold()
    connection = held.connection
    try:
        session = Session(bind=connection, join_transaction_mode="create_savepoint")
        yield session
        wants_copy = source.keep_failed and held.transaction is not None
        if wants_copy and failed_tests.wants_copy(held.item):
            # Before close() rolls back the session's savepoint, with the rows it flushed.
            keep_view(held.item, connection, session=session)
        if session.is_active:
            session.close()
        else:  # closing after a failed flush may warn; the test already failed
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                session.close()
    finally:
        if opened:
            source.release(held)


def keep_view(
    item: pytest.Item,
    connection: Connection,
    finder: Truncator | None = None,
    session: Session | None = None,
) -> None:
    """``--dbguard-keep-failed``: copy the failed test's view, as ``connection`` sees it, into a
    kept database; ``finder`` finds its tables (a new one on ``connection``'s engine by default).
    A transaction a failed statement aborted is first rolled back to the ``session``'s
    savepoint; without one, the report says the rows could not be read."""
    from sqlalchemy.exc import DBAPIError

    from pytest_dbguard.db import kept_failed
    from pytest_dbguard.db.truncation import Truncator

    if finder is None:
        finder = Truncator(connection.engine)
    try:
        view = kept_failed.read_view(connection, finder)
    except DBAPIError as error:
        if session is None:
            failed_tests.not_read(item, error)
            return
        try:
            session.rollback()
            view = kept_failed.read_view(connection, finder)
        except DBAPIError as again:
            failed_tests.not_read(item, again)
            return
    failed_tests.keep(item, view)


def add_truncate_fixture(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every ``truncate`` test the cleanup fixture (nothing is added to other tests)."""
    run = run_of(config)
    default = run.settings.isolation if run is not None else "rollback"
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        if isolation_of(item, default=default) != "truncate":
            continue
        if TRUNCATE_FIXTURE not in item.fixturenames:
            # First of the test's own fixtures, last out: what they commit is the test's, and
            # the cleanup runs after their connections are closed. After the wider fixtures
            # (pytest lists those first): what a session fixture commits stays.
            item.fixturenames.insert(_first_function_fixture(item), TRUNCATE_FIXTURE)


def _first_function_fixture(item: pytest.Function) -> int:
    """Where the test's function-scoped fixtures begin in its fixture names (wider ones come
    first); an argument without a fixture definition counts as the test's."""
    from pytest_dbguard.compat import fixture_definitions

    definitions = fixture_definitions(item) or {}
    return next(
        (
            index
            for index, name in enumerate(item.fixturenames)
            if getattr(definitions.get(name), "scope", "function") == "function"
        ),
        len(item.fixturenames),
    )
