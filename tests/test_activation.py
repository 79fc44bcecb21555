"""Activation is opt-in: -p, PYTEST_PLUGINS, addopts, conftest pytest_plugins; twice is harmless."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import plugin_args, run_dbguard
from tests.pgserver import TestServer

USES_FIXTURE = """
    import os

    def test_database(dbguard_url):
        assert dbguard_url.startswith("sqlite")
        assert os.environ["DBGUARD_WORKER"] == "main"
        assert os.environ["DBGUARD_URL"] == dbguard_url
"""


def test_import_loads_no_database_machinery() -> None:
    # Every module pytest registers with the plugin: importing asyncio here would also break a
    # later `-p asyncio` (pytest cannot rewrite an already imported plugin).
    code = (
        "import importlib, sys, pytest_dbguard, pytest_dbguard.plugin as p;"
        "[importlib.import_module(name) for name in (*p.FIXTURE_PLUGINS, *p.RUN_PLUGINS)];"
        "bad = [m for m in ('sqlalchemy', 'psycopg', 'psycopg2', 'asyncpg', 'asyncio') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_installed_but_not_activated_changes_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os

        def test_no_dbguard(request):
            assert "DBGUARD_URL" not in os.environ
            assert not request.config.pluginmanager.hasplugin("pytest_dbguard")

        def test_fixture_missing(dbguard_url):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--dbguard-url", "sqlite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # the option does not even exist
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'dbguard_url' not found*"])


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("flag", id="-p"),
        pytest.param("env", id="PYTEST_PLUGINS"),
        pytest.param("addopts", id="addopts"),
        pytest.param("conftest", id="conftest-pytest_plugins"),
        pytest.param("flag+conftest", id="both"),
        # The filter imports the package to read the class, before -p names it.
        pytest.param("flag+filter", id="-p-and-a-warning-filter-on-its-class"),
    ],
)
def test_activation_paths(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # dbguard's modules are loaded by Python's import, not by pytest's assert-rewriting one, which
    # reads each module five times slower (pytest_dbguard._stop_rewriting_asserts), and without a warning.
    pytester.makepyfile(test_database=USES_FIXTURE, test_loaders=NOT_REWRITTEN)
    args: list[str] = ["--dbguard-url", "sqlite", "-W", "error::pytest.PytestAssertRewriteWarning"]
    if "flag" in how:
        args = ["-p", "pytest_dbguard", *args]
    if how == "env":
        monkeypatch.setenv("PYTEST_PLUGINS", "pytest_dbguard")
    if how == "addopts":
        pytester.makeini("[pytest]\naddopts = -p pytest_dbguard\n")
    if "conftest" in how:
        pytester.makeconftest('pytest_plugins = ["pytest_dbguard"]\n')
    if "filter" in how:
        args += ["-W", "ignore::pytest_dbguard.NaiveDatetimeWarning"]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=2)


NOT_REWRITTEN = """
    import sys

    from _pytest.assertion.rewrite import AssertionRewritingHook

    def test_dbguard_modules_are_not_rewritten():
        loaded = {name: module for name, module in sys.modules.items() if name.startswith("pytest_dbguard.")}
        assert len(loaded) > 20
        rewritten = [name for name, module in loaded.items() if isinstance(module.__loader__, AssertionRewritingHook)]
        assert rewritten == []  # the package takes itself off pytest's list before importing any
"""


FINDS_OWN_MODULES_FIRST = """
    import sys

    def test_own_modules_found_before_the_rewriting_hook(request):
        hook = request.config.pluginmanager.rewrite_hook  # this run's (pytester's outer run has one too)
        place = next(i for i, finder in enumerate(sys.meta_path) if finder is hook)
        assert place > 0
        assert type(sys.meta_path[place - 1]).__name__ == "_OwnModulesFinder"
"""


def test_own_modules_skip_the_rewriting_hook_for_the_run_only(pytester: pytest.Pytester) -> None:
    """dbguard's modules are found ahead of pytest's rewriting hook, which would only decide not
    to rewrite them (its check costs each import); the finder goes when the run ends, as the
    hook does, so an in-process run leaves ``sys.meta_path`` as it found it."""
    pytester.makepyfile(FINDS_OWN_MODULES_FIRST)
    before = list(sys.meta_path)
    for _ in range(2):  # a second run in the same process adds no second finder
        pytester.runpytest_inprocess(
            "-p", "pytest_dbguard", "--dbguard-url", "sqlite"
        ).assert_outcomes(passed=1)
        assert sys.meta_path == before


def test_plain_asserts_need_no_finder(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_no_finder():
            assert "_OwnModulesFinder" not in [type(finder).__name__ for finder in sys.meta_path]
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "pytest_dbguard", "--dbguard-url", "sqlite", "--assert=plain"
    )
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("blocked", ["pytest_dbguard", "dbguard"])
def test_p_no_switches_off_what_addopts_activates(pytester: pytest.Pytester, blocked: str) -> None:
    """``-p no:pytest_dbguard`` after an addopts' ``-p pytest_dbguard``, as for any plugin: no
    environment, no fixture, no header; it only unregistered the package, and the module of
    hooks that the package had registered went on serving the run."""
    pytester.makeini("[pytest]\naddopts = -p pytest_dbguard\ndbguard_url = sqlite\n")
    pytester.makepyfile(
        """
        import os

        def test_no_environment():
            assert "DBGUARD_URL" not in os.environ

        def test_no_fixture(dbguard_session):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", f"no:{blocked}")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'dbguard_session' not found*"])
    result.stdout.no_fnmatch_line("dbguard: *")
    on = pytester.runpytest_subprocess()  # the same project, dbguard on
    on.assert_outcomes(passed=1, failed=1)


