"""Django: dbguard (one migrate per run, a clone per worker) vs plain pytest-django, same server.

    python benchmarks/django_setup.py [--runs 5] [--tests 300] [--only 1,2,3] [--profile]

A generated project (``_django_project.py``: four apps with 20 migrations of their own, one
``RunPython`` and one ``RunSQL`` each, plus ``django.contrib``'s 18) in a temporary folder. Both
sides run on the same external PostgreSQL (``_external.py``: a cluster this script starts on
loopback, ``scram-sha-256`` over TCP), pytest-django with ``DATABASE_URL`` pointing at it and
dbguard with ``DBGUARD_URL`` (settings read ``DATABASE_URL={pg_url}`` from ``dbguard_env``);
dbguard's embedded default is measured beside them. pytest-django runs alone
(``-p pytest_django.plugin``), dbguard next to it (``-p pytest_dbguard``).

1. Database setup, ``-n 0`` and ``-n 2``, 10 ``django_db`` tests: migrates per run (a
   ``RunPython`` step logs each) and time to the first test in each worker, measured as the
   start of the first test's body (a conftest hook stamps it) minus the spawn of pytest.
   Goals: one migrate per run, not one per worker; first test per worker no later than
   pytest-django's, earlier from ``-n 2`` on.
2. Kept databases, serial, 1 ``django_db`` test: pytest-django ``--reuse-db`` vs
   ``--dbguard-reuse``; setup = first-test time minus that of the same project running one
   test without the database under plain pytest-django (Django imported and set up, no
   database touched), paired round by round. Goal: <= 0.5 s.
3. Per-test overhead, serial, N ``django_db`` tests (four rows in three tables and a join each):
   each test's whole protocol (setup, call, teardown and every plugin's report hooks; a conftest
   wrapper times it), in wall time and in pytest's CPU time (``time.process_time``, which other
   processes on the machine move least), averaged over all tests but the first (which carries
   the session's database setup) and the last (its teardown), and the median test; also the
   whole process's wall and CPU (``os.wait4``). Goal: dbguard / pytest-django <= 1.05.
   ``--profile``: one cProfile run of each side's suite afterwards, own time per package and
   dbguard's functions.

Configurations alternate round by round after an unrecorded warm-up round; figures are medians
(min-max) and paired ratios are medians of the per-round ratios. Figures only: nothing asserts.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import _common as common
import _django_project as project
import _external as external

DJANGO = ("pytest_django.plugin",)
DBGUARD_INI = ("dbguard_env =", "    DATABASE_URL={pg_url}")
NO_PLAIN = "--ignore=test_plain.py"  # only the django_db tests, unless a test is named


@dataclasses.dataclass(frozen=True)
class Result:
    """One pytest process."""

    wall: float
    cpu: float
    firsts: Mapping[str, float]  # worker -> seconds from spawn to its first test body
    tests: Sequence[tuple[float, float]]  # per test (wall, CPU) seconds, in run order (serial)
    migrates: int


def run_once(root: Path, args: Sequence[str], env: Mapping[str, str], passed: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="dbguard-bench-dj-out-") as out:
        log = Path(out) / "migrate.log"
        full_env = {**env, "BENCH_OUT": out, "BENCH_MIGRATE_LOG": str(log)}
        command = common.pytest_command(*args)
        with tempfile.TemporaryFile() as output:
            spawned = time.time()
            started = time.perf_counter()
            process = subprocess.Popen(
                command, cwd=root, env=full_env, stdout=output, stderr=subprocess.STDOUT
            )
            _pid, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - started
            output.seek(0)
            text = output.read().decode(errors="replace")
        summary = common.SUMMARY.search(text)
        if os.waitstatus_to_exitcode(status) != 0 or summary is None or int(summary[1]) != passed:
            sys.exit(external.hide(f"run failed in {root}:\n$ {' '.join(command)}\n{text[-4000:]}"))
        firsts, tests = {}, []
        for stamp in Path(out).glob("*.json"):
            data = json.loads(stamp.read_text())
            firsts[stamp.stem] = data["first"] - spawned
            tests = data["tests"] if stamp.stem == "main" else tests
        migrated = log.read_text().splitlines() if log.exists() else []
    if "-p" in args and "pytest_dbguard" in args and any("_dbg_" not in n for n in migrated):
        sys.exit(f"dbguard did not serve the database in {root} (migrated {migrated})")
    return Result(wall, usage.ru_utime + usage.ru_stime, firsts, tests, len(migrated))


@dataclasses.dataclass(frozen=True)
class Config:
    """Who runs (``django`` or ``dbguard``), on which server, with which extra arguments."""

    who: str
    server: str  # external | embedded
    args: tuple[str, ...] = ()

    def command_args(self) -> list[str]:
        plugins = [*DJANGO, "xdist.plugin"] + (["pytest_dbguard"] if self.who == "dbguard" else [])
        selected = [] if any(arg.startswith("test_") for arg in self.args) else [NO_PLAIN]
        return [arg for plugin in plugins for arg in ("-p", plugin)] + list(self.args) + selected


def environment(config: Config, server: external.ExternalServer) -> dict[str, str]:
    if config.who == "django":
        return common.sealed_env({"DATABASE_URL": server.url().replace("+psycopg", "")})
    return common.sealed_env({"DBGUARD_URL": server.url()} if config.server == "external" else {})


def projects(tmp: Path, name: str, tests: int) -> dict[str, Path]:
    return {
        who: project.write_project(
            tmp / f"{name}_{who}", tests, DBGUARD_INI if who == "dbguard" else ()
        )
        for who in ("django", "dbguard")
    }


def ms(values: Sequence[float]) -> str:
    return common.spread(values, 1000, 0)


def section_setup(tmp: Path, runs: int, server: external.ExternalServer) -> None:
    common.banner("1. database setup: migrates per run, spawn to each worker's first test")
    roots = projects(tmp, "setup", 10)
    print(
        f"project: {project.migration_count(roots['django'])} migrations of its own + 18 of django.contrib"
    )
    configs = {
        f"{name} -n {n}": Config(who, where, ("-n", str(n)))
        for n in (0, 2)
        for name, who, where in (
            ("pytest-django", "django", "external"),
            ("dbguard external", "dbguard", "external"),
            ("dbguard embedded", "dbguard", "embedded"),
        )
    }

    def one(name: str) -> Result:
        config = configs[name]
        return run_once(roots[config.who], config.command_args(), environment(config, server), 10)

    results = common.alternate(list(configs), runs, one)
    rows = []
    for name, samples in results.items():
        workers = sorted({worker for sample in samples for worker in sample.firsts})
        rows.append(
            [
                name,
                "/".join(str(sample.migrates) for sample in samples),
                *[
                    ms([sample.firsts[w] for sample in samples if w in sample.firsts])
                    for w in workers
                ],
                *(["-"] if len(workers) == 1 else []),
                ms([sample.wall for sample in samples]),
                ms([sample.cpu for sample in samples]),
            ]
        )
    headers = ["run", "migrates", "first test gw0/main ms", "gw1 ms", "wall ms", "CPU ms"]
    print(common.table(headers, rows))
    for n in (0, 2):
        base = results[f"pytest-django -n {n}"]
        for name in ("dbguard external", "dbguard embedded"):
            mine = results[f"{name} -n {n}"]
            slowest = paired_ratio(
                [max(s.firsts.values()) for s in mine], [max(s.firsts.values()) for s in base]
            )
            migrates = common.median([s.migrates for s in mine])
            print(
                f"summary: -n {n}, {name} / pytest-django: slowest worker's first test "
                f"x{slowest:.3f} (paired), {migrates:.0f} vs "
                f"{common.median([s.migrates for s in base]):.0f} migrate(s) per run; goal one "
                "migrate per run, first test no later (x <= 1), earlier from -n 2 on"
            )


def paired_ratio(mine: Sequence[float], base: Sequence[float]) -> float:
    return common.median([a / b for a, b in zip(mine, base, strict=True)])


def paired_spread(mine: Sequence[float], base: Sequence[float]) -> str:
    """The middle half of the per-round ratios (quartiles): how far one round's ratio wanders."""
    ratios = sorted(a / b for a, b in zip(mine, base, strict=True))
    if len(ratios) < 4:
        return "-"
    quarter = len(ratios) // 4
    return f"{ratios[quarter]:.3f}-{ratios[-1 - quarter]:.3f}"


