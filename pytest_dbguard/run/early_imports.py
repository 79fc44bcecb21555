"""The project's modules that were imported before dbguard set the test environment.

With the conftest opt-in (``pytest_plugins = ["pytest_dbguard"]``) dbguard starts while pytest
loads that conftest, after the conftest's own top-level imports: a settings module it imports
there has read the environment without the ``dbguard_env`` values, and its engine may silently
run on its fallback (sqladmin's tests fall back to SQLite). ``dbguard_guard_modules`` makes that
an error for the modules it names; this warns about the others, once, by name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest

from pytest_dbguard.config_errors import ConfigError

EARLY_IMPORTS: Final = (
    "dbguard was enabled by `pytest_plugins` in a conftest, after the project's {modules} "
    "{were} imported (by a conftest's top-level imports): what {they} read from the environment "
    "at import ({variables}) is not the test environment, so an engine made then may use your "
    "own database or a fallback. Enable dbguard with `-p pytest_dbguard` instead (addopts = -p "
    "pytest_dbguard in the ini file, or PYTEST_PLUGINS=pytest_dbguard), or import {them} inside "
    "the fixtures that need {them}; list {them} in ini dbguard_guard_modules to make this an "
    "error."
)
SHOWN: Final = 3  # modules named; the rest counted


def warn(config: pytest.Config, variables: Sequence[str]) -> None:
    """A warning naming the rootdir's modules (not conftests, not installed packages) that are
    imported already, when ``dbguard_env`` gives ``variables``; a ConfigError where warnings are
    errors (``filterwarnings = error``), said the same way."""
    if not variables:
        return
    early = imported_project_modules(config.rootpath)
    if not early:
        return
    shown = ", ".join(early[:SHOWN])
    named = shown + (f" and {len(early) - SHOWN} more" if len(early) > SHOWN else "")
    one = len(early) == 1
    message = EARLY_IMPORTS.format(
        modules=f"module{'' if one else 's'} {named}",
        were="was" if one else "were",
        they="it" if one else "they",
        them="it" if one else "them",
        variables=", ".join(variables),
    )
    try:
        config.issue_config_time_warning(pytest.PytestConfigWarning(message), stacklevel=2)
    except pytest.PytestConfigWarning:  # turned into an error by a warnings filter
        raise ConfigError(message) from None


def imported_project_modules(rootdir: Path) -> list[str]:
    """The imported modules whose file is under ``rootdir``, sorted, the innermost of a package:
    neither conftests, nor dbguard itself, nor anything of an environment (a virtualenv kept in
    the project)."""
    root = f"{os.path.realpath(rootdir)}{os.sep}"
    prefixes = {os.path.realpath(prefix) + os.sep for prefix in (sys.prefix, sys.base_prefix)}
    files = {
        name: os.path.realpath(file)
        for name, module in list(sys.modules.items())
        if (file := getattr(module, "__file__", None))
    }
    # pytest imports the packages a conftest lives in (tests/__init__.py) to import it.
    conftest_folders = {
        os.path.dirname(path) + os.sep
        for path in files.values()
        if os.path.basename(path) == "conftest.py"
    }
    found = []
    for name, path in files.items():
        if name == "__main__" or name.split(".")[0] == "pytest_dbguard":
            continue
        if not path.startswith(root) or any(path.startswith(prefix) for prefix in prefixes):
            continue
        if os.path.basename(path) == "conftest.py" or "site-packages" in path.split(os.sep):
            continue
        if os.path.basename(path) == "__init__.py" and any(
            folder.startswith(os.path.dirname(path) + os.sep) for folder in conftest_folders
        ):
            continue
        found.append(name)
    # A package is named by the module of it that was imported (app.settings, not app too).
    return sorted(
        name for name in found if not any(other.startswith(f"{name}.") for other in found)
    )
