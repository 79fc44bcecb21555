"""The naive datetime guard: column types, the attribute and line it names, where it points."""

from __future__ import annotations

import datetime
import os
import re
import textwrap
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import (
    ARRAY,
    DateTime,
    Engine,
    Integer,
    String,
    bindparam,
    create_engine,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import NullType, TypeDecorator, TypeEngine

from pytest_dbguard.exceptions import NaiveDatetimeWarning
from pytest_dbguard.guards.naive_datetimes import NaiveDatetimeGuard
from pytest_dbguard.guards.naive_origins import column_zone
from tests.helpers import run_dbguard

NAIVE = datetime.datetime(2024, 5, 1, 12, 0)
AWARE = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)


class AssumeUtc(TypeDecorator[datetime.datetime]):
    """A common application type: naive values are taken as UTC before they are bound."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, datetime.datetime) and value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        return value


class Passthrough(TypeDecorator[datetime.datetime]):
    """A decorator over ``timestamptz`` that leaves naive values naive."""

    impl = DateTime(timezone=True)
    cache_ok = True


@pytest.mark.parametrize(
    ("type_", "zone"),
    [
        pytest.param(DateTime(timezone=True), True, id="datetime-tz"),
        pytest.param(postgresql.TIMESTAMP(timezone=True), True, id="pg-timestamptz"),
        pytest.param(AssumeUtc(), True, id="decorator-tz"),
        pytest.param(ARRAY(DateTime(timezone=True)), True, id="array-tz"),
        pytest.param(DateTime(), False, id="datetime"),
        pytest.param(postgresql.TIMESTAMP(), False, id="pg-timestamp"),
        pytest.param(String(), False, id="string"),
        pytest.param(NullType(), None, id="unknown"),
    ],
)
def test_column_zone(type_: TypeEngine[Any], zone: bool | None) -> None:
    assert column_zone(type_) is zone


class Base(DeclarativeBase):
    pass


class Stamp(Base):
    __tablename__ = "naive_stamps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    aware: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    plain: Mapped[datetime.datetime | None] = mapped_column(DateTime())
    assumed: Mapped[datetime.datetime | None] = mapped_column(AssumeUtc())
    passed: Mapped[datetime.datetime | None] = mapped_column(Passthrough())


@pytest.fixture
def engine() -> Iterator[Engine]:
    """Function: an in-memory SQLite engine with the ``naive_stamps`` table."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _reports(engine: Engine, statement: Any, params: Any = None) -> list[str]:
    """The guard's reports on ``statement``, checked against the warnings it raised."""
    with (
        NaiveDatetimeGuard("warn") as guard,
        engine.connect() as conn,
        warnings.catch_warnings(record=True) as recorded,
    ):
        warnings.simplefilter("always", NaiveDatetimeWarning)
        conn.execute(statement, params)
    assert [str(w.message) for w in recorded if w.category is NaiveDatetimeWarning] == (
        guard.reports
    )
    assert all(w.filename == __file__ for w in recorded if w.category is NaiveDatetimeWarning)
    return guard.reports


@pytest.mark.parametrize(
    ("column", "reported"),
    [
        pytest.param("aware", True, id="timestamptz"),
        pytest.param("plain", False, id="timestamp"),
        pytest.param("assumed", False, id="decorator-adding-utc"),
        pytest.param("passed", True, id="decorator-leaving-it-naive"),
    ],
)
def test_only_columns_with_a_time_zone_are_reported(
    engine: Engine, column: str, reported: bool
) -> None:
    insert_reports = _reports(engine, insert(Stamp).values({column: NAIVE}))
    where_reports = _reports(engine, select(Stamp.id).where(getattr(Stamp, column) < NAIVE))
    if reported:
        assert len(insert_reports) == 1
        assert f"parameter {column!r} (Stamp.{column}) of 'INSERT" in insert_reports[0]
        assert len(where_reports) == 1
        assert f"parameter '{column}_1' of 'SELECT" in where_reports[0]
    else:
        assert insert_reports == where_reports == []


def test_textual_parameters_are_reported_until_typed(engine: Engine) -> None:
    query = "SELECT id FROM naive_stamps WHERE plain < :cutoff"
    (untyped,) = _reports(engine, text(query), {"cutoff": NAIVE})
    assert "parameter 'cutoff' (type unknown) of 'SELECT id FROM naive_stamps" in untyped
    assert (
        "type the parameter if it meets a timestamp without time zone "
        "(text(...).bindparams(bindparam('cutoff', type_=DateTime())))" in untyped
    )
    typed = text(query).bindparams(bindparam("cutoff", type_=DateTime()))
    assert _reports(engine, typed, {"cutoff": NAIVE}) == []
    aware = text(query).bindparams(bindparam("cutoff", type_=DateTime(timezone=True)))
    (reported,) = _reports(engine, aware, {"cutoff": NAIVE})
    assert "parameter 'cutoff' of 'SELECT" in reported
    assert "type the parameter" not in reported


