"""Guards: naive datetimes, ``dbguard_without``, ``dbguard_queries``; classes, then whole runs."""

from __future__ import annotations

import asyncio
import datetime
import importlib
import importlib.util
import os
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pytest_dbguard.db.engine_listener import INTERNAL_OPTION, one_line
from pytest_dbguard.exceptions import GuardError, NaiveDatetimeError, NaiveDatetimeWarning
from pytest_dbguard.guards.hidden_modules import HiddenModules
from pytest_dbguard.guards.naive_datetimes import NaiveDatetimeGuard, naive_parameters
from pytest_dbguard.guards.query_counter import QueryCounter, _called_by_with
from tests.helpers import run_dbguard, uses_xdist
from tests.pgserver import TestServer

NAIVE = datetime.datetime(2024, 5, 1, 12, 0)
AWARE = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)


class _NoOffset(datetime.tzinfo):
    """A tzinfo whose offset is unknown: Python calls such a datetime naive."""

    def utcoffset(self, dt: datetime.datetime | None) -> None:
        return None

    def dst(self, dt: datetime.datetime | None) -> None:
        return None

    def tzname(self, dt: datetime.datetime | None) -> None:
        return None


# Unit tests: the classes without pytest's help.


@pytest.mark.parametrize(
    ("parameter_sets", "expected"),
    [
        pytest.param([{"a": NAIVE, "b": AWARE}], ["a"], id="dict"),
        pytest.param([(AWARE, NAIVE)], ["#2"], id="tuple"),
        pytest.param([[NAIVE]], ["#1"], id="list"),
        pytest.param([{"a": AWARE}, {"a": NAIVE}, {"a": NAIVE}], ["a"], id="many-sets-once"),
        pytest.param([{"ids": [AWARE, NAIVE]}], ["ids"], id="expanding-in"),
        pytest.param([{"a": NAIVE.replace(tzinfo=_NoOffset())}], ["a"], id="tzinfo-without-offset"),
        pytest.param([{"a": datetime.date(2024, 5, 1), "b": "2024"}, None], [], id="no-datetime"),
        pytest.param([{"a": AWARE}], [], id="aware"),
    ],
)
def test_naive_parameters(parameter_sets: list[object], expected: list[str]) -> None:
    assert naive_parameters(parameter_sets) == expected


def test_one_line_collapses_and_truncates() -> None:
    assert one_line("SELECT a,\n   b\nFROM t") == "SELECT a, b FROM t"
    cut = one_line("SELECT " + "x, " * 100, width=20)
    assert len(cut) == 20
    assert cut.endswith("…")


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "guard_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))


legacy = MetaData()
stamped = Table(
    "guard_stamped",
    legacy,
    Column("id", Integer, primary_key=True),
    Column("label", String(20)),
    # The classic source of naive datetimes: a Python-side default.
    Column("at", DateTime(timezone=True), default=datetime.datetime.utcnow),
)


