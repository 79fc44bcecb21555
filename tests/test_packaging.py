"""As users meet it: the built wheel in a fresh venv, README recipes in a project outside the repo.

The rest of the suite runs against this checkout (an editable install, ``python -m pytest``, which
puts the test folder on sys.path); here nothing of the checkout is importable, and the project is
run with plain ``pytest`` too, which does not put the rootdir on sys.path.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from tests.helpers import PROJECTS, ROOT, FreshVenv, blocks


def test_wheel_and_sdist_hold_the_package(dist: Path) -> None:
    (wheel,) = dist.glob("pytest_dbguard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pytest_dbguard/py.typed" in names
    assert "pytest_dbguard/plugin.py" in names
    assert not any(name.startswith(("tests/", "examples/", "benchmarks/")) for name in names)
    metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    for extra in ("postgres", "async", "xdist", "django"):
        assert f"Provides-Extra: {extra}" in text
    # pytest-django, never Django itself: pip would upgrade a project's pinned Django (taiga's 3.2).
    django_needs = [line for line in text.splitlines() if line.endswith('extra == "django"')]
    assert [line.split(">=")[0] for line in django_needs] == ["Requires-Dist: pytest-django"]
    entry_points = next((n for n in names if n.endswith("entry_points.txt")), None)
    assert entry_points is not None
    assert "pytest11" not in zipfile.ZipFile(wheel).read(entry_points).decode()  # opt-in only
    assert len(list(dist.glob("pytest_dbguard-*.tar.gz"))) == 1


def _quickstart_project(folder: Path) -> Path:
    (ini,) = blocks("Quickstart", "ini")
    (test,) = blocks("Quickstart", "python")
    shutil.copytree(PROJECTS / "quickstart", folder, dirs_exist_ok=True)
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


def _django_recipe_project(folder: Path) -> Path:
    """The README's Django recipe (its ini and tests) in a small real project: the settings
    modules it names, a manage.py (pytest-django puts its folder on sys.path), and a stand-in
    ``debug_toolbar`` package for the dev-only import test to hide."""
    from tests import django_project

    (ini,) = blocks("Django (pytest-django)", "ini")
    (tests,) = blocks("Django (pytest-django)", "python")
    files = {
        "pytest.ini": ini,
        "manage.py": "",
        "djproj/__init__.py": "",
        "djproj/settings.py": django_project.SETTINGS,
        "djproj/urls.py": django_project.URLS,
        "shop/__init__.py": "",
        "shop/models.py": django_project.MODELS,
        "shop/migrations/__init__.py": "",
        "shop/migrations/0001_initial.py": django_project.INITIAL,
        "shop/migrations/0002_note.py": django_project.SECOND,
        "debug_toolbar/__init__.py": "",
        "config/__init__.py": "",
        "config/settings/__init__.py": "",
        "config/settings/test.py": "from djproj.settings import *  # noqa: F403\n",
        "config/settings/production.py": (
            "from djproj.settings import *  # noqa: F403\n\n"
            "try:\n    import debug_toolbar  # noqa: F401\nexcept ImportError:\n    pass\n"
            "else:\n    INSTALLED_APPS = [*INSTALLED_APPS, 'debug_toolbar']\n"
        ),
        "tests/test_recipe.py": tests,
    }
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text.lstrip())
    return folder


def test_django_recipe_outside_the_repo(django_venv: FreshVenv, tmp_path: Path) -> None:
    """The Django recipe with what its pip line installs from the wheel (the ``django`` extra
    brings Django and pytest-django), plain ``pytest -n 2`` in a project outside the repo."""
    project = _django_recipe_project(tmp_path / "project")
    assert ROOT not in project.parents
    result = django_venv.pytest(project, "-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["dbguard: *django migrate (config.settings.test)*"])
    (migrated,) = (project / "migrate.log").read_text().splitlines()  # one migrate per run
    assert "_tpl" in migrated  # into the template both workers cloned