def test_tox_style_command_with_posargs(pytester: pytest.Pytester) -> None:
    """tox runs `pytest -p pytest_dbguard {posargs}`; extra flags after it work as usual."""
    pytester.makepyfile(USES_FIXTURE)
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", "-v", "-k", "database")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dbguard: SQLite files in *", "*test_database PASSED*"])


# Imported only by the runs that use them (each costs every run 1-15M instructions to import).
ONLY_WHEN_USED = (
    "pytest_dbguard.faults.injector",  # a test that asks for dbguard_faults
    "pytest_dbguard.faults.recovery",
    "pytest_dbguard.server.readiness",  # a run that connects to PostgreSQL
    "pytest_dbguard.run.report_recorder",  # --dbguard-report
    "pytest_dbguard.guards.statement_timing",
    "pytest_dbguard.db.truncation",  # a truncate test, or a failed test's rows to keep
    "pytest_dbguard.db.kept_failed",
)
RECORD_MODULES = """
    import json, sys

    def pytest_unconfigure(config):
        loaded = sorted(name for name in sys.modules if name.startswith("pytest_dbguard"))
        with open("loaded.json", "w") as file:
            json.dump(loaded, file)
"""


@pytest.mark.parametrize(
    ("args", "uses_faults", "expected_loaded"),
    [
        pytest.param(("--collect-only",), False, (), id="collect-only"),
        pytest.param((), False, (), id="plain-run"),
        pytest.param(
            (),
            True,
            (
                "pytest_dbguard.faults.injector",
                "pytest_dbguard.faults.recovery",
                "pytest_dbguard.server.readiness",
            ),
            id="faults-run",
        ),
    ],
)
def test_a_run_imports_only_what_it_uses(
    pytester: pytest.Pytester,
    args: tuple[str, ...],
    uses_faults: bool,
    expected_loaded: tuple[str, ...],
) -> None:
    import json

    pytester.makeconftest(RECORD_MODULES)
    fixture = "dbguard_faults" if uses_faults else "dbguard_url"
    pytester.makepyfile(f"def test_one({fixture}):\n    assert {fixture} is not None\n")
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", *args)
    assert result.ret == 0, result.stdout.str()
    loaded = json.loads((pytester.path / "loaded.json").read_text())
    assert "pytest_dbguard.db.isolation" in loaded  # the record is of a real dbguard run
    assert [name for name in ONLY_WHEN_USED if name in loaded] == list(expected_loaded)
    if not args:  # a run that runs tests imports what a command that only shows does not
        # On SQLite no server starts; the faults fixture's probe is the readiness module's.
        not_used = ["pytest_dbguard.server.cluster_start"]
        if not uses_faults:
            not_used.append("pytest_dbguard.server.readiness")
        assert [name for name in RUN_ONLY if name not in loaded] == not_used


# What only a run that runs tests imports: a command that only shows something imports the
# settings, the environment and the fixtures' thin modules (benchmarks/ci_path.py, part 4).
RUN_ONLY = (
    "pytest_dbguard.run.lifecycle",
    "pytest_dbguard.run.phases",
    "pytest_dbguard.db.databases",
    "pytest_dbguard.db.janitor",
    "pytest_dbguard.db.maintenance",
    "pytest_dbguard.db.engines",
    "pytest_dbguard.db.schema",
    "pytest_dbguard.guards.hooks",
    "pytest_dbguard.guards.connection_guards",
    "pytest_dbguard.guards.naive_datetimes",
    "pytest_dbguard.faults.restart_fence",
    "pytest_dbguard.server.cluster_start",
    "pytest_dbguard.server.readiness",
)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("--collect-only",), id="collect-only"),
        pytest.param(("--fixtures",), id="fixtures"),
        pytest.param(("--markers",), id="markers"),
        pytest.param(("--help",), id="help"),
    ],
)
def test_a_command_that_only_shows_imports_no_run_machinery(
    pytester: pytest.Pytester, command: tuple[str, ...]
) -> None:
    import json

    pytester.makeconftest(RECORD_MODULES)
    pytester.makepyfile("def test_one(dbguard_session):\n    assert dbguard_session\n")
    result = run_dbguard(pytester, *command)  # the embedded default: nothing may start
    assert result.ret == 0, result.stdout.str()
    loaded = json.loads((pytester.path / "loaded.json").read_text())
    assert "pytest_dbguard.run.environment" in loaded  # the record is of a run with dbguard active
    assert [name for name in RUN_ONLY if name in loaded] == []
    # --help and --markers collect nothing: not even the fixtures' modules are imported.
    fixtures_loaded = "pytest_dbguard.db.fixtures" in loaded
    assert fixtures_loaded == (command[0] in ("--collect-only", "--fixtures"))


