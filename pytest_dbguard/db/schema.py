"""The schema source: load ``dbguard_metadata`` or run ``dbguard_alembic_ini``, fingerprint it, check prefixes."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pytest_dbguard.db.names import SCHEMA_START
from pytest_dbguard.exceptions import ConfigError, DbguardError, SchemaError, brief, sqlstate
from pytest_dbguard.run.setting_values import find_from_rootdir

if TYPE_CHECKING:
    from sqlalchemy import MetaData
    from sqlalchemy.engine import Connection

    from pytest_dbguard.db.urls import DatabaseURL

BUILD_FAILED: Final = (
    "Building the schema ({source}) in {target} failed: {error}. Fix the models or the "
    "migrations it names (ini dbguard_metadata / dbguard_alembic_ini); no test ran.{hint}"
)
# create_all creates tables, not the schemas they name: PostgreSQL's invalid_schema_name.
SCHEMA_NOT_CREATED: Final = (
    " The metadata's tables name the {schemas}, which create_all does not create: create {it} "
    'first, event.listen(metadata, "before_create", DDL("CREATE SCHEMA IF NOT EXISTS {first}"))'
    "{each}."
)
_INVALID_SCHEMA_NAME: Final = "3F000"
# A column type that an extension brings (citext, hstore, PostGIS's geometry): undefined_object.
EXTENSION_NOT_CREATED: Final = (
    " If {type} comes from an extension, create it first: event.listen(metadata, "
    '"before_create", DDL("CREATE EXTENSION IF NOT EXISTS {extension}")).'
)
_UNDEFINED_OBJECT: Final = "42704"
_EXTENSION_OF_TYPE: Final = {
    "geometry": "postgis",
    "geography": "postgis",
    "raster": "postgis_raster",
}

OWN_SCHEMAS_IN_WORKER_SCHEMA: Final = (
    "The schema source ({source}) has tables in schemas of their own ({tables}), but this run "
    "gives each worker a schema in the shared database {database!r}: create_all would put those "
    "tables in {schemas} of that database, shared by every worker and by whoever else uses it, "
    "where dbguard's cleanup never reaches. Give each worker a database: dbguard_worker_isolation "
    "= database (or auto) with a role that may create databases (CREATEDB), or leave the URL out "
    "for the embedded server. No test ran."
)

MIGRATED_OUTSIDE_WORKER_SCHEMA: Final = (
    "The migrations ({source}) created {tables} outside the worker schema {schema!r} of the "
    "shared database {database!r}: this run gives each worker a schema there, and a table in a "
    "schema of its own would be shared by every worker and by whoever else uses that database, "
    "where dbguard's cleanup never reaches. {fate} Give each worker a database: "
    "dbguard_worker_isolation = database (or auto) with a role that may create databases "
    "(CREATEDB), or leave the URL out for the embedded server. No test ran."
)
OWN_TRANSACTIONS_IN_WORKER_SCHEMA: Final = (
    "A migration ({source}) {how}{where}, which needs transactions of its own (CREATE INDEX "
    "CONCURRENTLY and the like); with a schema per worker in a shared database dbguard runs the "
    "migrations in one transaction, so that it can take back what they create outside the "
    "worker's schema; nothing of this build was committed. Give each worker a database: "
    "dbguard_worker_isolation = database (or auto) with a role that may create databases "
    "(CREATEDB), or leave the URL out for the embedded server. No test ran."
)
ROLLED_BACK: Final = "The build was rolled back: nothing of it is left in the database."
LEFT_BEHIND: Final = (
    "env.py committed them on a connection of its own, so they are still there, and dbguard "
    "drops only what carries its mark: drop them yourself ({tables})."
)


def load_metadata(spec: str, source: str, rootdir: Path | None = None) -> MetaData:
    """Import ``package.module:attr`` and return its MetaData (a declarative Base gives ``.metadata``).

    The module is found relative to ``rootdir`` (the ini file's folder) as well as on sys.path,
    whether pytest runs as ``pytest`` (which does not put the rootdir on sys.path) or as
    ``python -m pytest``, from the rootdir or a subfolder.
    """
    from sqlalchemy import MetaData

    module_name, _, attr_path = spec.partition(":")
    if rootdir is not None:
        find_from_rootdir(module_name, rootdir)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may fail in any way while importing
        where = f"the rootdir ({rootdir}) and " if rootdir is not None else ""
        raise ConfigError(
            f"{source} = {spec!r}: importing {module_name!r} failed{_where(error)}: "
            f"{type(error).__name__}: {error}. dbguard imports it from {where}sys.path: check "
            "the module path and that the module imports cleanly; for a src layout, add "
            "'pythonpath = src' to the ini file."
        ) from error
    target: Any = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ConfigError(
                f"{source} = {spec!r}: module {module_name!r} has no attribute {attr_path!r}"
                f"{_schema_sources_hint(target, part)}; name a MetaData (e.g. 'app.db:metadata') "
                "or a declarative Base (e.g. 'app.models:Base')."
            )
        target = getattr(target, part)
    metadata = getattr(target, "metadata", target)
    if not isinstance(metadata, MetaData):
        django = type(target).__module__.startswith("django.") or type(
            metadata
        ).__module__.startswith("django.")
        raise ConfigError(
            f"{source} = {spec!r} is a {type(target).__name__}, not a MetaData or a declarative Base; "
            + (
                DJANGO_NEEDS_NO_METADATA
                if django
                else "name a MetaData (e.g. 'app.db:metadata') or a declarative Base (e.g. "
                "'app.models:Base')."
            )
        )
    return metadata


DJANGO_NEEDS_NO_METADATA = (
    "it is Django's. A Django project needs no dbguard_metadata: with pytest-django and its "
    "settings, dbguard builds the schema with Django's migrate. Remove the line."
)


def _schema_sources_hint(holder: Any, wanted: str) -> str:
    """`` (did you mean 'Base'?)``, or the MetaData and declarative Bases ``holder`` has: for a
    misspelt attribute. Model classes, which carry the metadata too, are left out."""
    from sqlalchemy import MetaData

    found = []
    for name in dir(holder):
        try:
            value = getattr(holder, name)
        except Exception:  # a lazy attribute of the user's module that fails: not a candidate
            continue
        is_base = isinstance(value, type) and not hasattr(value, "__table__")
        if isinstance(value, MetaData) or (
            is_base and isinstance(getattr(value, "metadata", None), MetaData)
        ):
            found.append(name)
    if not found:
        return ""
    import difflib  # only for the error

    close = difflib.get_close_matches(wanted, found, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (it has {', '.join(repr(name) for name in found[:5])})"


def _where(error: BaseException) -> str:
    """`` at file:line (code)`` of the user's line that raised, so the message leads to it."""
    if isinstance(error, SyntaxError) and error.filename:
        return f" at {error.filename}:{error.lineno}"
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith(("<", os.path.dirname(__file__)))
        and "importlib" not in frame.filename
    ]
    if not frames:
        return ""
    frame = frames[-1]
    code = f" ({frame.line.strip()})" if frame.line else ""
    return f" at {frame.filename}:{frame.lineno}{code}"


