"""What ``--dbguard-report`` costs: the 300-test ORM suite of ``foundation.py`` (three tables,
three rows and a query per test through ``dbguard_session``) with and without the report.

    python benchmarks/report_overhead.py [--url URL] [--runs 7] [--tests 300]

Each run is its own ``pytest -p pytest_dbguard`` process on the embedded server (or ``--url``);
the two modes alternate run by run (and take turns going first) after one warm-up round each.
Figures: the whole process's wall time; the CPU time of the pytest process alone (read by the
suite's conftest at session end, so the server's CPU is left out); and the sum of pytest's own
per-test durations (setup + call + teardown), the steadiest figure on a busy machine. Medians,
and the ratio report on / off of each. Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import (
    PHASES_HOOK,
    alternate,
    banner,
    machine_note,
    median,
    pytest_command,
    run_pytest,
    sealed_env,
    spread,
    table,
    write_orm_suite,
)

# The pytest process's own CPU seconds at session end, beside the per-phase sums.
CPU_HOOK = """

    import resource as _resource


    def pytest_unconfigure(config):
        if _os.environ.get("BENCH_CPU"):
            usage = _resource.getrusage(_resource.RUSAGE_SELF)
            with open(_os.environ["BENCH_CPU"], "w") as out:
                out.write(str(usage.ru_utime + usage.ru_stime))
"""
WORK = "assert session.scalar(select(func.count()).select_from(Review)) == 1"
MODES = ("off", "on")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="--dbguard-url of the runs (default: the embedded server)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tests", type=int, default=300)
    args = parser.parse_args()

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

        def one(mode: str) -> tuple[float, float, float]:
            # One word: as two, an existing file outside the suite would be taken by pytest for
            # a test path when it looks for the rootdir (see check_command_line).
            flags = [f"--dbguard-report={report}"] if mode == "on" else []
            env = sealed_env({"BENCH_PHASES": str(phases_file), "BENCH_CPU": str(cpu_file)})
            done = run_pytest(root, pytest_command("-p", "pytest_dbguard", *url, *flags), env=env)
            phases = sum(json.loads(phases_file.read_text()).values())
            if mode == "on":
                tests = json.loads(report.read_text())["totals"]["tests"]
                assert tests == args.tests, f"the report lists {tests} tests"  # a broken run
            return done.wall, float(cpu_file.read_text()), phases

        results = alternate(MODES, args.runs, one)

    rows = []
    for mode in MODES:
        walls, cpus, phases = ([result[index] for result in results[mode]] for index in range(3))
        rows.append([f"report {mode}", spread(walls), spread(cpus), spread(phases)])
    print(table(["mode", "wall s (min-max)", "pytest CPU s", "per-test sum s"], rows))

    def ratio(index: int) -> float:
        on = median([result[index] for result in results["on"]])
        off = median([result[index] for result in results["off"]])
        return on / off

    print(
        f"report on / off ratio: wall x{ratio(0):.3f}, pytest CPU x{ratio(1):.3f}, "
        f"per-test sum x{ratio(2):.3f} (goal: at most x1.03)"
    )


if __name__ == "__main__":
    main()
