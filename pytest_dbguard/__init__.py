"""pytest-dbguard: correct, isolated and fast database-backed test suites.

Activate it with ``pytest -p pytest_dbguard`` or ``pytest_plugins = ["pytest_dbguard"]`` in the
root conftest. Importing this package imports neither SQLAlchemy nor a driver: the hooks live in
``pytest_dbguard.plugin``, registered by the hook below, and the public names in
``__all__`` are loaded on first use.

What a run costs to import counts, since every run pays it: the record classes that every run
defines are written out (``records.Record``, plain classes with ``__slots__``) or small
NamedTuples, never dataclasses (a frozen dataclass compiles its generated methods from source,
about 5M instructions; a NamedTuple of twenty fields about 3.4M; ``benchmarks/ci_path.py``, c),
patterns are compiled on first use, and modules that only some runs use are imported by those
runs.

The public API is what ``__all__`` lists (the README's "Public API" section says what each is
for); every other module is internal and may move between releases.

PYTEST_DONT_REWRITE: pytest's documented opt-out of assertion rewriting for this module. It also
keeps pytest from warning "Module already imported so cannot be rewritten" when something
imported the package before ``-p`` named it: a warning filter on one of its classes
(``-W ignore::pytest_dbguard.NaiveDatetimeWarning``) does.
"""

from __future__ import annotations

import gc
import importlib
import importlib.machinery
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The objects already in gc's permanent generation when pytest loads dbguard, before any
# conftest: Python 3.12 puts a few hundred there at start. Only a count above this is a
# project's own gc.freeze(), which dbguard's freeze during a schema build leaves alone
# (``db.databases._OlderObjectsFrozen``).
_FROZEN_AT_IMPORT = gc.get_freeze_count()


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """Registers the hooks (``pytest_dbguard.plugin``) once pytest has registered this package.

    Not through ``pytest_plugins``: pytest would look that name up among every installed
    package's entry points first, and mark the module for assertion rewriting, whose reading of
    cached modules costs more than dbguard's whole import (``_stop_rewriting_asserts``).
    """
    if plugin is not sys.modules[__name__] or manager.has_plugin("pytest_dbguard.plugin"):
        return
    _stop_rewriting_asserts(manager)
    _find_own_modules_first(manager)
    hooks = importlib.import_module("pytest_dbguard.plugin")
    manager.register(hooks, "pytest_dbguard.plugin")
    hooks.registered(manager)


def _stop_rewriting_asserts(manager: pytest.PytestPluginManager) -> None:
    """Take this package and its modules off pytest's list of modules whose asserts it rewrites.

    ``-p`` marks a plugin's package for rewriting, and the rewriting import hook reads each
    module's cached code with ``marshal.load`` on a file object: five times slower than Python's
    own import (30 ms against 6 ms for dbguard's 72 modules), 155M of the 410M instructions that
    dbguard added to a one-test run (benchmarks/ci_path.py, i). dbguard's asserts are internal
    invariants, not test assertions. Here rather than in ``compat`` (which reads every other
    private attribute), because it must run before any other module of the package is imported:
    through the rewriting hook, ``compat`` alone cost 3.5M instructions (``ci_path.py``, c).
    Reads ``rewrite_hook._must_rewrite`` and ``_marked_for_rewrite_cache`` (pytest 8.0-9.2); with
    ``--assert=plain`` there is no such list.
    """
    marked = getattr(manager.rewrite_hook, "_must_rewrite", None)
    if not isinstance(marked, set):
        return
    marked.difference_update([name for name in marked if f"{name}.".startswith(f"{__name__}.")])
    cache = getattr(manager.rewrite_hook, "_marked_for_rewrite_cache", None)
    if isinstance(cache, dict):
        cache.clear()


class _OwnModulesFinder:
    """Finds dbguard's modules as Python's import does, ahead of pytest's rewriting hook.

    The hook decides anew for every import whether to rewrite, matching the name against
    ``python_files`` (about 0.1M instructions a module: 1.0M of ``--help``, which imports 14,
    more in a run, which imports up to 72); and with ``python_files = *.py`` it would rewrite
    dbguard's modules, whose asserts are internal invariants, not tests.
    """

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> Any:
        if not name.startswith("pytest_dbguard."):
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)


