"""Part ``p`` of ``ci_path.py``: where dbguard's fixed cost goes on the external path.

Not a benchmark of its own (``run_all.py`` skips files starting with ``_``). For the 1-test suite
on the external server: the connections each run opens (from the server log), what one TCP +
SCRAM connection and one fresh SQLAlchemy engine cost, ``-X importtime`` of dbguard's run next to
the recipe's, and cProfile of dbguard's pytest process (top 25 cumulative, the biggest
``tottime`` entries, which show the waiting, and the functions the issue suspects).
"""

from __future__ import annotations

import cProfile  # noqa: F401 - run as ``-m cProfile`` in the subprocess; imported to fail early
import io
import pstats
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as common
import _external as external
from _ci_measure import orm_suite

IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
WATCHED_IMPORTS = (
    "sqlalchemy",
    "sqlalchemy.orm",
    "psycopg",
    "sqlalchemy.ext.asyncio",
    "asyncio",
    "pytest_dbguard.aio.async_fixtures",
    "pytest_dbguard.db.databases",
    "pytest_dbguard.server.readiness",
    "models",
    "conftest",
)
SUSPECTS = (
    r"_schema_mode|can_create_databases|admin_engine|provision_database|wait_until_ready"
    r"|drop_database|build_in|janitor|async_fixtures|first_connect|initialize|gc.collect"
)


def _connect_costs(server: external.ExternalServer, reps: int = 20) -> None:
    """One psycopg connection (TCP + SCRAM) and one fresh engine's first connection, medians."""
    import psycopg
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    plain = server.url().replace("postgresql+psycopg://", "postgresql://")

    def timed(job: Callable[[], object]) -> tuple[float, float, float]:
        before_server = server.cpu()
        wall, cpu = time.perf_counter(), time.process_time()
        job()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        time.sleep(0.01)
        return wall, cpu, server.cpu() - before_server

    def psycopg_once() -> None:
        psycopg.connect(plain).close()

    reused = create_engine(server.url(), poolclass=NullPool)
    reused.connect().close()  # the dialect initialises on an engine's first connection

    def reused_engine() -> None:
        with reused.connect() as connection:
            connection.execute(text("SELECT 1"))

    def fresh_engine() -> None:
        engine = create_engine(server.url(), poolclass=NullPool)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()

    jobs = {
        "psycopg.connect + close (TCP + SCRAM)": psycopg_once,
        "SELECT 1 on a new connection of an existing NullPool engine": reused_engine,
        "new engine + first connection + SELECT 1 (dialect initialise)": fresh_engine,
    }
    results = common.alternate(list(jobs), reps, lambda name: timed(jobs[name]))
    reused.dispose()
    rows = [
        [
            name,
            common.spread([s[0] for s in samples], 1000, 1),
            common.spread([s[1] for s in samples], 1000, 1),
            f"{common.median([s[2] for s in samples]) * 1000:.0f}",
        ]
        for name, samples in results.items()
    ]
    print(common.table(["one connection", "wall ms", "client CPU ms", "server CPU ms"], rows))
    print(
        f"{reps} alternating repetitions; server CPU in 10 ms clock ticks, so only a rough median"
    )


def _connections(
    server: external.ExternalServer, suite: Path, env: dict[str, str], plugins: list[str]
) -> None:
    offset = server.log_offset()
    common.run_pytest(suite, common.pytest_command(plugins=plugins), env=env)
    found = re.findall(
        r"connection authorized: user=(\S+) database=(\S+)", server.log_since(offset)
    )
    who = "dbguard" if plugins else "recipe"
    print(
        f"connections of one {who} 1-test run, in order: {len(found)}: "
        + ", ".join(db for _, db in found)
    )