def section_reuse(tmp: Path, runs: int, server: external.ExternalServer) -> None:
    common.banner("2. kept databases: setup of a second run, serial, 1 django_db test")
    roots = projects(tmp, "reuse", 1)
    one_test = ("test_db_00.py::test_0",)
    configs = {
        "pytest-django, no database (baseline)": Config("django", "external", ("test_plain.py",)),
        "pytest-django --reuse-db": Config("django", "external", ("--reuse-db", *one_test)),
        "dbguard external --dbguard-reuse": Config(
            "dbguard", "external", ("--dbguard-reuse", *one_test)
        ),
        "dbguard embedded --dbguard-reuse": Config(
            "dbguard", "embedded", ("--dbguard-reuse", *one_test)
        ),
    }

    def one(name: str) -> Result:
        config = configs[name]
        return run_once(roots[config.who], config.command_args(), environment(config, server), 1)

    try:
        results = common.alternate(list(configs), runs, one)
    finally:
        common.stop_reused_cluster(roots["dbguard"])
    base = [sample.firsts["main"] for sample in results["pytest-django, no database (baseline)"]]
    rows = []
    for name, samples in results.items():
        firsts = [sample.firsts["main"] for sample in samples]
        setup = [a - b for a, b in zip(firsts, base, strict=True)]
        rows.append(
            [
                name,
                ms(firsts),
                ms(setup),
                ms([s.wall for s in samples]),
                ms([s.cpu for s in samples]),
            ]
        )
    print(common.table(["run", "first test ms", "setup ms (paired)", "wall ms", "CPU ms"], rows))
    for name in list(configs)[1:]:
        firsts = [sample.firsts["main"] for sample in results[name]]
        setup = common.median([a - b for a, b in zip(firsts, base, strict=True)])
        print(
            f"summary: {name}: setup {setup * 1000:.0f} ms over the no-database run; goal <= 500 ms (dbguard)"
        )