@pytest.fixture
def sqlite_engine() -> Iterator[Engine]:
    """Function: an in-memory SQLite engine holding both test tables."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    legacy.create_all(engine)
    yield engine
    engine.dispose()


def _orm_add(engine: Engine, value: datetime.datetime) -> None:
    with Session(engine) as session:
        session.add(Event(created_at=value))
        session.flush()


def _core_insert(engine: Engine, value: datetime.datetime) -> None:
    with engine.connect() as conn:
        conn.execute(insert(Event).values(created_at=value))


def _executemany(engine: Engine, value: datetime.datetime) -> None:
    with engine.connect() as conn:
        conn.execute(insert(Event), [{"created_at": AWARE}, {"created_at": value}])


def _where(engine: Engine, value: datetime.datetime) -> None:
    with engine.connect() as conn:
        conn.execute(select(Event).where(Event.created_at < value)).all()


def _text(engine: Engine, value: datetime.datetime) -> None:
    with engine.connect() as conn:
        conn.execute(
            text("SELECT id FROM guard_events WHERE created_at < :cutoff"), {"cutoff": value}
        )


WAYS: list[object] = [
    pytest.param(
        _orm_add,
        "'created_at' (Event.created_at, set at tests/test_guards.py:*) of "
        "'INSERT INTO guard_events (created_at)*",
        id="orm",
    ),
    pytest.param(
        _core_insert,
        "'created_at' (Event.created_at) of 'INSERT INTO guard_events*",
        id="core-insert",
    ),
    pytest.param(
        _executemany,
        "'created_at' (Event.created_at) of 'INSERT INTO guard_events*",
        id="executemany",
    ),
    pytest.param(_where, "'created_at_1' of 'SELECT guard_events.id*WHERE*", id="where"),
    pytest.param(
        _text, "'cutoff' (type unknown) of 'SELECT id FROM guard_events WHERE*", id="text"
    ),
]


@pytest.mark.parametrize(("run", "expected"), WAYS)
def test_naive_guard_warns_with_statement_parameter_and_place(
    sqlite_engine: Engine, run: Callable[[Engine, datetime.datetime], None], expected: str
) -> None:
    with (
        NaiveDatetimeGuard("warn", where="the unit test") as guard,
        pytest.warns(NaiveDatetimeWarning) as recorded,
    ):
        run(sqlite_engine, NAIVE)
    # Python 3.12+ also warns about sqlite3's default datetime adapter: count only ours.
    recorded = [w for w in recorded if issubclass(w.category, NaiveDatetimeWarning)]  # type: ignore[assignment]
    assert len(recorded) == 1
    message = str(recorded[0].message)
    assert message.startswith("naive datetime bound as parameter ")
    assert "during the unit test" in message
    assert guard.reports == [message]
    import fnmatch

    assert fnmatch.fnmatch(message, f"*{expected}"), message
    assert recorded[0].filename == __file__  # pointed at the caller, not at SQLAlchemy


@pytest.mark.parametrize(("run", "expected"), WAYS)
def test_naive_guard_is_silent_on_aware_values(
    sqlite_engine: Engine, run: Callable[[Engine, datetime.datetime], None], expected: str
) -> None:
    with NaiveDatetimeGuard("error") as guard:
        run(sqlite_engine, AWARE)
    assert guard.reports == []


# ``default=datetime.utcnow`` is the point of this test; Python 3.12+ deprecates it.
@pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")
def test_naive_guard_catches_python_side_defaults(sqlite_engine: Engine) -> None:
    with (
        NaiveDatetimeGuard("warn"),
        pytest.warns(NaiveDatetimeWarning, match=r"'at' \(guard_stamped\.at\) of 'INSERT"),
        sqlite_engine.connect() as conn,
    ):
        conn.execute(insert(stamped).values(label="x"))


def test_naive_guard_error_aborts_the_statement(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as conn:
        with NaiveDatetimeGuard("error", where="t"), pytest.raises(NaiveDatetimeError) as raised:
            conn.execute(insert(Event).values(created_at=NAIVE))
        assert "'created_at' (Event.created_at) of 'INSERT INTO guard_events" in str(raised.value)
        assert "to warn or off" in str(raised.value)
        assert conn.execute(text("SELECT count(*) FROM guard_events")).scalar() == 0


def test_naive_guard_skips_internal_statements_and_stops_on_exit(sqlite_engine: Engine) -> None:
    internal = sqlite_engine.execution_options(**{INTERNAL_OPTION: True})
    with NaiveDatetimeGuard("error") as guard:
        _core_insert(internal, NAIVE)
    assert guard.reports == []
    assert not event.contains(Engine, "before_cursor_execute", guard._listener)
    _core_insert(sqlite_engine, NAIVE)  # no guard any more: nothing raised
    assert guard.reports == []


def test_naive_guard_rejects_unknown_mode() -> None:
    with pytest.raises(GuardError, match="choose 'warn' or 'error'"):
        NaiveDatetimeGuard("off")


@pytest.fixture
def pg_url(pg_server: TestServer) -> Iterator[str]:
    """Function: a fresh database on the test server, dropped afterwards."""
    name = f"guards_{uuid.uuid4().hex[:10]}"
    pg_server.sql(f"CREATE DATABASE {name}")
    yield pg_server.url(name)
    pg_server.sql(f"DROP DATABASE {name} WITH (FORCE)")


def test_naive_guard_on_postgresql_reports_insertmanyvalues_once(pg_url: str) -> None:
    engine = create_engine(pg_url, insertmanyvalues_page_size=2)
    Base.metadata.create_all(engine)
    rows = [Event(created_at=NAIVE if n == 3 else AWARE) for n in range(7)]
    try:
        with (
            NaiveDatetimeGuard("warn") as guard,
            pytest.warns(NaiveDatetimeWarning) as recorded,
            Session(engine) as session,
        ):
            session.add_all(rows)
            session.flush()  # four batches of one RETURNING insert
            session.connection().exec_driver_sql(
                "SELECT count(*) FROM guard_events WHERE created_at < %s", (NAIVE,)
            )
    finally:
        engine.dispose()
    assert [str(warning.message) for warning in recorded] == guard.reports
    assert len(guard.reports) == 2
    # The rows were made before the guard started: the attribute is named, the line is not known.
    assert (
        "'created_at' (Event.created_at) of 'INSERT INTO guard_events (created_at)"
        in (guard.reports[0])
    )
    assert (
        "'#1' (type unknown) of 'SELECT count(*) FROM guard_events WHERE created_at < %s'"
        in guard.reports[1]
    )


def test_naive_guard_and_counter_on_an_async_engine(pg_url: str) -> None:
    sync = create_engine(pg_url)
    Base.metadata.create_all(sync)
    sync.dispose()

    async def scenario() -> None:
        engine = create_async_engine(pg_url.replace("+psycopg", "+asyncpg"))
        async with engine.connect() as conn:
            await conn.execute(insert(Event).values(created_at=AWARE))
            await conn.execute(insert(Event).values(created_at=NAIVE))
            await conn.rollback()
        await engine.dispose()

    with (
        QueryCounter() as counter,
        NaiveDatetimeGuard("warn") as guard,
        pytest.warns(
            NaiveDatetimeWarning,
            match=r"'created_at' \(Event\.created_at\) of 'INSERT INTO guard_events",
        ),
    ):
        asyncio.run(scenario())
    assert len(guard.reports) == 1
    assert counter.count == 2
    assert all(sql.startswith("INSERT INTO guard_events") for sql in counter.statements)


def test_counter_spans_engines_and_leaves_out_internal_and_bookkeeping(
    sqlite_engine: Engine, pg_url: str
) -> None:
    other = create_engine(pg_url)
    internal = other.execution_options(**{INTERNAL_OPTION: True})
    with QueryCounter() as counter:
        with sqlite_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        with other.connect() as conn, conn.begin():
            savepoint = conn.begin_nested()
            conn.execute(text("SELECT 2"))
            savepoint.rollback()
            conn.begin_nested().commit()
        with internal.connect() as conn:
            conn.execute(text("SELECT 3"))
    with sqlite_engine.connect() as conn:
        conn.execute(text("SELECT 4"))  # after exit: not counted
    assert counter.statements == ["SELECT 1", "SELECT 2"]
    assert counter.count == 2
    other.dispose()


def test_counter_leaves_out_an_explicit_sqlite_begin(sqlite_engine: Engine) -> None:
    @event.listens_for(sqlite_engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    with QueryCounter() as counter, sqlite_engine.begin() as conn:
        conn.execute(text("SELECT 1"))
    assert counter.statements == ["SELECT 1"]


def test_counter_statements_is_a_copy(sqlite_engine: Engine) -> None:
    with QueryCounter() as counter, sqlite_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        counter.statements.clear()
    assert counter.count == 1


def _run(engine: Engine, *statements: str) -> None:
    with engine.connect() as conn:
        for statement in statements:
            conn.execute(text(statement))


def test_assert_count_and_max_as_plain_calls(sqlite_engine: Engine) -> None:
    with QueryCounter() as counter:
        _run(sqlite_engine, "SELECT 1", "SELECT\n  2")
        counter.assert_count(2)
        counter.assert_max(2)
        counter.assert_max(5)
        with pytest.raises(pytest.fail.Exception) as failed:
            counter.assert_max(1)
        assert str(failed.value) == (
            "expected at most 1 statements, 2 ran:\n  1. SELECT 1\n  2. SELECT 2"
        )
        with pytest.raises(pytest.fail.Exception, match=r"^expected 3 statements, 2 ran:"):
            counter.assert_count(3)


def test_assert_as_context_manager_checks_only_the_block(sqlite_engine: Engine) -> None:
    with QueryCounter() as counter:
        _run(sqlite_engine, "SELECT 1", "SELECT 2", "SELECT 3")
        with counter.assert_max(1):  # the three before do not count
            _run(sqlite_engine, "SELECT 4")
        with counter.assert_count(0):
            pass
        with pytest.raises(pytest.fail.Exception) as failed, counter.assert_max(1):
            _run(sqlite_engine, "SELECT 5", "SELECT 6")
    assert str(failed.value) == (
        "expected at most 1 statements inside the block, 2 ran:\n  1. SELECT 5\n  2. SELECT 6"
    )


def test_assert_block_does_not_hide_the_block_error(sqlite_engine: Engine) -> None:
    with QueryCounter() as counter, pytest.raises(ZeroDivisionError), counter.assert_count(5):
        _run(sqlite_engine, "SELECT 1")
        1 / 0  # noqa: B018
    with (
        pytest.raises(pytest.fail.Exception, match=r"^expected 2 statements, 0 ran\.$"),
        QueryCounter() as empty,
    ):
        empty.assert_count(2)


def test_called_by_with_tells_the_two_forms_apart() -> None:
    seen: list[bool] = []

    class Probe:
        def __enter__(self) -> Probe:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    def probe() -> Probe:
        seen.append(_called_by_with(sys._getframe(1)))
        return Probe()

    probe()
    with probe():
        probe()
    check = probe()
    with check:
        pass
    assert seen == [False, True, False, False]


# HiddenModules: a fake dev package and an application that imports it when present.

FAKE_PACKAGE = {
    "toolbar_fake/__init__.py": "VERSION = 1\n",
    "toolbar_fake/panels/__init__.py": "",
    "toolbar_fake/panels/sql.py": "PANEL = 'sql'\n",
    "app_fake/__init__.py": "",
    "app_fake/settings.py": """
        import importlib.util
        try:
            import toolbar_fake
            TOOLBAR = True
        except ImportError as error:
            TOOLBAR = False
            ERROR = str(error)
        FOUND = importlib.util.find_spec("toolbar_fake") is not None
    """,
    "app_fake/main.py": "from app_fake import settings\nTOOLBAR = settings.TOOLBAR\n",
    "app_fake/relative.py": "from .settings import TOOLBAR\n",
    "app_fake/plain.py": "VALUE = 7\n",
}


@pytest.fixture
def fake_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Function: ``toolbar_fake`` and ``app_fake`` importable; their modules forgotten after."""
    for name, body in FAKE_PACKAGE.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name in sys.modules if name.startswith(("toolbar_fake", "app_fake"))]:
        del sys.modules[name]


