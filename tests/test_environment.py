"""The early environment: values exported before any conftest, dbguard_env, guards, prefixes."""

from __future__ import annotations

import textwrap

import pytest

from tests.helpers import WORKERS, run_dbguard, run_dbguard_inprocess, stopped_once
from tests.pgserver import SUPERUSER_PASSWORD

SETTINGS = """
    import os
    table_prefix = os.environ.get("DB_TABLE_PREFIX", "storage_elem_01")
"""
MODELS = """
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
    from app import settings

    class Base(DeclarativeBase):
        pass

    class Wal(Base):
        __tablename__ = f"{settings.table_prefix}_wal"
        id: Mapped[int] = mapped_column(primary_key=True)
"""
TOP_LEVEL_IMPORT_CONFTEST = "from app.models import Wal  # imported when pytest loads this file\n"
USES_TABLE = """
    from sqlalchemy import select, func

    def test_table_found(dbguard_session):
        from app.models import Wal
        assert Wal.__tablename__.startswith("test_storage")
        dbguard_session.add(Wal())
        dbguard_session.commit()
        assert dbguard_session.scalar(select(func.count()).select_from(Wal)) == 1
"""
INI = """
[pytest]
dbguard_metadata = app.models:Base
dbguard_env =
    DB_TABLE_PREFIX=test_storage_{worker}
dbguard_guard_modules = app.settings
"""


def _app(pytester: pytest.Pytester) -> None:
    pytester.mkpydir("app")
    pytester.makepyfile(**{"app/settings": SETTINGS, "app/models": MODELS})
    pytester.makeini(INI)


def test_p_activation_with_top_level_model_import_in_conftest(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    _app(pytester)
    pytester.makeconftest(TOP_LEVEL_IMPORT_CONFTEST)
    pytester.makepyfile(test_wal=USES_TABLE)
    run_dbguard(pytester, *on_server).assert_outcomes(passed=1)


def test_conftest_opt_in_with_top_level_import_is_stopped(pytester: pytest.Pytester) -> None:
    _app(pytester)
    pytester.makeconftest('pytest_plugins = ["pytest_dbguard"]\n' + TOP_LEVEL_IMPORT_CONFTEST)
    pytester.makepyfile(test_wal=USES_TABLE)
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*app.settings was imported before pytest-dbguard set the test environment*DB_TABLE_PREFIX*"
            "Fix: enable it on the command line instead: `pytest -p pytest_dbguard`*"
        ]
    )
    assert "passed" not in result.stdout.str()
    assert "does not exist" not in result.stdout.str() + result.stderr.str()


def test_conftest_opt_in_without_guard_reports_the_unprefixed_table(
    pytester: pytest.Pytester,
) -> None:
    """Without dbguard_guard_modules the prefix check still stops the run before any test."""
    _app(pytester)
    pytester.makeini(INI.replace("dbguard_guard_modules = app.settings\n", ""))
    pytester.makeconftest('pytest_plugins = ["pytest_dbguard"]\n' + TOP_LEVEL_IMPORT_CONFTEST)
    pytester.makepyfile(test_wal=USES_TABLE)
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*Tables storage_elem_01_wal do not carry DB_TABLE_PREFIX='test_storage_main'*"]
    )


