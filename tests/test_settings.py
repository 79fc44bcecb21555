"""Where settings come from (CLI > env > ini > default) and every bad input's clear error."""

from __future__ import annotations

import textwrap

import pytest

from pytest_dbguard.db.names import database_name, is_dbguard_name
from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import ConfigError
from tests.helpers import run_dbguard, run_dbguard_inprocess, stopped_once
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

SHOW_URL = """
    import os

    def test_show(dbguard_url):
        print("URL-IS", os.environ["DBGUARD_URL"].split("://")[0], os.environ["DBGUARD_DB"])
"""


@pytest.mark.parametrize(
    "flag, env, ini, expected",
    [
        pytest.param("sqlite", "pg", "pg", "sqlite", id="flag-wins"),
        pytest.param(None, "sqlite", "pg", "sqlite", id="env-beats-ini"),
        pytest.param(None, None, "sqlite", "sqlite", id="ini-used"),
        pytest.param(None, "pg", "sqlite", "postgresql+psycopg", id="env-pg-beats-ini"),
        pytest.param("pg", "sqlite", "sqlite", "postgresql+psycopg", id="flag-pg-wins"),
    ],
)
def test_url_precedence(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    pg_server: TestServer,
    flag: str | None,
    env: str | None,
    ini: str | None,
    expected: str,
) -> None:
    def value(which: str | None) -> str | None:
        return pg_server.url() if which == "pg" else which

    pytester.makepyfile(SHOW_URL)
    if ini:
        pytester.makeini(f"[pytest]\ndbguard_url = {value(ini)}\n")
    if env:
        monkeypatch.setenv("DBGUARD_URL", value(env) or "")
    args = ["-s"] + (["--dbguard-url", value(flag) or ""] if flag else [])
    result = run_dbguard(pytester, *args, inprocess=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*URL-IS {expected} *_dbg_*_main*"])
    assert SUPERUSER_PASSWORD not in result.stdout.str() + result.stderr.str()


def test_external_server_password_never_printed(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    pytester.makepyfile(
        """
        def test_fails(dbguard_url, dbguard_engine):
            assert dbguard_engine.url.database.endswith("_main")
            raise AssertionError("failing on purpose")
        """
    )
    result = run_dbguard(pytester, "--dbguard-url", pg_server.url(), "-v", "-rA", inprocess=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["dbguard: postgresql+psycopg://postgres:***@127.0.0.1:*/postgres (PostgreSQL 15*"]
    )
    assert SUPERUSER_PASSWORD not in result.stdout.str() + result.stderr.str()


def _usage_error(result: pytest.RunResult, *patterns: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(list(patterns))
    assert SUPERUSER_PASSWORD not in result.stdout.str() + result.stderr.str()
    assert " passed" not in result.stdout.str()


@pytest.mark.parametrize(
    "where",
    [pytest.param("flag", id="flag"), pytest.param("env", id="env"), pytest.param("ini", id="ini")],
)
@pytest.mark.parametrize(
    "url, pattern",
    [
        pytest.param("not a url", "*'not a url' is not a database URL*", id="malformed"),
        pytest.param(
            "postgresql+pgfast://u:pw@h/db",
            "*unknown driver 'pgfast'*psycopg*",
            id="unknown-driver",
        ),
        pytest.param(
            "mysql://u@h/db",
            "*names the database 'mysql'*supports postgresql, sqlite*",
            id="unknown-db",
        ),
        pytest.param("postgresql://u:pw@h:99999/db", "*port '99999'*1 to 65535*", id="bad-port"),
        pytest.param(
            "postgresql://u:Tail-0f@Pw@127.0.0.1:5432/db",
            "*'postgresql://u:***@127.0.0.1:5432/db' has more than one '@'*%40*",
            id="raw-at-in-password",
        ),
        pytest.param(  # a raw '/' after the password's '@' ended the host part: port 'w'
            "postgresql://u:Pw@ss:w/rd%1@127.0.0.1:5432/db",
            "*'postgresql://u:***@127.0.0.1:5432/db' has more than one '@'*%40*",
            id="raw-at-and-slash-in-password",
        ),
        pytest.param(  # parsed as host 'Pw' and database 'x@127...': the host was its tail
            "postgresql://u:p@Pw:9/x@127.0.0.1:5432/db",
            "*'postgresql://u:***@127.0.0.1:5432/db' has more than one '@'*%40*",
            id="raw-at-then-a-port-in-password",
        ),
        pytest.param(  # no '://': masked all the same
            "u:Tail-Pw@127.0.0.1:5432/db",
            "*'u:***@127.0.0.1:5432/db' is not a database URL*",
            id="no-scheme",
        ),
        pytest.param(
            "postgresql+psycopg:/u:Tail-Pw@h/db",
            "*'postgresql+psycopg:***@h/db' is not a database URL*",
            id="one-slash",
        ),
        pytest.param(  # the '://' after the password is not the scheme's
            "postgresql:/u:Tail-Pw@h/db?application_name=http://x",
            "*'postgresql:***@h/db?application_name=http://x' is not a database URL*",
            id="one-slash-and-a-url-in-the-query",
        ),
        pytest.param(  # a password in the query string
            "postgresql://127.0.0.1:badport/db?password=Tail-Pw",
            "*'postgresql://127.0.0.1:badport/db?password=***' has the port 'badport'*",
            id="password-in-the-query",
        ),
        pytest.param(  # parses, with user:password@host as the database name
            "postgresql:///u:Tail-Pw@127.0.0.1/db",
            "*'postgresql:///u:***@127.0.0.1/db' has no host*right after '://'*",
            id="three-slashes",
        ),
        pytest.param(  # one '@', a raw '/' in the password, and a bad port: masked all the same
            "postgresql://u:Pw/x-1@h:99999/db",
            "*'postgresql://u:***@h:99999/db' has the port '99999'*",
            id="raw-slash-in-password",
        ),
    ],
)
def test_bad_url(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str, url: str, pattern: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    source = {
        "flag": "--dbguard-url",
        "env": "environment variable DBGUARD_URL",
        "ini": "ini dbguard_url",
    }[where]
    args: list[str] = []
    if where == "flag":
        args = ["--dbguard-url", url]
    elif where == "env":
        monkeypatch.setenv("DBGUARD_URL", url)
    else:
        pytester.makeini(f"[pytest]\ndbguard_url = {url}\n")
    result = run_dbguard_inprocess(pytester, *args)
    _usage_error(result, f"*{source}*{pattern.lstrip('*')}")
    output = result.stdout.str() + result.stderr.str()
    assert "Pw" not in output  # no password, nor its tail as a host, port or database


def test_empty_url_flag_is_an_error_not_the_embedded_server(pytester: pytest.Pytester) -> None:
    """`--dbguard-url "$DB"` with DB unset must not silently override the ini file's URL."""
    pytester.makepyfile("def test_x(): pass")
    pytester.makeini("[pytest]\ndbguard_url = sqlite\n")
    _usage_error(
        run_dbguard_inprocess(pytester, "--dbguard-url", ""),
        "*--dbguard-url is empty. Give a URL*'sqlite' for SQLite, or leave the flag out*",
    )


@pytest.mark.parametrize("key", ["dbguard_reuse", "dbguard_rebuild", "dbguard_keep_failed"])
def test_bad_switch_in_ini_names_key_and_file(pytester: pytest.Pytester, key: str) -> None:
    pytester.makepyfile("def test_x(): pass")
    pytester.makeini(f"[pytest]\n{key} = maybe\n")
    _usage_error(
        run_dbguard_inprocess(pytester, "--dbguard-url", "sqlite"),
        f"*ini {key} in tox.ini = 'maybe' is not a switch; use true or false*",
    )


@pytest.mark.parametrize(
    "flag, ini, pattern",
    [
        pytest.param(
            ("--dbguard-isolation", "rolback"),
            "dbguard_isolation = rolback",
            "*'rolback' is not a valid isolation; choose one of: rollback, truncate, none*",
            id="isolation",
        ),
        pytest.param(
            ("--dbguard-wait", "3O"),
            "dbguard_wait = 3O",
            "*'3O' is not a number of seconds*",
            id="wait",
        ),
        pytest.param(
            ("--dbguard-worker-isolation", "table"),
            "dbguard_worker_isolation = table",
            "*choose one of: auto, database, schema*",
            id="worker-isolation",
        ),
        pytest.param(
            ("--dbguard-naive-datetime", "loud"),
            "dbguard_naive_datetime = loud",
            "*choose one of: error, warn, off*",
            id="naive-datetime",
        ),
        pytest.param(
            ("--dbguard-proxy", "maybe"),
            "dbguard_proxy = maybe",
            "*'maybe' is not a valid proxy setting; choose one of: on, off, auto (on and off may "
            "also be written as a switch: 1/true/yes, 0/false/no).",
            id="proxy",
        ),
        pytest.param(
            ("--dbguard-driver", "mysqlclient"),
            "dbguard_driver = mysqlclient",
            "*'mysqlclient' is not a synchronous PostgreSQL driver*psycopg, psycopg2*",
            id="driver-unknown",
        ),
        pytest.param(
            ("--dbguard-driver", "pg8000"),
            "dbguard_driver = pg8000",
            "*'pg8000', but that driver is not installed here: pip install 'pg8000'*",
            id="driver-not-installed",
        ),
        pytest.param(
            ("--dbguard-leaks", "loud"),
            "dbguard_leaks = loud",
            "*'loud' is not a valid leak report setting; choose one of: warn, error, off*",
            id="leaks",
        ),
        pytest.param(
            ("--dbguard-metadata", "app.models"),
            "dbguard_metadata = app.models",
            "*'app.models' is not of the form 'package.module:attribute'*",
            id="metadata-shape",
        ),
        pytest.param(
            ("--dbguard-metadata", "app.models:Base # comment"),
            "dbguard_metadata = app.models:Base # an inline comment",
            "*is not of the form 'package.module:attribute'*",
            id="metadata-inline-comment",
        ),
    ],
)
@pytest.mark.parametrize("via", ["cli", "ini"])
def test_bad_setting_values(
    pytester: pytest.Pytester, flag: tuple[str, str], ini: str, pattern: str, via: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    if via == "ini":
        pytester.makeini(f"[pytest]\n{ini}\n")
        result = run_dbguard_inprocess(pytester, "--dbguard-url", "sqlite")
        _usage_error(result, f"*ini {ini.split(' ')[0]}*{pattern.lstrip('*')}")
    else:
        result = run_dbguard_inprocess(pytester, "--dbguard-url", "sqlite", *flag)
        _usage_error(result, f"*{flag[0]}*{pattern.lstrip('*')}")


def test_misspelled_ini_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndbguard_metadta = models:Base\n")
    pytester.makepyfile("def test_x(): pass")
    _usage_error(
        run_dbguard_inprocess(pytester, "--dbguard-url", "sqlite"),
        "*Unknown ini key 'dbguard_metadta'*Did you mean 'dbguard_metadata'?*",
    )


@pytest.mark.parametrize(
    "module_text, spec, pattern",
    [
        pytest.param(
            "x = 1",
            "nomodule:Base",
            "*importing 'nomodule' failed: ModuleNotFoundError*",
            id="missing-module",
        ),
        pytest.param(
            "raise RuntimeError('settings broken')",
            "models:Base",
            "*importing 'models' failed at *models.py:1 (raise RuntimeError('settings broken')):"
            " RuntimeError: settings broken*",
            id="module-raises",
        ),
        pytest.param(
            "x = 1\ndef broken(:\n",
            "models:Base",
            "*importing 'models' failed at *models.py:2: SyntaxError*",
            id="syntax-error",
        ),
        pytest.param(
            "x = 1",
            "models:Base",
            "*module 'models' has no attribute 'Base'; name a*",
            id="missing-attr",
        ),
        pytest.param(
            "from sqlalchemy.orm import DeclarativeBase\n\nclass Base(DeclarativeBase):\n    pass\n",
            "models:Bsae",
            "*module 'models' has no attribute 'Bsae' (did you mean 'Base'?); name a*",
            id="misspelt-attr",
        ),
        pytest.param(
            "import sqlalchemy\n\nmeta = sqlalchemy.MetaData()\nother = sqlalchemy.MetaData()\n",
            "models:Base",
            "*module 'models' has no attribute 'Base' (it has 'meta', 'other'); name a*",
            id="missing-attr-with-metadata",
        ),
        pytest.param(
            "Base = 42",
            "models:Base",
            "*is a int, not a MetaData or a declarative Base*",
            id="wrong-type",
        ),
    ],
)
def test_bad_metadata(pytester: pytest.Pytester, module_text: str, spec: str, pattern: str) -> None:
    pytester.makepyfile(models=module_text, test_x="def test_x(): pass")
    pytester.makeini(f"[pytest]\ndbguard_metadata = {spec}\n")
    _usage_error(
        run_dbguard_inprocess(pytester, "--dbguard-url", "sqlite"),
        f"*ini dbguard_metadata*{pattern.lstrip('*')}",
    )


def test_alembic_ini_missing(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndbguard_alembic_ini = migrations/alembic.ini\n")
    pytester.makepyfile("def test_x(): pass")
    _usage_error(
        run_dbguard_inprocess(pytester, "--dbguard-url", "sqlite"),
        "*dbguard_alembic_ini*'migrations/alembic.ini'*does not exist*",
    )


def test_wrong_password(pytester: pytest.Pytester, pg_server: TestServer) -> None:
    pytester.makepyfile("def test_x(dbguard_engine): pass")
    url = pg_server.url(password="Wrong-Password-Here")
    result = run_dbguard(pytester, "--dbguard-url", url, inprocess=True)
    _usage_error(result, "*127.0.0.1*failed step: authentication*The URL comes from --dbguard-url.")
    assert "Wrong-Password-Here" not in result.stdout.str() + result.stderr.str()


def test_a_server_that_never_answers_names_the_setting_of_its_url(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The readiness check gives up on the user's server: the message says which setting gave
    the URL, so CI's variable, not the ini file's line, is the one fixed."""
    from tests.pgserver import free_port

    pytester.makepyfile("def test_x(dbguard_engine): pass")
    monkeypatch.setenv("DBGUARD_URL", f"postgresql://u:Secret-Pw@127.0.0.1:{free_port()}/app")
    result = run_dbguard(pytester, "--dbguard-wait", "1", inprocess=True)
    _usage_error(
        result,
        "*failed step: TCP connect*The URL comes from environment variable DBGUARD_URL.",
    )
    assert "Secret-Pw" not in result.stdout.str() + result.stderr.str()


@pytest.mark.needs_xdist
@pytest.mark.parametrize("database", [None, "no_such_db"], ids=["wrong-password", "missing-db"])
def test_a_final_connect_failure_stops_before_xdist_starts_workers(
    pytester: pytest.Pytester, pg_server: TestServer, database: str | None
) -> None:
    # The role check (may this role create databases?) is the run's first connection: one that
    # waiting cannot fix stops the run there, printed once, instead of in each started worker.
    pytester.makepyfile("def test_x(dbguard_engine): pass")
    password = "Wrong-Password-Here" if database is None else SUPERUSER_PASSWORD
    url = pg_server.url(password=password, **({"database": database} if database else {}))
    result = run_dbguard(pytester, "-n", "2", "--dbguard-url", url)
    stage = "authentication" if database is None else "database missing"
    output = stopped_once(result, f"failed step: {stage}")
    assert "waiting does not fix this" in output
    assert "created: 2/2 workers" not in output
    assert password not in output


def test_missing_database(pytester: pytest.Pytester, pg_server: TestServer) -> None:
    pytester.makepyfile("def test_x(dbguard_engine): pass")
    result = run_dbguard(
        pytester, "--dbguard-url", pg_server.url(database="no_such_db"), inprocess=True
    )
    _usage_error(result, "*no_such_db*failed step: database missing*")


@pytest.mark.parametrize(
    "xdist", [(), pytest.param(("-n", "2"), marks=pytest.mark.needs_xdist)], ids=["serial", "n2"]
)
def test_sqlalchemy_older_than_2_stops_the_run(
    pytester: pytest.Pytester, xdist: tuple[str, ...]
) -> None:
    # The SQLAlchemy that `import sqlalchemy` would load, first on sys.path (the run's folder
    # comes first): a project held on SQLAlchemy 1.4. Before, the first test that armed the
    # naive-datetime guard failed on a name SQLAlchemy 1.4 lacks and the rest ran unguarded.
    package = pytester.mkpydir("sqlalchemy")
    (package / "__init__.py").write_text('"""SQLAlchemy 1.4\'s place."""\n__version__ = "1.4.54"\n')
    pytester.makepyfile("def test_x(dbguard_engine): pass")
    result = run_dbguard(pytester, *xdist)
    output = stopped_once(result, "and SQLAlchemy 1.4.54 is installed")
    assert "pip install 'SQLAlchemy>=2.0'" in output
    assert "created: 2/2 workers" not in output  # stopped before xdist started any


def test_url_parsing_round_trip() -> None:
    url = DatabaseURL.parse("postgresql+asyncpg://me:p%40ss@db.example:6543/app?sslmode=require")
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "me",
        "p@ss",
        "db.example",
        6543,
        "app",
    )
    assert url.render() == "postgresql+asyncpg://me:***@db.example:6543/app?sslmode=require"
    assert DatabaseURL.parse(url.render(hide_password=False)) == url
    # libpq takes a password from the query string too: hidden as the user info's is
    queried = DatabaseURL.parse("postgresql://db.example/app?password=Pw%2A1&sslpassword=Key")
    assert str(queried) == "postgresql://db.example/app?password=***&sslpassword=***"
    assert DatabaseURL.parse(queried.render(hide_password=False)) == queried
    assert url.sync().driver in ("psycopg", "psycopg2")
    assert DatabaseURL.parse("postgresql+psycopg2://u@h/d").asynchronous().driver in (
        "asyncpg",
        "psycopg",
    )
    assert DatabaseURL.parse("sqlite:////tmp/x.db").database == "/tmp/x.db"
    with pytest.raises(ConfigError, match="unknown driver"):
        DatabaseURL.parse("postgresql+nope://h/d")


def test_database_names_fit_and_are_recognised() -> None:
    name = database_name("x" * 80, "abc123", "gw12")
    assert len(name.encode()) <= 63 and name.endswith("_dbg_abc123_gw12")
    assert is_dbguard_name(name)
    assert not is_dbguard_name("production")
    assert not is_dbguard_name("app_dbg_")


DRIVER_TESTS = """
    import os

    def test_driver(dbguard_engine):
        print("DRIVER", dbguard_engine.dialect.driver, os.environ["DBGUARD_URL"].split("://")[0])
        print("APP", os.environ["DATABASE_URL"].split("://")[0])
        with dbguard_engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT 1").scalar() == 1
"""


@pytest.mark.parametrize(
    "ini_driver, flag, expected",
    [
        pytest.param("psycopg2", (), "psycopg2", id="from-dbguard_env"),
        pytest.param("psycopg", (), "psycopg", id="psycopg-from-dbguard_env"),
        pytest.param("psycopg2", ("--dbguard-driver", "psycopg"), "psycopg", id="flag-wins"),
        pytest.param("asyncpg", (), "psycopg", id="async-driver-ignored"),
    ],
)
def test_driver_follows_the_projects_url_in_dbguard_env(
    pytester: pytest.Pytester, ini_driver: str, flag: tuple[str, ...], expected: str
) -> None:
    """Issue 17, item 12: a psycopg2 project's URL in dbguard_env makes dbguard use psycopg2."""
    pytester.makeini(
        "[pytest]\ndbguard_env =\n"
        f"    DATABASE_URL=postgresql+{ini_driver}://{{user}}:{{password}}@{{host}}:{{port}}/{{db}}\n"
    )
    pytester.makepyfile(test_driver=DRIVER_TESTS)
    result = run_dbguard(pytester, "-s", *flag, inprocess=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            f"dbguard: embedded PostgreSQL * ({expected})*",
            f"*DRIVER {expected} postgresql+{expected}",
        ]
    )


@pytest.mark.parametrize("ini_file", [True, False], ids=["beside-an-ini-file", "no-ini-file"])
def test_a_bad_value_given_with_o_names_o(pytester: pytest.Pytester, ini_file: bool) -> None:
    """``-o dbguard_worker_isolation=databse``: the error says where the value came from, -o, not
    the ini file (which does not hold it); as for a misspelled key given with -o."""
    if ini_file:
        pytester.makeini("[pytest]\n")
    pytester.makepyfile("def test_x(): pass")
    result = run_dbguard_inprocess(pytester, "-o", "dbguard_worker_isolation=databse")
    _usage_error(result, "*ini dbguard_worker_isolation in -o = 'databse'*")
    result = run_dbguard_inprocess(pytester, "-o", "dbguard_wrker_isolation=database")
    _usage_error(result, "*Unknown ini key 'dbguard_wrker_isolation' in -o.*")


# pytest 9 reads a [tool.pytest] table in TOML's own types; [tool.pytest.ini_options] (and
# pytest 8, which has only that) turns every value into text first.
NATIVE_TOML = pytest.mark.skipif(
    pytest.version_tuple < (9,), reason="[tool.pytest] is pytest 9's native TOML table"
)
TOML_SETTINGS = """
    dbguard_url = "sqlite"
    dbguard_wait = 2.5
    dbguard_reuse = false
    dbguard_env = ["APP_WORKER=w-{worker}"]
    dbguard_guard_modules = ["not_imported_anywhere"]
"""
READS_TOML_SETTINGS = """
    import os

    from pytest_dbguard.run.state import the_run

    def test_settings(request):
        settings = the_run(request.config).settings
        assert settings.wait == 2.5
        assert settings.reuse is False
        assert settings.guard_modules == ("not_imported_anywhere",)
        assert os.environ["APP_WORKER"] == "w-main"
"""


@pytest.mark.parametrize(
    "table",
    ["tool.pytest.ini_options", pytest.param("tool.pytest", marks=NATIVE_TOML)],
)
def test_pyproject_toml_values_in_toml_types(pytester: pytest.Pytester, table: str) -> None:
    """A number where dbguard keeps text (``dbguard_wait = 2.5``), TOML booleans and lists: as
    TOML users write them, in either table. In pytest 9's ``[tool.pytest]`` the number was a
    traceback (pytest 9.1) or "is not a switch" (9.2)."""
    pytester.makepyprojecttoml(f"[{table}]\n" + textwrap.dedent(TOML_SETTINGS))
    pytester.makepyfile(READS_TOML_SETTINGS)
    run_dbguard_inprocess(pytester).assert_outcomes(passed=1)


@NATIVE_TOML
@pytest.mark.parametrize(
    "line, pattern",
    [
        pytest.param(
            'dbguard_env = "DATABASE_URL={pg_url}"',
            '*ini dbguard_env in pyproject.toml = "DATABASE_URL={pg_url}": [[]tool.pytest[]] keeps'
            ' TOML\'s types; write a list of strings: dbguard_env = [[]"DATABASE_URL={pg_url}"[]].',
            id="linelist-as-a-string",
        ),
        pytest.param(
            "dbguard_django_databases = \"default 'my replica'\"",
            '*write a list of strings: dbguard_django_databases = [[]"default", "my replica"[]].',
            id="args-as-a-string",
        ),
        pytest.param(
            'dbguard_env = [["A=1"]]',
            '*ini dbguard_env in pyproject.toml = [[][[]"A=1"[]][]]: *write a list of strings:'
            ' dbguard_env = [[]"...", "..."[]].',
            id="nested-list",
        ),
        pytest.param(
            'dbguard_reuse = "true"',
            '*ini dbguard_reuse in pyproject.toml = "true": *write true or false, without quotes:'
            " dbguard_reuse = true.",
            id="quoted-bool",
        ),
        pytest.param(
            "dbguard_isolation = false",
            "*ini dbguard_isolation in pyproject.toml = false: *write a string, in quotes:"
            ' dbguard_isolation = "...".',
            id="bool-for-a-string",
        ),
    ],
)
def test_pyproject_toml_value_of_the_wrong_kind_shows_the_toml_to_write(
    pytester: pytest.Pytester, line: str, pattern: str
) -> None:
    pytester.makepyprojecttoml(f'[tool.pytest]\ndbguard_url = "sqlite"\n{line}\n')
    pytester.makepyfile("def test_x(): pass")
    _usage_error(run_dbguard_inprocess(pytester), pattern)


@NATIVE_TOML
def test_a_pytest_toml_value_of_the_wrong_kind_names_its_table(pytester: pytest.Pytester) -> None:
    """pytest.toml's table is ``[pytest]``: the message names that one, not pyproject's."""
    pytester.makefile(".toml", pytest='[pytest]\ndbguard_url = "sqlite"\ndbguard_reuse = "yes"\n')
    pytester.makepyfile("def test_x(): pass")
    _usage_error(
        run_dbguard_inprocess(pytester),
        '*ini dbguard_reuse in pytest.toml = "yes": [[]pytest[]] keeps TOML\'s types; write true or'
        " false, without quotes: dbguard_reuse = true.",
    )