def test_hidden_modules_block_imports_with_a_clear_message(fake_packages: Path) -> None:
    with HiddenModules(["toolbar_fake"], where="test_x") as hidden:
        with pytest.raises(ModuleNotFoundError) as missing:
            import toolbar_fake  # type: ignore[import-not-found]  # noqa: F401
        with pytest.raises(ModuleNotFoundError, match=r"^No module named 'toolbar_fake' \("):
            importlib.import_module("toolbar_fake.panels.sql")  # stops at the hidden parent
        assert importlib.util.find_spec("toolbar_fake") is None
        assert importlib.util.find_spec("app_fake") is not None
        assert sys.meta_path[0] is hidden
    assert str(missing.value) == (
        "No module named 'toolbar_fake' (hidden by @pytest.mark.dbguard_without in test_x)"
    )
    assert missing.value.name == "toolbar_fake"
    assert hidden not in sys.meta_path
    assert importlib.util.find_spec("toolbar_fake") is not None
    assert importlib.import_module("toolbar_fake.panels.sql").PANEL == "sql"


def test_hidden_modules_restore_sys_modules_exactly(fake_packages: Path) -> None:
    import app_fake.settings  # type: ignore[import-not-found]
    import toolbar_fake.panels.sql  # type: ignore[import-not-found]

    before = dict(sys.modules)
    with HiddenModules(["toolbar_fake"]):
        assert not [name for name in sys.modules if name.startswith("toolbar_fake")]
        importlib.reload(app_fake.settings)
        assert app_fake.settings.TOOLBAR is False
        assert app_fake.settings.FOUND is False
        assert "hidden by @pytest.mark.dbguard_without" in app_fake.settings.ERROR
        import app_fake.main  # type: ignore[import-not-found]  # saw the toolbar missing
        import app_fake.plain  # type: ignore[import-not-found]  # independent of the toolbar

        assert app_fake.main.TOOLBAR is False
        assert importlib.import_module("app_fake.relative").TOOLBAR is False
        sys.modules["toolbar_fake"] = sys.modules["app_fake"]  # a stub the test put in
    assert set(sys.modules) == set(before) | {"app_fake.plain"}
    assert all(sys.modules[name] is module for name, module in before.items())
    assert app_fake.settings.TOOLBAR is True  # reloaded again with the toolbar back
    assert not hasattr(sys.modules["app_fake"], "main")
    assert importlib.import_module("app_fake.main").TOOLBAR is True
    assert importlib.import_module("app_fake.relative").TOOLBAR is True
    assert toolbar_fake.panels.sql.PANEL == "sql"