def test_conftest_opt_in_with_imports_inside_tests(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    _app(pytester)
    pytester.makeini(INI.replace("dbguard_metadata = app.models:Base\n", ""))
    pytester.makeconftest('pytest_plugins = ["pytest_dbguard"]\n')
    pytester.makepyfile(
        test_wal="""
        import os

        def test_prefix_set_before_import():
            from app import settings
            assert settings.table_prefix == "test_storage_main"
            assert os.environ["DBGUARD_DB"].endswith("_main")
        """
    )
    pytester.runpytest_subprocess(*on_server).assert_outcomes(passed=1)


@pytest.mark.needs_xdist
def test_per_worker_prefix_under_xdist(pytester: pytest.Pytester) -> None:
    _app(pytester)
    pytester.makeconftest(TOP_LEVEL_IMPORT_CONFTEST)
    pytester.makepyfile(
        test_wal="""
        import os
        import pytest
        from sqlalchemy import inspect

        @pytest.mark.parametrize("n", range(6))
        def test_own_tables(dbguard_engine, n):
            worker = os.environ["DBGUARD_WORKER"]
            assert worker.startswith("gw")
            assert inspect(dbguard_engine).get_table_names() == [f"test_storage_{worker}_wal"]
        """
    )
    result = run_dbguard(pytester, "-n", "2")
    result.assert_outcomes(passed=6)


@pytest.mark.needs_pytest_env
@pytest.mark.parametrize(
    "xdist", [False, pytest.param(True, marks=pytest.mark.needs_xdist)], ids=["serial", "n2"]
)
def test_pytest_env_entries_see_dbguard_values(pytester: pytest.Pytester, xdist: bool) -> None:
    pytester.makeini(
        """
        [pytest]
        env =
            APP_PREFIX=test_{DBGUARD_WORKER}
            APP_DB={DBGUARD_DB}
        """
    )
    pytester.makeconftest("import os\nPREFIX_AT_IMPORT = os.environ['APP_PREFIX']\n")
    pytester.makepyfile(
        """
        import os
        import pytest
        import conftest

        @pytest.mark.parametrize("n", range(4))
        def test_env(n):
            worker = os.environ["DBGUARD_WORKER"]
            assert conftest.PREFIX_AT_IMPORT == f"test_{worker}"
            assert os.environ["APP_DB"] == os.environ["DBGUARD_DB"]
        """
    )
    args = ["--dbguard-url", "sqlite"] + (["-n", "2"] if xdist else [])
    result = run_dbguard(pytester, *args, plugins=("pytest_env.plugin",))
    result.assert_outcomes(passed=4)


def test_every_placeholder(pytester: pytest.Pytester, on_server: list[str]) -> None:
    pytester.makeini(
        """
        [pytest]
        dbguard_env =
            X_WORKER={worker}
            X_RUN={run}
            X_URL={url}
            X_ASYNC={async_url}
            X_DB={db}
            X_PARTS={user}@{host}:{port}/{db} pw=[{password}]
            X_BRACES={{literal}}
        """
    )
    pytester.makepyfile(
        """
        import os
        from sqlalchemy import make_url

        def test_values(dbguard_url):
            env = os.environ
            assert env["X_WORKER"] == env["DBGUARD_WORKER"] == "main"
            assert env["X_RUN"] == env["DBGUARD_RUN"] and len(env["X_RUN"]) == 8
            assert env["X_URL"] == env["DBGUARD_URL"] == dbguard_url
            assert env["X_ASYNC"] == env["DBGUARD_ASYNC_URL"]
            assert env["X_ASYNC"].split("://")[0] in ("postgresql+asyncpg", "postgresql+psycopg")
            assert env["X_DB"] == env["DBGUARD_DB"] and env["X_DB"].endswith("_main")
            url = make_url(dbguard_url)
            assert env["X_PARTS"] == f"postgres@127.0.0.1:{url.port}/{env['X_DB']} pw=[{url.password}]"
            assert env["X_BRACES"] == "{literal}"
        """
    )
    run_dbguard(pytester, *on_server, inprocess=True).assert_outcomes(passed=1)


@pytest.mark.parametrize(
    "line, pattern",
    [
        pytest.param(
            "DB_TABLE_PREFIX=test_{wroker}",
            "*unknown placeholder {wroker}*valid placeholders: {worker}, {run}*",
            id="misspelled-placeholder",
        ),
        pytest.param(
            "DB_TABLE_PREFIX test",
            "*'DB_TABLE_PREFIX test' is not a NAME=VALUE line*'DATABASE_URL={pg_url}' (Django*",
            id="no-equals",
        ),
        pytest.param(
            "PREFIX=test_{worker", "*PREFIX=test_{worker*literal brace*", id="unclosed-brace"
        ),
    ],
)
def test_bad_env_lines(pytester: pytest.Pytester, line: str, pattern: str) -> None:
    pytester.makeini(f"[pytest]\ndbguard_env =\n    {line}\n")
    pytester.makepyfile("def test_x(): pass")
    result = run_dbguard_inprocess(pytester, "--dbguard-url", "sqlite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*ini dbguard_env in tox.ini: *{pattern.lstrip('*')}"])