def alembic_path(path: str, source: str, rootdir: Path) -> Path:
    """The alembic.ini named by ``path`` (relative to the rootdir), which must exist."""
    resolved = (rootdir / path).resolve()
    if not resolved.is_file():
        raise ConfigError(
            f"{source} = {path!r}: {resolved} does not exist; give the path of alembic.ini "
            "relative to the rootdir, e.g. 'alembic.ini' or 'migrations/alembic.ini'."
        )
    from pytest_dbguard.db.alembic_ini import require_env_py

    require_env_py(resolved, f"{source} = {path!r}")
    return resolved


def builder(
    metadata: MetaData | None,
    alembic_ini: Path | None,
    url: DatabaseURL,
    source: str,
    *,
    own_process: bool = False,
    worker_schema: str | None = None,
) -> Callable[[Connection], None] | None:
    """The schema build for ``url`` (``create_all`` or ``alembic upgrade head``; None: no schema
    source), its failures raised as a SchemaError that names the source.

    ``own_process``: ``url`` is a database of its own (not a schema in a shared one), so an
    env.py that ignores ``config.attributes["connection"]`` may migrate it from a new process.
    ``worker_schema``: schema mode, where the build fills that schema of the shared database.
    """
    from pytest_dbguard.db import alembic_runner
    from pytest_dbguard.db.alembic_ini import uses_given_connection

    inner: Callable[[Connection], None]
    if metadata is not None:
        if worker_schema is not None:
            _require_no_own_schemas(metadata, source, url)
        inner = lambda connection: create_with_metadata(connection, metadata)  # noqa: E731
    elif alembic_ini is not None:
        ini, text = alembic_ini, url.render(hide_password=False)
        if own_process and not uses_given_connection(ini):
            inner = lambda _: alembic_runner.upgrade_in_subprocess(ini, url, source)  # noqa: E731
        else:
            inner = lambda connection: alembic_runner.upgrade_here(connection, ini, text)  # noqa: E731
    else:
        return None
    if worker_schema is not None and alembic_ini is not None:
        inner = _kept_inside(inner, source, url, worker_schema)

    def build(connection: Connection) -> None:
        try:
            inner(connection)
        except DbguardError:
            raise
        except Exception as error:
            cause = getattr(error, "orig", None) or error  # a DBAPIError: the driver's own words
            where = _migration_frame(error, alembic_ini) if alembic_ini is not None else ""
            if worker_schema is not None and (how := _own_transactions(error)) is not None:
                raise SchemaError(
                    OWN_TRANSACTIONS_IN_WORKER_SCHEMA.format(source=source, how=how, where=where)
                ) from error
            raise SchemaError(
                BUILD_FAILED.format(
                    source=source,
                    target=(
                        f"the worker schema {worker_schema!r} of the database {url.database!r}"
                        if worker_schema is not None
                        else repr(url.database)
                    ),
                    error=brief(cause, url.password) + where,
                    hint=_schema_hint(metadata, cause) if metadata is not None else "",
                )
            ) from error

    if alembic_ini is not None and worker_schema is None:
        # As `alembic upgrade head` runs: env.py's transactions, autocommit_block() and a
        # migration's own commit() work. In schema mode the build stays one transaction, so that
        # what it creates outside the worker's schema is taken back (_kept_inside).
        from pytest_dbguard.db.databases import CommitsItself

        return CommitsItself(build)
    return build


