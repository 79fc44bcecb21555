"""The foundation's costs: fixtures vs the hand-written recipe, startup, clones, truncation, imports.

    python benchmarks/foundation.py [--runs 5] [--tests 300] [--only a,b,c,d,e]

a. 300 ORM tests with ``dbguard_session`` vs SQLAlchemy's "join a Session into an external
   transaction" recipe written by hand, both on the database dbguard prepared (same server, same
   schema; only the fixture path differs). Wall time of the whole pytest process and pytest's
   own session time, medians of alternating runs. Goal: ratio <= 1.10.
b. Startup: from spawning pytest to the first test's first line, embedded cold (a new cluster,
   laid out from the initdb cache the issue asks for), ``--dbguard-reuse`` (a later run) and a
   machine's first run (empty initdb cache: initdb itself), next to a bare pytest that imports the
   same libraries; then the first run and the cold one under ``-n 2`` (the test's worker) next to
   a bare ``pytest -n 2``. dbguard's own cost = the difference. Goals: <= 0.5 s cold, <= 0.2 s reuse.
c. Per-worker clone: ``CREATE DATABASE ... TEMPLATE`` (via ``databases.provision_database``) vs
   creating an empty database and running ``create_all``, for 10 and 50 tables.
d. Truncate isolation with 10 tables: ``Truncator.clean()`` after a test that wrote 2 tables,
   after one that wrote nothing, a naive ``TRUNCATE`` of all 10, and rollback's begin/rollback;
   then the same in 300-test suites. Goal: <= 5 ms per test.
e. Import time of ``pytest_dbguard`` and ``pytest_dbguard.plugin``, and what they pull in.

Figures only: nothing here asserts. Every pytest run is a subprocess with plugin autoload off and
explicit ``-p`` plugins, on suites generated into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as common

# a. dbguard_session vs the hand-written recipe ------------------------------------------------


def bench_fixtures(tmp: Path, runs: int, tests: int) -> None:
    common.banner(f"a. {tests} ORM tests: dbguard_session vs the hand-written recipe")
    ini = "dbguard_metadata = models:Base\n"
    hook = common.PHASES_HOOK
    suites = {
        "dbguard_session": common.write_orm_suite(
            tmp / "a_dbguard", tests, "dbguard_session", ini=ini, conftest=hook
        ),
        "hand-written recipe": common.write_orm_suite(
            tmp / "a_recipe", tests, "session", ini=ini, conftest=common.RECIPE_CONFTEST + hook
        ),
    }
    command = common.pytest_command(plugins=["pytest_dbguard"])
    phases_file = tmp / "a_phases.json"

    def one(name: str) -> tuple[common.Run, dict[str, float]]:
        env = common.sealed_env({"BENCH_PHASES": str(phases_file)})
        run = common.run_pytest(suites[name], command, env=env)
        return run, json.loads(phases_file.read_text())

    results = common.alternate(list(suites), runs, one)
    rows = []
    medians: dict[str, dict[str, float]] = {}
    for name, samples in results.items():
        runs_, phases = [run for run, _ in samples], [phase for _, phase in samples]
        fixtures = [(p["setup"] + p["teardown"]) / tests for p in phases]
        per_test = [(p["setup"] + p["call"] + p["teardown"]) / tests for p in phases]
        medians[name] = {
            "wall": common.median([r.wall for r in runs_]),
            "session": common.median([r.session for r in runs_]),
            "tests": common.median(per_test),
            "fixtures": common.median(fixtures),
        }
        rows.append(
            [
                name,
                common.spread([r.wall for r in runs_]),
                common.spread([r.session for r in runs_]),
                common.spread(per_test, 1000),
                common.spread(fixtures, 1000),
            ]
        )
    headers = [
        "fixture",
        "wall s",
        "pytest session s",
        "ms/test (setup+call+teardown)",
        "ms/test setup+teardown",
    ]
    print(common.table(headers, rows))
    dbg, recipe = medians["dbguard_session"], medians["hand-written recipe"]
    ratios = ", ".join(
        f"{key} x{dbg[key] / recipe[key]:.3f}" for key in ("wall", "session", "tests")
    )
    print(f"ratio dbguard/hand-written (goal <= 1.10): {ratios}")
    print(
        f"fixture path: dbguard {dbg['fixtures'] * 1000:.2f} ms vs hand-written "
        f"{recipe['fixtures'] * 1000:.2f} ms per test; medians (min-max) of {runs} alternating runs"
    )


PAIRED_HOOK = """

    import json as _json
    import os as _os

    _TIMES = {}


    def pytest_runtest_logreport(report):
        entry = _TIMES.setdefault(report.nodeid, [report.nodeid.rsplit("_", 1)[-1], 0.0, 0.0])
        entry[1] += report.duration
        if report.when != "call":
            entry[2] += report.duration


    def pytest_sessionfinish(session):
        with open(_os.environ["BENCH_PHASES"], "w") as out:
            _json.dump(list(_TIMES.values()), out)
