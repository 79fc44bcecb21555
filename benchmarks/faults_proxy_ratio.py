"""What the fault proxy costs the tests that inject no fault: a generated 300-test ORM suite
(three tables, a few rows per test through ``dbguard_session``) run with ``--dbguard-proxy`` and
without, on the embedded server. Figures only, no assertions.

    python benchmarks/faults_proxy_ratio.py [--tests 300] [--runs 5]

Each run is its own ``pytest -p pytest_dbguard`` process; the two modes alternate run by run (and
take turns going first) so drift hits both alike. "tests" is measured inside the run, from the
end of the first test to the end of the last; "wall" is the whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TESTS_PER_FILE = 30
MODELS = """
    from sqlalchemy import ForeignKey
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = "authors"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]

    class Book(Base):
        __tablename__ = "books"
        id: Mapped[int] = mapped_column(primary_key=True)
        author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
        title: Mapped[str]

    class Review(Base):
        __tablename__ = "reviews"
        id: Mapped[int] = mapped_column(primary_key=True)
        book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
        stars: Mapped[int]
"""
# Times the tests themselves: from the end of the first (imports, engine, first connection) to
# the end of the last, leaving out interpreter start, cluster start and teardown.
CONFTEST = """
    import json, time

    SPAN = {}

    def pytest_runtest_logfinish(nodeid, location):
        SPAN.setdefault("first", time.perf_counter())
        SPAN["last"] = time.perf_counter()

    def pytest_sessionfinish(session):
        if "last" in SPAN:
            with open("span.json", "w") as out:
                json.dump({"tests": SPAN["last"] - SPAN["first"]}, out)
"""
TEST = """
    def test_library_{n}(dbguard_session):
        author = Author(name="author {n}")
        dbguard_session.add(author)
        dbguard_session.flush()
        books = [Book(author_id=author.id, title=f"book {n}.{{i}}") for i in range(2)]
        dbguard_session.add_all(books)
        dbguard_session.flush()
        dbguard_session.add_all(Review(book_id=book.id, stars=1 + {n} % 5) for book in books)
        dbguard_session.commit()
        count = select(func.count()).select_from(Review).join(Book).where(Book.author_id == author.id)
        assert dbguard_session.scalar(count) == 2
"""


def write_suite(folder: Path, tests: int) -> None:
    """The models, the ini, the timing conftest and ``tests`` ORM tests in files of 30."""
    (folder / "models.py").write_text(textwrap.dedent(MODELS))
    (folder / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (folder / "pytest.ini").write_text("[pytest]\ndbguard_metadata = models:Base\n")
    header = "from sqlalchemy import func, select\nfrom models import Author, Book, Review\n"
    for start in range(0, tests, TESTS_PER_FILE):
        bodies = [
            textwrap.dedent(TEST.format(n=n))
            for n in range(start, min(start + TESTS_PER_FILE, tests))
        ]
        (folder / f"test_library_{start // TESTS_PER_FILE:02d}.py").write_text(
            header + "".join(bodies)
        )


def run(folder: Path, proxy: bool, tests: int) -> tuple[float, float]:
    """One run: (wall seconds, tests seconds); exits with the output if it did not pass."""
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    for name in [
        name for name in env if name.startswith(("DBGUARD_", "_DBGUARD_", "PYTEST_ADDOPTS"))
    ]:
        del env[name]
    command = [sys.executable, "-m", "pytest", "-p", "pytest_dbguard", "-p", "no:cacheprovider"]
    command += ["--dbguard-proxy"] if proxy else []
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    has_proxy = "fault proxy on" in done.stdout
    if done.returncode != 0 or f"{tests} passed" not in done.stdout or has_proxy != proxy:
        sys.exit(f"run with proxy={proxy} went wrong:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return wall, json.loads((folder / "span.json").read_text())["tests"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=300, help="tests in the generated suite")
    parser.add_argument("--runs", type=int, default=5, help="runs per mode, alternating")
    args = parser.parse_args()
    samples: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="dbguard-faults-bench-") as tmp:
        folder = Path(tmp)
        write_suite(folder, args.tests)
        run(folder, False, args.tests)  # warm up: bytecode, the cached initdb, the page cache
        for index in range(args.runs):
            for proxy in (index % 2 == 0, index % 2 != 0):
                samples[proxy].append(run(folder, proxy, args.tests))
    print(f"{args.tests} ORM tests (dbguard_session, 3 tables), {args.runs} runs per mode")
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the end")
    medians = {}
    for proxy, label in ((False, "direct"), (True, "--dbguard-proxy")):
        wall = statistics.median(sample[0] for sample in samples[proxy])
        tests = statistics.median(sample[1] for sample in samples[proxy])
        medians[proxy] = (wall, tests)
        per_test = tests / max(args.tests - 1, 1) * 1000
        print(f"{label:<16} wall {wall:6.2f} s   tests {tests:6.3f} s   {per_test:6.3f} ms/test")
    ratio_wall = medians[True][0] / medians[False][0]
    ratio_tests = medians[True][1] / medians[False][1]
    print(f"ratio proxy/direct: wall {ratio_wall:.3f}, tests {ratio_tests:.3f}")


if __name__ == "__main__":
    main()
