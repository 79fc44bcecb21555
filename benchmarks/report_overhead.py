"""What ``--dbguard-report`` costs: the 300-test ORM suite of ``foundation.py`` (three tables,
three rows and a query per test through ``dbguard_session``) with and without the report.

    python benchmarks/report_overhead.py [--url URL] [--runs 7] [--tests 300] [--blocks 40]
                                           [--instructions | --only-instructions]

Each run is its own ``pytest -p pytest_dbguard`` process on the embedded server (or ``--url``);
the two modes alternate run by run (and take turns going first) after one warm-up round each.
Figures: the whole process's wall time; the CPU time of the pytest process alone (read by the
suite's conftest at session end, so the server's CPU is left out); and the sum of pytest's own
per-test durations (setup + call + teardown), and the median test's, the steadiest figures on a
busy machine. Medians,
and minimums, and the ratio report on / off of each; and the median of each round's own ratio
(its two runs ran back to back), the figure that a shared machine's changing load moves least.

Then, in one process, the listener alone: blocks of 250 ``SELECT 1`` on one connection with the
statement timer installed and not, interleaved, in CPU microseconds per statement (the round
trip's wait is not CPU time, so what is left is the client's own work). With
``--instructions``, the instructions the pytest process executes (valgrind's cachegrind), report
on and off, for the suite and for a 20-test one: counts that the machine's other load cannot
change, whole run and per test. Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

from _common import (
    PHASES_HOOK,
    alternate,
    banner,
    count_instructions,
    machine_note,
    median,
    pytest_command,
    run_pytest,
    sealed_env,
    spread,
    table,
    write_orm_suite,
)

# The pytest process's own CPU seconds at session end, and the median of the tests' own
# durations (setup + call + teardown): a burst of load on a few tests does not move a median.
CPU_HOOK = """

    import resource as _resource
    import statistics as _statistics

    _PER_TEST = {}
    _phases_logreport = pytest_runtest_logreport  # PHASES_HOOK's, above: one hook per module


    def pytest_runtest_logreport(report):
        _phases_logreport(report)
        _PER_TEST[report.nodeid] = _PER_TEST.get(report.nodeid, 0.0) + report.duration


    def pytest_unconfigure(config):
        if _os.environ.get("BENCH_CPU"):
            usage = _resource.getrusage(_resource.RUSAGE_SELF)
            median = _statistics.median(_PER_TEST.values())
            with open(_os.environ["BENCH_CPU"], "w") as out:
                out.write(f"{usage.ru_utime + usage.ru_stime} {median}")
"""
WORK = "assert session.scalar(select(func.count()).select_from(Review)) == 1"
MODES = ("off", "on")

# The statement timer's own cost per statement, interleaved with blocks without it.
PER_STATEMENT_TEST = """
    import os
    import statistics
    import time

    from sqlalchemy import text

    from pytest_dbguard.guards.statement_timing import StatementTimer


    def test_per_statement(dbguard_engine):
        timer = StatementTimer()
        statement = text("SELECT 1")
        with dbguard_engine.connect() as connection:
            for _ in range(500):
                connection.execute(statement)
            costs = {True: [], False: []}
            for block in range(int(os.environ["BENCH_BLOCKS"])):
                timed = block % 2 == 0
                if timed:
                    timer.install()
                    timer.begin("block")
                started = time.process_time()
                for _ in range(250):
                    connection.execute(statement)
                costs[timed].append((time.process_time() - started) / 250 * 1e6)
                if timed:
                    timer.end()
                    timer.remove()
        print(
            "PER_STATEMENT",
            statistics.median(costs[False]),
            statistics.median(costs[True]),
            min(costs[False]),
            min(costs[True]),
        )
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="--dbguard-url of the runs (default: the embedded server)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--blocks", type=int, default=40, help="blocks of the per-statement part")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count the pytest process's instructions with valgrind (a few minutes)",
    )
    parser.add_argument("--only-instructions", action="store_true", help="only the valgrind part")
    args = parser.parse_args()

    if args.only_instructions:
        instructions(args.url, args.tests)
        return
    banner(f"--dbguard-report on vs off, {args.tests} ORM tests, {args.runs} runs each")
    print(machine_note())
    with tempfile.TemporaryDirectory(prefix="dbguard-bench-report-") as tmp:
        root = write_orm_suite(
            Path(tmp) / "suite",
            args.tests,
            "dbguard_session",
            conftest=PHASES_HOOK + CPU_HOOK,
            ini="dbguard_metadata = models:Base\n",
            work=WORK,
        )
        phases_file, cpu_file = Path(tmp) / "phases.json", Path(tmp) / "cpu.txt"
        report = Path(tmp) / "report.json"
        url = ["--dbguard-url", args.url] if args.url else []

        def one(mode: str) -> tuple[float, float, float, float]:
            # One word: as two, an existing file outside the suite would be taken by pytest for
            # a test path when it looks for the rootdir (see check_command_line).
            flags = [f"--dbguard-report={report}"] if mode == "on" else []
            env = sealed_env({"BENCH_PHASES": str(phases_file), "BENCH_CPU": str(cpu_file)})
            done = run_pytest(root, pytest_command("-p", "pytest_dbguard", *url, *flags), env=env)
            phases = sum(json.loads(phases_file.read_text()).values())
            if mode == "on":
                tests = json.loads(report.read_text())["totals"]["tests"]
                assert tests == args.tests, f"the report lists {tests} tests"  # a broken run
            cpu, per_test = (float(value) for value in cpu_file.read_text().split())
            return done.wall, cpu, phases, per_test * 1000

        results = alternate(MODES, args.runs, one)

    rows = []
    for mode in MODES:
        walls, cpus, phases, tests = (
            [result[index] for result in results[mode]] for index in range(4)
        )
        rows.append(
            [f"report {mode}", spread(walls), spread(cpus), spread(phases), spread(tests, digits=3)]
        )
    headers = ["mode", "wall s (min-max)", "pytest CPU s", "per-test sum s", "test median ms"]
    print(table(headers, rows))

    def ratio(index: int, pick: Callable[[list[float]], float]) -> float:
        on = pick([result[index] for result in results["on"]])
        off = pick([result[index] for result in results["off"]])
        return on / off

    for label, pick in (("median", median), ("minimum", min)):
        print(
            f"report on / off ratio ({label}s): wall x{ratio(0, pick):.3f}, pytest CPU "
            f"x{ratio(1, pick):.3f}, per-test sum x{ratio(2, pick):.3f}, test median "
            f"x{ratio(3, pick):.3f} (goal: at most x1.03)"
        )

    def paired(index: int) -> float:
        # The two runs of one round ran back to back: their ratio cancels the load of the moment.
        pairs = zip(results["on"], results["off"], strict=True)
        return median([on[index] / off[index] for on, off in pairs])

    print(
        f"report on / off ratio (median of each round's pair): wall x{paired(0):.3f}, pytest "
        f"CPU x{paired(1):.3f}, per-test sum x{paired(2):.3f}, test median x{paired(3):.3f} "
        "(goal: at most x1.03)"
    )
    per_statement(args.url, args.blocks)
    if args.instructions:
        instructions(args.url, args.tests)