def test_hidden_submodule_leaves_its_parent(fake_packages: Path) -> None:
    import toolbar_fake.panels.sql

    panels = toolbar_fake.panels
    with HiddenModules(["toolbar_fake.panels"]):
        import toolbar_fake

        assert toolbar_fake.VERSION == 1
        assert not hasattr(toolbar_fake, "panels")
        with pytest.raises(ImportError):
            from toolbar_fake import panels as again  # noqa: F401
        with pytest.raises(ModuleNotFoundError, match=r"'toolbar_fake\.panels'"):
            import toolbar_fake.panels.sql
    assert toolbar_fake.panels is panels
    assert sys.modules["toolbar_fake.panels.sql"] is panels.sql


# Whole runs.

MODELS = """
    import datetime
    from sqlalchemy import DateTime
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class Event(Base):
        __tablename__ = "events"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
        created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))
"""

NAIVE_ORM_TEST = """
    import datetime
    from models import Event

    def test_orm_insert(dbguard_session):
        dbguard_session.add(Event(name="a", created_at=datetime.datetime(2024, 5, 1, 12, 0)))
        dbguard_session.flush()
"""


def _project(pytester: pytest.Pytester, ini: str = "") -> None:
    pytester.makepyfile(models=MODELS)
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n" + ini)


