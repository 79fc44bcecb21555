"""The schema drift check: ``dbguard check-schema`` and ini ``dbguard_check_schema``, on real
alembic projects written by pytester and real PostgreSQL servers."""

from __future__ import annotations

import shlex
import sys

import pytest

from pytest_dbguard.db.marks import parse_mark
from pytest_dbguard.db.names import is_dbguard_name
from tests.helpers import (
    ALEMBIC_LOGGING,
    ENV_PY_OWN_ENGINE,
    ENV_PY_TAKES_CONNECTION,
    as_shown,
    blocks,
    mark_text,
    run_dbguard,
    write_alembic_project,
)
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

ALEMBIC_INI = "[alembic]\nscript_location = migrations\n\n" + ALEMBIC_LOGGING
REVISION_1 = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

def upgrade():
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(200), nullable=False),
    )
    op.create_index("ix_users_email", "users", ["email"], unique=True)
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
"""
# Records the name and the comment of the database it migrates, then fails when asked to.
REVISION_2 = """
import pathlib
from alembic import op
from sqlalchemy import text

revision = "0002"
down_revision = "0001"
FAIL = {fail}

def upgrade():
    row = op.get_bind().execute(text(
        "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
        "WHERE datname = current_database()"
    )).one()
    pathlib.Path(__file__).parents[2].joinpath("migrated.txt").write_text(row[0] + "\\n" + row[1])
    if FAIL:
        raise RuntimeError("revision 0002 is broken")
"""
MODELS = """
from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

class Base(DeclarativeBase):
    pass

class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), index=True, unique=True)

class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    body: Mapped[str] = mapped_column(Text)
"""
TAGS = """
class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
"""
IN_MODELS = "in the models, missing from the migrations"
# One drift each: the models as changed, and the line that must name it.
DRIFTS = {
    "column": (
        MODELS + "    title: Mapped[str] = mapped_column(String(80))\n",
        f"column notes.title VARCHAR(80): {IN_MODELS}",
    ),
    "nullability": (
        MODELS.replace("body: Mapped[str]", "body: Mapped[str | None]"),
        "column notes.body: nullable in the models, NOT NULL in the migrations",
    ),
    "index": (
        MODELS.replace('ForeignKey("users.id"))', 'ForeignKey("users.id"), index=True)'),
        f"index ix_notes_user_id on notes (user_id): {IN_MODELS}",
    ),
    "table": (MODELS + TAGS, f"table tags: {IN_MODELS}"),
}
ALL_DRIFTS = (
    MODELS.replace("body: Mapped[str]", "body: Mapped[str | None]")
    .replace('ForeignKey("users.id"))', 'ForeignKey("users.id"), index=True)')
    .replace(
        "mapped_column(Text)\n",
        "mapped_column(Text)\n    title: Mapped[str] = mapped_column(String(80))\n",
    )
    + TAGS
)
HEADLINE = "schema drift: the database `alembic upgrade head` builds (alembic.ini) and dbguard_metadata (models:Base) differ in *"
TESTS = """
    import os, pathlib

    def test_uses_the_schema(dbguard_connection):
        pathlib.Path(f"ran-{os.environ['DBGUARD_WORKER']}").touch()
