"""SIGTERM (what CI runners and ``timeout`` send) cleans up like Ctrl-C: no server, folder or database left."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pytest_dbguard.server import machine
from tests.helpers import run_dbguard, signal_once_ready
from tests.pgserver import LIMITED_USER, TestServer

# Every test says it started (per worker), then hangs until the run is stopped.
SLOW_TESTS = """
    import os, pathlib, time
    import pytest

    @pytest.mark.parametrize("n", range(4))
    def test_slow(dbguard_connection, n):
        pathlib.Path("run.txt").write_text(os.environ["DBGUARD_RUN"])
        pathlib.Path("started-" + os.environ["DBGUARD_WORKER"]).touch()
        time.sleep(120)
"""


def _processes_in(folder: Path) -> list[int]:
    """Processes whose working folder or command line is ``folder`` (pytest, its workers, the server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if os.readlink(entry / "cwd") == str(folder) or str(folder) in command:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _assert_nothing_left(project: Path) -> str:
    """No run folder and no process of the run whose id the tests wrote to run.txt; its id."""
    run_id = (project / "run.txt").read_text()
    folder = machine.storage_root() / run_id
    assert not folder.exists(), f"{folder} was left behind"
    deadline = time.monotonic() + 10  # a worker's exit may trail pytest's by a moment
    while _processes_in(project) or _processes_in(folder):
        assert time.monotonic() < deadline, "a worker or server outlived the run"
        time.sleep(0.05)
    return run_id


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("pid", id="pytest-only"),  # `timeout`, `kill <pid>`
        pytest.param("group", id="process-group"),  # CI runners stopping a job
    ],
)
@pytest.mark.parametrize(
    "workers",
    [
        pytest.param((), id="serial"),
        pytest.param(("-n", "2"), id="n2", marks=pytest.mark.needs_xdist),
    ],
)
@pytest.mark.parametrize("backend", ["embedded", "external", "external-schemas"])
def test_sigterm_mid_test_leaves_nothing(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    backend: str,
    workers: tuple[str, ...],
    target: str,
) -> None:
    pytester.makepyfile(test_slow=SLOW_TESTS)
    urls = {
        "embedded": [],
        "external": ["--dbguard-url", pg_server.url()],
        # A role without CREATEDB: one schema per worker in app_limited.
        "external-schemas": ["--dbguard-url", pg_server.url("app_limited", user=LIMITED_USER)],
    }
    expected = ["started-gw0", "started-gw1"] if workers else ["started-main"]
    returncode, output = signal_once_ready(
        pytester.path, workers, urls[backend], expected, group=target == "group"
    )
    assert returncode == pytest.ExitCode.INTERRUPTED, output
    assert "SIGTERM received" in output
    run_id = _assert_nothing_left(pytester.path)
    assert not [name for name in pg_server.databases() if f"_dbg_{run_id}_" in name]
    schemas = pg_server.sql("SELECT nspname FROM pg_namespace", database="app_limited").stdout
    assert f"dbg_{run_id}_" not in schemas


# A dbguard run (the outer one) whose test runs dbguard again in its own process, as a plugin's
# own suite does with pytester.
NESTED_RUN = """
    import signal

    pytest_plugins = ["pytester"]

    def test_nested_run(pytester):
        before = signal.getsignal(signal.SIGTERM)
        pytester.makepyfile("def test_x(): pass")
        nested = pytester.runpytest_inprocess("-p", "pytest_dbguard", "--dbguard-url", "sqlite")
        nested.assert_outcomes(passed=1)
        assert signal.getsignal(signal.SIGTERM) is before
"""


def test_a_nested_in_process_run_leaves_sigterm_as_it_found_it(pytester: pytest.Pytester) -> None:
    """Else the outer run, and every process it starts afterwards, ignores SIGTERM."""
    pytester.makepyfile(test_nested=NESTED_RUN)
    run_dbguard(pytester, "--dbguard-url", "sqlite", "-p", "pytester").assert_outcomes(passed=1)


