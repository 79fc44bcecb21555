"""How each setting's raw text (flag, variable or ini line) becomes its value, with an error that
names where the bad value came from; the choices each setting takes."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pytest_dbguard.config_errors import ConfigError
from pytest_dbguard.db.urls import DatabaseURL, server_pattern

ISOLATION_CHOICES: Final = ("rollback", "truncate", "none")
WORKER_ISOLATION_CHOICES: Final = ("auto", "database", "schema")
NAIVE_DATETIME_CHOICES: Final = ("error", "warn", "off")
PROXY_CHOICES: Final = ("on", "off", "auto")
SYNC_DRIVER_CHOICES: Final = ("psycopg", "psycopg2", "pg8000", "psycopg2cffi")
LEAKS_CHOICES: Final = ("warn", "error", "off")
CHECK_SCHEMA_CHOICES: Final = ("error", "warn", "off")
SQLITE_KEYWORD: Final = "sqlite"
URL_ENV: Final = "DBGUARD_URL"


def command_url(argument: str | None, ini: Callable[[], tuple[str | None, str]]) -> tuple[str, str]:
    """The URL text a ``dbguard`` command uses and where it came from, in a run's order: its URL
    argument, then ``DBGUARD_URL``, then ini ``dbguard_url`` (``ini()`` is asked only then, for
    the text and its wording); ``("", "")`` when none is set."""
    environ = os.environ.get(URL_ENV)
    for text, source in ((argument, "URL argument"), (environ, f"environment variable {URL_ENV}")):
        if text and text.strip():
            return text, source
    text, source = ini()
    return (text, source) if text and text.strip() else ("", "")


def _choice(choices: tuple[str, ...], noun: str | None = None) -> Callable[[str, str, str], str]:
    def parse(value: str, name: str, source: str) -> str:
        text = value.strip().lower()
        if text not in choices:
            raise ConfigError(
                f"{source} = {value!r} is not a valid {noun or name.replace('_', ' ')}; "
                f"choose one of: {', '.join(choices)}."
            )
        return text

    return parse


def _seconds(value: str, name: str, source: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"{source} = {value!r} is not a number of seconds; use e.g. 30 or 2.5.")
    return seconds


def _switch(value: Any, name: str, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{source} = {value!r} is not a switch; use 1/true/yes or 0/false/no.")


def _proxy(value: Any, name: str, source: str) -> str:
    # A switch spelling (ini dbguard_proxy = true, DBGUARD_PROXY=0) is read as on/off.
    text = str(value).strip().lower()
    if text in PROXY_CHOICES:
        return text
    try:
        return "on" if _switch(value, name, source) else "off"
    except ConfigError:
        raise ConfigError(
            f"{source} = {value!r} is not a valid proxy setting; choose one of: on, off, auto "
            "(on and off may also be written as a switch: 1/true/yes, 0/false/no)."
        ) from None


def _driver(value: str, name: str, source: str) -> str:
    from pytest_dbguard.db.urls import driver_installed

    driver = str(value).strip()
    if driver not in SYNC_DRIVER_CHOICES:
        raise ConfigError(
            f"{source} = {value!r} is not a synchronous PostgreSQL driver SQLAlchemy knows; "
            f"choose one of: {', '.join(SYNC_DRIVER_CHOICES)}."
        )
    if not driver_installed(driver):
        package = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}.get(driver, driver)
        raise ConfigError(
            f"{source} = {driver!r}, but that driver is not installed here: "
            f"pip install {package!r}, or leave the setting out to use the one installed."
        )
    return driver


# As text: re compiles it on first use, not in every run's import.
_ENV_URL_DRIVER: Final = r"\bpostgres(?:ql)?\+(\w+)://"


def driver_in_env_lines(lines: Sequence[str]) -> tuple[str, str] | None:
    """The first ``dbguard_env`` variable whose value is a PostgreSQL URL naming a synchronous
    driver, and that driver (``DATABASE_URL=postgresql+psycopg2://...`` gives psycopg2)."""
    for line in lines:
        name, sep, value = line.partition("=")
        match = re.search(_ENV_URL_DRIVER, value) if sep else None
        if match is not None and match.group(1) in SYNC_DRIVER_CHOICES:
            return name.strip(), match.group(1)
    return None


def _module_attr(value: str, name: str, source: str) -> str:
    module, sep, attr = value.strip().partition(":")
    parts = [*module.split("."), *attr.split(".")]
    if not sep or not all(part.isidentifier() for part in parts):
        raise ConfigError(
            f"{source} = {value!r} is not of the form 'package.module:attribute' "
            "(e.g. 'app.models:Base' or 'app.db:metadata')."
        )
    return value.strip()


def _text(value: str, name: str, source: str) -> str:
    return str(value).strip()


def _databases(value: list[str], name: str, source: str) -> tuple[str, ...]:
    """Database names or URLs (the run's own server as ``{host}:{port}``); a URL that does not
    parse is an error naming ``source``."""
    for entry in value:
        if server_pattern(entry, source) is None and "://" in entry:
            DatabaseURL.parse(entry, source=source)
    return tuple(value)


PARSERS: Final[Mapping[str, Callable[[Any, str, str], Any]]] = {
    "wait": _seconds,
    "reuse": _switch,
    "rebuild": _switch,
    "keep_failed": _switch,
    "proxy": _proxy,
    "driver": _driver,
    "worker_isolation": _choice(WORKER_ISOLATION_CHOICES),
    "isolation": _choice(ISOLATION_CHOICES),
    "naive_datetime": _choice(NAIVE_DATETIME_CHOICES),
    "leaks": _choice(LEAKS_CHOICES, "leak report setting"),
    "check_schema": _choice(CHECK_SCHEMA_CHOICES, "schema drift check setting"),
    "allow_databases": _databases,
    "metadata": _module_attr,
    "alembic_ini": _text,
    "pg_bindir": _text,
    "report": _text,
}


def parse(name: str, raw: Any, source: str) -> Any:
    """Parse one raw value of setting ``name`` as a run does; ConfigError names ``source``."""
    parser = PARSERS.get(name)
    return parser(raw, name, source) if parser is not None and raw is not None else raw


def find_from_rootdir(module_name: str, rootdir: Path) -> None:
    """Put ``rootdir`` on sys.path when the module's top package lives there and is not
    importable otherwise (pytest-django does the same with the folder of manage.py)."""
    top = module_name.split(".")[0]
    if not ((rootdir / top).is_dir() or (rootdir / f"{top}.py").is_file()):
        return
    if str(rootdir) not in sys.path and importlib.util.find_spec(top) is None:
        sys.path.insert(0, str(rootdir))