"""


def project(
    pytester: pytest.Pytester,
    *,
    models: str = MODELS,
    env_py: str = ENV_PY_TAKES_CONNECTION,
    ini: str = "dbguard_alembic_ini = alembic.ini\ndbguard_metadata = models:Base\n",
    fail: bool = False,
) -> None:
    """An app with models, alembic.ini, env.py and two revisions, and its pytest ini file."""
    write_alembic_project(
        pytester.path,
        alembic_ini=ALEMBIC_INI,
        env_py=env_py,
        revisions={"0001_initial.py": REVISION_1, "0002_record.py": REVISION_2.format(fail=fail)},
    )
    (pytester.path / "models.py").write_text(models)
    pytester.makeini("[pytest]\n" + ini)


def check_schema(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """``python -m pytest_dbguard check-schema ARGS`` in the project folder."""
    return pytester.run(sys.executable, "-m", "pytest_dbguard", "check-schema", *args, timeout=120)


def output(result: pytest.RunResult) -> str:
    return result.stdout.str() + result.stderr.str()


def migrated(pytester: pytest.Pytester) -> tuple[str, str]:
    """The name and the comment of the database the migrations ran in."""
    name, comment = (pytester.path / "migrated.txt").read_text().split("\n", 1)
    return name, comment


def test_no_drift_on_the_embedded_default(pytester: pytest.Pytester) -> None:
    project(pytester)
    result = check_schema(pytester)
    assert result.ret == 0, output(result)
    result.stdout.fnmatch_lines(
        [
            "no schema drift: the database `alembic upgrade head` builds (alembic.ini) matches "
            "dbguard_metadata (models:Base), 2 tables compared"
        ]
    )
    name, comment = migrated(pytester)
    mark = parse_mark(comment)
    assert is_dbguard_name(name) and mark is not None and mark.worker == "check"
    result.stderr.fnmatch_lines(
        [
            "*started an embedded PostgreSQL on 127.0.0.1:*",
            f"*migrated {name} *",
            f"*dropped {name}",
        ]
    )


@pytest.mark.parametrize("drift", DRIFTS)
def test_each_difference_is_named(
    pytester: pytest.Pytester, pg_server: TestServer, drift: str
) -> None:
    models, line = DRIFTS[drift]
    project(pytester, models=models)
    result = check_schema(pytester, pg_server.url())
    assert result.ret == 1, output(result)
    result.stdout.fnmatch_lines(
        [HEADLINE.replace("*", "1 place:"), f"  - {line}", "Fix: write a migration*"]
    )


def test_all_differences_at_once(pytester: pytest.Pytester, pg_server: TestServer) -> None:
    project(pytester, models=ALL_DRIFTS)
    result = check_schema(pytester, pg_server.url())
    assert result.ret == 1, output(result)
    lines = [f"  - {line}" for _, line in DRIFTS.values()]
    assert sorted(result.stdout.lines[1:5]) == sorted(lines)
    assert result.stdout.lines[0] == HEADLINE.replace("*", "4 places:")


@pytest.mark.parametrize(
    ("ini", "missing"),
    [
        pytest.param("dbguard_alembic_ini = alembic.ini\n", "dbguard_metadata", id="metadata"),
        pytest.param("dbguard_metadata = models:Base\n", "dbguard_alembic_ini", id="alembic_ini"),
        pytest.param("", "dbguard_metadata and dbguard_alembic_ini", id="both"),
        pytest.param(
            "dbguard_alembic_ini = alembic.ini\ndbguard_metadata = models\n",
            "*ini dbguard_metadata in tox.ini = 'models' is not of the form 'package.module:attribute'*",
            id="malformed",
        ),
    ],
)
def test_missing_keys_are_a_usage_error(pytester: pytest.Pytester, ini: str, missing: str) -> None:
    project(pytester, ini=ini)
    result = check_schema(pytester)
    assert result.ret == 2, output(result)
    if missing.startswith("*"):
        result.stderr.fnmatch_lines([f"dbguard check-schema: {missing}"])
    else:
        result.stderr.fnmatch_lines(
            [
                f"dbguard check-schema: {pytester.path / 'tox.ini'} does not set {missing} (nor*",
                "*a Django project checks its models against its migrations with `python "
                "manage.py makemigrations --check --dry-run`.",
            ]
        )
    assert not (pytester.path / "migrated.txt").exists()  # nothing was started or migrated


def test_sqlalchemy_older_than_2_is_said_before_a_server_starts(pytester: pytest.Pytester) -> None:
    """As a run says it (redash's trial: check-schema started a server, then crashed with
    ``ImportError: cannot import name 'URL'`` on SQLAlchemy 1.3)."""
    project(pytester)
    package = pytester.mkpydir("sqlalchemy")  # what `import sqlalchemy` loads from the project
    (package / "__init__.py").write_text('__version__ = "1.3.24"\n')
    result = check_schema(pytester)
    assert result.ret == 2, output(result)
    result.stderr.fnmatch_lines(
        ["dbguard check-schema: pytest-dbguard needs SQLAlchemy 2.0 or newer*1.3.24 is installed*"]
    )
    assert "started an embedded PostgreSQL" not in output(result)
    assert "Traceback" not in output(result)


def test_an_alembic_ini_without_script_location_is_said_before_a_server_starts(
    pytester: pytest.Pytester,
) -> None:
    """Flask-Migrate's alembic.ini names no script folder (its commands set it in code): the
    error says so, not that env.py is missing from a folder the ini does not name."""
    project(pytester)
    (pytester.path / "alembic.ini").write_text("[alembic]\n\n" + ALEMBIC_LOGGING)
    result = check_schema(pytester)
    assert result.ret == 2, output(result)
    said = result.stderr.str()
    assert said.startswith(
        "dbguard check-schema: ini dbguard_alembic_ini in tox.ini = 'alembic.ini': "
        f"{pytester.path / 'alembic.ini'} sets no script_location (neither in its [alembic] "
        "section nor in [tool.alembic] of a pyproject.toml beside it)"
    ), said
    assert "Flask-Migrate's alembic.ini is such a file" in said
    assert "add `script_location = %(here)s` (the folder of env.py)" in said
    assert "started an embedded PostgreSQL" not in output(result)
    pytester.makepyfile(test_x="def test_x(dbguard_connection): pass")
    run = run_dbguard(pytester)
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    run.stderr.fnmatch_lines(["*sets no script_location*"])


def test_dbguard_variables_take_the_ini_keys_place(
    pytester: pytest.Pytester, pg_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in a run: DBGUARD_METADATA where the ini has no dbguard_metadata, and its errors
    name the variable."""
    project(pytester, ini="dbguard_alembic_ini = alembic.ini\n")
    monkeypatch.setenv("DBGUARD_METADATA", "models:Base")
    result = check_schema(pytester, pg_server.url())
    assert result.ret == 0, output(result)
    result.stdout.fnmatch_lines(["no schema drift:*dbguard_metadata (models:Base), 2 tables*"])
    for wrong in ("models", "   "):  # blank is a value too, as in a run
        monkeypatch.setenv("DBGUARD_METADATA", wrong)
        result = check_schema(pytester, pg_server.url())
        assert result.ret == 2, output(result)
        result.stderr.fnmatch_lines(
            [f"*environment variable DBGUARD_METADATA = '{wrong}' is not of the form*"]
        )


