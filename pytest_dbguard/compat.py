"""The one place that reads other packages' private attributes.

Checked against SQLAlchemy 2.0 and 2.1, and pytest 8 and 9 (``pytest_rootdir``). Each helper degrades to "nothing found" when the
attribute is gone, so a new release costs a guard some precision, never a crash.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Mapper


def all_mappers() -> list[Mapper[Any]]:
    """Every ORM mapper made so far, configured or not, in every registry.

    SQLAlchemy has no public list of its registries (``sqlalchemy.orm.mapperlib._all_registries``,
    present since 1.4); a mapper event covers the mappers made later.
    """
    from sqlalchemy.orm import mapperlib

    all_registries = getattr(mapperlib, "_all_registries", None)
    if all_registries is None:
        return []
    return [mapper for registry in all_registries() for mapper in registry.mappers]


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