"""


def _paired_suite(root: Path, tests: int) -> Path:
    """Tests alternating between ``dbguard_session`` and the recipe's ``session`` in one process."""
    root.mkdir(parents=True)
    (root / "models.py").write_text(textwrap.dedent(common.MODELS))
    (root / "pytest.ini").write_text("[pytest]\ndbguard_metadata = models:Base\n")
    (root / "conftest.py").write_text(textwrap.dedent(common.RECIPE_CONFTEST + PAIRED_HOOK))
    per_file = common.TESTS_PER_FILE // 2
    for first in range(0, tests, per_file):
        body = textwrap.dedent(common.ORM_HEADER)
        for i in range(first, min(first + per_file, tests)):
            pair = [("dbguard", "dbguard_session"), ("recipe", "session")]
            for kind, fixture in pair if i % 2 else pair[::-1]:  # each goes first in half the pairs
                test = textwrap.dedent(common.ORM_TEST)
                body += test.format(n=f"{i}_{kind}", i=i, fixture=fixture, work="pass")
        (root / f"test_pair_{first // per_file:03d}.py").write_text(body)
    return root


def bench_fixtures_paired(tmp: Path, runs: int, tests: int) -> None:
    common.banner(
        f"a. the same, interleaved: {tests} pairs of tests in one process, one of each fixture"
    )
    root = _paired_suite(tmp / "a_paired", tests)
    phases_file = tmp / "a_paired.json"
    command = common.pytest_command(plugins=["pytest_dbguard"])
    samples: dict[str, dict[str, list[float]]] = {
        kind: {"total": [], "fixtures": []} for kind in ("dbguard", "recipe")
    }
    ratios: dict[str, list[float]] = {"total": [], "fixtures": []}
    for index in range(runs + 1):
        common.run_pytest(root, command, env=common.sealed_env({"BENCH_PHASES": str(phases_file)}))
        times = json.loads(phases_file.read_text())
        run: dict[str, dict[str, float]] = {}
        for kind in samples:
            mine = [entry for entry in times if entry[0] == kind]
            run[kind] = {
                "total": sum(entry[1] for entry in mine) / len(mine),
                "fixtures": sum(entry[2] for entry in mine) / len(mine),
            }
        if index == 0:
            continue  # warm-up
        for key in ratios:
            ratios[key].append(run["dbguard"][key] / run["recipe"][key])
            for kind in samples:
                samples[kind][key].append(run[kind][key])
    rows = [
        [kind, common.spread(values["total"], 1000), common.spread(values["fixtures"], 1000)]
        for kind, values in samples.items()
    ]
    print(
        common.table(["fixture", "ms/test (setup+call+teardown)", "ms/test setup+teardown"], rows)
    )
    print(
        f"ratio dbguard/hand-written, interleaved (goal <= 1.10): per test "
        f"x{common.median(ratios['total']):.3f} ({min(ratios['total']):.3f}-{max(ratios['total']):.3f}); "
        f"fixture set-up+teardown x{common.median(ratios['fixtures']):.3f}; {runs} runs"
    )


# b. Startup ----------------------------------------------------------------------------------

# The same in every run, dbguard or not: what an application on PostgreSQL loads anyway.
STARTUP_CONFTEST = """
    import psycopg  # noqa: F401
    import sqlalchemy  # noqa: F401
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

    import models  # noqa: F401
"""