def test_expanding_in_uses_the_column_type(engine: Engine) -> None:
    (reported,) = _reports(engine, select(Stamp.id).where(Stamp.aware.in_([AWARE, NAIVE])))
    assert "parameter 'aware_1_2' of 'SELECT" in reported
    assert _reports(engine, select(Stamp.id).where(Stamp.plain.in_([AWARE, NAIVE]))) == []


def test_a_shared_value_is_named_only_while_its_instance_holds_it(engine: Engine) -> None:
    with NaiveDatetimeGuard("warn") as guard, pytest.warns(NaiveDatetimeWarning):
        with Session(engine) as session:
            session.add(Stamp(aware=NAIVE))
            session.flush()  # named: the line above set it
            session.rollback()
        with engine.connect() as conn:
            conn.execute(insert(Stamp).values(aware=NAIVE))  # same object, that instance is gone
    line = test_a_shared_value_is_named_only_while_its_instance_holds_it.__code__.co_firstlineno
    assert len(guard.reports) == 2
    assert f"'aware' (Stamp.aware, set at {_here()}:{line + 3}) of 'INSERT" in guard.reports[0]
    assert "'aware' (Stamp.aware) of 'INSERT" in guard.reports[1]


def _here() -> str:
    return os.path.relpath(__file__)


# Whole runs on the embedded PostgreSQL: ``events.at`` is a timestamptz, ``logs.at`` a timestamp
# that stores naive UTC on purpose.

MODELS = """
    import datetime
    from sqlalchemy import DateTime
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class Event(Base):
        __tablename__ = "events"
        id: Mapped[int] = mapped_column(primary_key=True)
        at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))

    class Log(Base):
        __tablename__ = "logs"
        id: Mapped[int] = mapped_column(primary_key=True)
        at: Mapped[datetime.datetime | None] = mapped_column(DateTime())
"""

WAYS = """
    import asyncio
    import datetime
    import os

    import pytest
    from sqlalchemy import DateTime, bindparam, func, insert, select, text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from models import Event, Log

    AWARE = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    MODELS = pytest.mark.parametrize("model", [Event, Log], ids=["aware", "plain"])


    def naive():
        return datetime.datetime(2024, 5, 1, 12, 0)


    def count(db, model):
        return db.scalar(select(func.count()).select_from(model))


    @MODELS
    def test_orm(dbguard_session, model):
        row = model()
        row.at = naive()  # L:orm
        dbguard_session.add(row)
        dbguard_session.commit()
        assert count(dbguard_session, model) == 1


    @MODELS
    def test_constructor(dbguard_session, model):
        dbguard_session.add(model(at=naive()))  # L:constructor
        dbguard_session.flush()
        assert count(dbguard_session, model) == 1


    @MODELS
    def test_core(dbguard_connection, model):
        dbguard_connection.execute(insert(model).values(at=naive()))  # L:core
        assert count(dbguard_connection, model) == 1


    @MODELS
    def test_executemany(dbguard_connection, model):
        dbguard_connection.execute(insert(model), [{"at": AWARE}, {"at": naive()}])  # L:many
        assert count(dbguard_connection, model) == 2


    @MODELS
    def test_where(dbguard_session, model):
        assert dbguard_session.scalars(select(model).where(model.at < naive())).all() == []  # L:where


    @MODELS
    def test_async(model):
        async def scenario():
            engine = create_async_engine(os.environ["DBGUARD_ASYNC_URL"])
            try:
                async with AsyncSession(engine) as session:
                    session.add(model(at=naive()))  # L:async_set
                    await session.flush()
                    rows = await session.scalars(select(model).where(model.at < naive()))  # L:async_where
                    assert rows.all() == []
                    await session.rollback()
            finally:
                await engine.dispose()

        asyncio.run(scenario())


    @MODELS
    def test_text(dbguard_connection, model):
        statement = text(f"SELECT count(*) FROM {model.__tablename__} WHERE at < :cutoff")
        assert dbguard_connection.execute(statement, {"cutoff": naive()}).scalar() == 0  # L:text


    @pytest.mark.parametrize(
        ("model", "type_"),
        [(Event, DateTime(timezone=True)), (Log, DateTime())],
        ids=["aware", "plain"],
    )
    def test_typed_text(dbguard_connection, model, type_):
        statement = text(f"SELECT count(*) FROM {model.__tablename__} WHERE at < :cutoff")
        statement = statement.bindparams(bindparam("cutoff", type_=type_))
        assert dbguard_connection.execute(statement, {"cutoff": naive()}).scalar() == 0  # L:typed
"""


