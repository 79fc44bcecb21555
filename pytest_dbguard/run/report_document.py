"""The run report's JSON document (``--dbguard-report PATH``): each process's part and the parts
merged into one document (``report_file`` checks the path before the run and writes the file).

Works without pytest. Every value put in is either a number, a name dbguard chose, a test id
or a statement normalised by ``guards.statement_timing`` (no parameter values, no literals);
the server is named by host, port, driver and version, never by its URL, and a test id that
holds one of the run's passwords (``parametrize`` with a URL) has it masked, so no password can
reach the file.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pytest_dbguard.run import report_file

SCHEMA: Final = "pytest-dbguard-report/1"
VERSION: Final = 1
WORKER_PART_KEY: Final = "dbguard_report"  # in an xdist worker's ``workeroutput``
CONTROLLER: Final = "controller"

WRITE_FAILED: Final = (
    "dbguard: could not write the run report to {path}: {error}. The tests ran as reported "
    "above; check the folder's space and permissions (--dbguard-report)."
)


def resolve_path(text: str, *, base: Path) -> Path:
    """``text`` as an absolute path (``~`` expanded; relative to ``base``), not resolved through
    symlinks: ``report_file`` refuses a symlink at the path and another account's on the way."""
    path = Path(text).expanduser()
    return Path(os.path.normpath(base / path))


def process_entry(
    name: str,
    *,
    ready_ms: float | None,
    ready_attempts: int | None,
    database: str | None = None,
    layout: str | None = None,
    template: str | None = None,
    template_ms: float | None = None,
    template_built: bool | None = None,
    clone_ms: float | None = None,
) -> dict[str, Any]:
    """One process's start-up, as measured by the run (see the README's "Run report")."""
    return {
        "process": name,
        "ready_ms": _ms(ready_ms),
        "ready_attempts": ready_attempts,
        "database": database,
        "layout": layout,
        "template": template,
        "template_ms": _ms(template_ms),
        "template_built": template_built,
        "clone_ms": _ms(clone_ms),
    }


def per_test_entry(
    nodeid: str,
    *,
    worker: str,
    outcome: str,
    isolation: str,
    duration_ms: float,
    statements: int,
    database_ms: float,
    slowest: Iterable[tuple[str, float]],
    leaked_tables: Sequence[str] | None,
) -> dict[str, Any]:
    """One test's line of the report."""
    return {
        "nodeid": nodeid,
        "worker": worker,
        "outcome": outcome,
        "isolation": isolation,
        "duration_ms": _ms(duration_ms),
        "statements": statements,
        "database_ms": _ms(database_ms),
        "slowest": [{"sql": sql, "ms": _ms(ms)} for sql, ms in slowest],
        "leaked_tables": list(leaked_tables) if leaked_tables is not None else None,
    }


def statement_entries(slowest: Iterable[tuple[str, float, str]]) -> list[dict[str, Any]]:
    """The run's slowest statements as the report lists them."""
    return [{"sql": sql, "ms": _ms(ms), "test": nodeid} for sql, ms, nodeid in slowest]


def part(
    process: Mapping[str, Any], tests: Sequence[Mapping[str, Any]], slowest: Sequence[Any]
) -> dict[str, Any]:
    """What one process contributes (an xdist worker sends it to the controller as is)."""
    return {"process": dict(process), "tests": list(tests), "slowest_statements": list(slowest)}


def document(
    *,
    run: str,
    server: Mapping[str, Any],
    isolation: str,
    server_start_ms: float | None,
    parts: Sequence[Mapping[str, Any]],
    missing_workers: Sequence[str] = (),
    exit_status: int,
    per_run: int,
    version: str,
) -> dict[str, Any]:
    """The whole report: the run's facts and every process's part, merged."""
    tests = sorted(
        (test for one in parts for test in one.get("tests", ())), key=lambda t: t["nodeid"]
    )
    slowest = sorted(
        (entry for one in parts for entry in one.get("slowest_statements", ())),
        key=lambda entry: -entry["ms"],
    )[:per_run]
    processes = sorted(
        (one["process"] for one in parts if one.get("process")),
        key=lambda p: (p["process"] != CONTROLLER, p["process"]),
    )
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "dbguard": version,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run": run,
        "exit_status": exit_status,
        "server": dict(server),
        "isolation": isolation,
        "timings": {"server_start_ms": _ms(server_start_ms), "processes": processes},
        "missing_workers": sorted(missing_workers),
        "totals": {
            "tests": len(tests),
            "statements": sum(test["statements"] for test in tests),
            "database_ms": _ms(sum(test["database_ms"] for test in tests)),
        },
        "slowest_statements": slowest,
        "tests": tests,
    }


def dumps(report: Mapping[str, Any]) -> str:
    """The report as text: its head indented, then one line per test (``grep`` finds a test's
    line; ``json.dumps`` with ``indent`` would use its slow pure-Python encoder for them all)."""
    head = json.dumps(
        {key: value for key, value in report.items() if key != "tests"},
        indent=2,
        ensure_ascii=False,
    )
    lines = ",\n".join(f"    {json.dumps(test, ensure_ascii=False)}" for test in report["tests"])
    tests = f'  "tests": [\n{lines}\n  ]' if lines else '  "tests": []'
    return f"{head[:-2]},\n{tests}\n}}\n"


def write(path: Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` to ``path`` atomically (``report_file``); OSError when it cannot."""
    report_file.write(path, dumps(report))


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
