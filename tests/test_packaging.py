"""As users meet it: the built wheel in a fresh venv, README recipes in a project outside the repo.

The rest of the suite runs against this checkout (an editable install, ``python -m pytest``, which
puts the test folder on sys.path); here nothing of the checkout is importable, and the project is
run with plain ``pytest`` too, which does not put the rootdir on sys.path.
"""

from __future__ import annotations

import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.helpers import APP_MODELS, ROOT, FreshVenv, blocks


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