def _find_own_modules_first(manager: pytest.PytestPluginManager) -> None:
    """Put a finder right before this run's rewriting hook, for as long as the hook is there
    (pytest takes it off when the run ends; so does this). One per run: a run nested in another
    (pytester's in-process runs) has a hook of its own in front of the outer run's."""
    hook: object = manager.rewrite_hook
    place = next((i for i, finder in enumerate(sys.meta_path) if finder is hook), None)
    if place is None:
        return  # --assert=plain: no hook to go around
    if place > 0 and isinstance(sys.meta_path[place - 1], _OwnModulesFinder):
        return
    finder = _OwnModulesFinder()
    sys.meta_path.insert(place, finder)
    config = manager.get_plugin("pytestconfig")
    if config is not None:
        config.add_cleanup(
            lambda: sys.meta_path.remove(finder) if finder in sys.meta_path else None
        )


# Public name -> the module that defines it, imported when the name is first used.
_PUBLIC = {
    "wait_until_ready": "pytest_dbguard.server.readiness",
    "await_ready": "pytest_dbguard.server.readiness",
    "Probe": "pytest_dbguard.server.readiness",
    "probe": "pytest_dbguard.server.readiness",
    "Readiness": "pytest_dbguard.server.readiness",
    "RetryPolicy": "pytest_dbguard.server.readiness",
    "Faults": "pytest_dbguard.faults.injector",
    "QueryCounter": "pytest_dbguard.guards.query_counter",
    "DatabaseURL": "pytest_dbguard.db.urls",
    "DbguardError": "pytest_dbguard.exceptions",
    "ConfigError": "pytest_dbguard.exceptions",
    "ServerError": "pytest_dbguard.exceptions",
    "ReadinessError": "pytest_dbguard.exceptions",
    "DatabaseSetupError": "pytest_dbguard.exceptions",
    "SchemaError": "pytest_dbguard.exceptions",
    "SchemaDriftError": "pytest_dbguard.exceptions",
    "SchemaDriftWarning": "pytest_dbguard.exceptions",
    "EventLoopMismatchError": "pytest_dbguard.exceptions",
    "FaultError": "pytest_dbguard.exceptions",
    "GuardError": "pytest_dbguard.exceptions",
    "NaiveDatetimeError": "pytest_dbguard.exceptions",
    "ForeignDatabaseError": "pytest_dbguard.exceptions",
    "LeakError": "pytest_dbguard.exceptions",
    "GuardWarning": "pytest_dbguard.exceptions",
    "NaiveDatetimeWarning": "pytest_dbguard.exceptions",
    "LeakWarning": "pytest_dbguard.exceptions",
}
__all__ = [
    "ConfigError",
    "DatabaseSetupError",
    "DatabaseURL",
    "DbguardError",
    "EventLoopMismatchError",
    "FaultError",
    "Faults",
    "ForeignDatabaseError",
    "GuardError",
    "GuardWarning",
    "LeakError",
    "LeakWarning",
    "NaiveDatetimeError",
    "NaiveDatetimeWarning",
    "Probe",
    "QueryCounter",
    "Readiness",
    "ReadinessError",
    "RetryPolicy",
    "SchemaDriftError",
    "SchemaDriftWarning",
    "SchemaError",
    "ServerError",
    "__version__",
    "await_ready",
    "probe",
    "wait_until_ready",
]

if TYPE_CHECKING:
    import pytest

    from pytest_dbguard.db.urls import DatabaseURL
    from pytest_dbguard.exceptions import (
        ConfigError,
        DatabaseSetupError,
        DbguardError,
        EventLoopMismatchError,
        FaultError,
        ForeignDatabaseError,
        GuardError,
        GuardWarning,
        LeakError,
        LeakWarning,
        NaiveDatetimeError,
        NaiveDatetimeWarning,
        ReadinessError,
        SchemaDriftError,
        SchemaDriftWarning,
        SchemaError,
        ServerError,
    )
    from pytest_dbguard.faults.injector import Faults
    from pytest_dbguard.guards.query_counter import QueryCounter
    from pytest_dbguard.server.readiness import (
        Probe,
        Readiness,
        RetryPolicy,
        await_ready,
        probe,
        wait_until_ready,
    )


# No ``__dir__`` that lists the names not loaded yet: pytest reads every name ``dir()`` gives of a
# plugin module, looking for fixtures, and so imported the whole public API in every run.
def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_dbguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
