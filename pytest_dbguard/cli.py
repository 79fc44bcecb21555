"""The ``dbguard`` command (also ``python -m pytest_dbguard``): wait, probe, janitor, stop and
check-schema.

Exit status: 0 success, 1 the database is not ready (or a drop failed, or the schemas differ),
2 bad usage, a bad URL or a missing ini key.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from pytest_dbguard import __version__
from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import ConfigError, DbguardError
from pytest_dbguard.run.setting_values import URL_ENV, command_url

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_dbguard.db.marks import MarkedDatabase

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
_UNITS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_NO_URL: Final = (
    "no database URL: pass one (e.g. postgresql+psycopg://user:password@localhost:5432/app), "
    f"set {URL_ENV}, or run it in a project whose pytest ini file sets dbguard_url."
)


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``6h``, ``2d`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; use a number with s, m, h or d (e.g. 90s, 30m, 6h, 2d)."
        )
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help and on bad usage
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.subparser.prog.endswith(" stop"):  # the cluster kept for this project: no URL
        try:
            status: int = _stop(args)
            return status
        except DbguardError as error:
            _error(f"{args.subparser.prog}: {error}")
            return EXIT_FAILED
    if args.subparser.prog.endswith(" check-schema"):  # the URL is optional: embedded default
        return _guarded(args, _check_schema)
    try:
        text, source = command_url(args.url, _ini_url)
    except ConfigError as error:
        _error(f"{args.subparser.prog}: {error}")
        return EXIT_USAGE
    if not text:
        args.subparser.print_usage(sys.stderr)
        _error(f"{args.subparser.prog}: {_NO_URL}")
        return EXIT_USAGE

    def with_url(args: argparse.Namespace) -> int:
        command: Callable[[argparse.Namespace, DatabaseURL], int] = args.command
        return command(args, DatabaseURL.parse(text, source=source))

    return _guarded(args, with_url)


def _ini_url() -> tuple[str | None, str]:
    """ini ``dbguard_url`` of the pytest ini file a run from here would read, and its wording;
    None when there is none (or no ini file)."""
    from pathlib import Path

    from pytest_dbguard.compat import pytest_ini

    _root, inipath, entries = pytest_ini(Path.cwd())
    value = entries.get("dbguard_url")
    if inipath is None or not isinstance(value, str):
        return None, ""
    if (planted := _planted_below(inipath)) is not None:
        # Found upwards from here, below a folder any account may write to (/tmp), by another
        # account: the driver would send PGPASSWORD or ~/.pgpass's password to whatever server
        # it names. Another account's own project elsewhere (a checkout bind-mounted into a
        # container that runs as root) is read as pytest reads it.
        shared, path, owner = planted
        made = "it" if path == inipath else f"{path}, a folder on the way to it,"
        raise ConfigError(
            f"{inipath} is below {shared}, a folder any account may write to, and another "
            f"account (uid {owner}) made {made}: dbguard takes no server URL from it. Give the "
            f"URL as the command's argument or in ${URL_ENV}, or run it from a folder of your own."
        )
    return value, f"ini dbguard_url in {inipath}"


def _planted_below(path: Path) -> tuple[Path, Path, int] | None:
    """(the folder any account may write to, the file or folder under it, its owner) when an
    account other than this one or root made ``path`` or a folder on the way to it below such a
    folder (``/tmp``); None when nobody did."""
    import stat

    shared: Path | None = None
    for part in [*reversed(path.parents), path]:
        try:
            found = part.lstat()
        except OSError:
            return None
        if shared is not None and found.st_uid not in (os.geteuid(), 0):
            return shared, part, found.st_uid
        if stat.S_ISDIR(found.st_mode) and found.st_mode & stat.S_IWOTH:
            shared = part
    return None


def _guarded(args: argparse.Namespace, command: Callable[[argparse.Namespace], int]) -> int:
    """Run ``command``: a ConfigError is bad usage (exit 2), any other DbguardError a failure (1)."""
    try:
        return command(args)
    except ConfigError as error:
        _error(f"{args.subparser.prog}: {error}")
        return EXIT_USAGE
    except DbguardError as error:
        _error(f"{args.subparser.prog}: {error}")
        return EXIT_FAILED


def _check_schema(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pytest_dbguard.db.check_schema import run

    same, report = run(
        args.url,
        folder=Path.cwd(),
        rootdir=args.rootdir,
        inifile=args.inifile,
        timeout=args.timeout,
        progress=lambda line: _error(f"dbguard check-schema: {line}"),
    )
    print(report)
    return EXIT_OK if same else EXIT_FAILED


def _wait(args: argparse.Namespace, url: DatabaseURL) -> int:
    from pytest_dbguard.server.readiness import wait_until_ready

    result = wait_until_ready(
        url, timeout=args.timeout, progress=lambda line: _error(f"dbguard wait: {line}")
    )
    product = "SQLite" if url.is_sqlite else "PostgreSQL"
    version = f" ({product} {result.server_version})" if result.server_version else ""
    print(
        f"ready: {url} answered SELECT 1{version} after {result.attempts} "
        f"attempt{'' if result.attempts == 1 else 's'}, {result.elapsed_ms:.0f} ms"
    )
    return EXIT_OK


def _probe(args: argparse.Namespace, url: DatabaseURL) -> int:
    from pytest_dbguard.server.readiness import probe

    result = probe(url, timeout=args.timeout)
    if args.json:
        print(json.dumps({"url": str(url), **result.as_dict()}))  # str() hides the password
    elif result.status == "ok":
        print(f"ok: {url} answered in {result.latency_ms:.1f} ms, version {result.server_version}")
    else:
        print(
            f"error: {url}: failed step: {result.stage}. {result.error} "
            f"({result.latency_ms:.1f} ms)"
        )
    return EXIT_OK if result.status == "ok" else EXIT_FAILED


def _janitor(args: argparse.Namespace, url: DatabaseURL) -> int:
    from pytest_dbguard.db.janitor import sweep
    from pytest_dbguard.db.marks import server_of

    report = sweep(url, older_than=args.older_than, dry_run=args.dry_run)
    results = report.swept
    for result in results:
        found = result.database
        mark = found.mark
        what = (
            found.name
            if found.in_database is None
            else f"schema {found.name} in {found.in_database}"
        )
        kept = f", data of failed test {mark.failed_test}" if mark.failed_test else ""
        line = (
            f"{result.action} {what} (run {mark.run}, worker {mark.worker}{kept}, "
            f"{_age(found.age)} old, from {mark.host} pid {mark.pid})"
        )
        print(line + (f": {result.detail}" if result.detail else ""))
    if not results:
        age = _age(args.older_than)
        print(
            f"nothing to drop: no dbguard database older than {age} on {server_of(url)}"
            + (f", and no worker schema in {url.database}" if url.database else "")
        )
    if report.younger:
        print(_younger_line(report.younger, args.older_than))
    failed = sum(result.action == "failed" for result in results)
    return EXIT_FAILED if failed else EXIT_OK


def _stop(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pytest_dbguard.compat import pytest_rootdir
    from pytest_dbguard.server import kept_clusters

    if args.all:
        found, whose = kept_clusters.kept(), "of this user"
    else:
        rootdir = pytest_rootdir(Path.cwd(), rootdir=args.rootdir)
        found, whose = kept_clusters.kept(kept_clusters.reuse_key(rootdir)), f"for {rootdir}"
    if not found:
        folders = ", ".join(str(f) for f in kept_clusters.storage_folders()) or "none exists yet"
        print(
            f"nothing to stop: no cluster kept by --dbguard-reuse {whose} "
            f"(looked in dbguard's storage folders: {folders}). A template kept on an external "
            "server (--dbguard-url) is a database there: dbguard janitor --older-than 0 URL "
            "drops it"
        )
        others = [] if args.all else kept_clusters.kept()
        if others:  # run from another folder than the project's rootdir, say its parent
            print(
                "kept for other projects: "
                + "; ".join(sorted(cluster.describe() for cluster in others))
                + ". Stop one with dbguard stop --rootdir DIR (its rootdir), or all with "
                "dbguard stop --all (the only way for one kept by an older dbguard, which "
                "recorded no project)"
            )
        return EXIT_OK
    failed = 0
    for cluster in found:
        if kept_clusters.in_use(cluster.root):
            failed += 1
            _error(
                f"dbguard stop: left {cluster.describe()} running: a pytest run is using it "
                "now. Run dbguard stop again once that run has ended."
            )
            continue
        running = cluster.server_pid is not None
        try:
            kept_clusters.stop(cluster)
        except OSError as error:
            failed += 1
            _error(f"dbguard stop: could not remove {cluster.root}: {error}")
            continue
        what = "stopped" if running else "removed (its server was no longer running)"
        print(f"{what} {cluster.describe()}, with its templates; folder removed")
    return EXIT_FAILED if failed else EXIT_OK


YOUNGER_NAMED: Final = 5


def _younger_line(younger: list[MarkedDatabase], older_than: float) -> str:
    """The databases a sweep left for their age, oldest first: a crashed run's that is not old
    enough yet, a CI job's still running, or a kept template of ``--dbguard-reuse``."""
    from pytest_dbguard.db.kept_templates import REUSE_RUN

    def described(found: MarkedDatabase) -> str:
        whose = (
            "kept template of --dbguard-reuse"
            if found.mark.run == REUSE_RUN
            else (f"run {found.mark.run}")
        )
        return f"{found.name} ({whose}, {_age(found.age)} old)"

    named = ", ".join(described(found) for found in younger[:YOUNGER_NAMED])
    more = f" and {len(younger) - YOUNGER_NAMED} more" if len(younger) > YOUNGER_NAMED else ""
    return (
        f"left {len(younger)} younger than {_age(older_than)}: {named}{more}. "
        "--older-than 0 drops them too, except those a run is using"
    )


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f}".removesuffix(".0") + unit
    return f"{seconds:.0f}s"


