"""Part ``t`` of ``ci_path.py``: where in the run dbguard's extra CPU time goes, timed inside it.

Not a benchmark of its own (``run_all.py`` skips files starting with ``_``). Whole-process times
of alternating runs spread by more than a tenth of a millisecond per test on a shared machine, so
a slope between a 1-test and an N-test run does not show the per-test cost. Here a small plugin,
the same on both sides (activated first, with ``-p``), stamps the process's CPU clock
(``time.process_time``) at pytest's milestones and times each test's whole protocol (setup, call,
teardown and every plugin's report hooks); the process's total comes from ``os.wait4``. Each
segment is a median over the rounds, so the segments of one side need not add up to its total.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import _common as common
import _external as external
from _ci_measure import measure, orm_suite

PLUGIN = "dbguard_bench_phases"
# Stamps of the process CPU clock at each milestone, each test's protocol CPU, written at exit.
PLUGIN_SOURCE = """
import atexit, json, os, time

import pytest

STAMPS = {"plugins loaded": time.process_time()}
TESTS = []


def _stamp(name):
    STAMPS[name] = time.process_time()


def pytest_configure(config):
    _stamp("configured")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection(session):
    _stamp("collection starts")
    try:
        return (yield)
    finally:
        _stamp("collected")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    started = time.process_time()
    try:
        return (yield)
    finally:
        TESTS.append(time.process_time() - started)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtestloop(session):
    try:
        return (yield)
    finally:
        _stamp("tests done")


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    _stamp("unconfigure")


def _write():  # registered first, so it runs after every other atexit handler
    _stamp("atexit done")
    with open(os.environ["BENCH_PHASES_OUT"], "w") as out:
        json.dump({"stamps": STAMPS, "tests": TESTS}, out)


atexit.register(_write)
"""
MILESTONES = (
    "plugins loaded",
    "configured",
    "collection starts",
    "collected",
    "tests done",
    "unconfigure",
    "atexit done",
)
SEGMENTS = {
    "plugins loaded": "start to plugins loaded",
    "configured": "conftests, configure (dbguard's settings, server check, imports)",
    "collection starts": "to collection",
    "collected": "collection (dbguard: schema build and clone at its end)",
    "tests done": "the tests (the recipe's create_all is in its first)",
    "unconfigure": "session finish",
    "atexit done": "unconfigure, atexit handlers",
}


def phases(tmp: Path, server: external.ExternalServer, runs: int, sizes: Sequence[int]) -> None:
    common.banner(
        "t. CPU by phase inside the pytest process, dbguard vs the recipe, "
        f"{' and '.join(map(str, sizes))} tests, {runs} alternating rounds"
    )
    plugins = tmp / "t_plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    for tests in sizes:
        suites = {
            who: orm_suite(tmp / f"t_{who}_{tests}", tests, who == "dbguard")
            for who in ("dbguard", "recipe")
        }

        def one(
            who: str, tests: int = tests, suites: Mapping[str, Path] = suites
        ) -> dict[str, float]:
            return _run(suites[who], who, tests, plugins, server)

        results = common.alternate(list(suites), runs, one)
        _print(tests, results)


def _run(
    suite: Path, who: str, tests: int, plugins: Path, server: external.ExternalServer
) -> dict[str, float]:
    """One run: CPU seconds of each segment, the median test's protocol, the process's total."""
    out = suite / "phases.json"
    env = common.sealed_env(
        {
            "DBGUARD_URL" if who == "dbguard" else "DATABASE_URL": server.url(),
            "PYTHONPATH": str(plugins),
            "BENCH_PHASES_OUT": str(out),
        }
    )
    command = common.pytest_command(
        plugins=[PLUGIN, "pytest_dbguard"] if who == "dbguard" else [PLUGIN]
    )
    sample = measure(suite, command, env, server=server, passed=tests)
    recorded = json.loads(out.read_text())
    stamps, previous, result = recorded["stamps"], 0.0, {}
    for milestone in MILESTONES:
        result[milestone] = stamps[milestone] - previous
        previous = stamps[milestone]
    result["exit"] = sample.cpu - previous
    result["total"] = sample.cpu
    result["median test"] = common.median(recorded["tests"])
    return result


def _print(tests: int, results: Mapping[str, Sequence[Mapping[str, float]]]) -> None:
    rows = []
    keys = [*MILESTONES, "exit", "total", "median test"]
    labels = {
        **SEGMENTS,
        "exit": "after atexit: the interpreter's shutdown",
        "total": "whole process (os.wait4)",
        "median test": "median test's protocol",
    }
    for key in keys:
        mine = [run[key] for run in results["dbguard"]]
        base = [run[key] for run in results["recipe"]]
        rows.append(
            [
                labels[key],
                f"{common.median(mine) * 1000:.2f}",
                f"{common.median(base) * 1000:.2f}",
                f"{(common.median(mine) - common.median(base)) * 1000:+.2f}",
            ]
        )
    print(f"{tests} tests, CPU ms (medians of the rounds)")
    print(common.table(["segment", "dbguard", "recipe", "difference"], rows))
