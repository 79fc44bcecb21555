"""Commands that only show something start nothing: no server, no connection, no database.

An IDE refreshes its test tree with ``--collect-only`` on every save; ``--help`` and ``--markers``
must work on a machine without PostgreSQL. Each run below would fail if dbguard looked for
binaries (the folder named has none) or connected (the port has no server).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dbguard.server.machine import free_port
from tests.helpers import run_dbguard

COMMANDS = [
    pytest.param(
        ["--collect-only", "-q"], "*test_it.py::test_uses_the_database*", id="collect-only"
    ),
    pytest.param(
        ["--co", "-n", "2"],
        "*test_uses_the_database*",
        id="collect-only-n2",
        marks=pytest.mark.needs_xdist,
    ),
    pytest.param(["--fixtures"], "*dbguard_session*", id="fixtures"),
    pytest.param(["--fixtures-per-test"], "*dbguard_session*", id="fixtures-per-test"),
    pytest.param(["--setup-plan"], "*SETUP*dbguard_session*", id="setup-plan"),
    pytest.param(["--markers"], "@pytest.mark.dbguard(*", id="markers"),
    pytest.param(["--help"], "*--dbguard-url=URL*", id="help"),
]
TEST_FILE = """
    import os

    URL_AT_IMPORT = os.environ["DBGUARD_URL"]  # exported as for a real run
    PORT_AT_IMPORT = int(os.environ["DB_PORT"])  # a number, as settings parse it (paperless)

    def test_uses_the_database(dbguard_session):
        pass
"""


@pytest.mark.parametrize(("args", "shown"), COMMANDS)
@pytest.mark.parametrize("server", ["embedded-without-binaries", "external-unreachable"])
def test_commands_that_only_show_start_nothing(
    pytester: pytest.Pytester, tmp_path: Path, args: list[str], shown: str, server: str
) -> None:
    pytester.makepyfile(test_it=TEST_FILE)
    pytester.makeini(
        "[pytest]\ndbguard_worker_isolation = auto\ndbguard_env =\n    DB_PORT={port}\n"
    )
    if server == "embedded-without-binaries":
        (tmp_path / "empty").mkdir()
        # One word: pytest would take a separate folder argument for a test path, and pick the
        # rootdir (and the ini file) from there.
        where = [f"--dbguard-pg-bindir={tmp_path / 'empty'}"]
    else:
        where = ["--dbguard-url", f"postgresql://u:Secret-Pw@127.0.0.1:{free_port()}/app"]
    result = run_dbguard(pytester, *where, "--dbguard-wait", "1", *args, inprocess=True)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([shown])
    output = result.stdout.str() + result.stderr.str()
    assert "dbguard:" not in output  # no header line: nothing was started to report on
    assert "not ready" not in output and "Secret-Pw" not in output


def test_help_exports_the_variables_for_the_conftests_it_loads(pytester: pytest.Pytester) -> None:
    """--help loads the conftests (for their options): one that skips its own database set-up
    under dbguard (README: DBGUARD_WORKER) must see dbguard there too, or the help command would
    run that set-up on the application's database. pytest-django does nothing on --help; dbguard
    cannot do the same, and pays the import of its settings modules for it (benchmarks, c)."""
    pytester.makeconftest(
        """
        import os

        def pytest_configure(config):
            with open("seen.txt", "w") as seen:
                seen.write(os.environ.get("DBGUARD_WORKER", "") + " " + os.environ.get("DBGUARD_DB", ""))
        """
    )
    result = run_dbguard(pytester, "--help")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    worker, database = (pytester.path / "seen.txt").read_text().split(" ")
    assert worker == "main" and database.endswith("_main")


def test_a_real_run_with_the_same_settings_fails(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """The control: the same folder stops a run that needs the server."""
    pytester.makepyfile(test_it=TEST_FILE)
    (tmp_path / "empty").mkdir()
    result = run_dbguard(pytester, "--dbguard-pg-bindir", str(tmp_path / "empty"), inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*that folder has no initdb and no postgres*"])


def test_collect_only_reports_a_bad_marker(pytester: pytest.Pytester) -> None:
    """An IDE's refresh shows a misspelled isolation as a real run would, before any test."""
    pytester.makepyfile(
        test_it="""
        import pytest

        @pytest.mark.dbguard(isolation="rolback")
        def test_marked():
            pass
        """
    )
    result = run_dbguard(pytester, "--dbguard-url", "sqlite", "--collect-only", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*test_it.py::test_marked*isolation='rolback'*choose one of rollback, truncate, none*"]
    )
