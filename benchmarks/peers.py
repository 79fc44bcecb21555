"""dbguard next to its peers: pytest-postgresql's per-test database, and xdist scaling.

    python benchmarks/peers.py [--runs 3] [--tests 300] [--xdist-tests 600] [--peer-python PATH]

1. The same 300 ORM tests with pytest-postgresql's ``postgresql_proc`` + ``postgresql`` fixtures,
   written as its README shows (a ``db_session`` fixture that runs ``create_all`` per test on the
   per-test database), vs ``dbguard_session``. pytest-postgresql runs ``pg_ctl``, which refuses
   root: as root, both sides of this comparison run as the ``postgres`` user (``runuser``), with
   the same interpreter (``--peer-python``, default $BENCH_PEER_PYTHON or this one; it needs
   pytest-postgresql, psycopg, SQLAlchemy and pytest-dbguard, readable by that user;
   ``./dev.sh bench`` makes one). Its server is measured as configured by default and with the
   settings dbguard uses (fsync etc. off). Goal: dbguard >= 10x faster.
2. ``-n 2`` vs ``-n 0`` on 600 tests that each do ~10 ms of database work (``pg_sleep(0.01)``
   and three inserts), for ``dbguard_session`` and for the hand-written recipe on dbguard's
   per-worker database (``DBGUARD_URL``). Goal: dbguard's speedup >= the recipe's.

Figures only, no assertions; configurations alternate run by run and the figures are medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import _common as common

PEER_CONFTEST = """
    from typing import Iterator

    import pytest
    from psycopg import Connection
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session, scoped_session, sessionmaker
    from sqlalchemy.pool import NullPool


    @pytest.fixture
    def db_session(postgresql: Connection) -> Iterator[Session]:
        \"\"\"Session for SQLAlchemy.\"\"\"
        user = postgresql.info.user
        host = postgresql.info.host
        port = postgresql.info.port
        dbname = postgresql.info.dbname

        connection_str = f'postgresql+psycopg://{user}:@{host}:{port}/{dbname}'
        engine = create_engine(connection_str, echo=False, poolclass=NullPool)

        from models import Base
        Base.metadata.create_all(engine)

        SessionLocal = scoped_session(sessionmaker(bind=engine))
        yield SessionLocal()

        SessionLocal.close()
        Base.metadata.drop_all(engine)
