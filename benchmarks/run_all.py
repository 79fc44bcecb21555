"""Run every benchmark script in this folder in turn, stream its output, end with a machine note.

    python benchmarks/run_all.py [--runs N] [--skip name,...] [--only name,...]

Each script gets modest settings so the whole set stays well under 15 minutes on a 2-core
machine; scripts that accept ``--runs`` get ``--runs N`` (default 2), and a few get smaller suites
(see ``MODEST``). Scripts added later are picked up automatically (any ``*.py`` here not starting
with ``_`` other than this one). Figures only: a script that fails is reported and the rest run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import _common as common

HERE = Path(__file__).resolve().parent
FIRST = ("foundation.py", "peers.py")  # the headline figures, then the rest alphabetically
MODEST: dict[str, list[str]] = {
    # pytest-postgresql takes ~0.5-0.8 s per test here: 60 tests give its per-test cost well enough.
    # Three runs: a median of two is a mean, and one stalled run of a shared VM moves it.
    "peers.py": ["--tests", "60", "--xdist-tests", "600", "--runs", "3"],
    "foundation.py": ["--tests", "300"],
    "ci_path.py": ["--runs", "3"],
    "django_setup.py": ["--runs", "3"],
    "guards_overhead.py": ["--tests", "300"],
    "proxy_overhead.py": ["-n", "1000", "--orm", "200"],
    "readiness_lag.py": ["--runs", "5"],
}
HEADLINES = ("summary:", "ratio", "speedup", "lag median", "heavy modules", " vs ", "direct ")


def scripts(only: set[str], skip: set[str]) -> list[Path]:
    found = sorted(
        path
        for path in HERE.glob("*.py")
        if not path.name.startswith("_") and path.name != Path(__file__).name
    )
    found.sort(
        key=lambda path: (FIRST.index(path.name) if path.name in FIRST else len(FIRST), path.name)
    )
    return [path for path in found if (not only or path.stem in only) and path.stem not in skip]


def arguments(script: Path, runs: int) -> list[str]:
    args = list(MODEST.get(script.name, []))
    if "--runs" not in args:
        usage = subprocess.run(
            [sys.executable, str(script), "--help"], capture_output=True, text=True
        ).stdout
        if "--runs" in usage:
            args += ["--runs", str(runs)]
    return args


def run(script: Path, args: list[str]) -> tuple[int, float, list[str]]:
    """Run one script, echoing its lines as they come; returns (exit code, seconds, lines)."""
    command = [sys.executable, "-u", str(script), *args]
    print(f"\n##### {script.name} {' '.join(args)}  [{common.load()}]", flush=True)
    started = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(
        command,
        cwd=HERE.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        code = process.wait()
    return code, time.perf_counter() - started, lines


def _headline(line: str) -> bool:
    """A script's conclusion lines (not its tables or section banners)."""
    if line.startswith("==") or "(min-max)" in line or "ms/test vs" in line:
        return False
    return any(word in line for word in HEADLINES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", type=int, default=2, help="--runs for scripts that take it (default 2)"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated script names to run (default: all)"
    )
    parser.add_argument("--skip", default="", help="comma-separated script names to leave out")
    args = parser.parse_args()
    only = {name.removesuffix(".py") for name in args.only.split(",") if name}
    skip = {name.removesuffix(".py") for name in args.skip.split(",") if name}
    chosen = scripts(only, skip)
    print(f"benchmarks: {', '.join(path.name for path in chosen)}")
    print(f"machine: {common.machine_note()}", flush=True)
    started = time.perf_counter()
    outcomes = []
    for script in chosen:
        code, seconds, lines = run(script, arguments(script, args.runs))
        outcomes.append((script.name, code, seconds, lines))
    print("\n##### summary")
    for name, code, seconds, lines in outcomes:
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{name:<24} {status:<18} {seconds:7.1f} s")
        for line in [line for line in lines if _headline(line)]:
            print(f"    {line}")
    print(f"total {time.perf_counter() - started:.0f} s; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"machine: {common.machine_note()}")
    sys.exit(1 if any(code for _, code, _, _ in outcomes) else 0)


if __name__ == "__main__":
    main()