def test_environment_is_restored_after_an_in_process_run(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndbguard_env =\n    MY_APP_URL={url}\n")
    pytester.makepyfile("def test_x(): pass")
    import os

    # Not run_inprocess, which restores the environment (and SIGTERM) itself: this run must do
    # it alone (test_sigterm checks that a nested run leaves SIGTERM as it found it).
    result = pytester.runpytest_inprocess("-p", "pytest_dbguard", "--dbguard-url", "sqlite")
    result.assert_outcomes(passed=1)
    assert "MY_APP_URL" not in os.environ and "DBGUARD_URL" not in os.environ


def test_conftest_opt_in_sets_environment_before_deeper_conftests(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """Registered from the root conftest, dbguard prepares at once: tests/conftest.py sees the values."""
    _app(pytester)
    pytester.makeconftest('pytest_plugins = ["pytest_dbguard"]\n')
    tests = pytester.mkpydir("tests")
    (tests / "conftest.py").write_text(TOP_LEVEL_IMPORT_CONFTEST)
    (tests / "test_wal.py").write_text(textwrap.dedent(USES_TABLE))
    pytester.runpytest_subprocess(*on_server, "tests").assert_outcomes(passed=1)


CONNECTS_AT_IMPORT = """
import os

import psycopg

# What an application's conftest does when it migrates or seeds at import.
psycopg.connect(os.environ["DBGUARD_URL"].replace("postgresql+psycopg", "postgresql")).close()
"""


BUILDS_IN_PYTEST_CONFIGURE = """
import os

import psycopg


def pytest_configure(config):
    # zou's conftest: the schema built (drop_all, create_all) when pytest configures.
    psycopg.connect(os.environ["DBGUARD_URL"].replace("postgresql+psycopg", "postgresql")).close()
"""


@pytest.mark.parametrize("workers", WORKERS)
def test_a_conftest_that_connects_in_pytest_configure_is_told_why(
    pytester: pytest.Pytester, on_server: list[str], workers: tuple[str, ...]
) -> None:
    """pytest reports a failed pytest_configure as an INTERNALERROR with the driver's words only:
    dbguard adds the cause and the fix after it, once (the xdist controller fails, no worker
    starts)."""
    pytester.makeconftest(BUILDS_IN_PYTEST_CONFIGURE)
    pytester.makepyfile("def test_x(): pass")
    result = run_dbguard(pytester, *workers, *on_server)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR, output
    message = (
        "dbguard: A pytest_configure hook (a conftest's or a plugin's) connected to the test "
        'database while pytest configured the run: database "'
    )
    assert output.count(message) == 1, output
    assert "let dbguard do it (ini dbguard_metadata = package.module:Base" in output
    assert SUPERUSER_PASSWORD not in output


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("server", ["external", "embedded"])
def test_a_conftest_that_connects_at_import_is_told_to_use_a_fixture(
    pytester: pytest.Pytester, on_server: list[str], server: str, workers: tuple[str, ...]
) -> None:
    """Before collection ends the test database does not exist, and the embedded server is not
    waited for yet: the driver's 'does not exist' or 'refused' from a conftest gets the cause
    and the fix, printed once."""
    pytester.makeconftest(CONNECTS_AT_IMPORT)
    pytester.makepyfile("def test_x(): pass")
    output = stopped_once(
        run_dbguard(pytester, *workers, *(on_server if server == "external" else [])),
        "connected to the test database while pytest imported it: ",
    )
    assert "Connect, migrate or seed in a fixture instead" in output
    assert "The conftest " in output
    if server == "external":
        assert 'database "' in output and '" does not exist. dbguard creates' in output
    else:
        assert "failed: Connection refused. dbguard creates" in output