def _schema_hint(metadata: MetaData, cause: BaseException) -> str:
    """How to create what create_all does not, when the build failed for lack of it (psycopg's
    ``sqlstate``, psycopg2's ``pgcode``): the schemas the metadata's tables name, or the
    extension of a column type; empty otherwise."""
    code = sqlstate(cause)
    # type "citext" or, for an array column, "citext[]"; schema-qualified ones too.
    missing_type = re.search(r'type "(?:[^"]+\.)?([^".\[]+)(?:\[\])*" does not exist', str(cause))
    if code == _UNDEFINED_OBJECT and missing_type is not None:
        name = missing_type.group(1)
        return EXTENSION_NOT_CREATED.format(type=name, extension=_EXTENSION_OF_TYPE.get(name, name))
    schemas = sorted({str(table.schema) for table in metadata.tables.values() if table.schema})
    if code != _INVALID_SCHEMA_NAME or not schemas:
        return ""
    return SCHEMA_NOT_CREATED.format(
        schemas=f"schema{'s' if len(schemas) > 1 else ''} {', '.join(schemas)}",
        first=schemas[0],
        it="them" if len(schemas) > 1 else "it",
        each=", one for each" if len(schemas) > 1 else "",
    )


class _OwnCommit(Exception):
    """A migration committed during a schema-mode build (``_kept_inside``)."""


def _refuse_commit(_connection: Connection) -> None:
    raise _OwnCommit("the migration called commit()")


def _own_transactions(error: BaseException) -> str | None:
    """What a migration did that needs transactions of its own, when ``error`` came from it:
    ``commit()``, or alembic's ``autocommit_block()``; None otherwise."""
    if isinstance(error, _OwnCommit):
        return "calls commit()"
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_name == "autocommit_block":
            return "uses autocommit_block()"
        frame = frame.tb_next
    return None


def _require_no_own_schemas(metadata: MetaData, source: str, url: DatabaseURL) -> None:
    """ConfigError for schema-qualified tables where each worker has only a schema of its own:
    they would land in a schema of the shared database, outside every worker's (indico's
    users.users, with a role that may not create databases)."""
    qualified = sorted(table.fullname for table in metadata.tables.values() if table.schema)
    if not qualified:
        return
    schemas = sorted({table.schema for table in metadata.tables.values() if table.schema})
    raise ConfigError(
        OWN_SCHEMAS_IN_WORKER_SCHEMA.format(
            source=source,
            tables=_some(qualified),
            database=url.database,
            schemas=", ".join(str(schema) for schema in schemas),
        )
    )


# Tables and views of this role outside every worker schema (and PostgreSQL's own).
_OUTSIDE_WORKER_SCHEMAS: Final = (
    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname <> 'information_schema' "
    f"AND n.nspname !~ '^pg_' AND n.nspname !~ '{SCHEMA_START}' "
    "AND pg_get_userbyid(c.relowner) = current_user"
)