STARTUP_TEST = """
    import os
    import time


    def test_first():
        stamp = time.time()
        with open(os.environ["BENCH_STAMP"], "w") as out:
            out.write(repr(stamp))
"""


def _startup_suite(root: Path, ini: str) -> Path:
    root.mkdir(parents=True)
    (root / "models.py").write_text(textwrap.dedent(common.MODELS))
    (root / "conftest.py").write_text(textwrap.dedent(STARTUP_CONFTEST))
    (root / "test_first.py").write_text(textwrap.dedent(STARTUP_TEST))
    (root / "pytest.ini").write_text("[pytest]\n" + ini)
    return root


def bench_startup(tmp: Path, runs: int) -> None:
    common.banner("b. startup: spawn to the first test")
    ini = "dbguard_metadata = models:Base\n"
    suites = {
        "bare pytest (same imports)": _startup_suite(tmp / "b_bare", ""),
        "first run on the machine (no initdb cache)": _startup_suite(tmp / "b_first", ini),
        "embedded cold (new cluster, initdb cached)": _startup_suite(tmp / "b_cold", ini),
        "--dbguard-reuse (later run)": _startup_suite(tmp / "b_reuse", ini),
        # Under xdist the workers start while the controller's cluster does.
        "-n 2: bare pytest (same imports)": _startup_suite(tmp / "b_bare_n2", ""),
        "-n 2: first run on the machine (no initdb cache)": _startup_suite(tmp / "b_first_n2", ini),
        "-n 2: embedded cold (new cluster, initdb cached)": _startup_suite(tmp / "b_cold_n2", ini),
    }
    shared_cache = tmp / "b_cache"
    stamp = tmp / "b_stamp"
    empty_count = iter(range(10**6))

    def one(name: str) -> tuple[float, float]:
        extra = {"BENCH_STAMP": str(stamp), "XDG_CACHE_HOME": str(shared_cache)}
        plugins: list[str] = ["pytest_dbguard"]
        args: list[str] = []
        if "bare" in name:
            plugins = []
        if name.startswith("-n 2"):
            plugins, args = [*plugins, "xdist"], ["-n", "2"]
        if "no initdb cache" in name:
            extra["XDG_CACHE_HOME"] = str(tmp / f"b_empty_cache_{next(empty_count)}")
        elif "reuse" in name:
            args = ["--dbguard-reuse"]
        run = common.run_pytest(
            suites[name],
            common.pytest_command(*args, plugins=plugins),
            env=common.sealed_env(extra),
        )
        return float(stamp.read_text()) - run.spawned_at, run.wall

    try:
        results = common.alternate(list(suites), runs, one)
    finally:
        common.stop_reused_cluster(suites["--dbguard-reuse (later run)"].resolve())
    bare = {
        prefix: common.median(
            [first for first, _ in results[f"{prefix}bare pytest (same imports)"]]
        )
        for prefix in ("", "-n 2: ")
    }

    def own(name: str) -> float:
        """The median first test of ``name`` minus the bare pytest's (``-n 2``'s for ``-n 2``)."""
        prefix = "-n 2: " if name.startswith("-n 2") else ""
        return common.median([first for first, _ in results[name]]) - bare[prefix]

    goals = {"cold": 0.5, "reuse": 0.2}
    rows = []
    for name, samples in results.items():
        xdist = name.startswith("-n 2")
        goal = None if xdist else next((g for key, g in goals.items() if key in name), None)
        own_cost = "" if "bare" in name else f"{own(name):.3f}"
        rows.append(
            [
                name,
                common.spread([s[0] for s in samples], digits=3),
                own_cost,
                f"<= {goal}" if goal else "",
                common.spread([s[1] for s in samples]),
            ]
        )
    print(
        common.table(
            ["run", "first test s median (min-max)", "dbguard's own s", "goal", "wall s"], rows
        )
    )
    print(
        f"{runs} alternating runs each; the schema is the three-table models "
        "(template built each run, except reuse); under -n 2 the first test is the one test's, "
        "in whichever worker ran it, against a bare pytest -n 2"
    )
    first_run, cold = (
        "first run on the machine (no initdb cache)",
        "embedded cold (new cluster, initdb cached)",
    )
    print(
        f"summary: startup, dbguard's own cost: cold {own(cold):.2f} s (goal <= 0.5), "
        f"reuse {own('--dbguard-reuse (later run)'):.2f} s (goal <= 0.2); first run without "
        f"initdb cache {own(first_run):.2f} s; -n 2: cold {own('-n 2: ' + cold):.2f} s, "
        f"first run {own('-n 2: ' + first_run):.2f} s"
    )