def instructions(url: str | None, tests: int) -> None:
    """Instructions the pytest process executes (valgrind), report on and off: unlike time, a
    count that the machine's other load does not change. A small suite beside the full one
    takes the start-up out: what is left is the cost per test."""
    small = 20
    banner(f"instructions of the pytest process (valgrind cachegrind), {small} and {tests} tests")
    counts: dict[tuple[str, int], int] = {}
    with tempfile.TemporaryDirectory(prefix="dbguard-bench-report-") as tmp:
        for size in (small, tests):
            root = write_orm_suite(
                Path(tmp) / f"suite_{size}",
                size,
                "dbguard_session",
                ini="dbguard_metadata = models:Base\n",
                work=WORK,
            )
            # The first run compiles the suite's bytecode: not counted.
            for mode in ("warm-up", *MODES):
                flags = [f"--dbguard-report={Path(tmp) / 'report.json'}"] if mode == "on" else []
                command = pytest_command(
                    "-p", "pytest_dbguard", *(["--dbguard-url", url] if url else []), *flags
                )
                counts[mode, size] = count_instructions(
                    command, root, sealed_env({"PYTHONHASHSEED": "0"})
                )
                if mode != "warm-up":
                    print(f"{size} tests, report {mode}: {counts[mode, size]:,} instructions")
    per_test = {
        mode: (counts[mode, tests] - counts[mode, small]) / (tests - small) for mode in MODES
    }
    print(
        f"instructions report on / off ratio: whole run ({tests} tests) "
        f"x{counts['on', tests] / counts['off', tests]:.3f}; per test (start-up taken out) "
        f"x{per_test['on'] / per_test['off']:.3f}, {per_test['off'] / 1e6:.2f}M -> "
        f"{per_test['on'] / 1e6:.2f}M instructions (goal: at most x1.03)"
    )


def per_statement(url: str | None, blocks: int) -> None:
    """The listener's CPU per statement, in one process, interleaved with blocks without it."""
    banner(f"statement timer alone: {blocks} interleaved blocks of 250 SELECT 1")
    with tempfile.TemporaryDirectory(prefix="dbguard-bench-report-") as tmp:
        root = Path(tmp)
        (root / "pytest.ini").write_text("[pytest]\n")
        (root / "test_per_statement.py").write_text(textwrap.dedent(PER_STATEMENT_TEST))
        flags = ["--dbguard-url", url] if url else []
        done = run_pytest(
            root,
            pytest_command("-p", "pytest_dbguard", "-s", *flags),
            env=sealed_env({"BENCH_BLOCKS": str(blocks)}),
        )
    line = next(line for line in done.stdout.splitlines() if "PER_STATEMENT" in line)
    off, on, off_min, on_min = (float(value) for value in line.split("PER_STATEMENT")[1].split())
    print(
        f"CPU per statement: {off:.1f} us without the timer, {on:.1f} us with it "
        f"(+{on - off:.1f} us; minimums {off_min:.1f} / {on_min:.1f} us, +{on_min - off_min:.1f} us)"
    )


if __name__ == "__main__":
    main()
