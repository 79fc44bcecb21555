"""Shared fixtures of the plugin's own test suite: a real PostgreSQL server and sealed pytester runs."""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    NOT_SOURCE,
    ROOT,
    WHEEL_EXTRAS,
    FreshVenv,
    import_whole_package,
    recipe_extras,
)
from tests.pgserver import TestServer, running_server

pytest_plugins = ["pytester"]

# Before any pytester snapshot of sys.modules: see import_whole_package.
import_whole_package()

# Inner runs import dbguard from this checkout, each in a new process (hundreds per suite run).
# Where PYTHONDONTWRITEBYTECODE is set, as in many containers and CI images, none of them keeps
# the bytecode it compiles, and every one compiles the package again (about 0.05 s of CPU each).
# Written once here, as pip does for what it installs; up-to-date files are only looked at.
compileall.compile_dir(ROOT / "pytest_dbguard", quiet=1)

# Inner runs must see only what each test gives them: no variables from the outer run.
_LEAKY_PREFIXES = (
    "DBGUARD_",
    "_DBGUARD_",
    "PYTEST_XDIST_",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "DB_TABLE_PREFIX",
)

# Markers for tests whose inner runs use an optional plugin: marker -> (module, distribution).
# tox's py313-noxdist-noenv env uninstalls both and deselects these with -m; every other env runs them.
PLUGIN_MARKERS = {
    "needs_xdist": ("xdist", "pytest-xdist"),
    "needs_pytest_env": ("pytest_env", "pytest-env"),
}


def pytest_configure(config: pytest.Config) -> None:
    for marker, (_, distribution) in PLUGIN_MARKERS.items():
        config.addinivalue_line(
            "markers",
            f"{marker}: the test's inner run uses {distribution}; "
            f"deselect with -m 'not {marker}' where it is not installed",
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that needs a missing plugin fails: only deselection (-m) may leave it out."""
    for marker, (module, distribution) in PLUGIN_MARKERS.items():
        if item.get_closest_marker(marker) and importlib.util.find_spec(module) is None:
            pytest.fail(
                f"{item.nodeid} needs {distribution}, which is not installed here: install the "
                f"test extra (pip install -e '.[test]') or deselect it with -m 'not {marker}'",
                pytrace=False,
            )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    """Session: a real password-protected PostgreSQL server; stopped and removed at the end."""
    with running_server() as server:
        yield server


@pytest.fixture
def on_server(pg_server: TestServer) -> list[str]:
    """``--dbguard-url`` of the session's server, for inner runs whose subject is not the server
    they run on: a run on the embedded default starts (and removes) a cluster of its own, about a
    second of a run that lasts two. The tests about the embedded server keep it."""
    return ["--dbguard-url", pg_server.url()]


@pytest.fixture(autouse=True)
def _sealed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without dbguard or xdist variables, and inner runs load no plugins by themselves."""
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture(autouse=True)
def _shared_maintenance_connections_closed() -> Iterator[None]:
    """A test that calls dbguard's database functions directly (a run would close them at its
    end) leaves no shared maintenance connection open: one left behind was only freed when the
    worker exited, with a ResourceWarning ("deleted while still open")."""
    yield
    maintenance = sys.modules.get("pytest_dbguard.db.maintenance")
    if maintenance is not None:
        maintenance.close_shared()


@contextlib.contextmanager
def _shared(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """A folder all xdist workers of this run share (pytest-xdist's documented recipe), held under
    a lock; True when another worker has already filled it. Serially it is in the run's own
    folder: the parent of that is shared by every serial run (``--basetemp=/tmp/x`` puts it in
    /tmp), where an earlier run's wheel would be taken for this checkout's."""
    basetemp = tmp_path_factory.getbasetemp()
    folder = (basetemp.parent if "PYTEST_XDIST_WORKER" in os.environ else basetemp) / name
    folder.mkdir(exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield folder, (folder / ".done").exists()
        (folder / ".done").touch()


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session: the sdist and the wheel, the wheel built from the sdist (``python -m build``),
    once for all xdist workers."""
    with _shared(tmp_path_factory, "dbguard-dist") as (out, done):
        if not done:
            # A copy of the checkout: the build writes its metadata into the source folder.
            source = tmp_path_factory.mktemp("source") / "pytest-dbguard"
            shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
            built = subprocess.run(
                [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert built.returncode == 0, built.stdout + built.stderr
    return out


@pytest.fixture(scope="session")
def fresh_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """Session: a new venv with ``pytest-dbguard[postgres,async,xdist]`` installed from the wheel, once
    for all xdist workers."""
    return _venv_with(dist, tmp_path_factory, "dbguard-venv", WHEEL_EXTRAS)


@pytest.fixture(scope="session")
def django_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """Session: a new venv with the wheel and the extras the README's Django recipe installs
    (``pytest-dbguard[postgres,xdist,django]``), once for all xdist workers."""
    extras = recipe_extras("Django (pytest-django)")
    # The project's own Django: the extra installs pytest-django only.
    return _venv_with(dist, tmp_path_factory, "dbguard-django-venv", extras, also=("django",))


@pytest.fixture(scope="session")
def fastapi_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """Session: a new venv with the wheel and what a FastAPI project has besides (FastAPI, and
    httpx for its TestClient), once for all xdist workers."""
    return _venv_with(
        dist, tmp_path_factory, "dbguard-fastapi-venv", WHEEL_EXTRAS, also=("fastapi", "httpx")
    )


def _venv_with(
    dist: Path,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    extras: str,
    also: tuple[str, ...] = (),
) -> FreshVenv:
    (wheel,) = dist.glob("pytest_dbguard-*.whl")
    with _shared(tmp_path_factory, name) as (folder, done):
        venv = FreshVenv(folder / "venv")
        if not done:
            # No pip of its own (ensurepip costs seconds of CPU per venv): this suite's pip
            # installs into it with --python. Nothing is compiled ahead: the runs compile what
            # they import, where pip would compile every module of Django and SQLAlchemy.
            subprocess.run(
                [sys.executable, "-m", "venv", "--without-pip", str(venv.folder)],
                check=True,
                timeout=120,
            )
            installed = venv.run(
                folder,
                *(sys.executable, "-m", "pip", "--python", str(venv.bin / "python")),
                *("install", "--quiet", "--no-compile", f"{wheel}[{extras}]", *also),
            )
            assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


@pytest.fixture
def kept_here(pg_server: TestServer) -> Iterator[set[str]]:
    """Function: the test adds the kept databases its runs made; they are dropped after it."""
    made: set[str] = set()
    yield made
    for name in made:
        pg_server.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
