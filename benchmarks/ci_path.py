"""The CI path: dbguard on an external server with password auth vs the recipe a team writes by hand.

    python benchmarks/ci_path.py [--runs 7] [--tests 300] [--only 1,2,3,4] [--only p] [--only i,t,c] [--counts 3] [--autoload]

1. External server (a PostgreSQL cluster this script starts on loopback, ``scram-sha-256`` over
   TCP, ``DBGUARD_URL`` pointing at it) vs SQLAlchemy's documented recipe in a conftest that
   creates its own database on that server, runs ``create_all`` once, joins a Session to an outer
   transaction per test and drops the database at the end; the recipe runs without dbguard.
   1 test and N ORM tests (each writes 5 rows in 3 tables): fixed cost, N-test ratios, slope.
   Goals: fixed cost <= 50 ms, ratio <= 1.03, slope <= +0.1 ms per test.
2. Embedded: dbguard's default (a throwaway cluster) vs the same recipe on an already-running
   server (dbguard's own embedded cluster, started before the timing). Goals: <= +150 ms, <= 1.05.
3. ``-n 2`` over ``-n 0`` on the external path: dbguard vs the same recipe, whose database name
   carries ``PYTEST_XDIST_WORKER`` (one database and ``create_all`` per worker), and dbguard's
   ``-n 2`` with ``dbguard_worker_isolation = database`` (no role check before xdist starts the
   workers; its speedup is over dbguard's own ``-n 0``). Goal: dbguard's speedup >= the recipe's.
4. ``--collect-only -q``, ``--fixtures``, ``--markers``, ``--help`` on the N-test project, with
   ``-p pytest_dbguard`` (embedded and external) and without it: medians and ratios; then one
   watched run of each that reports any process started from pytest (postgres, initdb, cp), any
   new run folder in dbguard's storage root, and the connections and DDL the external server
   logged. Goal: nothing started, nothing connected, wall within 5 %.
p. Profile (``--only p``, not part of the default): ``-X importtime`` and cProfile (top 25
   cumulative) of the 1-test external run, the connections each run makes, and what one TCP +
   SCRAM connection and one fresh engine cost, and per test (N-test minus 1-test run) the own
   time by package and the Python calls of dbguard, dbguard with its three per-statement and
   per-test guards off, and the recipe (see ``_ci_profile.py``).
i. Instructions (``--only i``, not part of the default; valgrind, a few minutes): per test, the
   pytest process's instructions of the recipe, dbguard and dbguard with those guards off, from a
   20-test and an N-test suite (see ``_ci_instructions.py``): a count that the machine's other
   load does not change, unlike the slope of part 1; ``--counts 3`` repeats each count, the
   sides alternating, and prints medians (one count can come out 20M off); and the N-test run's
   whole count, dbguard / recipe (part 1's 300-test CPU ratio in a count).
t. CPU by phase inside the pytest process (``--only t``, not part of the default; see
   ``_ci_phases.py``): a plugin on both sides stamps the CPU clock at pytest's milestones and
   times each test's protocol, 1 and N tests: which segments dbguard's extra time is in, and the
   median test, which whole-process slopes on a shared machine cannot show.
c. Instructions of part 4's commands (``--only c``, not part of the default; valgrind): each
   command without dbguard, with an empty module activated by ``-p`` (pytest's own cost of any
   ``-p`` plugin), with the embedded default and with the external server. With ``--autoload``,
   pytest's plugin autoload stays on (every plugin installed in the venv loads in every variant),
   as for a user who has not set ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``.

Wall time of the whole pytest process (spawn to exit) and its CPU time (user + system of the
process and every child it reaped, from ``os.wait4``: the embedded server is pytest's child, so
dbguard's embedded CPU includes the server's). ``server CPU`` is what the external (or already
running) server used meanwhile, from ``/proc``. Configurations alternate round by round after a
warm-up round; figures are medians, and "paired" figures are medians of the per-round ratios or
differences, which the machine's drift hits least. Figures only: nothing here asserts.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import _common as common
import _external as external
from _ci_measure import Sample, loaded, measure, med, orm_suite, paired, print_table, summarize

# 1. and 2. -------------------------------------------------------------------------------------


def section_external(tmp: Path, runs: int, tests: int, server: external.ExternalServer) -> None:
    common.banner(
        f"1. external server (scram over TCP): dbguard vs the recipe, 1 and {tests} tests"
    )
    suites = {
        f"{who} {n} test{'s' if n > 1 else ''}": orm_suite(
            tmp / f"1_{who}_{n}", n, who == "dbguard"
        )
        for n in (1, tests)
        for who in ("dbguard", "recipe")
    }

    def one(name: str) -> Sample:
        dbguard = name.startswith("dbguard")
        env = common.sealed_env({"DBGUARD_URL" if dbguard else "DATABASE_URL": server.url()})
        command = common.pytest_command(plugins=["pytest_dbguard"] if dbguard else [])
        return measure(suites[name], command, env, server=server, passed=int(name.split()[1]))

    results = common.alternate(list(suites), runs, one)
    print_table(results)
    names = ["dbguard 1 test", "recipe 1 test", f"dbguard {tests} tests", f"recipe {tests} tests"]
    summarize(results, names, tests, cpu="cpu", goals=(50, 1.03, 0.1), label="external, pytest CPU")
    summarize(
        results,
        names,
        tests,
        cpu="total_cpu",
        goals=(50, 1.03, 0.1),
        label="external, CPU incl. server",
    )
    loaded("section 1")


def section_embedded(tmp: Path, runs: int, tests: int) -> None:
    common.banner(
        f"2. embedded: dbguard's default vs the recipe on a running server, 1 and {tests} tests"
    )
    suites = {
        f"{who} {n} test{'s' if n > 1 else ''}": orm_suite(
            tmp / f"2_{who}_{n}", n, who == "dbguard"
        )
        for n in (1, tests)
        for who in ("dbguard", "recipe")
    }
    with common.running_cluster("benchci") as running:
        cluster: Any = running  # a pytest_dbguard.server.cluster.EmbeddedCluster
        url = cluster.url().resolved().sync().render(hide_password=False)
        postmaster = cluster.postmaster_pid()

        def one(name: str) -> Sample:
            passed = int(name.split()[1])
            if name.startswith("dbguard"):
                command = common.pytest_command(plugins=["pytest_dbguard"])
                return measure(suites[name], command, common.sealed_env(), passed=passed)
            env = common.sealed_env({"DATABASE_URL": url})
            return measure(
                suites[name], common.pytest_command(), env, postmaster=postmaster, passed=passed
            )

        results = common.alternate(list(suites), runs, one)
    print_table(results, server_note="in CPU")
    print("dbguard's embedded server is pytest's child: its CPU is in dbguard's CPU column")
    names = ["dbguard 1 test", "recipe 1 test", f"dbguard {tests} tests", f"recipe {tests} tests"]
    summarize(
        results,
        names,
        tests,
        cpu="total_cpu",
        goals=(150, 1.05, 0.1),
        label="embedded, CPU incl. server",
    )
    loaded("section 2")


# 3. -n 2 -----------------------------------------------------------------------------------------

ISOLATION_DATABASE = "dbguard, isolation database"


def section_xdist(tmp: Path, runs: int, tests: int, server: external.ExternalServer) -> None:
    common.banner(
        f"3. -n 2 vs -n 0 on the external server, {tests} tests: dbguard vs per-worker recipe"
    )
    suites = {
        who: orm_suite(tmp / f"3_{who}", tests, who == "dbguard") for who in ("dbguard", "recipe")
    }
    # The same suite with the role check skipped: with ``dbguard_worker_isolation = auto`` (the
    # default) the controller asks the server whether the role may create databases before
    # xdist starts the workers, which inherit the answer.
    suites[ISOLATION_DATABASE] = orm_suite(
        tmp / "3_isolation", tests, True, "dbguard_worker_isolation = database\n"
    )
    configs = [f"{who} {n}" for who in ("dbguard", "recipe") for n in ("-n 0", "-n 2")]
    configs.insert(2, f"{ISOLATION_DATABASE} -n 2")

    def one(name: str) -> Sample:
        who, flag, count = name.rsplit(" ", 2)
        dbguard = who != "recipe"
        plugins = ["pytest_dbguard", "xdist"] if dbguard else ["xdist"]
        env = common.sealed_env({"DBGUARD_URL" if dbguard else "DATABASE_URL": server.url()})
        command = common.pytest_command(flag, count, plugins=plugins)
        return measure(suites[who], command, env, server=server, passed=tests)

    results = common.alternate(configs, runs, one)
    print_table(results)
    for who, serial_run in (
        ("dbguard", "dbguard"),
        (ISOLATION_DATABASE, "dbguard"),  # -n 0: the check's connection serves the whole run
        ("recipe", "recipe"),
    ):
        serial, parallel = results[f"{serial_run} -n 0"], results[f"{who} -n 2"]
        print(
            f"speedup -n 2 over -n 0, {who}: wall x{med(serial, 'wall') / med(parallel, 'wall'):.2f} "
            f"(paired x{paired(serial, parallel, 'wall', True):.2f}); CPU incl. server "
            f"x{med(parallel, 'total_cpu') / med(serial, 'total_cpu'):.2f} of -n 0's"
        )
    loaded("section 3")


# 4. collection and help commands -----------------------------------------------------------------

COMMANDS = {
    "--collect-only -q": ["--collect-only"],  # pytest_command already passes -q
    "--fixtures": ["--fixtures"],
    "--markers": ["--markers"],
    "--help": ["--help"],
}
VARIANTS = ("without dbguard", "dbguard embedded", "dbguard external")


def _variant(
    variant: str, server: external.ExternalServer, extra: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    plugins = [] if variant == "without dbguard" else ["pytest_dbguard"]
    env = dict(extra or {})
    if variant == "dbguard external":
        env["DBGUARD_URL"] = server.url()
    return plugins, common.sealed_env(env)


class Watcher(threading.Thread):
    """Processes carrying ``token`` in their environment, and new run folders in dbguard's storage."""

    def __init__(self, token: str, storage: Path) -> None:
        super().__init__(daemon=True)
        self.token, self.storage = token.encode(), storage
        self.before = set(glob.glob(f"{storage}/*"))
        self.seen: dict[int, bool] = {}
        self.spawned: dict[int, str] = {}
        self.folders: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.scan()
            self.done.wait(0.01)
        self.scan()

    def scan(self) -> None:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) not in self.seen:
                pid = int(entry.name)
                try:
                    self.seen[pid] = self.token in Path(f"/proc/{pid}/environ").read_bytes()
                    if self.seen[pid]:
                        self.spawned[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
        for folder in set(glob.glob(f"{self.storage}/*")) - self.before - self.folders:
            try:
                pid = int(json.loads(Path(folder, "dbguard.json").read_text())["pid"])
                ours = self.seen.get(pid) or self.token in Path(f"/proc/{pid}/environ").read_bytes()
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if ours:
                self.folders.add(folder)


def watched(suite: Path, args: list[str], variant: str, server: external.ExternalServer) -> str:
    from pytest_dbguard.server.machine import storage_root

    token = uuid.uuid4().hex
    plugins, env = _variant(variant, server, {"BENCH_WATCH": token})
    databases = server.databases()
    watcher = Watcher(token, storage_root())
    offset = server.log_offset()
    watcher.start()
    process = subprocess.Popen(
        common.pytest_command(*args, plugins=plugins),
        cwd=suite,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    code = process.wait()
    watcher.done.set()
    watcher.join()
    log = external.log_counts(server.log_since(offset))
    others = sorted({comm for pid, comm in watcher.spawned.items() if pid != process.pid})
    new_databases = server.databases() - databases
    return (
        f"exit {code}; processes: {', '.join(others) or 'none'}; "
        f"run folders: {len(watcher.folders)}; server: {log['connections']} connections, "
        f"{log['create database']} CREATE DATABASE, {log['create table']} CREATE TABLE"
        + (f"; databases left: {sorted(new_databases)}" if new_databases else "")
    )


def section_commands(tmp: Path, runs: int, tests: int, server: external.ExternalServer) -> None:
    common.banner(f"4. --collect-only, --fixtures, --markers, --help on the {tests}-test project")
    suite = orm_suite(tmp / "4_project", tests, True)
    configs = [f"{command} | {variant}" for command in COMMANDS for variant in VARIANTS]

    def one(name: str) -> Sample:
        command, variant = name.split(" | ")
        plugins, env = _variant(variant, server)
        return measure(
            suite, common.pytest_command(*COMMANDS[command], plugins=plugins), env, server=server
        )

    results = common.alternate(configs, runs, one)
    rows = []
    for name, samples in results.items():
        command, variant = name.split(" | ")
        base = results[f"{command} | without dbguard"]
        ratio = (
            ""
            if variant == "without dbguard"
            else f"x{med(samples, 'wall') / med(base, 'wall'):.3f} / x{med(samples, 'cpu') / med(base, 'cpu'):.3f}"
        )
        rows.append(
            [
                command,
                variant,
                common.spread([s.wall for s in samples]),
                common.spread([s.cpu for s in samples]),
                ratio,
            ]
        )
    print(
        common.table(
            ["command", "run", "wall s", "CPU s (pytest+children)", "wall / CPU ratio"], rows
        )
    )
    print(
        "goal: ratio <= 1.05, and in the watched runs below nothing started, created or connected"
    )
    for command, args in COMMANDS.items():
        for variant in VARIANTS[1:]:
            print(f"watched {command} | {variant}: {watched(suite, args, variant, server)}")
    loaded("section 4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="alternating runs per configuration")
    parser.add_argument("--tests", type=int, default=300, help="tests in the bigger suites")
    parser.add_argument("--only", default="1,2,3,4", help="comma-separated parts: 1,2,3,4,p,i,t,c")
    parser.add_argument(
        "--counts", type=int, default=1, help="part i: valgrind counts per suite (median printed)"
    )
    parser.add_argument(
        "--autoload",
        action="store_true",
        help="part c: pytest's plugin autoload on (the venv's plugins load in every variant)",
    )
    args = parser.parse_args()
    parts = set(args.only.split(","))
    print(f"machine: {common.machine_note()}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="dbguard-bench-ci-") as folder,
        external.external_server() as server,
    ):
        tmp = Path(folder)
        version = server.sql("SHOW server_version").strip()
        print(
            f"external server: PostgreSQL {version} on 127.0.0.1:{server.port}, scram-sha-256, fsync off"
        )
        if "1" in parts:
            section_external(tmp, args.runs, args.tests, server)
        if "2" in parts:
            section_embedded(tmp, args.runs, args.tests)
        if "3" in parts:
            section_xdist(tmp, args.runs, args.tests, server)
        if "4" in parts:
            section_commands(tmp, args.runs, args.tests, server)
        if "p" in parts:
            import _ci_profile

            _ci_profile.profile(tmp, server, args.tests)
        if "i" in parts:
            import _ci_instructions

            _ci_instructions.instructions(tmp, server, args.tests, args.counts)
        if "t" in parts:
            import _ci_phases

            _ci_phases.phases(tmp, server, args.runs, (1, args.tests))
        if "c" in parts:
            import _ci_instructions

            _ci_instructions.commands(tmp, server, args.tests, COMMANDS, autoload=args.autoload)
    print(f"\nmachine: {common.machine_note()}")


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    main()