# c. Clone from the template vs create_all ------------------------------------------------------


def wide_metadata(tables: int) -> Any:
    """``tables`` tables of a realistic shape: key, a few columns, an index, a foreign key chain."""
    import sqlalchemy as sa

    metadata = sa.MetaData()
    for number in range(tables):
        columns: list[Any] = [
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(80), nullable=False, index=True),
            sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
            sa.Column("amount", sa.Numeric(12, 2)),
            sa.Column("payload", sa.JSON),
        ]
        if number:
            columns.append(
                sa.Column("parent_id", sa.ForeignKey(f"t{number - 1:02d}.id"), index=True)
            )
        sa.Table(f"t{number:02d}", metadata, *columns, sa.UniqueConstraint("name", "amount"))
    return metadata


def bench_clone(cluster: Any, runs: int) -> None:
    from sqlalchemy import text

    from pytest_dbguard.db import engines

    common.banner("c. per-worker database: clone from the template vs create + create_all")
    server = cluster.url().resolved()
    admin = engines.admin_engine(server)
    reps = max(3, runs * 2)
    rows: list[list[str]] = []
    summary: list[str] = []
    with admin.connect() as connection:
        for tables in (10, 50):
            rows += _clone_rows(connection, server, tables, reps)
            clone, create_all = (float(row[2].split()[0]) for row in rows[-5:-3])
            summary.append(
                f"{tables} tables: clone {clone:.0f} ms vs create_all {create_all:.0f} ms"
            )
        version = connection.execute(text("SHOW server_version")).scalar()
    admin.dispose()
    print(common.table(["schema", "how", "ms median (min-max)"], rows))
    print(f"{reps} alternating repetitions each, PostgreSQL {version}, dbguard's embedded settings")
    print(f"summary: per-worker database, {'; '.join(summary)}")


def _clone_rows(connection: Any, server: Any, tables: int, reps: int) -> list[list[str]]:
    from pytest_dbguard.db import databases, engines, schema
    from pytest_dbguard.db.names import database_name

    metadata = wide_metadata(tables)
    made: list[str] = []

    def fresh(kind: str) -> str:
        made.append(database_name("bench", f"c{tables}{kind}", f"w{len(made)}"))
        return made[-1]

    def build(conn: Any) -> None:
        schema.create_with_metadata(conn, metadata)

    template = database_name("bench", f"tpl{tables}", "tpl")
    first = databases.provision_database(
        server, fresh("x"), template, build, run="bench", worker="w"
    )

    def clone() -> float:
        started = time.perf_counter()
        databases.provision_database(
            server, fresh("clone"), template, build, run="bench", worker="w"
        )
        return time.perf_counter() - started

    def create_all() -> float:
        started = time.perf_counter()
        provisioned = databases.provision_database(
            server, fresh("all"), "-", None, run="bench", worker="w"
        )
        engine = engines.engine_for(provisioned.url)
        with engine.begin() as conn:
            metadata.create_all(conn)
        engine.dispose()
        return time.perf_counter() - started

    def raw(strategy: str) -> float:
        suffix = f" STRATEGY = {strategy}" if strategy else ""
        started = time.perf_counter()
        connection.exec_driver_sql(
            f'CREATE DATABASE "{fresh("raw")}" TEMPLATE "{template}"{suffix}'
        )
        return time.perf_counter() - started

    jobs: dict[str, Callable[[], float]] = {
        "provision_database (clone)": clone,
        "provision_database (empty) + create_all": create_all,
        "raw CREATE DATABASE ... TEMPLATE (WAL_LOG, the default)": lambda: raw(""),
        "raw CREATE DATABASE ... TEMPLATE STRATEGY FILE_COPY": lambda: raw("FILE_COPY"),
    }
    results = common.alternate(list(jobs), reps, lambda name: jobs[name]())
    rows = [
        [f"{tables} tables", name, common.spread(samples, 1000, 1)]
        for name, samples in results.items()
    ]
    rows.append([f"{tables} tables", "template build (once per run)", f"{first.template_ms:.1f}"])
    for name in [*made, template]:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return rows


