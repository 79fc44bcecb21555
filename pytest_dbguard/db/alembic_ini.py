"""What an alembic.ini names, read the way alembic reads it: the script folder and its env.py,
the extra version folders, the ``[tool.alembic]`` of a pyproject.toml beside it, and whether
env.py takes dbguard's connection (``alembic_runner`` runs the upgrade accordingly).

Read with ``configparser``, ``tomllib`` and ``ast``, not through alembic: a run that reuses its
template fingerprints the migrations without importing it.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pytest_dbguard.exceptions import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

NO_ENV_PY: Final = (
    "{source}: there is no {env_py}. dbguard runs alembic in the folder of {ini}, so a relative "
    "script_location (in its [alembic] section, or in [tool.alembic] of the pyproject.toml beside "
    "it) is read from there: write it relative to that folder (or as %(here)s/...), so that "
    "`alembic -c {ini} upgrade head` works from the shell too."
)
NO_SCRIPT_LOCATION: Final = (
    "{source}: {ini} sets no script_location (neither in its [alembic] section nor in "
    '[tool.alembic] of a pyproject.toml beside it), and alembic stops without one ("No '
    "'script_location' key found in configuration\"). Flask-Migrate's alembic.ini is such a "
    "file: its commands set the folder in code. dbguard runs `alembic -c {ini} upgrade head`: "
    "add `script_location = %(here)s` (the folder of env.py) to its [alembic] section, or build "
    "the schema from the models with dbguard_metadata instead."
)


def script_folder(ini: Path) -> Path | None:
    """The script folder alembic.ini names (``script_location``, relative to the folder of
    alembic.ini, where dbguard runs alembic; ``%(here)s`` and ``package:folder`` as alembic
    reads them), or failing that ``[tool.alembic]`` of the pyproject.toml beside it (alembic
    1.16's ``pyproject`` template); None when neither names one.

    Read with ``configparser`` and ``tomllib`` as alembic's own ``Config`` does, not through
    alembic: a run that reuses its template fingerprints the migrations without importing it.
    """
    options = _ini_options(ini, "script_location")
    if options is None:
        return None
    location = options.get("script_location") or _pyproject_location(ini)
    return _folder(location, ini) if location else None


def _ini_options(ini: Path, *names: str) -> dict[str, str] | None:
    """The named options that alembic.ini's ``[alembic]`` section sets, ``%(here)s`` expanded
    as alembic's Config expands it; None for an ini that configparser cannot read."""
    parser = configparser.ConfigParser({"here": ini.parent.absolute().as_posix()})
    try:
        parser.read(ini)
        return {
            name: value for name in names if (value := parser.get("alembic", name, fallback=""))
        }
    except configparser.Error:
        return None


def _folder(location: str, ini: Path) -> Path | None:
    """A folder as alembic names one: ``package:folder``, absolute, or relative to the folder of
    alembic.ini (where dbguard runs alembic)."""
    if ":" in location and not Path(location).is_absolute():  # "package:folder" form
        package, _, folder = location.partition(":")
        import importlib.util

        try:
            spec = importlib.util.find_spec(package)
        except ImportError:  # a parent package that does not import: alembic's error, later
            spec = None
        if spec is not None and spec.submodule_search_locations:
            return Path(next(iter(spec.submodule_search_locations))) / folder
    return (ini.parent / location).resolve()


def version_folders(ini: Path) -> list[Path]:
    """The folders ``version_locations`` adds (migrations kept outside the script folder), as
    far as they exist: split as alembic splits them (``path_separator``, else the older
    ``version_path_separator``, else spaces and commas), or listed in ``[tool.alembic]``."""
    options = _ini_options(ini, "version_locations", "path_separator", "version_path_separator")
    if options is None:
        return []
    if value := options.get("version_locations"):
        separator = options.get("path_separator") or options.get("version_path_separator")
        split = _SEPARATORS.get(separator or "")
        parts = value.split(split) if split else re.split(r", *|(?: +)", value)
    else:
        listed = _pyproject_section(ini).get("version_locations")
        parts = listed if isinstance(listed, list) else []
    folders = [_folder(str(part).strip(), ini) for part in parts if str(part).strip()]
    return [folder for folder in folders if folder is not None and folder.is_dir()]


# alembic's path_separator values (alembic.config, 1.16).
_SEPARATORS: Final = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}


def pyproject_beside(ini: Path) -> Path | None:
    """The pyproject.toml in the folder of alembic.ini, whose ``[tool.alembic]`` alembic 1.16+
    reads for what the ini leaves out."""
    path = ini.parent / "pyproject.toml"
    return path if path.is_file() else None


def _pyproject_section(ini: Path) -> dict[str, Any]:
    """``[tool.alembic]`` of the pyproject.toml beside alembic.ini, ``%(here)s`` replaced by its
    folder in text values; empty when there is none."""
    toml = pyproject_beside(ini)
    if toml is None:
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pytest's own dependency there
        import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]
    try:
        section = tomllib.loads(toml.read_text()).get("tool", {}).get("alembic", {})
    except (OSError, ValueError):
        return {}
    if not isinstance(section, dict):
        return {}
    here = toml.parent.absolute().as_posix()

    def expand(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("%(here)s", here)
        if isinstance(value, list):
            return [expand(item) for item in value]
        return value

    return {key: expand(value) for key, value in section.items()}


def _pyproject_location(ini: Path) -> str | None:
    location = _pyproject_section(ini).get("script_location")
    return location if isinstance(location, str) else None


def alembic_config(ini: Path) -> Config:
    """alembic's Config of ``ini``, with the pyproject.toml beside it where alembic takes one
    (1.16+: options the ini leaves out, such as ``script_location``, may live there)."""
    from alembic.config import Config

    toml = pyproject_beside(ini)
    if toml is not None:
        with contextlib.suppress(TypeError):  # alembic before 1.16 has no toml_file
            return Config(str(ini), toml_file=str(toml))
    return Config(str(ini))


def env_py(ini: Path) -> Path:
    """The env.py of the script folder alembic.ini names (``alembic`` when it names none)."""
    return (script_folder(ini) or (ini.parent / "alembic").resolve()) / "env.py"


def require_env_py(ini: Path, source: str) -> None:
    """ConfigError when alembic.ini names no script folder, or one without env.py."""
    if script_folder(ini) is None and _ini_options(ini, "script_location") is not None:
        raise ConfigError(NO_SCRIPT_LOCATION.format(source=source, ini=ini))
    path = env_py(ini)
    if not path.is_file() and not path.with_suffix(".pyc").is_file():  # sourceless = true
        raise ConfigError(NO_ENV_PY.format(source=source, env_py=path, ini=ini))


def uses_given_connection(ini: Path) -> bool:
    """Whether env.py reads ``config.attributes`` (alembic's documented way to take a connection).

    A static look, before anything runs: an env.py that ignores the connection must never run
    in this process, where settings it cached may name a database other than the template.
    """
    try:
        tree = ast.parse(env_py(ini).read_text())
    except (OSError, SyntaxError, ValueError):
        return False  # the fresh process reports the problem with alembic's own words
    return any(
        isinstance(node, ast.Attribute) and node.attr == "attributes" for node in ast.walk(tree)
    )