def _kept_inside(
    upgrade: Callable[[Connection], None], source: str, url: DatabaseURL, worker_schema: str
) -> Callable[[Connection], None]:
    """The Alembic upgrade of a worker schema, failing when a migration created tables in a
    schema of their own (``schema="audit"``): only ``dbguard_metadata`` can be checked before the
    build. Which of them stay is what another connection sees: those env.py committed on its own
    connection; the build's rollback takes the rest away."""
    from pytest_dbguard.db import maintenance

    def checked(connection: Connection) -> None:
        from sqlalchemy import event

        before = set(connection.exec_driver_sql(_OUTSIDE_WORKER_SCHEMAS).scalars())
        # A migration's own commit() would make part of the build final, outside the transaction
        # this check may take back: stopped before it reaches the server.
        event.listen(connection, "commit", _refuse_commit)
        try:
            upgrade(connection)
        except DbguardError:
            raise
        except Exception as error:
            # Under -n 2 every worker runs the migrations at once: one that collided with what
            # another worker's env.py committed outside its schema (CREATE SCHEMA audit, a table
            # there) gets the same explanation as that worker, not a bare unique violation.
            try:
                committed = committed_outside() - before
            except Exception:  # the server went away: the migration's own error says more
                raise error from error.__cause__
            if committed:
                raise outside(sorted(committed), committed, error) from error
            raise
        finally:
            event.remove(connection, "commit", _refuse_commit)
        created = sorted(
            set(connection.exec_driver_sql(_OUTSIDE_WORKER_SCHEMAS).scalars()) - before
        )
        if created:
            raise outside(created, committed_outside())

    def committed_outside() -> set[str]:
        """What another connection sees outside the worker schemas: what is committed."""
        with maintenance.shared(url) as other:
            return {row[0] for row in other.rows(_OUTSIDE_WORKER_SCHEMAS)}

    def outside(
        created: list[str], committed: set[str], error: Exception | None = None
    ) -> SchemaError:
        left = [name for name in created if name in committed]
        message = MIGRATED_OUTSIDE_WORKER_SCHEMA.format(
            source=source,
            tables=_some(created),
            schema=worker_schema,
            database=url.database,
            fate=LEFT_BEHIND.format(tables=", ".join(left)) if left else ROLLED_BACK,
        )
        if error is not None:  # what this worker's migrations then ran into
            cause = getattr(error, "orig", None) or error
            message += f" This worker's build then failed: {brief(cause, url.password)}."
        return SchemaError(message)

    return checked


def _some(names: Iterable[str]) -> str:
    """The first three names, and how many more."""
    shown = list(names)
    more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
    return ", ".join(shown[:3]) + more


def _migration_frame(error: BaseException, ini: Path) -> str:
    """`` (at file:line)``: the last frame of the error in the migrations folder."""
    from pytest_dbguard.db.alembic_ini import env_py
    from pytest_dbguard.db.alembic_runner import failing_file

    try:
        folder = env_py(ini).parent
    except Exception:  # alembic.ini unreadable: the message without the file still helps
        return ""
    text = "".join(traceback.format_tb(error.__traceback__))
    where = failing_file(text, folder)
    return f" ({where.strip()})" if where else ""


def create_with_metadata(connection: Connection, metadata: MetaData) -> None:
    """Build the schema with ``create_all``."""
    metadata.create_all(connection)


@contextlib.contextmanager
def environ_override(values: Mapping[str, str]) -> Iterator[None]:
    """Temporarily set variables (an env.py that reads DATABASE_URL must see the template while it is built)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


PREFIX_MARKERS = ("PREFIX",)


def check_table_prefixes(metadata: MetaData, assignments: Sequence[tuple[str, str]]) -> None:
    """Every table must carry the prefix the tests set (e.g. ``DB_TABLE_PREFIX`` from ``dbguard_env``).

    A table named from the import-time default (the model was imported before the variable was
    set) is reported before the first test instead of as "relation does not exist" later.
    """
    for name, _template in assignments:
        if not any(marker in name.upper() for marker in PREFIX_MARKERS):
            continue
        prefix = os.environ.get(name, "")
        if not prefix:
            continue
        wrong = sorted(table.name for table in metadata.tables.values() if prefix not in table.name)
        if wrong:
            raise ConfigError(
                f"Tables {', '.join(wrong)} do not carry {name}={prefix!r}, which dbguard_env sets for "
                "the tests: their models were imported before the variable was set, so they took the "
                "import-time default and the tests would fail with 'relation does not exist'. Enable "
                "dbguard with `pytest -p pytest_dbguard` (not only pytest_plugins in conftest) and keep "
                f"{name} out of module-level code that runs before it, or add the module to "
                "dbguard_guard_modules to catch the early import."
            )
