"""The package's shape: concerns in subpackages, no import cycle (lazy imports inside functions
count too), nothing below the wiring imports it, private attributes of other packages read only
in ``compat``, and the declared public API resolves without importing SQLAlchemy."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_dbguard

PACKAGE = Path(pytest_dbguard.__file__).parent
SUBPACKAGES = ("run", "db", "server", "faults", "guards", "aio", "django")
WIRING = {"pytest_dbguard.plugin", "pytest_dbguard.cli", "pytest_dbguard.__main__"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of the package that ``name`` imports, at the top or inside a function."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        found.update(target for target in targets if target in modules and target != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_even_through_lazy_imports() -> None:
    assert _cycles(_graph()) == []


def test_nothing_imports_the_wiring() -> None:
    upward = {
        name: sorted(targets & WIRING)
        for name, targets in _graph().items()
        if targets & WIRING and name not in WIRING
    }
    assert upward == {}


def test_every_concern_is_a_documented_subpackage() -> None:
    for name in SUBPACKAGES:
        init = PACKAGE / name / "__init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring, f"{init} says nothing about what it owns"
        for module in (PACKAGE / name).glob("*.py"):
            assert module.stem in docstring or module.name == "__init__.py", (
                f"{init}'s docstring does not name {module.stem}"
            )
    flat = sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert flat == [
        "__init__",
        "__main__",
        "cli",
        "compat",
        "config_errors",  # the two exceptions of the settings path, apart for --help
        "exceptions",
        "plugin",
        "readiness",  # the documented import path of earlier releases, re-exporting
        "records",  # the immutable record base of the settings, the plan and URLs
    ]


PRIVATE_READ = re.compile(r"""getattr\([^,]+,\s*["']_[a-z]\w*|from _pytest|import _pytest""")


def test_private_attributes_of_other_packages_are_read_only_in_compat() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            # But pytest's rewriting list, edited before the package imports compat.
            in_rewrite_opt_out = path == PACKAGE / "__init__.py" and "rewrite_hook" in line
            if PRIVATE_READ.search(line) and not in_rewrite_opt_out:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


def test_readme_lists_the_public_api() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("**Public Python API.**", 1)[1].split("\n\n## ", 1)[0]
    missing = [name for name in pytest_dbguard._PUBLIC if f"`{name}" not in section]
    assert missing == []


def test_public_api_resolves_lazily() -> None:
    declared = set(pytest_dbguard.__all__) - {"__version__"}
    assert declared == set(pytest_dbguard._PUBLIC)
    code = (
        "import sys, pytest_dbguard\n"
        "assert 'sqlalchemy' not in sys.modules, 'import pytest_dbguard pulled in SQLAlchemy'\n"
        "for name in pytest_dbguard.__all__: getattr(pytest_dbguard, name)\n"
        "from pytest_dbguard.readiness import await_ready\n"
        "assert await_ready is pytest_dbguard.await_ready\n"
        "print(len(pytest_dbguard.__all__))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(pytest_dbguard.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pytest_dbguard.nope  # noqa: B018


def test_every_django_test_file_runs_in_the_django_tox_envs() -> None:
    """tox's django42/django52/django6 envs run the Django tests on each supported Django: a new
    test file must be listed there, or it runs on one Django version only."""
    ini = configparser.ConfigParser()
    ini.read(PACKAGE.parent / "tox.ini")
    listed = set(ini["django"]["tests"].split())
    files = {f"tests/{path.name}" for path in (PACKAGE.parent / "tests").glob("test_django*.py")}
    assert files and files <= listed, sorted(files - listed)