@pytest.mark.parametrize(
    ("mode", "source"),
    [
        pytest.param("warn", "cli", id="warn-cli"),
        pytest.param("warn", "ini", id="warn-ini"),
        pytest.param("warn", "default", id="warn-default"),
        pytest.param("error", "cli", id="error-cli"),
        pytest.param("error", "ini", id="error-ini"),
        pytest.param("off", "cli", id="off-cli"),
        pytest.param("off", "ini", id="off-ini"),
    ],
)
def test_naive_datetime_modes(pytester: pytest.Pytester, mode: str, source: str) -> None:
    _project(pytester, f"dbguard_naive_datetime = {mode}\n" if source == "ini" else "")
    pytester.makepyfile(test_naive=NAIVE_ORM_TEST)
    args = ["--dbguard-naive-datetime", mode] if source == "cli" else []
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", *args, inprocess=True)
    statement = "'INSERT INTO events (name, created_at) VALUES (?, ?)*'"
    where = "during test_naive.py::test_orm_insert"
    parameter = "parameter 'created_at' (Event.created_at, set at test_naive.py:5)"
    if mode == "warn":
        result.assert_outcomes(passed=1, warnings=1)
        result.stdout.fnmatch_lines(
            [
                "*warnings summary*",
                "test_naive.py::test_orm_insert",
                f"*test_naive.py:5: NaiveDatetimeWarning: naive datetime bound as {parameter} of "
                f"{statement} {where}; * to off.",
            ]
        )
    elif mode == "error":
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            [
                f"*NaiveDatetimeError: naive datetime bound as {parameter} of "
                f"{statement} {where}; * to warn or off.",
            ]
        )
    else:
        result.assert_outcomes(passed=1)
        result.stdout.no_fnmatch_line("*NaiveDatetime*")