REACHES_AT_SESSIONFINISH = """
    import os

    import sqlalchemy

    def pytest_sessionfinish(session):
        engine = sqlalchemy.create_engine(os.environ["DBGUARD_URL"], poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as connection:
            print("REACHED", connection.exec_driver_sql("SELECT current_database()").scalar())
"""


@pytest.mark.parametrize("how", ["flag", "conftest"], ids=["-p", "conftest-pytest_plugins"])
def test_a_conftests_sessionfinish_still_reaches_the_test_database(
    pytester: pytest.Pytester, pg_server: TestServer, on_server: list[str], how: str
) -> None:
    # On an external server dbguard drops the worker's database at the session's end: after
    # every other sessionfinish hook, however dbguard was activated.
    conftest = REACHES_AT_SESSIONFINISH
    if how == "conftest":
        conftest = 'pytest_plugins = ["pytest_dbguard"]\n' + textwrap.dedent(conftest)
    pytester.makeconftest(conftest)
    pytester.makepyfile("def test_x(dbguard_engine): pass")
    args = [*on_server, "-s"]
    if how == "flag":
        result = run_dbguard(pytester, *args)
    else:
        result = pytester.runpytest_subprocess(*args, timeout=300)
    result.assert_outcomes(passed=1)
    reached = re.findall(r"REACHED (\S+)", result.stdout.str())  # printed after the test's dot
    assert len(reached) == 1 and "_dbg_" in reached[0], result.outlines
    listed = pg_server.sql(f"SELECT count(*) FROM pg_database WHERE datname = '{reached[0]}'")
    assert listed.stdout.strip() == "0"  # and dropped after it


EARLY_SETTINGS = """
import os

DATABASE = os.environ.get("APP_DATABASE", "sqlite://")  # the app's fallback without the variable
"""
EARLY_TEST = """
import os

from app import settings


def test_the_app_reads_the_test_database():
    assert os.environ["APP_DATABASE"] == os.environ["DBGUARD_URL"]
    print("the app reads the test database:", settings.DATABASE == os.environ["DBGUARD_URL"])
"""


@pytest.mark.parametrize(
    ("where", "args"),
    [
        pytest.param("top", (), id="top"),
        pytest.param("top", ("-n", "2"), id="top-n2", marks=pytest.mark.needs_xdist),
        pytest.param("fixture", (), id="fixture"),
    ],
)
def test_the_conftest_opt_in_names_project_modules_imported_before_it(
    pytester: pytest.Pytester, where: str, args: tuple[str, ...]
) -> None:
    """``pytest_plugins`` in a conftest that imports the app's settings at its top: they read
    the environment before dbguard set it, and the app ran on its fallback with every test
    green (sqladmin's on SQLite). A warning names the module and the fix, once under xdist; not
    the tests package pytest itself imported to load the conftest. Imported inside a fixture,
    the settings read the test environment and nothing is said."""
    pytester.mkpydir("app").joinpath("settings.py").write_text(EARLY_SETTINGS)
    tests = pytester.mkpydir("tests")
    imports = "from app import settings  # noqa: F401\n" if where == "top" else ""
    (tests / "conftest.py").write_text(f'{imports}pytest_plugins = ["pytest_dbguard"]\n')
    (tests / "test_app.py").write_text(EARLY_TEST)
    pytester.makeini("[pytest]\npythonpath = .\ndbguard_env =\n    APP_DATABASE={url}\n")
    plugins = plugin_args(*args)
    result = pytester.runpytest_subprocess(
        *plugins, "--dbguard-url", "sqlite", "-s", "-W", "default", *args
    )
    result.assert_outcomes(passed=1)
    warned = "after the project's module app.settings was imported"
    output = result.stdout.str()
    if where == "top":
        assert output.count(warned) == 1, output
        result.stdout.fnmatch_lines([f"*{warned}*APP_DATABASE*-p pytest_dbguard*"])
        if not args:  # the app's fallback, not the test database: the defect, shown
            result.stdout.fnmatch_lines(["*the app reads the test database: False*"])
    else:
        result.stdout.fnmatch_lines(["*the app reads the test database: True*"])
        assert "was enabled by `pytest_plugins`" not in output
    if where == "top":  # where warnings are errors, the same words as a usage error
        failed = pytester.runpytest_subprocess("--dbguard-url", "sqlite", "-W", "error")
        assert failed.ret == pytest.ExitCode.USAGE_ERROR, failed.stdout.str() + failed.stderr.str()
        failed.stderr.fnmatch_lines([f"*{warned}*"])