def _imports(suite: Path, env: dict[str, str], plugins: list[str]) -> dict[str, Any]:
    command = common.pytest_command("-s", plugins=plugins)  # -s: importtime writes to stderr
    command[1:1] = ["-X", "importtime"]
    done = subprocess.run(command, cwd=suite, env=env, capture_output=True, text=True)
    lines = [m for m in map(IMPORT_LINE.match, done.stderr.splitlines()) if m]
    entries = [(int(m.group(2)) / 1000, len(m.group(3)) // 2, m.group(4)) for m in lines]
    own = {
        m.group(4): int(m.group(1)) / 1000 for m in lines if m.group(4).startswith("pytest_dbguard")
    }
    top = sorted(((ms, name) for ms, depth, name in entries if depth == 0), reverse=True)
    chains = {}
    for index, (ms, depth, name) in enumerate(entries):
        if name in WATCHED_IMPORTS and name not in chains:
            chain, level = [name], depth
            for _ms, other_depth, other in entries[index + 1 :]:
                if other_depth < level:
                    chain.append(other)
                    level = other_depth
                if level == 0:
                    break
            chains[name] = (ms, " <- ".join(chain))
    return {"total": sum(ms for ms, _ in top), "top": top[:12], "chains": chains, "own": own}


def _cprofile(suite: Path, env: dict[str, str], tmp: Path, plugins: list[str]) -> None:
    who = "dbguard" if plugins else "recipe"
    out = tmp / f"p_{who}.prof"
    command = common.pytest_command(plugins=plugins)
    command[1:1] = ["-m", "cProfile", "-o", str(out)]
    common.run_pytest(suite, command, env=env)
    reports = [
        ("top 25 cumulative", "cumulative", 25, None),
        ("top 12 tottime (the waiting shows here)", "tottime", 12, None),
        ("the issue's suspects, cumulative", "cumulative", 20, SUSPECTS),
    ]
    if not plugins:
        reports = [("top 12 cumulative", "cumulative", 12, None), reports[1]]
    for title, sort, amount, restriction in reports:
        buffer = io.StringIO()
        stats = pstats.Stats(str(out), stream=buffer).strip_dirs().sort_stats(sort)
        stats.print_stats(*((restriction,) if restriction else ()), amount)
        body = buffer.getvalue()
        start = body.find("   ncalls")
        print(f"\ncProfile of the {who} 1-test external run, {title}:")
        print(external.hide(body[start:].rstrip() if start >= 0 else body.rstrip()))


# The three guards that act on every statement or test, off: what the guards cost per test.
GUARDS_OFF = "dbguard_naive_datetime = off\ndbguard_leaks = off\ndbguard_allow_databases = *\n"
PACKAGES = ("pytest_dbguard", "sqlalchemy", "psycopg", "_pytest", "pluggy")


def _tottime_by_package(path: Path) -> dict[str, float]:
    """Seconds of own time per package, psycopg cursor executions (round trips) as "executes",
    and Python function calls as "calls" (a count, so the same on a quiet or a busy machine)."""
    totals = dict.fromkeys((*PACKAGES, "other", "executes", "calls"), 0.0)
    stats: dict[Any, Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    for (file, _line, function), (_cc, calls, tottime, _ct, _callers) in stats.items():
        package = next((name for name in PACKAGES if f"/{name}/" in file), "other")
        totals[package] += tottime
        totals["calls"] += calls
        if (
            "/psycopg/" in file
            and file.endswith("cursor.py")
            and function in ("execute", "executemany")
        ):
            totals["executes"] += calls
        if package == "pytest_dbguard":
            key = f"{Path(file).stem}.{function}"
            totals[key] = totals.get(key, 0.0) + tottime
    return totals


def _per_test(tmp: Path, server: external.ExternalServer, tests: int) -> None:
    """cProfile of 1- and N-test runs of each side: per-test own time by package, round trips."""
    slopes = {}
    for who in ("dbguard", "guards off", "recipe"):
        plugins = ["pytest_dbguard"] if who != "recipe" else []
        env = common.sealed_env({"DBGUARD_URL" if plugins else "DATABASE_URL": server.url()})
        totals = []
        for count in (1, tests):
            suite = orm_suite(
                tmp / f"p_{who.replace(' ', '_')}_{count}",
                count,
                bool(plugins),
                GUARDS_OFF if who == "guards off" else "",
            )
            out = suite / "per_test.prof"
            command = common.pytest_command(plugins=plugins)
            common.run_pytest(suite, command, env=env)  # a warm-up: the bytecode caches written
            command[1:1] = ["-m", "cProfile", "-o", str(out)]
            common.run_pytest(suite, command, env=env)
            totals.append(_tottime_by_package(out))
        slopes[who] = {
            key: (totals[1].get(key, 0.0) - totals[0].get(key, 0.0)) / (tests - 1)
            for key in totals[1]
        }
    own = sorted(
        ((value, key) for key, value in slopes["dbguard"].items() if "." in key), reverse=True
    )
    print(
        "\nper test under cProfile, dbguard's functions with the most own time (ms): "
        + ", ".join(f"{key} {value * 1000:.3f}" for value, key in own[:8])
    )
    rows = [
        [
            key,
            *(
                f"{slopes[who][key] * (1 if key in ('executes', 'calls') else 1000):.3f}"
                for who in slopes
            ),
        ]
        for key in slopes["recipe"]
    ]
    rows.append(
        [
            "all (ms)",
            *(f"{sum(slopes[w][k] for k in (*PACKAGES, 'other')) * 1000:.3f}" for w in slopes),
        ]
    )
    print(
        f"\nper test under cProfile, ({tests}-test run - 1-test run) / {tests - 1}: own time (ms) by package, psycopg executes, Python calls"
    )
    print(common.table(["package", *slopes], rows))


def profile(tmp: Path, server: external.ExternalServer, tests: int = 300) -> None:
    common.banner("p. profile of the 1-test external run")
    dbguard = orm_suite(tmp / "p_dbguard", 1, True)
    recipe = orm_suite(tmp / "p_recipe", 1, False)
    dbguard_env = common.sealed_env({"DBGUARD_URL": server.url()})
    recipe_env = common.sealed_env({"DATABASE_URL": server.url()})
    _connect_costs(server)
    _connections(server, dbguard, dbguard_env, ["pytest_dbguard"])
    _connections(server, recipe, recipe_env, [])
    found = {
        "dbguard": _imports(dbguard, dbguard_env, ["pytest_dbguard"]),
        "recipe": _imports(recipe, recipe_env, []),
    }
    for who, result in found.items():
        print(
            f"\n-X importtime, {who} 1-test run: top-level imports {result['total']:.0f} ms in all"
        )
        for ms, name in result["top"]:
            print(f"  {ms:8.1f} ms  {name}")
        for name, (ms, chain) in result["chains"].items():
            print(f"  first import of {name}: {ms:.1f} ms cumulative, {chain}")
        if result["own"]:
            mine = sorted(result["own"].items(), key=lambda item: -item[1])
            print(
                f"  pytest_dbguard's own modules (self time): {sum(result['own'].values()):.1f} ms; "
                + ", ".join(f"{name.split('.')[-1]} {ms:.1f}" for name, ms in mine[:8])
            )
    _cprofile(dbguard, dbguard_env, tmp, ["pytest_dbguard"])
    _cprofile(recipe, recipe_env, tmp, [])
    _per_test(tmp, server, tests)
    print(f"[{common.load()} after the profile]")