WAYS_TEST = """
    import asyncio
    import datetime
    import os
    import pytest
    from sqlalchemy import insert, select
    from sqlalchemy.ext.asyncio import create_async_engine
    from models import Event

    VALUES = {
        "naive": datetime.datetime(2024, 5, 1, 12, 0),
        "aware": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc),
    }

    @pytest.fixture(params=["naive", "aware"])
    def value(request):
        return VALUES[request.param]

    def test_orm(dbguard_session, value):
        dbguard_session.add(Event(name="orm", created_at=value))
        dbguard_session.commit()

    def test_core(dbguard_connection, value):
        dbguard_connection.execute(insert(Event).values(name="core", created_at=value))

    def test_executemany(dbguard_connection, value):
        now = VALUES["aware"]
        rows = [{"name": "m1", "created_at": now}, {"name": "m2", "created_at": value}]
        dbguard_connection.execute(insert(Event), rows)

    def test_async(value):
        async def scenario():
            engine = create_async_engine(os.environ["DBGUARD_ASYNC_URL"])
            try:
                async with engine.connect() as conn:
                    await conn.execute(select(Event).where(Event.created_at < value))
            finally:
                await engine.dispose()

        asyncio.run(scenario())

    def test_swallowed(dbguard_connection, value):
        try:
            dbguard_connection.execute(insert(Event).values(name="s", created_at=value))
        except Exception:
            pass  # code under test that hides database errors
"""