def trimmed(result: Result, cpu: bool = False) -> float:
    """Wall (or CPU) seconds per test, all tests but the first (which carries the session's
    database setup) and the last (its teardown)."""
    middle = [test[1 if cpu else 0] for test in result.tests[1:-1]]
    return sum(middle) / len(middle)


def typical(result: Result) -> float:
    """The median test's wall seconds: what a load spike during a few tests does not move."""
    return common.median([test[0] for test in result.tests[1:-1]])


def cpu_per_test(result: Result) -> float:
    return trimmed(result, cpu=True)


def section_per_test(
    tmp: Path, runs: int, tests: int, server: external.ExternalServer
) -> dict[str, Path]:
    common.banner(f"3. per-test overhead, serial, {tests} django_db tests")
    roots = projects(tmp, "pertest", tests)
    configs = {
        "pytest-django": Config("django", "external"),
        "dbguard external": Config("dbguard", "external"),
        "dbguard external, naive guard off": Config(
            "dbguard", "external", ("-o", "dbguard_naive_datetime=off")
        ),
        "dbguard embedded": Config("dbguard", "embedded"),
    }

    def one(name: str) -> Result:
        config = configs[name]
        return run_once(
            roots[config.who], config.command_args(), environment(config, server), tests
        )

    results = common.alternate(list(configs), runs, one)
    rows = []
    base = results["pytest-django"]
    for name, samples in results.items():
        rows.append(
            [
                name,
                common.spread([trimmed(s) for s in samples], 1000, 3),
                f"x{paired_ratio([trimmed(s) for s in samples], [trimmed(s) for s in base]):.3f}",
                common.spread([typical(s) for s in samples], 1000, 3),
                f"x{paired_ratio([typical(s) for s in samples], [typical(s) for s in base]):.3f}",
                common.spread([cpu_per_test(s) for s in samples], 1000, 3),
                f"x{paired_ratio([cpu_per_test(s) for s in samples], [cpu_per_test(s) for s in base]):.3f}",
                ms([s.wall for s in samples]),
                ms([s.cpu for s in samples]),
            ]
        )
    headers = ["run", "wall ms/test (mean)", "paired", "median test ms", "paired"]
    headers += ["CPU ms/test", "paired"]
    print(common.table([*headers, "wall ms", "CPU ms"], rows))
    for name in list(configs)[1:]:
        mine = results[name]
        print(
            f"summary: {name} / pytest-django: per test x{paired_ratio([trimmed(s) for s in mine], [trimmed(s) for s in base]):.3f} "
            f"(median test x{paired_ratio([typical(s) for s in mine], [typical(s) for s in base]):.3f}, "
            f"pytest's CPU per test x{paired_ratio([cpu_per_test(s) for s in mine], [cpu_per_test(s) for s in base]):.3f}; "
            f"middle half of the rounds' wall ratios {paired_spread([trimmed(s) for s in mine], [trimmed(s) for s in base])}), "
            f"wall x{paired_ratio([s.wall for s in mine], [s.wall for s in base]):.3f}, "
            f"CPU x{paired_ratio([s.cpu for s in mine], [s.cpu for s in base]):.3f}; goal per test <= 1.05"
        )
    return roots


