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


SIDES = ("recipe", "dbguard", "guards off")
EMPTY_PLUGIN = "empty_plugin"
OPTIONS_PLUGIN = "options_only_plugin"


def instructions(tmp: Path, server: external.ExternalServer, tests: int, counts: int = 1) -> None:
    """Per test and fixed cost of each side; with ``counts`` > 1 every count is repeated on
    suites written afresh (another folder), the sides alternating round by round, and the
    medians (and min-max) are printed. Counts of one suite repeat exactly; what moved between
    invocations (+0.11M to +0.28M per test for the same code) comes with what each invocation
    makes anew: folders, the server's port, names."""
    common.banner(
        f"i. instructions of the pytest process per test (valgrind), {SMALL} and {tests} tests"
        + (f", {counts} counts each" if counts > 1 else "")
    )
    per_test: dict[str, list[float]] = {who: [] for who in SIDES}
    fixed: dict[str, list[float]] = {who: [] for who in SIDES}
    whole: dict[str, list[float]] = {who: [] for who in SIDES}  # the N-test run, start-up included
    for round_ in range(counts):
        for who in SIDES:
            small, big = (
                _count(tmp / f"i_{who.replace(' ', '_')}_{n}_{round_}", n, who, server)
                for n in (SMALL, tests)
            )
            slope = (big - small) / (tests - SMALL)
            per_test[who].append(slope)
            whole[who].append(big)
            fixed[who].append(small - SMALL * slope)  # the run's cost with its tests taken out
            print(
                f"{who:10} {small / 1e6:8.1f}M instructions for {SMALL} tests, "
                f"{slope / 1e6:.3f}M per test",
                flush=True,
            )
    recipe = per_test["recipe"]
    for who in ("dbguard", "guards off"):
        extra = [mine - base for mine, base in zip(per_test[who], recipe, strict=True)]
        ratio = [mine / base for mine, base in zip(per_test[who], recipe, strict=True)]
        more = [mine - base for mine, base in zip(fixed[who], fixed["recipe"], strict=True)]
        print(
            f"per test, {who} / recipe: x{common.median(ratio):.3f} "
            f"(+{common.median(extra) / 1e6:.3f}M instructions"
            + (f", rounds {common.spread(extra, 1e-6, 3)}M" if counts > 1 else "")
            + f"); fixed cost of a run {common.median(fixed[who]) / 1e6:.1f}M vs "
            f"{common.median(fixed['recipe']) / 1e6:.1f}M (+{common.median(more) / 1e6:.1f}M "
            "instructions)"
        )
        runs = [mine / base for mine, base in zip(whole[who], whole["recipe"], strict=True)]
        print(
            f"{tests}-test run, {who} / recipe: x{common.median(runs):.3f} "
            f"({common.median(whole[who]) / 1e6:.1f}M vs {common.median(whole['recipe']) / 1e6:.1f}M "
            "instructions; goal for the run's CPU <= 1.03)"
        )


def _count(root: Path, tests: int, who: str, server: external.ExternalServer) -> int:
    """One valgrind count of a fresh ``tests``-test suite of side ``who`` in ``root`` (after a
    warm-up run that writes the bytecode caches)."""
    plugins = ["pytest_dbguard"] if who != "recipe" else []
    env = common.sealed_env(
        {"DBGUARD_URL" if plugins else "DATABASE_URL": server.url(), "PYTHONHASHSEED": "0"}
    )
    suite = orm_suite(root, tests, bool(plugins), GUARDS_OFF if who == "guards off" else "")
    command = common.pytest_command(plugins=plugins)
    common.run_pytest(suite, command, env=env)
    return common.count_instructions(command, suite, env)


def commands(
    tmp: Path,
    server: external.ExternalServer,
    tests: int,
    commands: dict[str, list[str]],
    *,
    autoload: bool = False,
) -> None:
    """Part ``c``: the instructions of part 4's commands, without dbguard and with it (embedded
    default and external server): the 5 % goal in a count the machine's load cannot change.

    ``autoload``: pytest loads every plugin installed in the venv (pytest-xdist, pytest-asyncio,
    pytest-django...) in every variant, as it does for a user who has not set
    ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``; otherwise only the plugins named with ``-p``."""
    common.banner(
        f"c. instructions of the commands of part 4 (valgrind), {tests}-test project"
        + (", pytest's plugin autoload on" if autoload else "")
    )
    suite = orm_suite(tmp / "c_project", tests, True)
    # An empty module activated the same way: what pytest itself spends on any ``-p`` plugin (it
    # looks the name up among every installed package's entry points first), before the plugin's
    # own import and hooks.
    (suite / f"{EMPTY_PLUGIN}.py").write_text('"""An empty pytest plugin."""\n')
    # A module that registers dbguard's flags, ini keys and markers (the public interface, with
    # their help texts) and does nothing else: what those cost pytest, apart from dbguard's code.
    (suite / f"{OPTIONS_PLUGIN}.py").write_text(_options_only_source())
    variants = {
        "without dbguard": ([], {}),
        "empty -p plugin": ([EMPTY_PLUGIN], {}),
        "dbguard's options only": ([OPTIONS_PLUGIN], {}),
        "dbguard embedded": (["pytest_dbguard"], {}),
        "dbguard external": (["pytest_dbguard"], {"DBGUARD_URL": server.url()}),
    }
    for command, args in commands.items():
        counts = {}
        for variant, (plugins, extra) in variants.items():
            env = common.sealed_env({**extra, "PYTHONHASHSEED": "0"})
            if autoload:
                del env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"]
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
    print(
        "goal: within 5 % of the command without dbguard; the empty -p plugin's share is pytest's "
        "own handling of -p, which any plugin activated that way pays; the options-only module "
        "adds what registering and showing dbguard's flags, ini keys and markers costs pytest"
    )


def _options_only_source() -> str:
    """The source of a plugin that registers exactly what dbguard registers, without its code."""
    from pytest_dbguard.plugin import MARKERS
    from pytest_dbguard.run.options import OPTIONS

    lines = [
        "def pytest_addoption(parser):",
        "    group = parser.getgroup('dbguard', 'database isolation (pytest-dbguard)')",
    ]
    for option in OPTIONS:
        if option.cli:
            kind = (
                f"nargs='?', const={option.bare!r}, action='store', metavar={option.metavar!r}"
                if option.bare is not None
                else "action='store_true'"
                if option.flag_kind == "switch"
                else f"action='store', metavar={option.metavar!r}"
            )
            lines.append(
                f"    group.addoption({option.flag!r}, {kind}, default=None, "
                f"dest={option.dest!r}, help={option.help!r})"
            )
        lines.append(
            f"    parser.addini({option.ini!r}, {option.ini_help!r}, type={option.ini_type!r}, "
            f"default={option.ini_default!r})"
        )
    lines.append("def pytest_configure(config):")
    lines += [f"    config.addinivalue_line('markers', {marker!r})" for marker in MARKERS]
    return "\n".join(lines) + "\n"
