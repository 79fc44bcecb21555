"""What the guards cost: a generated 300-test ORM suite, naive datetime guard off vs warn, and
with the ``dbguard_queries`` fixture requested vs not. Figures only, no assertions.

    python benchmarks/guards_overhead.py [--url sqlite|URL] [--runs 5] [--tests 300]

Each configuration runs in its own ``pytest -p pytest_dbguard`` process; configurations alternate
run by run so drift (caches, CPU frequency) spreads over all of them.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

MODELS = """
    import datetime
    from sqlalchemy import DateTime, ForeignKey
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = "authors"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
        joined_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))

    class Book(Base):
        __tablename__ = "books"
        id: Mapped[int] = mapped_column(primary_key=True)
        author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
        title: Mapped[str]
        published_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))

    class Review(Base):
        __tablename__ = "reviews"
        id: Mapped[int] = mapped_column(primary_key=True)
        book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
        stars: Mapped[int]
        written_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))
"""

HEADER = """
    import datetime
    from sqlalchemy import func, select
    from models import Author, Book, Review

    NOW = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)
"""

TEST = """

    def test_{n}(dbguard_session{extra}):
        authors = [Author(name=f"a{{i}}", joined_at=NOW) for i in range(3)]
        dbguard_session.add_all(authors)
        dbguard_session.flush()
        books = [Book(author_id=a.id, title="t", published_at=NOW) for a in authors]
        dbguard_session.add_all(books)
        dbguard_session.flush()
        dbguard_session.add_all(Review(book_id=b.id, stars=4, written_at=NOW) for b in books)
        dbguard_session.commit()
        assert dbguard_session.scalar(select(func.count()).select_from(Review)) == 3
        {check}
"""

TESTS_PER_FILE = 20


def write_suite(root: Path, tests: int, *, queries: bool) -> None:
    """A project with three tables and ``tests`` tests spread over files of 20."""
    root.mkdir(parents=True)
    (root / "models.py").write_text(textwrap.dedent(MODELS))
    (root / "pytest.ini").write_text("[pytest]\ndbguard_metadata = models:Base\n")
    extra = ", dbguard_queries" if queries else ""
    check = "assert dbguard_queries.count >= 4" if queries else ""
    for first in range(0, tests, TESTS_PER_FILE):
        body = textwrap.dedent(HEADER) + "".join(
            textwrap.dedent(TEST.format(n=n, extra=extra, check=check))
            for n in range(first, min(first + TESTS_PER_FILE, tests))
        )
        (root / f"test_suite_{first // TESTS_PER_FILE:03d}.py").write_text(body)


def run(root: Path, url: str, naive: str) -> tuple[float, float, float]:
    """One pytest run: wall seconds, pytest's own session seconds, CPU seconds of the process.

    CPU time is the steadier figure on a shared machine: other load stretches wall time only.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBGUARD_", "PYTEST_"))}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "pytest_dbguard",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    command += ["--dbguard-url", url, "--dbguard-naive-datetime", naive]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    summary = re.search(r"(\d+) passed.* in ([\d.]+)s", done.stdout)
    if done.returncode != 0 or summary is None:
        sys.exit(f"run failed in {root} ({naive}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return wall, float(summary.group(2)), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default="sqlite", help="--dbguard-url of the runs (default sqlite)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tests", type=int, default=300)
    args = parser.parse_args()

    configs = [(naive, queries) for queries in (False, True) for naive in ("off", "warn")]
    walls: dict[tuple[str, bool], list[float]] = {config: [] for config in configs}
    sessions: dict[tuple[str, bool], list[float]] = {config: [] for config in configs}
    cpus: dict[tuple[str, bool], list[float]] = {config: [] for config in configs}
    with tempfile.TemporaryDirectory(prefix="dbguard-bench-") as tmp:
        suites = {queries: Path(tmp) / f"suite_{int(queries)}" for queries in (False, True)}
        for queries, root in suites.items():
            write_suite(root, args.tests, queries=queries)
        for _ in range(args.runs):
            for naive, queries in configs:
                wall, session, cpu = run(suites[queries], args.url, naive)
                walls[naive, queries].append(wall)
                sessions[naive, queries].append(session)
                cpus[naive, queries].append(cpu)

    print(f"{args.tests} ORM tests, {args.runs} alternating runs each, --dbguard-url {args.url}")
    print(
        f"{'naive_datetime':<16}{'dbguard_queries':<16}{'wall':>9}{'pytest':>9}{'cpu':>9}"
        "  (medians)"
    )
    for naive, queries in configs:
        figures = [statistics.median(d[naive, queries]) for d in (walls, sessions, cpus)]
        used = "requested" if queries else "not requested"
        print(f"{naive:<16}{used:<16}" + "".join(f"{value:>8.2f}s" for value in figures))

    def ratio(a: tuple[str, bool], b: tuple[str, bool]) -> str:
        parts = [
            f"{label} x{statistics.median(d[a]) / statistics.median(d[b]):.3f}"
            for label, d in (("wall", walls), ("pytest", sessions), ("cpu", cpus))
        ]
        return ", ".join(parts)

    print(f"warn vs off (no dbguard_queries): {ratio(('warn', False), ('off', False))}")
    print(f"warn vs off (dbguard_queries):    {ratio(('warn', True), ('off', True))}")
    print(f"dbguard_queries vs not (off):     {ratio(('off', True), ('off', False))}")
    print(f"both vs neither:                  {ratio(('warn', True), ('off', False))}")


if __name__ == "__main__":
    main()