def test_naive_and_aware_datetimes_every_way_on_postgresql(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    _project(pytester, "dbguard_naive_datetime = error\n")
    pytester.makepyfile(test_ways=WAYS_TEST)
    result = run_dbguard(pytester, "--dbguard-url", pg_server.url(), "-v", inprocess=True)
    result.assert_outcomes(passed=5, failed=5)
    for name in ("orm", "core", "executemany", "async", "swallowed"):
        result.stdout.fnmatch_lines([f"test_ways.py::test_{name}?aware? PASSED*"])
        result.stdout.fnmatch_lines([f"test_ways.py::test_{name}?naive? FAILED*"])
    result.stdout.fnmatch_lines(
        [
            "*NaiveDatetimeError: naive datetime bound as parameter 'created_at' "
            "(Event.created_at, set at test_ways.py:19) of "
            "'INSERT INTO events (name, created_at) VALUES (%(name)s::VARCHAR, *' "
            "during test_ways.py::test_orm?naive?; *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*NaiveDatetimeError: naive datetime bound as parameter 'created_at_1' of "
            "'SELECT events.id, * FROM events WHERE events.created_at < *' "
            "during test_ways.py::test_async?naive?; *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*dbguard_naive_datetime = error: 1 statement(s) with a naive datetime were aborted, "
            "and the code under test caught the error:",
            "*'created_at' (Event.created_at) of 'INSERT INTO events*"
            "during test_ways.py::test_swallowed?naive?*",
        ]
    )


UTCNOW_TEXT = (
    "datetime.datetime.utcnow() is deprecated and scheduled for removal in a future version."
)
# Python 3.10 and 3.11 do not deprecate utcnow() yet: the tests emit the 3.12 warning themselves.
UTCNOW_TEST = f"""
    import warnings

    def utcnow():
        warnings.warn({UTCNOW_TEXT!r}, DeprecationWarning, stacklevel=2)

    def test_{{name}}():
        for _ in range({{times}}):
            utcnow()
        warnings.warn("another deprecation", DeprecationWarning)
"""


@pytest.mark.parametrize(
    ("mode", "args", "ini", "line"),
    [
        pytest.param(
            "warn",
            [],
            "",
            "dbguard: 3 datetime.utcnow() deprecation warnings (test_a.py: 2, test_b.py: 1)",
            id="counted",
        ),
        pytest.param(
            "warn",
            ["-n", "2"],
            "",
            "dbguard: 3 datetime.utcnow() deprecation warnings (test_a.py: 2, test_b.py: 1)",
            id="counted-xdist",
            marks=pytest.mark.needs_xdist,
        ),
        pytest.param("off", ["--dbguard-naive-datetime", "off"], "", None, id="off-cli"),
        pytest.param("off", [], "dbguard_naive_datetime = off\n", None, id="off-ini"),
    ],
)
def test_utcnow_deprecations_are_counted_in_the_summary(
    pytester: pytest.Pytester, mode: str, args: list[str], ini: str, line: str | None
) -> None:
    _project(pytester, ini)
    pytester.makepyfile(
        test_a=UTCNOW_TEST.format(name="a", times=2), test_b=UTCNOW_TEST.format(name="b", times=1)
    )
    # In this process unless the row starts xdist workers.
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", *args, inprocess=not uses_xdist(args))
    result.assert_outcomes(passed=2, warnings=5)
    if line is None:
        result.stdout.no_fnmatch_line("dbguard: *datetime.utcnow()*")
    else:
        result.stdout.fnmatch_lines([line])


@pytest.mark.parametrize(
    ("where", "counted"),
    [
        # Installed outside the project's folder, as a venv's packages are: named, the fix is there.
        pytest.param("outside", "test_login.py, called in jwtlike: 2", id="installed"),
        # A folder of the project's own that happens to be called site-packages: not named.
        pytest.param("inside", "test_login.py: 2", id="in-the-project"),
    ],
)
def test_utcnow_called_in_an_installed_package_is_named(
    pytester: pytest.Pytester, where: str, counted: str
) -> None:
    base = (
        pytester.path.parent / f"{pytester.path.name}-venv" if where == "outside" else pytester.path
    )
    _project(pytester, f"pythonpath = {os.path.relpath(base, pytester.path)}/lib/site-packages\n")
    library = base / "lib" / "site-packages" / "jwtlike"
    library.mkdir(parents=True)
    (library / "__init__.py").write_text(
        textwrap.dedent(UTCNOW_TEST.split("def test_")[0]) + "\ndef token():\n    utcnow()\n"
    )
    pytester.makepyfile(
        test_login="import jwtlike\n\ndef test_login():\n    jwtlike.token()\n    jwtlike.token()\n"
    )
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", inprocess=True)
    result.assert_outcomes(passed=1, warnings=2)
    result.stdout.fnmatch_lines([f"dbguard: 2 datetime.utcnow() deprecation warnings ({counted})"])


def test_no_utcnow_line_when_there_are_none(pytester: pytest.Pytester) -> None:
    _project(pytester)
    pytester.makepyfile(test_a=UTCNOW_TEST.format(name="a", times=0))
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", inprocess=True)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.no_fnmatch_line("dbguard: *datetime.utcnow()*")


WITHOUT_TEST = """
    import importlib
    import sys
    import pytest
    import app.settings

    @pytest.fixture
    def fixture_sees_toolbar():
        try:
            import debug_toolbar.panels
            return True
        except ImportError:
            return False

    def test_1_present_at_first(fixture_sees_toolbar):
        assert fixture_sees_toolbar
        assert app.settings.DEBUG_TOOLBAR

    @pytest.mark.dbguard_without("debug_toolbar")
    def test_2_hidden(fixture_sees_toolbar, dbguard_session):
        assert not fixture_sees_toolbar
        importlib.reload(app.settings)
        assert not app.settings.DEBUG_TOOLBAR
        urls = importlib.import_module("app.urls")  # first imported here
        assert urls.PATTERNS == ["home"]
        with pytest.raises(ModuleNotFoundError, match="hidden by @pytest.mark.dbguard_without"):
            import debug_toolbar.panels.sql

    def test_3_present_again(fixture_sees_toolbar):
        assert fixture_sees_toolbar
        assert app.settings.DEBUG_TOOLBAR
        urls = importlib.import_module("app.urls")
        assert urls.PATTERNS == ["home", "__debug__"]
        import debug_toolbar.panels.sql
        assert debug_toolbar.panels.sql.NAME == "sql"

    @pytest.mark.dbguard_without("debug_toolbar.panels.sql")
    def test_4_nested():
        import debug_toolbar.panels
        assert not hasattr(debug_toolbar.panels, "sql")
        with pytest.raises(ModuleNotFoundError, match="'debug_toolbar.panels.sql'"):
            import debug_toolbar.panels.sql

    def test_5_nested_back():
        import debug_toolbar.panels.sql
        assert debug_toolbar.panels.sql.NAME == "sql"

    @pytest.mark.dbguard_without("debug_tolbar")
    def test_6_typo():
        pass

    @pytest.mark.dbguard_without()
    def test_7_no_names():
        pass
"""


def test_dbguard_without_hides_a_dev_package_for_one_test(pytester: pytest.Pytester) -> None:
    _project(pytester)
    pytester.makepyfile(
        **{
            "debug_toolbar/__init__": "",
            "debug_toolbar/panels/__init__": "",
            "debug_toolbar/panels/sql": "NAME = 'sql'",
            "app/__init__": "",
            "app/settings": """
                try:
                    import debug_toolbar
                    DEBUG_TOOLBAR = True
                except ImportError:
                    DEBUG_TOOLBAR = False
            """,
            "app/urls": """
                from app import settings
                PATTERNS = ["home"] + (["__debug__"] if settings.DEBUG_TOOLBAR else [])
            """,
            "test_without": WITHOUT_TEST,
        }
    )
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", "-p", "no:randomly", inprocess=True)
    result.assert_outcomes(passed=5, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*test_without.py::test_6_typo: @pytest.mark.dbguard_without('debug_tolbar') names a "
            "module that is not installed, so hiding it proves nothing; check the spelling*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*test_7_no_names: @pytest.mark.dbguard_without takes one or more*"]
    )


