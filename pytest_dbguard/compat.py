"""The one place that reads other packages' private attributes, all but pytest's assertion-rewriting
list (the package's ``__init__`` edits it, before it imports anything).

Checked against SQLAlchemy 2.0 and 2.1, pytest 8 and 9, and pytest-asyncio 0.24 and 1.x; each
helper names the attributes it reads. Each helper degrades to "nothing found" when the
attribute is gone, so a new release costs a guard some precision, never a crash.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest
    from sqlalchemy.orm import Mapper

# pytest's warning base from its own module (``pytest.PytestWarning`` is this class): importing
# pytest itself costs ~0.1 s, which an application that only waits for its database at startup
# (``wait_until_ready``) would pay for dbguard's warning classes (``exceptions``).
try:
    from _pytest.warning_types import PytestWarning as PytestWarning
except ImportError:  # moved by a later pytest
    from pytest import PytestWarning as PytestWarning


@functools.cache
def sqlalchemy_version_text() -> str | None:
    """The version of the SQLAlchemy that ``import sqlalchemy`` would load, read from its
    ``__version__`` line without importing it (early hooks stay cheap: about 1 ms, where
    importlib.metadata's lookup took 2-5 ms), else from its distribution's metadata; None when
    it is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("sqlalchemy")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    if spec.origin:
        with (
            contextlib.suppress(OSError, UnicodeDecodeError),
            open(spec.origin, encoding="utf-8") as source,
        ):
            for line in source:
                if line.startswith("__version__"):
                    return line.partition("=")[2].strip().strip("\"'")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sqlalchemy")
    except PackageNotFoundError:
        return None


def sqlalchemy_version() -> tuple[int, int] | None:
    """The installed SQLAlchemy's major and minor version (:func:`sqlalchemy_version_text`);
    None when it is not installed or has no plain number."""
    text = sqlalchemy_version_text()
    try:
        major, minor = (int(part) for part in (text or "").split(".")[:2])
    except ValueError:
        return None
    return major, minor


def sqlalchemy_decodes_database() -> bool:
    """Whether the installed SQLAlchemy percent-decodes the database part of a URL string.

    2.1 does (``make_url('postgresql://h/per%25cent').database == 'per%cent'``); 2.0 takes it as
    written. Read from the installed version, not by importing SQLAlchemy (early hooks stay cheap);
    without SQLAlchemy, the RFC 3986 reading (decoded).
    """
    installed = sqlalchemy_version()
    return installed is None or installed >= (2, 1)


def wider_fixture_running() -> bool:
    """Whether the code running now is the setup or the teardown of a fixture wider than a test
    (session, package, module or class scope): the innermost fixture on the call stack decides.

    Reads the frames of pytest's ``_pytest.fixtures.pytest_fixture_setup`` (its ``fixturedef``
    argument) and ``FixtureDef.finish`` (``self``), as in pytest 8.0 to 9.2; False when neither
    is on the stack, or pytest has renamed them.
    """
    import sys

    from _pytest import fixtures

    setup = getattr(getattr(fixtures, "pytest_fixture_setup", None), "__code__", None)
    finish = getattr(getattr(fixtures.FixtureDef, "finish", None), "__code__", None)
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is setup:
            return getattr(frame.f_locals.get("fixturedef"), "scope", "function") != "function"
        if frame.f_code is finish:
            return getattr(frame.f_locals.get("self"), "scope", "function") != "function"
        frame = frame.f_back  # type: ignore[assignment]
    return False


def xdist_loaded(config: pytest.Config) -> bool:
    """Whether pytest-xdist is loaded (its hook specs, e.g. ``pytest_testnodedown``, exist only
    then): registered as ``xdist.plugin`` with ``-p xdist.plugin``, as ``xdist`` by autoload."""
    manager = config.pluginmanager
    return manager.hasplugin("xdist.plugin") or manager.hasplugin("xdist")


def override_ini(config: pytest.Config) -> dict[str, str]:
    """The ``-o key=value`` settings of the run (command line, addopts, PYTEST_ADDOPTS).

    Read from ``config.option`` once pytest has parsed the command line, and before that (dbguard
    resolves its settings in ``pytest_load_initial_conftests``) from ``known_args_namespace``.
    """
    found: dict[str, str] = {}
    entries = getattr(config.option, "override_ini", None) or getattr(
        getattr(config, "known_args_namespace", None), "override_ini", None
    )
    for entry in entries or ():
        key, sep, value = str(entry).partition("=")
        if sep:
            found[key.strip()] = value
    return found


def _inicfg(config: pytest.Config) -> Mapping[str, Any]:
    """The ini file's raw entries. pytest 9 deprecates ``config.inicfg`` and keeps ``_inicfg``
    (with the ``-o`` values in it); pytest 8 has only ``inicfg`` (without them)."""
    raw = getattr(config, "_inicfg", None)
    if raw is None:  # pytest 8
        raw = config.inicfg
    return raw


def ini_keys(config: pytest.Config) -> set[str]:
    """Keys the user set: in the ini file or with ``-o``."""
    return set(_inicfg(config).keys()) | set(override_ini(config))


def ini_raw(config: pytest.Config, key: str) -> str:
    """The text of ini ``key`` as written, ``-o`` first (pytest 9 wraps it in a ConfigValue)."""
    overridden = override_ini(config)
    if key in overridden:
        return overridden[key]
    value = _inicfg(config).get(key)
    return str(getattr(value, "value", value))


NOT_TOML: Any = object()


def toml_value(config: pytest.Config, key: str) -> Any:
    """Ini ``key`` as pytest 9 read it from a ``[tool.pytest]`` table, in TOML's own types
    (``30``, ``true``, a list), or NOT_TOML: an ini file or ``[tool.pytest.ini_options]`` (text,
    as pytest 8 reads every file), ``-o``, or a key not set. pytest 9 marks each value with
    ``mode`` ("toml" or "ini") in ``config._inicfg``."""
    if key in override_ini(config):
        return NOT_TOML
    value: Any = _inicfg(config).get(key)
    return value.value if getattr(value, "mode", None) == "toml" else NOT_TOML


def seed_ini_cache(config: pytest.Config, name: str, value: str) -> bool:
    """Put ``value`` in pytest's ini cache (``config._inicache``, pytest 8.0-9.2), so every later
    ``getini(name)`` answers it; False when the cache is gone."""
    cache = getattr(config, "_inicache", None)
    if not isinstance(cache, dict):
        return False
    cache[name] = value
    return bool(config.getini(name) == value)


def asyncio_fixture_marks(func: Any) -> tuple[bool, str | None]:
    """Whether ``func`` was made by ``@pytest_asyncio.fixture``, and its ``loop_scope`` argument
    (``_force_asyncio_fixture`` / ``_loop_scope``, pytest-asyncio 0.24-1.5)."""
    return bool(getattr(func, "_force_asyncio_fixture", False)), getattr(func, "_loop_scope", None)


def fixture_definitions(item: pytest.Item) -> dict[str, Any] | None:
    """The fixture definitions a test item sees, by name (``item._fixtureinfo``, pytest 8-9);
    None when the item has none."""
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    if fixtureinfo is None:
        return None
    return {name: defs[-1] for name, defs in fixtureinfo.name2fixturedefs.items() if defs}


def pooled_connection_records(pool: Any) -> list[Any]:
    """The connection records a SQLAlchemy pool holds, checked in or out (``_pool``, ``_queue``,
    ``_all_conns``, 2.0-2.1): SQLAlchemy has no public way to list them."""
    queue = getattr(pool, "_pool", None)  # QueuePool: a Queue; the async one: an asyncio.Queue
    held: Sequence[Any] = getattr(queue, "queue", None) or ()
    held = held or getattr(vars(queue or pool).get("_queue"), "_queue", ())  # made on first use
    return [*held, *getattr(pool, "_all_conns", ()), vars(pool).get("connection")]


def record_dialect(connection_record: Any) -> Any:
    """The dialect of the engine whose pool made ``connection_record`` (a pool ``connect`` event's
    second argument), or None. SQLAlchemy 2.0-2.1 keep the pool as ``_ConnectionRecord.__pool``
    and the engine's dialect as ``Pool._dialect``; a pool event has no public way to either."""
    pool = getattr(connection_record, "_ConnectionRecord__pool", None)
    return getattr(pool, "_dialect", None)


def ddl_dialects(element: Any) -> Any:
    """What a DDL element's ``execute_if(dialect=...)`` names (``_ddl_if.dialect``, SQLAlchemy
    2.0-2.1): one name, a set of them, or None."""
    return getattr(getattr(element, "_ddl_if", None), "dialect", None)


def all_mappers() -> list[Mapper[Any]]:
    """Every ORM mapper made so far, configured or not, in every registry.

    SQLAlchemy has no public list of its registries (``sqlalchemy.orm.mapperlib._all_registries``,
    present since 1.4); a mapper event covers the mappers made later.
    """
    from sqlalchemy.orm import exc, mapperlib

    all_registries = getattr(mapperlib, "_all_registries", None)
    if all_registries is None:
        return []
    mappers: list[Mapper[Any]] = []
    for registry in all_registries():
        try:
            mappers.extend(registry.mappers)
        except exc.UnmappedClassError:
            # A class mapped only when the mappers are configured (AbstractConcreteBase: its
            # manager has no mapper until then; ``registry.mappers`` raises): the others one by
            # one, through the registry's managers (``_managers``, present since 1.4).
            for manager in list(getattr(registry, "_managers", ())):
                with contextlib.suppress(exc.UnmappedClassError):
                    mappers.append(manager.mapper)
    return mappers


def pytest_rootdir(
    invocation_dir: Path, args: Sequence[str] = (), rootdir: str | None = None
) -> Path:
    """The rootdir pytest would pick when run in ``invocation_dir`` with ``args``."""
    return pytest_ini(invocation_dir, args, rootdir)[0]


def pytest_ini(
    invocation_dir: Path,
    args: Sequence[str] = (),
    rootdir: str | None = None,
    inifile: str | None = None,
) -> tuple[Path, Path | None, dict[str, Any]]:
    """The rootdir, ini file and ini entries (raw text, or lists from TOML) pytest would pick.

    pytest has no public function for it: ``_pytest.config.findpaths.determine_setup`` (checked
    against pytest 8.0-8.4, keyword-only there, and 9.0-9.2, which added ``override_ini`` and a
    fourth result, and wraps each entry in a ``ConfigValue``). Arguments it does not take are left
    out; if it is gone, the folder of the nearest ini file upwards (what it does for the common
    case) and no entries.
    """
    import inspect

    try:
        from _pytest.config.findpaths import determine_setup
    except ImportError:
        return _nearest_ini_folder(invocation_dir), None, {}
    offered: dict[str, object] = {
        "inifile": inifile,
        "override_ini": None,
        "args": [str(invocation_dir / arg) for arg in args],
        "rootdir_cmd_arg": rootdir,
        "invocation_dir": invocation_dir,
    }
    accepted = inspect.signature(determine_setup).parameters
    found = determine_setup(**{k: v for k, v in offered.items() if k in accepted})  # type: ignore[arg-type]
    entries = {key: getattr(value, "value", value) for key, value in dict(found[2]).items()}
    return Path(found[0]), None if found[1] is None else Path(found[1]), entries


_INI_FILES = ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini")


def _nearest_ini_folder(start: Path) -> Path:
    for folder in (start, *start.parents):
        if any((folder / name).is_file() for name in _INI_FILES):
            return folder
        for name in ("pyproject.toml", "tox.ini", "setup.cfg"):
            with contextlib.suppress(OSError):
                text = (folder / name).read_text(errors="ignore")
                if "[tool.pytest" in text or "[pytest]" in text or "[tool:pytest]" in text:
                    return folder
    return start


def unittest_case_failed(item: pytest.Item, case: object) -> bool:
    """Whether the unittest ``case`` that ``item`` is running has failed so far (setUp, the test
    or tearDown; a skip or an expected failure is not one), asked from inside the case (a
    cleanup), where unittest's own ``_outcome.success`` reads True.

    Python 3.10 collects the errors on ``case._outcome.errors`` and tells the result only after
    the cleanups; 3.11+ tells it at once, and pytest's ``TestCaseFunction``, the case's result,
    keeps them on ``_excinfo`` (pytest 8.0-9.2). False when neither is there.
    """
    import pytest

    errors = getattr(getattr(case, "_outcome", None), "errors", None)
    if isinstance(
        errors, list
    ):  # Python 3.10: (case, exc_info), exc_info None for a passed subtest
        return any(entry[1] is not None for entry in errors)
    return any(
        not isinstance(info.value, (pytest.skip.Exception, pytest.xfail.Exception))
        for info in getattr(item, "_excinfo", None) or ()
    )
