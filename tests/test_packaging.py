"""As users meet it: the built wheel in a fresh venv, README recipes in a project outside the repo.

The rest of the suite runs against this checkout (an editable install, ``python -m pytest``, which
puts the test folder on sys.path); here nothing of the checkout is importable, and the project is
run with plain ``pytest`` too, which does not put the rootdir on sys.path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import APP_MODELS, ROOT, blocks

EXTRAS = "postgres,xdist"
NOT_SOURCE = (".git", ".venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


class FreshVenv:
    """A venv made from nothing but the built wheel (and its dependencies from the index)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.bin = folder / "bin"

    def run(self, cwd: Path, *command: str) -> subprocess.CompletedProcess[str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("DBGUARD_", "_DBGUARD_", "PYTEST_", "PYTHON"))
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run(
            list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )


@contextlib.contextmanager
def _shared(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """A folder all xdist workers of this run share (pytest-xdist's documented recipe), held under
    a lock; True when another worker has already filled it."""
    folder = tmp_path_factory.getbasetemp().parent / name
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
    """Session: a new venv with ``pytest-dbguard[postgres,xdist]`` installed from the wheel, once
    for all xdist workers."""
    (wheel,) = dist.glob("pytest_dbguard-*.whl")
    with _shared(tmp_path_factory, "dbguard-venv") as (folder, done):
        venv = FreshVenv(folder / "venv")
        if not done:
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv.folder)], check=True, timeout=120
            )
            installed = venv.run(
                folder, str(venv.bin / "pip"), "install", "--quiet", f"{wheel}[{EXTRAS}]"
            )
            assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_wheel_and_sdist_hold_the_package(dist: Path) -> None:
    (wheel,) = dist.glob("pytest_dbguard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pytest_dbguard/py.typed" in names
    assert "pytest_dbguard/plugin.py" in names
    assert not any(name.startswith(("tests/", "examples/", "benchmarks/")) for name in names)
    metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    for extra in ("postgres", "async", "xdist"):
        assert f"Provides-Extra: {extra}" in text
    entry_points = next((n for n in names if n.endswith("entry_points.txt")), None)
    assert entry_points is not None
    assert "pytest11" not in zipfile.ZipFile(wheel).read(entry_points).decode()  # opt-in only
    assert len(list(dist.glob("pytest_dbguard-*.tar.gz"))) == 1


def _quickstart_project(folder: Path) -> Path:
    (ini,) = blocks("Quickstart", "ini")
    (test,) = blocks("Quickstart", "python")
    (folder / "app").mkdir(parents=True)
    (folder / "app" / "__init__.py").write_text("")
    (folder / "app" / "models.py").write_text(textwrap.dedent(APP_MODELS))
    (folder / "pytest.ini").write_text(ini)
    (folder / "tests").mkdir()
    (folder / "tests" / "test_users.py").write_text(
        "from app.models import User\n\n"
        + test
        + "\n\n"
        + test.replace("def test_create_user", "def test_create_user_again")
    )
    return folder


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["pytest"], id="pytest"),
        pytest.param(["python", "-m", "pytest"], id="python-m-pytest"),
        pytest.param(["pytest", "-n", "2"], id="pytest-n2"),
    ],
)
@pytest.mark.parametrize("where", ["rootdir", "subfolder"])
def test_quickstart_outside_the_repo(
    fresh_venv: FreshVenv, tmp_path: Path, command: list[str], where: str
) -> None:
    """The Quickstart pasted into a new project runs with the wheel alone, however pytest is
    started: ``dbguard_metadata = app.models:Base`` is found relative to the rootdir."""
    project = _quickstart_project(tmp_path / "project")
    assert ROOT not in project.parents
    cwd = project / "tests" if where == "subfolder" else project
    result = fresh_venv.run(
        cwd, str(fresh_venv.bin / command[0]), *command[1:], "-p", "no:cacheprovider"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    assert "dbguard: embedded PostgreSQL" in result.stdout