# A conftest that takes its time, as a Django project's django.setup() does while pytest-django
# loads it: SIGTERM arrives before pytest has a session.
SLOW_CONFTEST = """
    import os, pathlib, time

    pathlib.Path("run.txt").write_text(os.environ["DBGUARD_RUN"])
    pathlib.Path("loading-" + os.environ.get("PYTEST_XDIST_WORKER", "controller")).touch()
    time.sleep(120)
"""


@pytest.mark.parametrize(
    "workers",
    [
        pytest.param((), id="serial"),
        pytest.param(("-n", "2"), id="n2", marks=pytest.mark.needs_xdist),
    ],
)
def test_sigterm_while_the_conftests_load_says_so_in_one_line(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    pytester.makeconftest(SLOW_CONFTEST)
    pytester.makepyfile("def test_x(): pass")
    returncode, output = signal_once_ready(
        pytester.path, workers, [], ["loading-controller"], group=True
    )
    assert returncode == pytest.ExitCode.INTERRUPTED, output
    assert output.count("SIGTERM received") == 1 and "no test ran" in output, output
    assert "Traceback" not in output, output
    _assert_nothing_left(pytester.path)  # the embedded cluster is stopped at exit


# The outer run's test runs dbguard again in its own process, and that inner run's conftest is
# still loading when SIGTERM arrives: the outer run's handler raised it, so the outer run stops.
NESTED_SLOW_CONFTEST = '''
    pytest_plugins = ["pytester"]

    INNER_CONFTEST = """
        import pathlib, time

        pathlib.Path({marker!r}).touch()
        time.sleep(120)
    """

    def test_nested_run(pytester, request):
        marker = str(request.config.rootpath / "loading-inner")
        pytester.makeconftest(INNER_CONFTEST.format(marker=marker))
        pytester.makepyfile("def test_x(): pass")
        pytester.runpytest_inprocess("-p", "pytest_dbguard", "--dbguard-url", "sqlite")
'''


def test_sigterm_while_a_nested_runs_conftests_load_stops_the_outer_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_nested=NESTED_SLOW_CONFTEST)
    returncode, output = signal_once_ready(
        pytester.path,
        (),
        ["--dbguard-url", "sqlite", "-p", "pytester"],
        ["loading-inner"],
        group=True,
    )
    assert returncode == pytest.ExitCode.INTERRUPTED, output
    assert output.count("SIGTERM received") == 1, output
    assert "no test ran" not in output and "NameError" not in output, output


# Ctrl-C as the run's cleanup removes the cluster's folder: at the first rmtree of it.
CTRL_C_IN_THE_CLEANUP = """
import json, os, pathlib, shutil, signal

_rmtree = shutil.rmtree


def _interrupted_rmtree(path, *args, **kwargs):
    if "pytest-dbguard" in str(path):
        os.kill(os.getpid(), signal.SIGINT)
    return _rmtree(path, *args, **kwargs)


def pytest_sessionfinish(session):
    root = json.loads(os.environ["_DBGUARD_ORIGIN"])["embedded_root"]
    pathlib.Path("root.txt").write_text(root)
    shutil.rmtree = _interrupted_rmtree
"""


def test_ctrl_c_during_the_cleanup_waits_for_its_end(pytester: pytest.Pytester) -> None:
    """A Ctrl-C while the run removed its cluster's folder left 100 MB of it in /dev/shm
    (baserow's trial): the cleanup now finishes, then the run ends as interrupted."""
    pytester.makeconftest(CTRL_C_IN_THE_CLEANUP)
    pytester.makepyfile("def test_x(dbguard_connection): pass")
    result = run_dbguard(pytester)
    output = result.stdout.str() + result.stderr.str()
    assert "KeyboardInterrupt" in output, output
    root = Path((pytester.path / "root.txt").read_text())
    assert not root.exists(), f"{root} was left behind"
