"""Measuring for ``ci_path.py``: the generated suites, one timed pytest process, tables, summaries.

Not a benchmark itself (``run_all.py`` skips files starting with ``_``).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import _common as common
import _external as external

NAN = float("nan")
INI = "dbguard_metadata = models:Base\n"
# Two more rows (an author and a book): 5 rows in 3 tables per test, as in the issue.
FIVE_ROWS = (
    'session.add_all([Author(name="x"), Book(author_id=author.id, title="u")]); session.flush()'
)

# SQLAlchemy's "joining a Session into an external transaction", on a database of its own that
# the conftest creates (named per xdist worker) and drops: what a team writes for CI by hand.
RECIPE_OWN_DATABASE = """
    import os

    import pytest
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.orm import Session

    from models import Base


    @pytest.fixture(scope="session")
    def engine():
        url = make_url(os.environ["DATABASE_URL"])
        name = f"test_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}"
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine = create_engine(url.set(database=name))
        Base.metadata.create_all(engine)
        yield engine
        engine.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}"')
        admin.dispose()


    @pytest.fixture
    def session(engine):
        connection = engine.connect()
        transaction = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint")
        yield session
        session.close()
        transaction.rollback()
        connection.close()
"""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One pytest process: wall and CPU seconds, the server's CPU meanwhile, what its log shows."""

    wall: float
    cpu: float
    server_cpu: float
    log: Mapping[str, int]

    @property
    def total_cpu(self) -> float:
        return self.cpu + (0.0 if self.server_cpu != self.server_cpu else self.server_cpu)


def measure(
    root: Path,
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    server: external.ExternalServer | None = None,
    postmaster: int | None = None,
    passed: int | None = None,
) -> Sample:
    """Run ``command`` in ``root`` once; stop the benchmark (password hidden) if it fails."""
    offset = server.log_offset() if server else 0
    server_before = server.cpu() if server else external.server_cpu(postmaster)
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=root, env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    summary = common.SUMMARY.search(text)
    failed = process.returncode != 0 or (
        passed is not None and (summary is None or int(summary.group(1)) != passed)
    )
    if failed:
        sys.exit(
            external.hide(
                f"run failed (exit {process.returncode}) in {root}:\n$ {' '.join(command)}\n{text[-4000:]}"
            )
        )
    time.sleep(0.02)  # the server reaps the backends of the connections pytest just closed
    server_after = server.cpu() if server else external.server_cpu(postmaster)
    log = external.log_counts(server.log_since(offset)) if server else {}
    return Sample(wall, usage.ru_utime + usage.ru_stime, server_after - server_before, log)


def orm_suite(root: Path, tests: int, dbguard: bool, extra_ini: str = "") -> Path:
    """The N-test ORM suite of either side; ``extra_ini``: more dbguard settings, one per line."""
    if dbguard:
        return common.write_orm_suite(
            root, tests, "dbguard_session", ini=INI + extra_ini, work=FIVE_ROWS
        )
    return common.write_orm_suite(
        root, tests, "session", conftest=RECIPE_OWN_DATABASE, work=FIVE_ROWS
    )


def med(samples: Sequence[Sample], key: str) -> float:
    return common.median([getattr(sample, key) for sample in samples])


def paired(a: Sequence[Sample], b: Sequence[Sample], key: str, ratio: bool) -> float:
    values = [getattr(x, key) for x in a], [getattr(y, key) for y in b]
    if ratio:
        return common.median([x / y for x, y in zip(*values, strict=True)])
    return common.median([x - y for x, y in zip(*values, strict=True)])


def print_table(results: Mapping[str, Sequence[Sample]], server_note: str = "") -> None:
    rows = []
    for name, samples in results.items():
        server = [s.server_cpu for s in samples if s.server_cpu == s.server_cpu]
        connections = [s.log["connections"] for s in samples if s.log]
        rows.append(
            [
                name,
                common.spread([s.wall for s in samples]),
                common.spread([s.cpu for s in samples]),
                f"{common.median([s.wall - s.cpu for s in samples]):.2f}",
                common.spread(server) if server else server_note or "-",
                f"{common.median(connections):.0f}" if connections else "-",
            ]
        )
    headers = ["run", "wall s", "CPU s (pytest+children)", "wall-CPU s", "server CPU s", "conns"]
    print(common.table(headers, rows))
    print(
        "medians (min-max) of alternating runs; conns = TCP connections the server logged per run"
    )


def summarize(
    results: Mapping[str, Sequence[Sample]],
    names: Sequence[str],
    tests: int,
    *,
    cpu: str,
    goals: tuple[float, float, float | None],
    label: str,
) -> None:
    """Fixed cost (1 test), N-test ratios and the per-test slope of dbguard vs the recipe."""
    dbg1, rec1, dbgn, recn = (results[name] for name in names)
    fixed_wall = (med(dbg1, "wall") - med(rec1, "wall")) * 1000
    fixed_cpu = (med(dbg1, cpu) - med(rec1, cpu)) * 1000
    print(
        f"summary: {label}, fixed cost (1 test) dbguard - recipe: wall {fixed_wall:+.0f} ms "
        f"(paired {paired(dbg1, rec1, 'wall', False) * 1000:+.0f}), CPU {fixed_cpu:+.0f} ms "
        f"(paired {paired(dbg1, rec1, cpu, False) * 1000:+.0f}); goal <= +{goals[0]:.0f} ms"
    )
    print(
        f"summary: {label}, {tests} tests ratio dbguard/recipe: wall "
        f"x{med(dbgn, 'wall') / med(recn, 'wall'):.3f} (paired x{paired(dbgn, recn, 'wall', True):.3f}), "
        f"CPU x{med(dbgn, cpu) / med(recn, cpu):.3f} (paired x{paired(dbgn, recn, cpu, True):.3f}); "
        f"goal <= {goals[1]:.2f}"
    )
    slopes = {}
    for key in ("wall", cpu):
        slopes[key] = [
            (med(many, key) - med(one, key)) / (tests - 1) * 1000
            for one, many in ((dbg1, dbgn), (rec1, recn))
        ]
    goal = f"; goal <= +{goals[2]} ms" if goals[2] is not None else ""
    print(
        f"summary: {label}, per-test slope ({tests} - 1 tests)/{tests - 1}: wall "
        f"{slopes['wall'][0]:.2f} vs {slopes['wall'][1]:.2f} ms "
        f"({slopes['wall'][0] - slopes['wall'][1]:+.2f}), CPU {slopes[cpu][0]:.2f} vs "
        f"{slopes[cpu][1]:.2f} ms ({slopes[cpu][0] - slopes[cpu][1]:+.2f}){goal}"
    )


def loaded(title: str) -> None:
    print(f"[{common.load()} after {title}]", flush=True)