# d. Truncate isolation --------------------------------------------------------------------------

TRUNCATE_TABLES = 10


def _ten_tables_models() -> str:
    lines = [
        "from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table",
        "",
        "metadata = MetaData()",
    ]
    for number in range(TRUNCATE_TABLES):
        parent = f', Column("parent_id", ForeignKey("t{number - 1:02d}.id"))' if number else ""
        lines.append(
            f't{number:02d} = Table("t{number:02d}", metadata, Column("id", Integer, primary_key=True), '
            f'Column("name", String(50)){parent})'
        )
    return "\n".join(lines) + "\n"


def _write_two(connection: Any) -> None:
    connection.exec_driver_sql("INSERT INTO t00 (name) VALUES ('a'), ('b')")
    connection.exec_driver_sql("INSERT INTO t01 (name, parent_id) SELECT 'c', max(id) FROM t00")


def bench_truncate_direct(cluster: Any, runs: int) -> None:
    from pytest_dbguard.db import databases, engines
    from pytest_dbguard.db.names import database_name
    from pytest_dbguard.db.truncation import Truncator

    common.banner(
        f"d. truncate isolation, {TRUNCATE_TABLES} tables: Truncator.clean() measured directly"
    )
    namespace: dict[str, Any] = {}
    exec(_ten_tables_models(), namespace)  # our own generated models
    metadata = namespace["metadata"]
    server = cluster.url().resolved()
    name = database_name("bench", "d", "main")
    provisioned = databases.provision_database(
        server,
        name,
        database_name("bench", "d", "tpl"),
        metadata.create_all,
        run="d",
        worker="main",
    )
    engine = engines.engine_for(provisioned.url)
    internal = engine.execution_options(**engines.INTERNAL_OPTIONS)
    truncator = Truncator(internal)
    truncator.clean()  # builds and caches its probe, as the session-scoped fixture does
    every = ", ".join(f"t{n:02d}" for n in range(TRUNCATE_TABLES))
    reps = max(50, runs * 40)

    def wrote_two(clean: Callable[[], object]) -> Callable[[], float]:
        def one() -> float:
            with engine.begin() as connection:
                _write_two(connection)
            started = time.perf_counter()
            clean()
            return time.perf_counter() - started

        return one

    def naive() -> None:
        with internal.connect() as connection:
            connection.exec_driver_sql(f"TRUNCATE {every} RESTART IDENTITY CASCADE")
            connection.commit()

    def nothing() -> float:
        started = time.perf_counter()
        truncator.clean()
        return time.perf_counter() - started

    def rollback() -> float:
        started = time.perf_counter()
        connection = engine.connect()
        transaction = connection.begin()
        elapsed = time.perf_counter() - started
        _write_two(connection)
        started = time.perf_counter()
        transaction.rollback()
        connection.close()
        return elapsed + time.perf_counter() - started

    def probe_only() -> float:
        with engine.begin() as connection:
            _write_two(connection)
        with internal.connect() as connection:
            started = time.perf_counter()
            truncator.dirty_tables(connection)
            elapsed = time.perf_counter() - started
            connection.rollback()
        naive()
        return elapsed

    jobs: dict[str, Callable[[], float]] = {
        "Truncator.clean(), test wrote 2 tables": wrote_two(truncator.clean),
        "Truncator.clean(), test wrote nothing": nothing,
        f"naive TRUNCATE of all {TRUNCATE_TABLES} tables": wrote_two(naive),
        "rollback isolation (begin + rollback)": rollback,
        "  of which: the dirty-table probe query": probe_only,
    }
    results = common.alternate(list(jobs), reps, lambda key: jobs[key]())
    rows = [[key, common.spread(samples, 1000, 2)] for key, samples in results.items()]
    print(common.table(["per test", "ms median (min-max)"], rows))
    print(f"{reps} alternating repetitions each; goal for truncate: <= 5 ms per test")
    first = common.median(results["Truncator.clean(), test wrote 2 tables"]) * 1000
    probe = common.median(results["  of which: the dirty-table probe query"]) * 1000
    print(
        f"summary: Truncator.clean() after a test that wrote 2 of {TRUNCATE_TABLES} tables: "
        f"{first:.1f} ms, of which the probe {probe:.1f} ms (goal <= 5 ms)"
    )
    engine.dispose()
    databases.drop_database(server, name)