"""

TUNED = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def _pg_ctl() -> str:
    folder = common.bindir()
    if folder is None:
        raise SystemExit("no PostgreSQL binaries found")
    return str(folder / "pg_ctl")


def bench_pytest_postgresql(
    tmp: Path, runs: int, tests: int, peer_python: str, *, tuned: bool = False
) -> None:
    common.banner(f"1. {tests} ORM tests: pytest-postgresql's per-test database vs dbguard_session")
    user = common.demoted_user()
    reason = common.importable(
        peer_python, "pytest_postgresql", "pytest_dbguard", "psycopg", "sqlalchemy", as_user=user
    )
    if reason is not None:
        print(
            f"skipped: {peer_python} cannot import pytest-postgresql and pytest-dbguard"
            f"{' as ' + user if user else ''} ({reason}). `./dev.sh bench` makes such a venv; by "
            "hand: `/usr/bin/python3 -m venv /tmp/vpp && /tmp/vpp/bin/pip install "
            "pytest-postgresql 'psycopg[binary]' sqlalchemy pytest .`, then --peer-python "
            "/tmp/vpp/bin/python."
        )
        return
    folder = tmp / "peers"
    base_ini = f"postgresql_exec = {_pg_ctl()}\n"
    suites = {
        "pytest-postgresql": common.write_orm_suite(
            folder / "pp", tests, "db_session", ini=base_ini, conftest=PEER_CONFTEST
        ),
        "dbguard_session": common.write_orm_suite(
            folder / "dbguard", tests, "dbguard_session", ini="dbguard_metadata = models:Base\n"
        ),
    }
    plugins = {
        "pytest-postgresql": ["pytest_postgresql.plugin"],
        "dbguard_session": ["pytest_dbguard"],
    }
    if tuned:  # the server settings dbguard uses, to show where the difference does not come from
        suites["pytest-postgresql, fsync etc. off"] = common.write_orm_suite(
            folder / "pp_tuned",
            tests,
            "db_session",
            conftest=PEER_CONFTEST,
            ini=base_ini + f"postgresql_postgres_options = {TUNED}\n",
        )
        plugins["pytest-postgresql, fsync etc. off"] = ["pytest_postgresql.plugin"]
    extra = {
        "HOME": str(folder),
        "XDG_CACHE_HOME": str(folder / "cache"),
        "PYTHONPYCACHEPREFIX": str(folder / "pycache"),
        "TMPDIR": str(folder / "tmp"),
    }
    (folder / "tmp").mkdir()
    common.hand_over(folder, user)
    env = common.sealed_env(extra)

    def one(name: str) -> common.Run:
        command = common.pytest_command(python=peer_python, plugins=plugins[name])
        return common.run_pytest(suites[name], command, env=env, as_user=user)

    try:
        # Only dbguard has caches worth warming (its initdb cache); pytest-postgresql initdb's every run.
        results = common.alternate(list(suites), runs, one, warmup=["dbguard_session"])
    finally:
        shutil.rmtree(folder / "tmp", ignore_errors=True)
    dbguard = common.median([r.wall for r in results["dbguard_session"]])
    dbguard_session = common.median([r.session for r in results["dbguard_session"]])
    rows = []
    for name, samples in results.items():
        wall = common.median([r.wall for r in samples])
        session = common.median([r.session for r in samples])
        rows.append(
            [
                name,
                common.spread([r.wall for r in samples]),
                common.spread([r.session for r in samples]),
                f"{session / tests * 1000:.1f}",
                f"x{wall / dbguard:.1f}",
                f"x{session / dbguard_session:.1f}",
            ]
        )
    print(
        common.table(
            [
                "fixture",
                "wall s median (min-max)",
                "pytest s median (min-max)",
                "ms/test",
                "wall vs dbguard",
                "pytest vs dbguard",
            ],
            rows,
        )
    )
    peer = results["pytest-postgresql"]
    per_test = common.median([r.session for r in peer]) / dbguard_session
    print(
        f"summary: pytest-postgresql / dbguard: per test (pytest time) x{per_test:.1f}, "
        f"wall x{common.median([r.wall for r in peer]) / dbguard:.1f} (goal >= x10)"
    )
    who = f" as {user}" if user else ""
    print(
        f"{runs} alternating runs each{who} with {peer_python}; goal: pytest-postgresql / dbguard >= x10"
    )


def bench_xdist(tmp: Path, runs: int, tests: int) -> None:
    common.banner(f"2. -n 2 vs -n 0: {tests} tests with ~10 ms of database work each")
    reason = common.importable(sys.executable, "xdist")
    if reason is not None:
        print(f"skipped: pytest-xdist is not installed for {sys.executable} ({reason})")
        return
    ini = "dbguard_metadata = models:Base\n"
    work = 'session.execute(text("SELECT pg_sleep(0.01)"))'
    suites = {
        "dbguard_session": common.write_orm_suite(
            tmp / "x_dbguard", tests, "dbguard_session", ini=ini, work=work
        ),
        "hand-written recipe": common.write_orm_suite(
            tmp / "x_recipe", tests, "session", ini=ini, conftest=common.RECIPE_CONFTEST, work=work
        ),
    }
    configs = [f"{name} {workers}" for name in suites for workers in ("-n 0", "-n 2")]

    def one(config: str) -> common.Run:
        name, workers = config.rsplit(" ", 2)[0], config.rsplit(" ", 1)[1]
        command = common.pytest_command("-n", workers, plugins=["pytest_dbguard", "xdist"])
        return common.run_pytest(suites[name], command)

    results = common.alternate(configs, runs, one, warmup=configs[:1])  # caches are shared
    rows = []
    speedups = {}
    for name in suites:
        serial, parallel = results[f"{name} -n 0"], results[f"{name} -n 2"]
        for label, samples in (("-n 0", serial), ("-n 2", parallel)):
            rows.append(
                [
                    name,
                    label,
                    common.spread([r.wall for r in samples]),
                    common.spread([r.session for r in samples]),
                ]
            )
        wall = common.median([r.wall for r in serial]) / common.median([r.wall for r in parallel])
        session = common.median([r.session for r in serial]) / common.median(
            [r.session for r in parallel]
        )
        speedups[name] = (wall, session)
    print(
        common.table(
            ["fixture", "workers", "wall s median (min-max)", "pytest s median (min-max)"], rows
        )
    )
    for name, (wall, session) in speedups.items():
        print(f"speedup -n 2 over -n 0, {name}: wall x{wall:.2f}, pytest x{session:.2f}")
    print(f"{runs} alternating runs each; goal: dbguard's speedup >= the hand-written recipe's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per configuration")
    parser.add_argument(
        "--tests", type=int, default=300, help="tests in the pytest-postgresql comparison"
    )
    parser.add_argument(
        "--xdist-tests", type=int, default=600, help="tests in the -n 2 vs -n 0 suites"
    )
    parser.add_argument(
        "--peer-python",
        default=os.environ.get("BENCH_PEER_PYTHON") or sys.executable,
        help="interpreter with pytest-postgresql installed (default $BENCH_PEER_PYTHON or this one)",
    )
    parser.add_argument(
        "--tuned", action="store_true", help="also run pytest-postgresql with fsync etc. off"
    )
    parser.add_argument("--only", default="1,2", help="comma-separated parts: 1,2")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    print(f"peer benchmarks, {common.load()}")
    with tempfile.TemporaryDirectory(prefix="dbguard-bench-") as folder:
        tmp = Path(folder)
        os.chmod(tmp, 0o755)
        if "1" in parts:
            bench_pytest_postgresql(tmp, args.runs, args.tests, args.peer_python, tuned=args.tuned)
        if "2" in parts:
            bench_xdist(tmp, args.runs, args.xdist_tests)
    print(f"\nmachine: {common.machine_note()}")


if __name__ == "__main__":
    main()