def _error(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbguard",
        description="Database readiness and cleanup for pytest-dbguard, usable on its own in CI.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(metavar="COMMAND", required=True)
    url_help = f"SQLAlchemy database URL (default: ${URL_ENV}, then ini dbguard_url)"

    wait = commands.add_parser(
        "wait",
        help="retry SELECT 1 until it succeeds; exit 1 with the failing step otherwise",
        description="Prove the server answers a real query, retrying with backoff until the "
        "timeout; for CI steps and compose healthchecks.",
    )
    wait.add_argument("url", nargs="?", metavar="URL", help=url_help)
    wait.add_argument(
        "--timeout", type=parse_duration, default=30.0, metavar="S", help="give up after S (30)"
    )
    wait.set_defaults(command=_wait, subparser=wait)

    check = commands.add_parser(
        "probe", help="one check: status, latency, version", description="One check, no retries."
    )
    check.add_argument("url", nargs="?", metavar="URL", help=url_help)
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument(
        "--timeout", type=parse_duration, default=5.0, metavar="S", help="attempt timeout (5)"
    )
    check.set_defaults(command=_probe, subparser=check)

    janitor = commands.add_parser(
        "janitor",
        help="drop test databases (and worker schemas) dbguard created and left behind",
        description="Drop databases left by crashed runs, and schema-mode worker schemas "
        "(dbg_<run>_<worker>) in the URL's database: only those carrying dbguard's mark and "
        "name shape, created longer ago than --older-than, whose run is over.",
    )
    janitor.add_argument("url", nargs="?", metavar="URL", help=url_help)
    janitor.add_argument(
        "--older-than",
        type=parse_duration,
        default=parse_duration("6h"),
        metavar="AGE",
        help="only databases at least this old: 90s, 30m, 6h (default), 2d",
    )
    janitor.add_argument("--dry-run", action="store_true", help="list, drop nothing")
    janitor.set_defaults(command=_janitor, subparser=janitor)

    stop = commands.add_parser(
        "stop",
        help="stop the embedded cluster --dbguard-reuse keeps for this project",
        description="Run from the project folder: stops the embedded PostgreSQL cluster that "
        "--dbguard-reuse keeps for this project (found the way pytest finds the rootdir: the "
        "ini file upwards from here), with its templates, and removes its folder.",
    )
    stop.add_argument(
        "--all", action="store_true", help="stop every cluster kept by this user, for any project"
    )
    stop.add_argument(
        "--rootdir", metavar="DIR", help="the project's rootdir, if you pass --rootdir to pytest"
    )
    stop.set_defaults(command=_stop, subparser=stop)

    drift = commands.add_parser(
        "check-schema",
        help="compare the schema `alembic upgrade head` builds with dbguard_metadata",
        description="Run from the project folder: reads dbguard_alembic_ini and dbguard_metadata "
        "from the ini file pytest finds there, migrates a new database of its own (marked, "
        "dropped afterwards) and lists each difference. Exit 0: they match; 1: they differ.",
    )
    drift.add_argument(
        "url",
        nargs="?",
        metavar="URL",
        help=f"server to migrate on (default: ${URL_ENV}, ini dbguard_url, else a throwaway "
        "embedded PostgreSQL)",
    )
    drift.add_argument(
        "--timeout", type=parse_duration, default=30.0, metavar="S", help="server wait (30)"
    )
    drift.add_argument(
        "--rootdir", metavar="DIR", help="the project's rootdir, if you pass --rootdir to pytest"
    )
    drift.add_argument(
        "-c", dest="inifile", metavar="FILE", help="the ini file, if you pass -c to pytest"
    )
    drift.set_defaults(command=_check_schema, subparser=drift)
    return parser