def test_pythonpath_is_relative_to_the_ini_files_folder(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """As pytest's own ini key, also when --rootdir names another folder."""
    project(pytester)
    (pytester.path / "src").mkdir()
    (pytester.path / "models.py").rename(pytester.path / "src" / "models.py")
    pytester.makeini(
        f"[pytest]\ndbguard_alembic_ini = {pytester.path / 'alembic.ini'}\n"
        "dbguard_metadata = models:Base\npythonpath = src\n"
    )
    (pytester.path / "elsewhere").mkdir()
    result = check_schema(pytester, pg_server.url(), "--rootdir", "elsewhere")
    assert result.ret == 0, output(result)
    result.stdout.fnmatch_lines(["no schema drift:*2 tables compared"])


def test_external_server_with_a_password(pytester: pytest.Pytester, pg_server: TestServer) -> None:
    """An env.py that builds its own engine from DATABASE_URL (dbguard_env) migrates the check's
    database, in a process of its own; the password never shows."""
    ini = (
        "dbguard_alembic_ini = alembic.ini\ndbguard_metadata = models:Base\n"
        "dbguard_env =\n    DATABASE_URL={url}\n"
    )
    project(pytester, env_py=ENV_PY_OWN_ENGINE, ini=ini, models=MODELS + TAGS)
    before = pg_server.databases()
    result = check_schema(pytester, pg_server.url())
    assert result.ret == 1, output(result)
    result.stdout.fnmatch_lines([f"  - table tags: {IN_MODELS}"])
    name, _ = migrated(pytester)
    result.stderr.fnmatch_lines([f"*migrated {name} on 127.0.0.1:{pg_server.port} *"])
    assert SUPERUSER_PASSWORD not in output(result)
    assert pg_server.databases() == before


def test_the_driver_setting_is_the_runs(
    pytester: pytest.Pytester, pg_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dbguard_driver (or DBGUARD_DRIVER): env.py's settings get the URL with the driver a run
    gives the tests, not the first one installed."""
    ini = (
        "dbguard_alembic_ini = alembic.ini\ndbguard_metadata = models:Base\n"
        "dbguard_driver = psycopg2\ndbguard_env =\n    DATABASE_URL={url}\n"
    )
    env_py = ENV_PY_OWN_ENGINE.replace(
        "engine = create_engine(",
        "open('driver.txt', 'a').write(os.environ['DATABASE_URL'].split(':')[0] + '\\n')\n"
        "engine = create_engine(",
    )
    project(pytester, env_py=env_py, ini=ini)
    result = check_schema(pytester, pg_server.url())
    assert result.ret == 0, output(result)
    monkeypatch.setenv("DBGUARD_DRIVER", "psycopg")
    result = check_schema(pytester, pg_server.url())
    assert result.ret == 0, output(result)
    lines = (pytester.path / "driver.txt").read_text().split()
    assert lines == ["postgresql+psycopg2", "postgresql+psycopg"]  # env.py's upgrade, each run


@pytest.mark.parametrize("fail", [False, True], ids=["drift", "broken-migration"])
def test_drops_only_its_own_database(
    pytester: pytest.Pytester, pg_server: TestServer, fail: bool
) -> None:
    """Beside the check's database: the URL's own database, an unmarked look-alike and a live
    run's marked database all stay, whether the migrations fail or not."""
    others = ["app", "app_dbg_0badcafe_gw0", "app_dbg_0badcafe_gw1"]
    for name in others:
        pg_server.sql(f"CREATE DATABASE {name}")
    pg_server.sql(f"COMMENT ON DATABASE app_dbg_0badcafe_gw1 IS '{mark_text('0badcafe', 'gw1')}'")
    try:
        project(pytester, models=MODELS + TAGS, fail=fail)
        result = check_schema(pytester, pg_server.url("app"))
        assert result.ret == 1, output(result)
        name, comment = migrated(pytester)
        assert name.startswith("app_dbg_") and name.endswith("_check")
        assert parse_mark(comment) is not None
        result.stderr.fnmatch_lines([f"*dropped {name}"])
        if fail:
            result.stderr.fnmatch_lines(["*RuntimeError: revision 0002 is broken*"])
            assert "no test ran" not in output(result)  # a run's words; the command runs none
        else:
            result.stdout.fnmatch_lines([f"  - table tags: {IN_MODELS}"])
        databases = pg_server.databases()
        assert name not in databases
        assert set(others) <= set(databases)
    finally:
        for name in others:
            pg_server.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# At run start: ini dbguard_check_schema (and its --dbguard-check-schema twin).
WITH_CHECK = "dbguard_alembic_ini = alembic.ini\ndbguard_metadata = models:Base\n"


@pytest.mark.needs_xdist
@pytest.mark.parametrize(
    ("args", "ini"),
    [
        pytest.param((), WITH_CHECK + "dbguard_check_schema = error\n", id="ini"),
        pytest.param(("--dbguard-check-schema", "error"), WITH_CHECK, id="flag"),
    ],
)
def test_error_mode_stops_an_xdist_run_once(
    pytester: pytest.Pytester, on_server: list[str], args: tuple[str, ...], ini: str
) -> None:
    project(pytester, models=ALL_DRIFTS, ini=ini)
    pytester.makepyfile(TESTS)
    result = run_dbguard(pytester, *on_server, "-n", "2", *args, inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output(result)
    assert output(result).count("schema drift: the database") == 1
    result.stderr.fnmatch_lines(
        [
            f"ERROR: {HEADLINE}4 places:",
            f"  - table tags: {IN_MODELS}",
            "*The check ran because * = 'error'; 'warn' reports it and runs the tests*",
        ]
    )
    assert not list(pytester.path.glob("ran-*"))


@pytest.mark.parametrize(
    "xdist", [False, pytest.param(True, marks=pytest.mark.needs_xdist)], ids=["serial", "n2"]
)
def test_warn_mode_reports_and_runs_the_tests(
    pytester: pytest.Pytester, on_server: list[str], xdist: bool
) -> None:
    project(pytester, models=MODELS + TAGS, ini=WITH_CHECK + "dbguard_check_schema = warn\n")
    pytester.makepyfile(TESTS)
    args = ("-n", "2") if xdist else ()
    result = run_dbguard(pytester, *on_server, *args, inprocess=True)
    result.assert_outcomes(passed=1, warnings=2 if xdist else 1)
    result.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            f"*tox.ini:4: SchemaDriftWarning: {HEADLINE}1 place:",
            f"    - table tags: {IN_MODELS}",
        ]
    )
    assert output(result).count("schema drift: the database") == 1


def test_off_by_default_and_both_keys_build_with_alembic(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """With both keys and no check, alembic builds the schema (the metadata is only the check's
    reference): the test sees the migrations' tables, not the models' extra one."""
    project(pytester, models=MODELS + TAGS)
    pytester.makepyfile(
        """
        from sqlalchemy import inspect

        def test_migrated(dbguard_connection):
            tables = set(inspect(dbguard_connection).get_table_names())
            assert tables == {"alembic_version", "users", "notes"}
        """
    )
    result = run_dbguard(pytester, *on_server, "-v", inprocess=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dbguard: *alembic alembic.ini*"])
    assert "schema drift" not in output(result)


EMPTY_BASE = """
from sqlalchemy.orm import DeclarativeBase

class Base(DeclarativeBase):
    pass
"""


def test_a_base_whose_models_were_not_imported_is_said_so(pytester: pytest.Pytester) -> None:
    """``dbguard_metadata`` names the module of the Base, not of the models: its metadata is
    empty, and every migrated table came out as drift, with the advice to write a migration."""
    project(pytester, ini="dbguard_alembic_ini = alembic.ini\ndbguard_metadata = base:Base\n")
    (pytester.path / "base.py").write_text(EMPTY_BASE)
    result = check_schema(pytester)
    assert result.ret == 2, output(result)
    result.stderr.fnmatch_lines(
        [
            "dbguard check-schema: ini dbguard_metadata in tox.ini = 'base:Base' holds no table*"
            "the modules that define them were not imported*"
        ]
    )
    assert "schema drift" not in output(result)
    assert not (pytester.path / "migrated.txt").exists()  # nothing was started or migrated


@pytest.mark.parametrize(
    ("spec", "cause"),
    [
        pytest.param("model:Base", "importing 'model' failed: ModuleNotFoundError", id="module"),
        pytest.param("models:Bsae", "module 'models' has no attribute 'Bsae'", id="attribute"),
    ],
)
@pytest.mark.parametrize(
    "workers", [(), pytest.param(("-n", "2"), marks=pytest.mark.needs_xdist)], ids=["serial", "n2"]
)
def test_with_both_keys_a_metadata_that_does_not_import_stops_the_run(
    pytester: pytest.Pytester,
    on_server: list[str],
    spec: str,
    cause: str,
    workers: tuple[str, ...],
) -> None:
    """Alembic builds and the check is off, so nothing needed the metadata: a typo in it passed
    unnoticed. It stops the run before any test, its cause printed once under -n 2 too."""
    project(pytester, ini=f"dbguard_alembic_ini = alembic.ini\ndbguard_metadata = {spec}\n")
    pytester.makepyfile(TESTS)
    result = run_dbguard(pytester, *on_server, *workers, inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output(result)
    assert output(result).count(f"ini dbguard_metadata in tox.ini = {spec!r}: {cause}") == 1
    assert " passed" not in output(result)
    assert not list(pytester.path.glob("ran-*"))


@pytest.mark.parametrize("missing", ["dbguard_metadata", "dbguard_alembic_ini"])
def test_check_at_start_needs_both_keys(pytester: pytest.Pytester, missing: str) -> None:
    ini = "".join(line + "\n" for line in WITH_CHECK.splitlines() if not line.startswith(missing))
    project(pytester, ini=ini + "dbguard_check_schema = warn\n")
    pytester.makepyfile(TESTS)
    result = run_dbguard(pytester, inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output(result)
    result.stderr.fnmatch_lines(
        [f"ERROR: ini dbguard_check_schema in tox.ini = 'warn' *, but {missing} is not set.*"]
    )


def test_readme_example(pytester: pytest.Pytester) -> None:
    """The README's ini block and command, on its app, print what the README shows."""
    (ini,) = blocks("Schema drift check", "ini")
    (command,) = blocks("Schema drift check", "bash")
    (shown,) = blocks("Schema drift check", "")
    project(pytester, models="")
    (pytester.path / "app").mkdir()
    (pytester.path / "app" / "__init__.py").write_text("")
    (pytester.path / "app" / "models.py").write_text(ALL_DRIFTS)
    pytester.makefile(".ini", pytest=ini)  # found before the tox.ini project() wrote
    program, *args = shlex.split(command, comments=True)
    assert program == "dbguard"
    result = pytester.run(sys.executable, "-m", "pytest_dbguard", *args, timeout=120)
    assert result.ret == 1, output(result)
    pytest.LineMatcher(result.stdout.lines + result.stderr.lines).fnmatch_lines(as_shown(shown))
    # The same ini in a pytest run: error mode stops it before any test.
    pytester.makepyfile(TESTS)
    run = pytester.runpytest_subprocess(timeout=300)
    assert run.ret == pytest.ExitCode.USAGE_ERROR, output(run)
    run.stderr.fnmatch_lines(["ERROR: schema drift: *(app.models:Base) differ in 4 places:"])


# env.py that leaves a table to another tool (mealie's, PostGIS's spatial_ref_sys): autogenerate,
# and so the drift check, must not count it.
ENV_PY_INCLUDE_OBJECT = """
from alembic import context


def include_object(obj, name, type_, reflected, compare_to):
    return not (type_ == "table" and name == "audit_log")


context.configure(
    connection=context.config.attributes["connection"], include_object=include_object
)
with context.begin_transaction():
    context.run_migrations()
"""
AUDIT_LOG_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

def upgrade():
    op.create_table("audit_log", sa.Column("id", sa.Integer, primary_key=True))
"""


@pytest.mark.parametrize("how", ["command", "at-start"])
def test_env_py_include_object_decides_what_counts(
    pytester: pytest.Pytester, pg_server: TestServer, how: str
) -> None:
    """The table env.py's include_object leaves out is not drift; what it keeps still is (the
    models' tags table)."""
    ini = (
        "dbguard_alembic_ini = alembic.ini\ndbguard_metadata = models:Base\n"
        "dbguard_check_schema = error\n"
    )
    project(pytester, env_py=ENV_PY_INCLUDE_OBJECT, ini=ini, models=MODELS + TAGS)
    (pytester.path / "migrations" / "versions" / "0003_audit.py").write_text(AUDIT_LOG_REVISION)
    if how == "command":
        result = check_schema(pytester, pg_server.url())
        assert result.ret == 1, output(result)
    else:
        pytester.makepyfile(test_app=TESTS)
        result = run_dbguard(pytester, "--dbguard-url", pg_server.url())
        assert result.ret == pytest.ExitCode.USAGE_ERROR, output(result)
    assert f"table tags: {IN_MODELS}" in output(result)
    assert "audit_log" not in output(result)


# Mentions config.attributes (for a setting of its own) but connects where DATABASE_URL says.
ENV_PY_ATTRIBUTES_OWN_ENGINE = ENV_PY_OWN_ENGINE.replace(
    "\nengine = ", '\nverbose = context.config.attributes.get("verbose", False)\nengine = ', 1
)
# Migrates once, then fails: the drift check's own run of env.py.
ENV_PY_FAILS_SECOND_TIME = """
import pathlib
from alembic import context

marker = pathlib.Path(context.config.config_file_name).with_name("env-ran")
if marker.exists():
    raise RuntimeError("env.py ran twice")
marker.touch()
context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
"""


def test_an_env_py_with_its_own_engine_is_compared_without_it(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """env.py reads config.attributes but configures its own connection: the comparison runs on
    dbguard's connection without env.py's options, never on the one env.py opened."""
    ini = (
        "dbguard_alembic_ini = alembic.ini\ndbguard_metadata = models:Base\n"
        "dbguard_env =\n    DATABASE_URL={url}\n"
    )
    project(pytester, env_py=ENV_PY_ATTRIBUTES_OWN_ENGINE, ini=ini, models=MODELS + TAGS)
    result = check_schema(pytester, pg_server.url())
    assert result.ret == 1, output(result)
    result.stdout.fnmatch_lines([HEADLINE.replace("*", "1 place:"), f"  - table tags: {IN_MODELS}"])


# users.pinned_note_id -> notes.id and notes.user_id -> users.id: a cycle, which SQLAlchemy
# cannot sort (it warns, SAWarning); the migrations add the second key afterwards.
CYCLE_MODELS = MODELS.replace(
    "    email: Mapped[str] = mapped_column(String(200), index=True, unique=True)\n",
    "    email: Mapped[str] = mapped_column(String(200), index=True, unique=True)\n"
    '    pinned_note_id: Mapped[int | None] = mapped_column(ForeignKey("notes.id"))\n',
)
CYCLE_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

def upgrade():
    op.add_column("users", sa.Column("pinned_note_id", sa.Integer, nullable=True))
    op.create_foreign_key(None, "users", "notes", ["pinned_note_id"], ["id"])
"""


@pytest.mark.parametrize(
    "env_py",
    [ENV_PY_TAKES_CONNECTION, ENV_PY_OWN_ENGINE],
    ids=["given-connection", "own-engine"],
)
def test_foreign_keys_in_a_cycle_are_no_drift_under_filterwarnings_error(
    pytester: pytest.Pytester, pg_server: TestServer, env_py: str
) -> None:
    """The comparison sorts the models' tables, and SQLAlchemy warns on a cycle: under
    filterwarnings = error that was an INTERNALERROR (own engine) or "env.py failed" (given
    connection), with nothing wrong in the schema (polar). The command prints no warning."""
    ini = WITH_CHECK + "dbguard_check_schema = error\nfilterwarnings = error\n"
    ini += "dbguard_env =\n    DATABASE_URL={url}\n"
    project(pytester, models=CYCLE_MODELS, env_py=env_py, ini=ini)
    (pytester.path / "migrations" / "versions" / "0003_pin.py").write_text(CYCLE_REVISION)
    pytester.makepyfile(TESTS)
    result = run_dbguard(pytester, "--dbguard-url", pg_server.url())
    result.assert_outcomes(passed=1)
    assert "schema drift" not in output(result) and "SAWarning" not in output(result)
    command = check_schema(pytester, pg_server.url())
    assert command.ret == 0, output(command)
    assert "no schema drift" in command.stdout.str()
    assert "SAWarning" not in output(command)


def test_env_py_failing_in_the_comparison_is_one_clear_error(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """The drift check's run of env.py raising: a usage error that names env.py, not an
    INTERNALERROR."""
    ini = (
        "dbguard_alembic_ini = alembic.ini\ndbguard_metadata = models:Base\n"
        "dbguard_check_schema = error\n"
    )
    project(pytester, env_py=ENV_PY_FAILS_SECOND_TIME, ini=ini)
    pytester.makepyfile(test_app=TESTS)
    result = run_dbguard(pytester, "--dbguard-url", pg_server.url())
    text = output(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    assert "INTERNALERROR" not in text
    assert text.count("The schema drift check runs") == 1
    assert "RuntimeError: env.py ran twice" in text and "env.py:" in text
    assert SUPERUSER_PASSWORD not in text