COUNT_TEST = """
    import datetime
    import os
    from sqlalchemy import create_engine, select, text
    from models import Event

    def test_two_engines(dbguard_queries, dbguard_session):
        app_engine = create_engine(os.environ["DBGUARD_URL"])
        with app_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        app_engine.dispose()
        now = datetime.datetime.now(datetime.timezone.utc)
        dbguard_session.add(Event(name="a", created_at=now))
        dbguard_session.commit()  # a savepoint: not counted
        dbguard_session.scalars(select(Event)).all()
        assert dbguard_queries.count == 3, dbguard_queries.statements
        assert dbguard_queries.statements[0] == "SELECT 1"
        assert dbguard_queries.statements[1].startswith("INSERT INTO events")
        dbguard_queries.assert_count(3)
        with dbguard_queries.assert_max(0):
            pass

    def test_too_many(dbguard_queries, dbguard_connection):
        dbguard_connection.execute(text("SELECT 0"))
        with dbguard_queries.assert_max(1):
            dbguard_connection.execute(text("SELECT 1"))
            dbguard_connection.execute(text("SELECT\\n  2"))
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_dbguard_queries_counts_and_lists_statements(
    pytester: pytest.Pytester, pg_server: TestServer, backend: str
) -> None:
    _project(pytester)
    pytester.makepyfile(test_count=COUNT_TEST)
    url = "sqlite" if backend == "sqlite" else pg_server.url()
    result = run_dbguard(pytester, "--dbguard-url", url, inprocess=True)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*dbguard_queries.assert_max(1)*",
            "E*Failed: expected at most 1 statements inside the block, 2 ran:",
            "E*  1. SELECT 1",
            "E*  2. SELECT 2",
        ]
    )