def profile(roots: Mapping[str, Path], server: external.ExternalServer) -> None:
    """cProfile of each side's per-test suite: own time per package, dbguard's top functions."""
    common.banner("p. cProfile of the per-test suites (own time by package, dbguard's functions)")
    for who in ("django", "dbguard"):
        config = Config(who, "external")
        with tempfile.TemporaryDirectory() as out:
            stats_file = Path(out) / "profile"
            command = [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(stats_file),
                "-m",
                "pytest",
                "-q",
            ]
            command += ["-p", "no:cacheprovider", *config.command_args()]
            env = {**environment(config, server), "BENCH_MIGRATE_LOG": str(Path(out) / "log")}
            subprocess.run(command, cwd=roots[who], env=env, capture_output=True, check=True)
            stats = pstats.Stats(str(stats_file))
        by_package: collections.Counter[str] = collections.Counter()
        own: list[tuple[float, int, str]] = []
        for (filename, line, function), (_cc, calls, tottime, _ct, _callers) in stats.stats.items():
            by_package[package_of(filename)] += tottime
            if "pytest_dbguard" in filename:
                own.append(
                    (tottime, calls, f"{filename.split('pytest_dbguard/')[-1]}:{line} {function}")
                )
        print(f"-- {who}: own time by package (s)")
        print(", ".join(f"{name} {seconds:.3f}" for name, seconds in by_package.most_common(12)))
        if own:
            print(f"-- {who}: pytest_dbguard functions by own time (s, calls)")
            for tottime, calls, name in sorted(own, reverse=True)[:15]:
                print(f"   {tottime:.4f} {calls:6d} {name}")


def package_of(filename: str) -> str:
    for name in (
        "pytest_dbguard",
        "pytest_django",
        "django",
        "psycopg",
        "sqlalchemy",
        "_pytest",
        "pluggy",
        "xdist",
    ):
        if f"/{name}/" in filename:
            return name
    return "other" if filename.startswith(("/", "<frozen")) else "builtins"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--only", default="1,2,3", help="sections to run (default 1,2,3)")
    parser.add_argument("--profile", action="store_true", help="also cProfile section 3's suites")
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(f"machine: {common.machine_note()}", flush=True)
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="dbguard-bench-django-") as folder,
        external.external_server() as server,
    ):
        tmp = Path(folder)
        if "1" in only:
            section_setup(tmp, args.runs, server)
        if "2" in only:
            section_reuse(tmp, args.runs, server)
        if "3" in only or args.profile:
            roots = section_per_test(tmp, args.runs if "3" in only else 0, args.tests, server)
            if args.profile:
                profile(roots, server)
    print(f"total {time.perf_counter() - started:.0f} s; {common.load()}")


if __name__ == "__main__":
    main()
