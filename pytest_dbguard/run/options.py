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
    ),
    Option(
        "wait", "Seconds to wait for the server to answer a real query (default 30).", default="30"
    ),
    Option(
        "reuse",
        "Keep the embedded cluster and schema template between runs (stop it: dbguard stop).",
        flag_kind="switch",
        ini_type="bool",
    ),
    Option(
        "rebuild",
        "With --dbguard-reuse: drop the kept schema templates and build them anew (like "
        "pytest-django's --create-db). Without reuse every run builds anew: no effect.",
        flag_kind="switch",
        ini_type="bool",
    ),
    Option(
        "worker_isolation",
        "How xdist workers are separated: auto (a database each, else a schema each), database, schema.",
        default="auto",
    ),
    Option(
        "isolation", "Default per-test isolation: rollback, truncate or none.", default="rollback"
    ),
    Option(
        "proxy",
        "Route the test database URL through dbguard's fault proxy: on, off, or auto (on when a "
        "test file mentions dbguard_faults).",
        default="auto",
        bare="on",
        metavar="on|off|auto",
    ),
    Option(
        "driver",
        "SQLAlchemy driver of the test URLs: psycopg or psycopg2 (default: the URL's, else the "
        "one installed, psycopg first).",
    ),
    Option("metadata", "Schema source: 'package.module:attr', a MetaData or a declarative Base."),
    Option("alembic_ini", "Schema source: path to alembic.ini; runs 'upgrade head'."),
    Option(
        "check_schema",
        "Compare the schema 'alembic upgrade head' builds with dbguard_metadata at run start: "
        "error, warn or off (default off; needs both keys).",
        default="off",
    ),
    Option(
        "naive_datetime", "Naive datetimes bound as parameters: error, warn or off.", default="warn"
    ),
    Option(
        "pg_bindir",
        "Folder of the PostgreSQL binaries for the embedded server (default: PATH, pg_config, /usr/lib/postgresql/*/bin).",
    ),
    Option(
        "leaks",
        "Rows that engines other than dbguard's committed during a rollback test: warn, error or off.",
        default="warn",
    ),
    Option(
        "keep_failed",
        "Before a failed test's rollback (or truncate), copy its view of the database into a "
        "database <db>_failed_<n> on the same server, named with a psql command in the report.",
        flag_kind="switch",
        ini_type="bool",
    ),
    Option(
        "report",
        "Write a JSON report of the run to this path: per test its statements, database time, "
        "slowest statements (no values) and isolation; per run the server and its timings.",
        metavar="PATH",
    ),
    Option(
        "allow_databases",
        "Databases tests may connect to besides the run's test databases: names or URLs.",
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
