"""Every dbguard setting as the public interface names it: its flag, ini key and environment
variable, its help text and default, and their registration with pytest (``run.config`` resolves
the values)."""

from __future__ import annotations

from typing import Any, Final

import pytest

from pytest_dbguard.records import Record


class Option(Record):
    """One setting: its CLI flag, environment variable and ini key, and how to parse it."""

    __slots__ = (
        "bare",
        "cli",
        "default",
        "env",
        "flag_kind",
        "help",
        "ini_type",
        "metavar",
        "name",
    )
    name: str
    help: str
    default: str | None
    flag_kind: str  # "value" or "switch"
    ini_type: str  # pytest's addini type
    env: bool
    cli: bool
    bare: str | None  # what the flag means without a value (--dbguard-proxy: on)
    metavar: str | None

    def __init__(
        self,
        name: str,
        help: str,
        default: str | None = None,
        flag_kind: str = "value",
        ini_type: str = "string",
        env: bool = True,
        cli: bool = True,
        bare: str | None = None,
        metavar: str | None = None,
    ) -> None:
        self._set_from(locals())

    @property
    def flag(self) -> str:
        return "--dbguard-" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return "dbguard_" + self.name

    @property
    def ini(self) -> str:
        return "dbguard_" + self.name

    @property
    def env_var(self) -> str:
        return "DBGUARD_" + self.name.upper()

    @property
    def ini_help(self) -> str:
        """The ini key's help. One that has a flag points at it: --help shows each text once,
        and pytest wraps every line of it (about a fifth of what dbguard added to --help)."""
        return f"see {self.flag}" if self.cli else self.help

    @property
    def ini_default(self) -> Any:
        """The ini key's default as pytest's addini takes it for the key's type."""
        if self.ini_type in ("linelist", "args"):
            return []
        if self.ini_type == "bool":
            return False
        return None


OPTIONS: Final[tuple[Option, ...]] = (
    Option(
        "url",
        "SQLAlchemy URL of the server to test against; 'sqlite' for SQLite; unset: embedded PostgreSQL.",
        metavar="URL",
    ),
    Option(
        "wait",
        "How long to wait for the server to answer a real query (default 30).",
        default="30",
        metavar="SECONDS",
    ),
    Option(
        "reuse",
        "Keep the embedded cluster and schema template between runs (stop it: dbguard stop).",
        flag_kind="switch",
        ini_type="bool",
    ),
    Option(
        "rebuild",
        "With --dbguard-reuse: build the kept schema templates anew (like pytest-django's --create-db).",
        flag_kind="switch",
        ini_type="bool",
    ),
    Option(
        "worker_isolation",
        "How xdist workers are separated (default auto: a database each, else a schema each).",
        default="auto",
        metavar="auto|database|schema",
    ),
    Option(
        "isolation",
        "Default per-test isolation (default rollback).",
        default="rollback",
        metavar="rollback|truncate|none",
    ),
    Option(
        "proxy",
        "Route the test URL through dbguard's fault proxy (default auto: when a test file mentions "
        "dbguard_faults).",
        default="auto",
        bare="on",
        metavar="on|off|auto",
    ),
    Option(
        "driver",
        "Sync driver of the test URLs: psycopg, psycopg2, pg8000 or psycopg2cffi (default: the "
        "URL's, else the one installed).",
        metavar="DRIVER",
    ),
    Option("metadata", "Schema source: a MetaData or a declarative Base.", metavar="MODULE:ATTR"),
    Option("alembic_ini", "Schema source: alembic.ini; runs 'upgrade head'.", metavar="PATH"),
    Option(
        "check_schema",
        "Compare the schema alembic builds with dbguard_metadata at run start (default off).",
        default="off",
        metavar="error|warn|off",
    ),
    Option(
        "naive_datetime",
        "What to do on naive datetimes bound as parameters (default warn).",
        default="warn",
        metavar="error|warn|off",
    ),
    Option(
        "pg_bindir",
        "PostgreSQL binaries for the embedded server (default: PATH, pg_config, /usr/lib/postgresql/*/bin).",
        metavar="DIR",
    ),
    Option(
        "leaks",
        "What to do on rows other engines commit in a rollback test (default warn).",
        default="warn",
        metavar="warn|error|off",
    ),
    Option(
        "keep_failed",
        "Copy a failed test's data into a database <db>_failed_<n> before its rollback; the "
        "report names it.",
        flag_kind="switch",
        ini_type="bool",
    ),
    Option(
        "report",
        "Write a JSON report of the run: per test its statements, database time and isolation; "
        "per run the server and its timings.",
        metavar="PATH",
    ),
    Option(
        "allow_databases",
        "Databases tests may reach besides the run's test databases: names or URLs.",
        ini_type="args",
        env=False,
        cli=False,
    ),
    Option(
        "env",
        "NAME=VALUE lines exported before conftests load; {worker} {run} {url} ... placeholders.",
        ini_type="linelist",
        env=False,
        cli=False,
    ),
    Option(
        "django_databases",
        "Django database aliases pointed at the worker's database (default: default).",
        ini_type="args",
        env=False,
        cli=False,
    ),
    Option(
        "guard_modules",
        "Modules that must not be imported before dbguard sets the environment.",
        ini_type="args",
        env=False,
        cli=False,
    ),
)
OPTIONS_BY_NAME: Final = {option.name: option for option in OPTIONS}


def add_options(parser: pytest.Parser) -> None:
    """Register every dbguard flag and ini key."""
    group = parser.getgroup("dbguard", "database isolation (pytest-dbguard)")
    for option in OPTIONS:
        if option.cli:
            flag: dict[str, Any] = {"default": None, "dest": option.dest, "help": option.help}
            if option.flag_kind == "switch":
                flag["action"] = "store_true"
            else:
                flag.update(action="store", metavar=option.metavar)
                if option.bare is not None:  # the flag alone means option.bare
                    flag.update(nargs="?", const=option.bare)
            group.addoption(option.flag, **flag)
        parser.addini(option.ini, option.ini_help, type=option.ini_type, default=option.ini_default)  # type: ignore[arg-type]