SUITE_CONFTEST_NAIVE = """
    import os

    import pytest
    from sqlalchemy import create_engine

    TABLES = ", ".join(f"t{n:02d}" for n in range(10))


    @pytest.fixture(scope="session")
    def _naive_engine():
        engine = create_engine(os.environ["DBGUARD_URL"])
        yield engine
        engine.dispose()


    @pytest.fixture(autouse=True)
    def _naive_truncate(_naive_engine):
        yield
        with _naive_engine.connect() as connection:
            connection.exec_driver_sql(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
            connection.commit()
"""

SUITE_TEST = """

    def test_{n}(dbguard_session):
        {body}
"""
WRITE_BODY = "\n    ".join(
    [
        "dbguard_session.execute(text(\"INSERT INTO t00 (name) VALUES ('a'), ('b')\"))",
        "dbguard_session.execute(text(\"INSERT INTO t01 (name, parent_id) SELECT 'c', max(id) FROM t00\"))",
        "dbguard_session.commit()",
        'assert dbguard_session.execute(text("SELECT count(*) FROM t01")).scalar() == 1',
    ]
)
READ_BODY = 'assert dbguard_session.execute(text("SELECT count(*) FROM t01")).scalar() == 0'


def _truncate_suite(root: Path, tests: int, isolation: str, body: str, conftest: str = "") -> Path:
    root.mkdir(parents=True)
    (root / "models10.py").write_text(_ten_tables_models())
    (root / "pytest.ini").write_text("[pytest]\ndbguard_metadata = models10:metadata\n")
    if conftest:
        (root / "conftest.py").write_text(textwrap.dedent(conftest))
    header = "import pytest\nfrom sqlalchemy import text\n\n"
    if isolation != "rollback":
        header += f'pytestmark = pytest.mark.dbguard(isolation="{isolation}")\n'
    for first in range(0, tests, common.TESTS_PER_FILE):
        tests_text = "".join(
            textwrap.dedent(SUITE_TEST).format(n=n, body=body)
            for n in range(first, min(first + common.TESTS_PER_FILE, tests))
        )
        (root / f"test_t_{first // common.TESTS_PER_FILE:03d}.py").write_text(header + tests_text)
    return root


def bench_truncate_suite(tmp: Path, runs: int, tests: int) -> None:
    common.banner(
        f"d. truncate isolation in {tests}-test suites ({TRUNCATE_TABLES} tables, dbguard_session)"
    )
    suites = {
        "rollback, writes 2 tables": _truncate_suite(tmp / "d_rb", tests, "rollback", WRITE_BODY),
        "truncate, writes 2 tables": _truncate_suite(tmp / "d_tr", tests, "truncate", WRITE_BODY),
        "truncate, writes nothing": _truncate_suite(tmp / "d_tr0", tests, "truncate", READ_BODY),
        f"naive TRUNCATE all {TRUNCATE_TABLES} (isolation none)": _truncate_suite(
            tmp / "d_naive", tests, "none", WRITE_BODY, SUITE_CONFTEST_NAIVE
        ),
        "rollback, writes nothing": _truncate_suite(tmp / "d_rb0", tests, "rollback", READ_BODY),
    }
    command = common.pytest_command(plugins=["pytest_dbguard"])
    results = common.alternate(
        list(suites), runs, lambda name: common.run_pytest(suites[name], command)
    )
    base = {
        True: common.median([r.session for r in results["rollback, writes 2 tables"]]),
        False: common.median([r.session for r in results["rollback, writes nothing"]]),
    }
    rows = []
    for name, samples in results.items():
        session = common.median([r.session for r in samples])
        versus = base["nothing" not in name]
        rows.append(
            [
                name,
                common.spread([r.session for r in samples]),
                f"{session / tests * 1000:.2f}",
                f"{(session - versus) / tests * 1000:+.2f}",
            ]
        )
    print(
        common.table(["suite", "pytest s median (min-max)", "ms/test", "ms/test vs rollback"], rows)
    )
    print(
        f"{runs} alternating runs each; 'vs rollback' compares with the rollback suite "
        "doing the same writes"
    )
    extra = {
        name: (common.median([r.session for r in results[name]]) - base["nothing" not in name])
        / tests
        * 1000
        for name in ("truncate, writes 2 tables", "truncate, writes nothing")
    }
    print(
        f"summary: truncate isolation in a suite, per test over rollback: "
        f"+{extra['truncate, writes 2 tables']:.1f} ms (writes 2 tables), "
        f"+{extra['truncate, writes nothing']:.1f} ms (writes nothing); goal <= 5 ms"
    )