def _lines(source: str) -> dict[str, int]:
    """The line number of each ``# L:name`` marker in ``source`` as pytester writes it."""
    body = textwrap.dedent(source).lstrip("\n")
    return {
        match.group(1): number
        for number, line in enumerate(body.splitlines(), 1)
        if (match := re.search(r"# L:(\w+)", line))
    }


def _ways_project(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(models=MODELS, test_ways=textwrap.dedent(WAYS).lstrip("\n"))
    pytester.makeini(f"[pytest]\ndbguard_metadata = models:Base\ndbguard_naive_datetime = {mode}\n")


def test_warnings_name_the_attribute_and_point_at_the_users_line(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    _ways_project(pytester, "warn")
    at = _lines(WAYS)
    result = run_dbguard(pytester, *on_server, inprocess=True)
    # 16 tests pass; 10 reports: every ``aware`` way (two in test_async) and the untyped text
    # statement on the plain table too.
    result.assert_outcomes(passed=16, warnings=10)
    warning = "*/test_ways.py:{line}: NaiveDatetimeWarning: naive datetime bound as parameter "
    during = "during test_ways.py::test_{name}?aware?; bind an aware datetime*"
    insert_events = "'INSERT INTO events (at) VALUES (%(at)s::TIMESTAMP WITH TIME ZONE)*'"
    select_events = "'SELECT events.id, events.at FROM events WHERE events.at < %(at_1)s*'"
    expected = [
        ("orm", "orm", f"'at' (Event.at, set at test_ways.py:{at['orm']}) of {insert_events}"),
        (
            "constructor",
            "constructor",
            f"'at' (Event.at, set at test_ways.py:{at['constructor']}) of {insert_events}",
        ),
        ("core", "core", f"'at' (Event.at) of {insert_events}"),
        ("executemany", "many", f"'at' (Event.at) of {insert_events}"),
        ("where", "where", f"'at_1' of {select_events}"),
        (
            "async",
            "async_set",
            f"'at' (Event.at, set at test_ways.py:{at['async_set']}) of {insert_events}",
        ),
        ("async", "async_where", f"'at_1' of {select_events}"),
        (
            "text",
            "text",
            "'cutoff' (type unknown) of 'SELECT count(*) FROM events WHERE at < %(cutoff)s'",
        ),
        (
            "typed_text",
            "typed",
            "'cutoff' of 'SELECT count(*) FROM events WHERE at < "
            "%(cutoff)s::TIMESTAMP WITH TIME ZONE'",
        ),
    ]
    for name, marker, parameter in expected:
        line = warning.format(line=at[marker]) + parameter + " " + during.format(name=name)
        result.stdout.fnmatch_lines([line])
    result.stdout.fnmatch_lines(
        [
            warning.format(line=at["text"]) + "'cutoff' (type unknown) of "
            "'SELECT count(*) FROM logs WHERE at < %(cutoff)s' during test_ways.py::test_text?plain?; "
            "bind an aware datetime (e.g. datetime.now(timezone.utc)), type the parameter if it "
            "meets a timestamp without time zone (text(...).bindparams(bindparam('cutoff', "
            "type_=DateTime()))), or set dbguard_naive_datetime (--dbguard-naive-datetime) to off."
        ]
    )
    for name in ("orm", "constructor", "core", "executemany", "where", "async", "typed_text"):
        result.stdout.no_fnmatch_line(f"*during test_ways.py::test_{name}?plain?*")
    result.stdout.no_fnmatch_line("*pytest_dbguard/*")


FACTORY_LIBRARY = """
import datetime


def build(model):
    made = model()
    setattr(made, "at", datetime.datetime(2024, 5, 1, 12, 0))  # naive, as a factory may make it
    return made
"""
FACTORY_TESTS = """
from fakefactory import build
from models import Event


def test_built(dbguard_session):
    dbguard_session.add(build(Event))  # L:built
    dbguard_session.flush()
"""


def test_a_value_an_installed_factory_sets_points_at_the_test_that_called_it(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """A factory library (installed: under site-packages) sets the naive value; the warning
    names the project's line that called it, not a line of the library."""
    library = pytester.path / "venv" / "site-packages" / "fakefactory"
    library.mkdir(parents=True)
    (library / "__init__.py").write_text(FACTORY_LIBRARY)
    pytester.makepyfile(models=MODELS, test_factory=textwrap.dedent(FACTORY_TESTS).lstrip("\n"))
    pytester.makeini(
        "[pytest]\ndbguard_metadata = models:Base\npythonpath = . venv/site-packages\n"
    )
    result = run_dbguard(pytester, *on_server, inprocess=True)
    result.assert_outcomes(passed=1, warnings=1)
    line = _lines(FACTORY_TESTS)["built"]
    result.stdout.fnmatch_lines(
        [
            f"*/test_factory.py:{line}: NaiveDatetimeWarning: *(Event.at, set at test_factory.py:{line})*"
        ]
    )
    result.stdout.no_fnmatch_line("*set at *fakefactory*")


def test_error_mode_fails_only_where_the_time_zone_matters(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    _ways_project(pytester, "error")
    result = run_dbguard(pytester, *on_server, "-rA", inprocess=True)
    # The plain tests wrote their naive values and read them back (their asserts pass).
    result.assert_outcomes(passed=7, failed=9)
    names = ("orm", "constructor", "core", "executemany", "where", "async", "text", "typed_text")
    for name in names:
        if name != "text":
            result.stdout.fnmatch_lines([f"PASSED test_ways.py::test_{name}?plain?"])
    failures = [f"test_ways.py::test_{name}?aware?" for name in names]
    failures.insert(7, "test_ways.py::test_text?plain?")
    result.stdout.fnmatch_lines(
        [f"E*NaiveDatetimeError: naive datetime bound as * during {test}; *" for test in failures]
    )
    result.stdout.fnmatch_lines([f"FAILED {test} - *" for test in failures])


TRACEBACKS = """
    import datetime
    import pytest
    from sqlalchemy import text
    from models import Event

    @pytest.mark.dbguard_without("toolbar_dev")
    def test_hidden():
        import toolbar_dev  # L:hidden

    def test_naive(dbguard_session):
        dbguard_session.add(Event(at=datetime.datetime(2024, 5, 1)))
        dbguard_session.flush()  # L:naive

    def test_count(dbguard_queries, dbguard_connection):
        with dbguard_queries.assert_max(0):  # L:count
            dbguard_connection.execute(text("SELECT 1"))
"""


def test_tracebacks_end_at_the_users_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        models=MODELS, test_tb=textwrap.dedent(TRACEBACKS).lstrip("\n"), toolbar_dev=""
    )
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
    at = _lines(TRACEBACKS)
    result = run_dbguard(
        pytester, "--dbguard-url", "sqlite", "--dbguard-naive-datetime", "error", inprocess=True
    )
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            ">       import toolbar_dev  # L:hidden",
            "E       ModuleNotFoundError: No module named 'toolbar_dev' (hidden by "
            "@pytest.mark.dbguard_without in test_tb.py::test_hidden)",
            f"test_tb.py:{at['hidden']}: ModuleNotFoundError",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            ">       dbguard_session.flush()  # L:naive",
            "E*pytest_dbguard.exceptions.NaiveDatetimeError: naive datetime bound as "
            "parameter 'at' (Event.at, set at test_tb.py:*) of 'INSERT INTO events*",
        ]
    )
    result.stdout.fnmatch_lines(
        [">       with dbguard_queries.assert_max(0):  # L:count", "E       Failed: expected *"]
    )
    result.stdout.no_fnmatch_line("*/pytest_dbguard/*")


def test_a_class_mapped_only_when_the_mappers_are_configured(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """warehouse's Observation (AbstractConcreteBase): until configure_mappers() its registry's
    mappers raise UnmappedClassError, and the guard's install failed every test's setup."""
    pytester.makepyfile(
        models="""
        import datetime
        from sqlalchemy import DateTime
        from sqlalchemy.ext.declarative import AbstractConcreteBase
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

        class Base(DeclarativeBase):
            pass

        class Observation(AbstractConcreteBase, Base):
            id: Mapped[int] = mapped_column(primary_key=True)
            at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))

        class ProjectObservation(Observation):
            __tablename__ = "project_observations"
            __mapper_args__ = {"polymorphic_identity": "project", "concrete": True}
        """,
        test_observations="""
        import datetime
        import pytest
        from models import ProjectObservation
        from pytest_dbguard import NaiveDatetimeWarning

        def test_a_naive_value_is_still_reported(dbguard_session):
            with pytest.warns(NaiveDatetimeWarning, match="ProjectObservation.at"):
                dbguard_session.add(ProjectObservation(at=datetime.datetime(2026, 1, 1)))
                dbguard_session.flush()
        """,
    )
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
    run_dbguard(pytester, *on_server).assert_outcomes(passed=1)
