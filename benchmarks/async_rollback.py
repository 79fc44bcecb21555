"""What ``dbguard_async_session`` costs against the hand-written async rollback recipe.

    python benchmarks/async_rollback.py [--url URL] [--driver psycopg|asyncpg] [--runs 5]
                                        [--tests 300]

Generates a 300-test async suite (three tables, a few rows each per test, a commit that is a
savepoint, a query) twice: once on ``dbguard_async_session``, once on the recipe from
SQLAlchemy's "joining a Session into an external transaction" written by hand (a session-scoped
AsyncEngine on ``loop_scope="session"``; per test a connection, ``begin()``, an AsyncSession with
``join_transaction_mode="create_savepoint"``, rollback after). Both run under
``pytest -p pytest_dbguard -p asyncio`` against one server (a throwaway cluster, or ``--url``),
so database, schema and event loop are the same; the recipe connects to DBGUARD_ASYNC_URL.
Runs alternate; the figures are pytest's own session seconds (collection and tests, not the
database set-up), medians of ``--runs`` runs after one warm-up each. Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from _common import MODELS, SUMMARY, TESTS_PER_FILE  # the same three-table models as foundation.py

INI = """
    [pytest]
    asyncio_mode = auto
    dbguard_metadata = models:Base
"""
HEADER = """
    from sqlalchemy import func, select

    from models import Author, Book, Review
"""
TEST = """

    async def test_{n}({fixture}):
        session = {fixture}
        author = Author(name="a{n}")
        session.add(author)
        await session.flush()
        books = [Book(author_id=author.id, title=f"t{n}-{{i}}") for i in range(2)]
        session.add_all(books)
        await session.flush()
        session.add_all([Review(book_id=book.id, stars={n} % 5) for book in books])
        await session.commit()
        count = await session.scalar(
            select(func.count()).select_from(Review).join(Book).where(Book.author_id == author.id)
        )
        assert count == 2
"""
RECIPE_CONFTEST = """
    import os

    import pytest_asyncio
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine


    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def engine():
        engine = create_async_engine(os.environ["DBGUARD_ASYNC_URL"], pool_pre_ping=True)
        yield engine
        await engine.dispose()


    @pytest_asyncio.fixture(loop_scope="session")
    async def session(engine):
        connection = await engine.connect()
        transaction = await connection.begin()
        session = AsyncSession(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        yield session
        await session.close()
        await transaction.rollback()
        await connection.close()
"""
VARIANTS = {"dbguard": "dbguard_async_session", "recipe": "session"}


def write_suite(root: Path, fixture: str, tests: int, conftest: str) -> Path:
    """A project with the three tables and ``tests`` async tests in files of 20."""
    root.mkdir(parents=True)
    (root / "models.py").write_text(textwrap.dedent(MODELS))
    (root / "pytest.ini").write_text(textwrap.dedent(INI))
    (root / "conftest.py").write_text(textwrap.dedent(conftest))
    for first in range(0, tests, TESTS_PER_FILE):
        body = textwrap.dedent(HEADER) + "".join(
            textwrap.dedent(TEST).format(n=n, fixture=fixture)
            for n in range(first, min(first + TESTS_PER_FILE, tests))
        )
        (root / f"test_async_{first // TESTS_PER_FILE:03d}.py").write_text(body)
    return root


@contextlib.contextmanager
def throwaway_server(driver: str) -> Iterator[str]:
    """dbguard's embedded cluster, started once for every run; yields its URL."""
    from pytest_dbguard.server.cluster_start import prepare_cluster
    from pytest_dbguard.server.readiness import wait_until_ready

    cluster, _adopted = prepare_cluster(f"bench-async-{os.getpid()}", reuse_for=None)
    try:
        wait_until_ready(cluster.url().resolved(), timeout=60)
        yield cluster.url(driver).render(hide_password=False)
    finally:
        cluster.stop()


def run_once(root: Path, url: str) -> float:
    """One ``pytest -p pytest_dbguard -p asyncio`` run; pytest's session seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBGUARD_", "PYTEST_"))}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-p", "pytest_dbguard", "-p", "asyncio", "--dbguard-url", url,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    summary = SUMMARY.search(done.stdout)
    if done.returncode != 0 or summary is None:
        sys.exit(f"run failed in {root} (exit {done.returncode}):\n{done.stdout[-3000:]}")
    return float(summary.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="server to use (default: a throwaway embedded cluster)")
    parser.add_argument("--driver", choices=("psycopg", "asyncpg"), default="psycopg")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dbguard-bench-async-") as folder:
        roots = {
            "dbguard": write_suite(Path(folder) / "dbguard", VARIANTS["dbguard"], args.tests, ""),
            "recipe": write_suite(
                Path(folder) / "recipe", VARIANTS["recipe"], args.tests, RECIPE_CONFTEST
            ),
        }
        server = contextlib.nullcontext(args.url) if args.url else throwaway_server(args.driver)
        with server as url:
            samples: dict[str, list[float]] = {name: [] for name in roots}
            for root in roots.values():
                run_once(root, url)  # warm-up: .pyc files, page cache, template database
            for number in range(args.runs):
                order = list(roots) if number % 2 == 0 else list(reversed(roots))
                for name in order:
                    samples[name].append(run_once(roots[name], url))
    print(
        f"async rollback, {args.tests} tests, {args.runs} alternating runs each, "
        f"driver {args.url.split('://')[0] if args.url else 'postgresql+' + args.driver}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, values in samples.items():
        per_test = medians[name] / args.tests * 1000
        print(
            f"  {name:8} median {medians[name]:.2f} s ({per_test:.2f} ms/test), "
            f"runs {', '.join(f'{value:.2f}' for value in values)}"
        )
    print(f"  ratio dbguard / recipe: {medians['dbguard'] / medians['recipe']:.3f}")


if __name__ == "__main__":
    main()