# e. Import time ---------------------------------------------------------------------------------

IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def _importtime(statement: str, module: str, env: dict[str, str]) -> float:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        env=env,
    )
    for line in done.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match and match.group(4) == module:
            return int(match.group(2)) / 1000
    raise SystemExit(f"no import line for {module}:\n{done.stderr[-2000:]}")


def bench_imports(runs: int) -> None:
    common.banner("e. import time")
    env = common.sealed_env()
    reps = max(5, runs * 2)
    cases = {
        "import pytest_dbguard": ("import pytest_dbguard", "pytest_dbguard"),
        "import pytest_dbguard.plugin (pytest imported first)": (
            "import pytest; import pytest_dbguard.plugin",
            "pytest_dbguard.plugin",
        ),
        "import pytest (reference)": ("import pytest", "pytest"),
        "import sqlalchemy.orm (what a lazy import saves)": (
            "import sqlalchemy.orm",
            "sqlalchemy.orm",
        ),
    }
    results = common.alternate(list(cases), reps, lambda name: _importtime(*cases[name], env))
    rows = [[name, common.spread(samples, 1, 1)] for name, samples in results.items()]
    print(common.table(["statement", "cumulative ms median (min-max)"], rows))
    probe = (
        "import sys, pytest; before = set(sys.modules); import pytest_dbguard.plugin; "
        "heavy = ('sqlalchemy', 'psycopg', 'psycopg2', 'asyncpg', 'asyncio', 'alembic'); "
        "print(','.join(m for m in heavy if m in sys.modules and m not in before) or 'none')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    pulled = done.stdout.strip() or done.stderr.strip()
    verdict = "OK" if pulled == "none" else "NOT OK"
    print(
        f"heavy modules imported by `import pytest_dbguard.plugin`: {pulled} "
        f"({verdict}: SQLAlchemy, drivers and asyncio must stay lazy)"
    )
    plugin = common.median(results["import pytest_dbguard.plugin (pytest imported first)"])
    print(f"summary: import pytest_dbguard.plugin {plugin:.0f} ms on top of pytest")
    print(f"{reps} alternating runs each, bytecode cached (PYTHONPYCACHEPREFIX)")


# -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="alternating runs per configuration")
    parser.add_argument("--tests", type=int, default=300, help="tests in the generated suites")
    parser.add_argument("--only", default="a,b,c,d,e", help="comma-separated parts: a,b,c,d,e")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    print(f"foundation benchmarks, {common.load()}")
    with tempfile.TemporaryDirectory(prefix="dbguard-bench-") as folder:
        tmp = Path(folder)
        if "a" in parts:
            bench_fixtures(tmp, args.runs, args.tests)
            bench_fixtures_paired(tmp, args.runs, args.tests)
        if "b" in parts:
            bench_startup(tmp, args.runs)
        if "c" in parts or "d" in parts:
            with common.running_cluster("bench01") as cluster:
                if "c" in parts:
                    bench_clone(cluster, args.runs)
                if "d" in parts:
                    bench_truncate_direct(cluster, args.runs)
        if "d" in parts:
            bench_truncate_suite(tmp, args.runs, args.tests)
        if "e" in parts:
            bench_imports(args.runs)
    print(f"\nmachine: {common.machine_note()}")


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    main()
