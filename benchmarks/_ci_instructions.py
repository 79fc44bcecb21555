"""Part ``i`` of ``ci_path.py``: instructions per test, a count the machine's load cannot change.

Not a benchmark of its own (``run_all.py`` skips files starting with ``_``). valgrind counts the
instructions of the pytest process (not the server's) for a small and an N-test ORM suite of each
side on the external server; the difference over the extra tests is the cost per test, start-up
taken out. Wall-clock slopes on a shared 2-core machine move by more than the 0.1 ms per test
that issue 18 allows; instruction counts repeat to within a fraction of a percent.
"""

from __future__ import annotations

from pathlib import Path

import _common as common
import _external as external
from _ci_measure import orm_suite
from _ci_profile import GUARDS_OFF

SMALL = 20


def instructions(tmp: Path, server: external.ExternalServer, tests: int) -> None:
    common.banner(
        f"i. instructions of the pytest process per test (valgrind), {SMALL} and {tests} tests"
    )
    per_test: dict[str, float] = {}
    fixed: dict[str, float] = {}
    for who in ("recipe", "dbguard", "guards off"):
        plugins = ["pytest_dbguard"] if who != "recipe" else []
        env = common.sealed_env(
            {"DBGUARD_URL" if plugins else "DATABASE_URL": server.url(), "PYTHONHASHSEED": "0"}
        )
        counts = []
        for count in (SMALL, tests):
            suite = orm_suite(tmp / f"i_{who.replace(' ', '_')}_{count}", count, bool(plugins))
            if who == "guards off":
                with (suite / "pytest.ini").open("a") as ini:
                    ini.write(GUARDS_OFF)
            command = common.pytest_command(plugins=plugins)
            common.run_pytest(suite, command, env=env)  # a warm-up: the bytecode caches written
            counts.append(common.count_instructions(command, suite, env))
        per_test[who] = (counts[1] - counts[0]) / (tests - SMALL)
        fixed[who] = counts[0] - SMALL * per_test[who]  # the run's cost with its tests taken out
        print(
            f"{who:10} {counts[0] / 1e6:8.1f}M instructions for {SMALL} tests, "
            f"{per_test[who] / 1e6:.3f}M per test",
            flush=True,
        )
    recipe = per_test["recipe"]
    for who in ("dbguard", "guards off"):
        print(
            f"per test, {who} / recipe: x{per_test[who] / recipe:.3f} "
            f"(+{(per_test[who] - recipe) / 1e6:.3f}M instructions); fixed cost of a run "
            f"{fixed[who] / 1e6:.1f}M vs {fixed['recipe'] / 1e6:.1f}M "
            f"(+{(fixed[who] - fixed['recipe']) / 1e6:.1f}M instructions)"
        )


def commands(
    tmp: Path, server: external.ExternalServer, tests: int, commands: dict[str, list[str]]
) -> None:
    """Part ``c``: the instructions of part 4's commands, without dbguard and with it (embedded
    default and external server): the 5 % goal in a count the machine's load cannot change."""
    common.banner(f"c. instructions of the commands of part 4 (valgrind), {tests}-test project")
    suite = orm_suite(tmp / "c_project", tests, True)
    variants = {
        "without dbguard": ([], {}),
        "dbguard embedded": (["pytest_dbguard"], {}),
        "dbguard external": (["pytest_dbguard"], {"DBGUARD_URL": server.url()}),
    }
    for command, args in commands.items():
        counts = {}
        for variant, (plugins, extra) in variants.items():
            env = common.sealed_env({**extra, "PYTHONHASHSEED": "0"})
            argv = common.pytest_command(*args, plugins=plugins)
            common.run_pytest(suite, argv, env=env, check=False)  # bytecode caches written
            counts[variant] = common.count_instructions(argv, suite, env)
        base = counts["without dbguard"]
        print(
            f"{command:18} without dbguard {base / 1e6:7.1f}M; "
            + "; ".join(
                f"{variant} {count / 1e6:7.1f}M (x{count / base:.3f}, +{(count - base) / 1e6:.1f}M)"
                for variant, count in counts.items()
                if variant != "without dbguard"
            ),
            flush=True,
        )
    print("goal: within 5 % of the command without dbguard")
