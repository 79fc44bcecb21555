"""The schema drift check: does the schema ``alembic upgrade head`` builds match ``dbguard_metadata``?

alembic's autogenerate comparison (``alembic.autogenerate.compare_metadata``) finds the
differences (tables, columns, types, nullability, indexes, unique constraints, foreign keys);
this module says each in plain words, naming the table and the column. ``dbguard check-schema``
(``check_schema``) runs it on a database of its own; with ini ``dbguard_check_schema = error|warn``
every process that runs tests runs it at start on its fresh clone of the template the run builds
anyway, before any test has written to it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_dbguard.exceptions import (
    ConfigError,
    SchemaDriftError,
    SchemaDriftWarning,
    SchemaError,
)
from pytest_dbguard.records import Record
from pytest_dbguard.run.state import the_run

if TYPE_CHECKING:
    from sqlalchemy import MetaData
    from sqlalchemy.engine import Connection, Dialect

    from pytest_dbguard.db.databases import Provisioned
    from pytest_dbguard.db.urls import DatabaseURL

NO_TABLES: Final = (
    "{source} = {spec!r} holds no table, so every table the migrations create would look like "
    "drift. A declarative Base's metadata fills as its model classes are defined: the modules "
    "that define them were not imported. Name a module that imports them all (e.g. a models "
    "package whose __init__ imports each models module)."
)
# The start of SQLAlchemy's SAWarning for tables whose foreign keys form a cycle.
CYCLE_WARNING: Final = "Cannot correctly sort tables"
IN_MODELS: Final = "in the models, missing from the migrations"
IN_MIGRATIONS: Final = "created by the migrations, missing from the models"
HEADLINE: Final = (
    "schema drift: the database `alembic upgrade head` builds ({alembic_ini}) and "
    "dbguard_metadata ({metadata}) differ in {count} place{s}:"
)
FIX: Final = (
    "Fix: write a migration for what the models have and the migrations lack (alembic revision "
    "--autogenerate drafts one), or change the models to match the migrations."
)
AT_START: Final = (
    "{report}\n{fix} The check ran because {source} = {mode!r}; 'warn' reports it and runs the "
    "tests, 'off' skips it."
)
NOT_INSTALLED: Final = (
    "The schema drift check needs alembic (its autogenerate comparison): pip install alembic"
)
metadata_key: Final = pytest.StashKey["MetaData"]()


class Drift(Record):
    """The differences between the migrated database and the metadata, one sentence each."""

    __slots__ = ("alembic_ini", "differences", "metadata", "tables")
    alembic_ini: str
    metadata: str
    differences: tuple[str, ...]
    tables: int  # tables in the metadata, for the "no drift" line

    def __init__(
        self, alembic_ini: str, metadata: str, differences: tuple[str, ...], tables: int
    ) -> None:
        self._set_from(locals())

    def report(self) -> str:
        """The headline and one indented line per difference."""
        count = len(self.differences)
        headline = HEADLINE.format(
            alembic_ini=self.alembic_ini,
            metadata=self.metadata,
            count=count,
            s="" if count == 1 else "s",
        )
        return "\n".join([headline, *(f"  - {line}" for line in self.differences)])


def compare(
    connection: Connection,
    metadata: MetaData,
    ini: Path | None = None,
    url: DatabaseURL | None = None,
) -> list[str]:
    """Each difference between the database on ``connection`` and ``metadata``, in words.

    With ``ini`` (and the database's ``url``), through its env.py when that takes dbguard's
    connection, so that what env.py configures for autogenerate (``include_object``,
    ``include_name``, ``include_schemas``, ``compare_type``...) decides what counts, as for
    ``alembic check``; an env.py that builds its own engine is not run here (its settings may
    name another database)."""
    try:
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext
    except ImportError as error:
        raise SchemaError(NOT_INSTALLED) from error
    from pytest_dbguard.db import alembic_runner
    from pytest_dbguard.db.alembic_ini import uses_given_connection

    found: list[Any] | None = None
    with warnings.catch_warnings():
        # alembic sorts the metadata's tables by their foreign keys, and SQLAlchemy warns when
        # they form a cycle: a warning about dbguard's own step, which filterwarnings = error
        # made an INTERNALERROR (polar). The comparison does not depend on that order.
        warnings.filterwarnings("ignore", CYCLE_WARNING)
        if ini is not None and url is not None and uses_given_connection(ini):
            found = alembic_runner.compare_in_env_py(connection, ini, url, metadata)
        if found is None:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            found = compare_metadata(context, metadata)
    # Changes to one column come grouped in a list; the others one tuple each.
    flat = [diff for entry in found for diff in (entry if isinstance(entry, list) else [entry])]
    return [describe(diff, connection.dialect) for diff in flat]


def require_tables(metadata: MetaData, source: str, spec: str) -> None:
    """ConfigError when the metadata to compare with has no table (its models not imported)."""
    if not metadata.tables:
        raise ConfigError(NO_TABLES.format(source=source, spec=spec))


def check_database(url: DatabaseURL, metadata: MetaData, ini: Path | None = None) -> list[str]:
    """:func:`compare` on a connection of dbguard's own to ``url``."""
    from pytest_dbguard.db.engines import INTERNAL_OPTIONS, engine_for

    engine = engine_for(url, execution_options=INTERNAL_OPTIONS)
    try:
        with engine.connect() as connection:
            return compare(connection, metadata, ini, url)
    finally:
        engine.dispose()  # no connection may stay on a database that is dropped next


def describe(diff: Sequence[Any], dialect: Dialect) -> str:
    """One alembic autogenerate difference as a sentence that names the table and column."""
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        return f"table {_table(diff[1])}: {_side(kind)}"
    if kind in ("add_column", "remove_column"):
        _, schema, table, column = diff
        kind_of = _type(column.type, dialect)
        return f"column {_qualified(schema, table)}.{column.name} {kind_of}: {_side(kind)}"
    if kind.startswith("modify_"):
        _, schema, table, column, _options, before, after = diff
        what = f"column {_qualified(schema, table)}.{column}"
        if kind == "modify_nullable":
            return (
                f"{what}: {_nullable(after)} in the models, {_nullable(before)} in the migrations"
            )
        if kind == "modify_type":
            before, after = _type(before, dialect), _type(after, dialect)
        noun = kind.removeprefix("modify_").replace("_", " ")
        return f"{what}: {noun} {after} in the models, {before} in the migrations"
    if kind in ("add_index", "remove_index"):
        index = diff[1]
        unique = "unique " if index.unique else ""
        return (
            f"{unique}index {index.name} on {_table(index.table)} "
            f"({_columns(index.expressions)}): {_side(kind)}"
        )
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        return f"{_constraint(diff[1])}: {_side(kind)}"
    if kind in ("add_table_comment", "remove_table_comment"):
        return f"comment on table {_table(diff[1])}: {_side(kind)}"
    return f"{kind.replace('_', ' ')}: {', '.join(str(part) for part in diff[1:])}"


def _side(kind: str) -> str:
    return IN_MODELS if kind.startswith("add_") else IN_MIGRATIONS


def _qualified(schema: str | None, table: str) -> str:
    return f"{schema}.{table}" if schema else table


def _table(table: Any) -> str:
    return _qualified(getattr(table, "schema", None), table.name)


def _nullable(nullable: bool | None) -> str:
    return "nullable" if nullable or nullable is None else "NOT NULL"


def _type(type_: Any, dialect: Dialect) -> str:
    try:
        return str(type_.compile(dialect=dialect))
    except Exception:  # a type this dialect cannot render: its Python form still names it
        return repr(type_)


def _columns(expressions: Sequence[Any]) -> str:
    return ", ".join(str(getattr(expression, "name", expression)) for expression in expressions)


def _constraint(constraint: Any) -> str:
    from sqlalchemy import ForeignKeyConstraint, UniqueConstraint

    name = f" {constraint.name}" if isinstance(constraint.name, str) and constraint.name else ""
    table = _table(constraint.table)
    if isinstance(constraint, ForeignKeyConstraint):
        targets = ", ".join(element.target_fullname for element in constraint.elements)
        return f"foreign key{name} on {table} ({', '.join(constraint.column_keys)}) -> {targets}"
    noun = "unique constraint" if isinstance(constraint, UniqueConstraint) else "constraint"
    return f"{noun}{name} on {table} ({_columns(list(constraint.columns))})"


# At run start (ini dbguard_check_schema): lifecycle calls configure, then check_at_start.


def configure(config: pytest.Config) -> None:
    """Import the metadata the check compares with (a bad ``dbguard_metadata`` is a usage error
    before anything starts); nothing when the check is off."""
    from pytest_dbguard.db import schema

    settings = the_run(config).settings
    if settings.check_schema == "off" or not settings.metadata or not settings.alembic_ini:
        return
    config.stash[metadata_key] = schema.load_metadata(
        settings.metadata, settings.source_of("metadata"), config.rootpath
    )


def check_at_start(config: pytest.Config, provisioned: Provisioned | None) -> None:
    """Compare this process's fresh test database (a clone of the migrated template, or migrated
    in place) with the metadata: SchemaDriftError in ``error`` mode, a warning in ``warn`` mode."""
    metadata = config.stash.get(metadata_key, None)
    if metadata is None or provisioned is None:
        return
    run = the_run(config)
    settings, state = run.settings, run.session
    require_tables(metadata, settings.source_of("metadata"), str(settings.metadata))
    # In schema mode env.py's include_schemas would compare the other workers' schemas too.
    ini = state.alembic_ini if state is not None and run.plan.schema is None else None
    differences = check_database(provisioned.url, metadata, ini)
    if not differences:
        return
    drift = Drift(
        str(settings.alembic_ini), str(settings.metadata), tuple(differences), len(metadata.tables)
    )
    if settings.check_schema == "error":
        raise SchemaDriftError(
            AT_START.format(
                report=drift.report(),
                fix=FIX,
                source=settings.source_of("check_schema"),
                mode=settings.check_schema,
            )
        )
    # Located at the ini line that asked for the check (pytest shows that line); every xdist
    # worker warns the same words from the same place, so the summary shows them once.
    filename, line = _setting_line(config)
    warnings.warn_explicit(SchemaDriftWarning(f"{drift.report()}\n{FIX}"), None, filename, line)


def _setting_line(config: pytest.Config) -> tuple[str, int]:
    """The ini file and line of ``dbguard_check_schema`` (line 1 when it came from elsewhere)."""
    if config.inipath is None:
        return "dbguard_check_schema", 1
    with contextlib.suppress(OSError):
        for number, text in enumerate(config.inipath.read_text().splitlines(), 1):
            if text.strip().startswith("dbguard_check_schema"):
                return str(config.inipath), number
    return str(config.inipath), 1
