"""Every dbguard setting, resolved once (CLI > environment > ini > default) into a frozen object."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

from pytest_dbguard.compat import NOT_TOML, ini_keys, ini_raw, override_ini, pytest_ini, toml_value
from pytest_dbguard.config_errors import ConfigError
from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.records import Record
from pytest_dbguard.run.options import OPTIONS, OPTIONS_BY_NAME, Option
from pytest_dbguard.run.setting_values import PARSERS, SQLITE_KEYWORD, driver_in_env_lines

T = TypeVar("T")


class Settings(Record):
    """Resolved settings of one run; ``sources`` says where each value came from, for errors."""

    __slots__ = (
        "alembic_ini",
        "allow_databases",
        "check_schema",
        "driver",
        "env_lines",
        "guard_modules",
        "isolation",
        "keep_failed",
        "leaks",
        "metadata",
        "naive_datetime",
        "pg_bindir",
        "proxy",
        "rebuild",
        "report",
        "reuse",
        "sources",
        "sqlite_requested",
        "url",
        "wait",
        "worker_isolation",
    )
    url: DatabaseURL | None  # None: the embedded default
    sqlite_requested: bool
    wait: float
    reuse: bool
    rebuild: bool
    worker_isolation: str
    isolation: str
    proxy: str  # on, off or auto
    driver: str | None
    metadata: str | None
    alembic_ini: str | None
    check_schema: str  # error, warn or off: the schema drift check at run start
    naive_datetime: str
    pg_bindir: str | None
    leaks: str
    keep_failed: bool
    report: Path | None  # --dbguard-report, absolute (not followed through symlinks)
    allow_databases: tuple[str, ...]
    env_lines: tuple[str, ...]
    guard_modules: tuple[str, ...]
    sources: Mapping[str, str]

    def __init__(
        self,
        *,
        url: DatabaseURL | None,
        sqlite_requested: bool,
        wait: float,
        reuse: bool,
        rebuild: bool,
        worker_isolation: str,
        isolation: str,
        proxy: str,
        driver: str | None,
        metadata: str | None,
        alembic_ini: str | None,
        check_schema: str,
        naive_datetime: str,
        pg_bindir: str | None,
        leaks: str,
        keep_failed: bool,
        report: Path | None,
        allow_databases: tuple[str, ...],
        env_lines: tuple[str, ...],
        guard_modules: tuple[str, ...],
        sources: Mapping[str, str],
    ) -> None:
        self._set_from(locals())

    def source_of(self, name: str) -> str:
        """Human wording of where setting ``name`` came from."""
        return self.sources.get(name, "default")


def _raw(
    config: pytest.Config, namespace: Any, option: Option, environ: Mapping[str, str]
) -> tuple[Any, str] | None:
    """The highest-precedence raw value of ``option`` and a wording of its source."""
    if option.cli:
        value = getattr(namespace, option.dest, None)
        if value is not None:
            return value, option.flag
    if option.env and environ.get(option.env_var, "") != "":
        return environ[option.env_var], f"environment variable {option.env_var}"
    if option.ini not in ini_keys(config):
        return None
    where = ini_source(config, option.ini)
    native = toml_value(config, option.ini)
    if native is not NOT_TOML:
        table = (
            "[tool.pytest]"
            if config.inipath and config.inipath.name == "pyproject.toml"
            else "[pytest]"
        )
        ini_value = _from_toml(option, native, where, table)
    else:
        ini_value = _from_ini(config, option, where)
    if ini_value not in (None, "", [], False):
        return ini_value, where
    return None


def _from_ini(config: pytest.Config, option: Option, where: str) -> Any:
    try:
        return config.getini(option.ini)
    except (ValueError, pytest.UsageError):
        # pytest's own "invalid truth value 'maybe'" names neither the key nor the file
        raise ConfigError(
            f"{where} = {ini_raw(config, option.ini)!r} is not a switch; "
            "use true or false (also 1/0, yes/no, on/off)."
        ) from None


def _from_toml(option: Option, value: Any, where: str, table: str) -> Any:
    """A value of pytest 9's native TOML table (``[tool.pytest]``, or ``[pytest]`` of a
    pytest.toml), which keeps TOML's types: a number is taken as text (``dbguard_wait = 30``); a
    value of the wrong kind is a ConfigError that shows the TOML to write (pytest's own check
    answered a traceback or "not a switch")."""
    if option.ini_type == "bool":
        if isinstance(value, bool):
            return value
        fix = f"true or false, without quotes: {option.ini} = true"
    elif option.ini_type in ("args", "linelist"):
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        if isinstance(value, str):
            import shlex

            items = shlex.split(value) if option.ini_type == "args" else value.splitlines()
            fix = f"a list of strings: {option.ini} = {_toml(items)}"
        else:
            fix = f'a list of strings: {option.ini} = ["...", "..."]'
    else:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        fix = f'a string, in quotes: {option.ini} = "..."'
    raise ConfigError(f"{where} = {_toml(value)}: {table} keeps TOML's types; write {fix}.")


def _toml(value: Any) -> str:
    """``value`` as TOML writes it: strings, numbers, booleans and lists of them as JSON does
    (the same forms); anything else (a date, a table) as Python shows it."""
    import json

    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def resolve(
    config: pytest.Config, namespace: Any, environ: Mapping[str, str] | None = None
) -> Settings:
    """Resolve every setting in the order CLI > environment > ini > default; ConfigError on bad values."""
    environ = os.environ if environ is None else environ
    _check_unknown_ini_keys(config)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        found = _raw(config, namespace, option, environ)
        if found is None:
            raw, source = option.default, "default"
        else:
            raw, source = found
            sources[option.name] = source
        parse = PARSERS.get(option.name)
        values[option.name] = parse(raw, option.name, source) if parse and raw is not None else raw

    url_text: str | None = values["url"]
    url: DatabaseURL | None = None
    sqlite_requested = False
    if url_text is not None and url_text.strip().lower() == SQLITE_KEYWORD:
        sqlite_requested = True
    elif url_text:
        url = DatabaseURL.parse(url_text, source=sources["url"])
    elif url_text is not None and sources.get("url") == OPTIONS_BY_NAME["url"].flag:
        # An empty flag (a CI variable that was never set: --dbguard-url "$DB") would otherwise
        # silently override the ini file's URL with the embedded server.
        raise ConfigError(
            "--dbguard-url is empty. Give a URL (postgresql+psycopg://user:password@host:5432/db), "
            "'sqlite' for SQLite, or leave the flag out: then DBGUARD_URL, ini dbguard_url or the "
            "embedded PostgreSQL is used, in that order."
        )
    if values["driver"] and (sqlite_requested or (url is not None and url.is_sqlite)):
        raise ConfigError(
            f"{sources['driver']} = {values['driver']!r} names a PostgreSQL driver, but this run "
            f"uses SQLite ({sources['url']}); drop one of the two."
        )
    if values["driver"] is None and not sqlite_requested and (url is None or url.driver is None):
        # The project's own URL in dbguard_env names its driver: dbguard's engines use it too.
        found = driver_in_env_lines(values["env"] or ())
        if found is not None:
            variable, driver = found
            sources["driver"] = f"the driver of {variable} in ini dbguard_env"
            values["driver"] = PARSERS["driver"](driver, "driver", sources["driver"])
    report = _report_path(config, values["report"], sources.get("report"))
    if values["check_schema"] != "off":
        # Both set is fine: alembic builds the schema, the metadata is what it is compared with.
        missing = [f"dbguard_{key}" for key in ("metadata", "alembic_ini") if not values[key]]
        if missing:
            raise ConfigError(
                f"{sources['check_schema']} = {values['check_schema']!r} compares the schema "
                "'alembic upgrade head' builds with the models, but "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set. Set "
                "dbguard_alembic_ini = path/alembic.ini and dbguard_metadata = package.module:Base "
                "in the ini file, or set dbguard_check_schema = off."
            )
    return Settings(
        url=url,
        sqlite_requested=sqlite_requested,
        wait=values["wait"],
        reuse=bool(values["reuse"]),
        rebuild=bool(values["rebuild"]),
        worker_isolation=values["worker_isolation"],
        isolation=values["isolation"],
        proxy=values["proxy"],
        driver=values["driver"],
        metadata=values["metadata"],
        alembic_ini=values["alembic_ini"],
        check_schema=values["check_schema"],
        naive_datetime=values["naive_datetime"],
        pg_bindir=values["pg_bindir"],
        leaks=values["leaks"],
        keep_failed=bool(values["keep_failed"]),
        report=report,
        allow_databases=values["allow_databases"] or (),
        env_lines=tuple(values["env"] or ()),
        guard_modules=tuple(values["guard_modules"] or ()),
        sources=sources,
    )


def _report_path(config: pytest.Config, text: str | None, source: str | None) -> Path | None:
    """The report's path: relative to the ini file's folder when the ini file set it, else to
    the folder pytest was started in. An empty value given on purpose is an error, not "off"."""
    if text is None:
        return None
    if not text:
        raise ConfigError(
            f"{source} is empty. Give the report's path (--dbguard-report dbguard-report.json), "
            "or leave the setting out to write no report."
        )
    from_ini = source is not None and source.startswith("ini ") and config.inipath is not None
    base = config.inipath.parent if from_ini and config.inipath else config.invocation_params.dir
    from pytest_dbguard.run import report_document  # only with --dbguard-report

    return report_document.resolve_path(text, base=base)


SPLIT_FLAG: Final = (
    "{flag} {value}: written as two words, a path that exists outside the folder pytest started "
    "in is taken by pytest for a test path when it looks for the rootdir and the ini file (before "
    "any plugin's options are known): it chose {chosen} instead of this project's {ini_file}. "
    "Write it as one word, {flag}={value}, or set {variable} or ini {ini} instead."
)


# Options whose value is a path that may exist outside the project (see check_split_path_flags).
SPLIT_PATH_OPTIONS: Final = ("report", "pg_bindir")


def check_split_path_flags(config: pytest.Config, tokens: Sequence[str]) -> None:
    """Fail on ``--dbguard-report PATH`` or ``--dbguard-pg-bindir PATH`` (two words) when that
    word made pytest miss the project's ini file: pytest chooses its rootdir and ini file from
    the command line's words before dbguard's options exist, so an existing path outside the
    folder it started in can root the run there instead."""
    invocation_dir = config.invocation_params.dir
    flags = {option.flag: option for option in OPTIONS if option.name in SPLIT_PATH_OPTIONS}
    for flag, value in itertools.pairwise(tokens):
        option = flags.get(flag)
        path = Path(os.path.normpath(invocation_dir / Path(value).expanduser()))
        if option is None or not path.exists() or path.is_relative_to(invocation_dir):
            continue
        expected = pytest_ini(invocation_dir)[1]  # without that word: the project's ini file
        if expected is not None and expected != config.inipath:
            chosen = config.inipath or f"no ini file (rootdir {config.rootpath})"
            raise ConfigError(
                SPLIT_FLAG.format(
                    flag=flag,
                    value=value,
                    chosen=chosen,
                    ini_file=expected,
                    variable=option.env_var,
                    ini=option.ini,
                )
            )


def ini_source(config: pytest.Config, key: str) -> str:
    """How a message names an ini key's value: ``ini KEY in pytest.ini``, or ``ini KEY in -o``."""
    return f"ini {key}{_ini_place(config, key)}"


def _ini_place(config: pytest.Config, key: str) -> str:
    """`` in -o`` for a key given with ``-o``/``--override-ini``, else `` in <the ini file>``."""
    if key in override_ini(config):
        return " in -o"
    return f" in {config.inipath.name}" if config.inipath else ""


def _check_unknown_ini_keys(config: pytest.Config) -> None:
    """A misspelled ``dbguard_*`` ini key is an error, not a silently ignored setting."""
    known = {option.ini for option in OPTIONS}
    for key in ini_keys(config):
        if key.startswith("dbguard") and key not in known:
            import difflib  # only for the error: its import costs every run 2.7M instructions

            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = _ini_place(config, key)
            raise ConfigError(
                f"Unknown ini key {key!r}{where}.{hint} Known keys: {', '.join(sorted(known))}."
            )
