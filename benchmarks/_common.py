"""Shared helpers for the benchmark scripts: generated suites, sealed pytest runs, medians, tables.

Not a benchmark itself (``run_all.py`` skips files starting with ``_``). Everything here works
with whatever interpreter runs the script (``sys.executable``); nothing asserts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import platform
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
SUMMARY = re.compile(r"(\d+) passed.*? in ([\d.]+)s")
TESTS_PER_FILE = 20
PYCACHE = Path(tempfile.gettempdir()) / f"dbguard-bench-pycache-{os.geteuid()}"

# Three tables, integer keys, a foreign key chain: the shape of a small application's models.
MODELS = """
    from sqlalchemy import ForeignKey, String
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


    class Base(DeclarativeBase):
        pass


    class Author(Base):
        __tablename__ = "authors"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))


    class Book(Base):
        __tablename__ = "books"
        id: Mapped[int] = mapped_column(primary_key=True)
        author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"), index=True)
        title: Mapped[str] = mapped_column(String(100))


    class Review(Base):
        __tablename__ = "reviews"
        id: Mapped[int] = mapped_column(primary_key=True)
        book_id: Mapped[int] = mapped_column(ForeignKey("books.id"), index=True)
        stars: Mapped[int]
"""

ORM_HEADER = """
    from sqlalchemy import func, select, text
    from models import Author, Book, Review
"""

# Three rows across the three tables, a commit (a savepoint under rollback isolation), a query.
ORM_TEST = """

    def test_{n}({fixture}):
        session = {fixture}
        author = Author(name="a{i}")
        session.add(author)
        session.flush()
        book = Book(author_id=author.id, title="t{i}")
        session.add(book)
        session.flush()
        session.add(Review(book_id=book.id, stars={i} % 5))
        session.commit()
        {work}
        count = session.scalar(
            select(func.count()).select_from(Review).join(Book).where(Book.author_id == author.id)
        )
        assert count == 1
"""

# The hand-written recipe: SQLAlchemy's "joining a Session into an external transaction",
# on the database dbguard prepared (so server, database and schema are identical).
RECIPE_CONFTEST = """
    import os

    import pytest
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session


    @pytest.fixture(scope="session")
    def engine():
        engine = create_engine(os.environ["DBGUARD_URL"])
        yield engine
        engine.dispose()


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


# Added to every suite of a comparison alike: sums pytest's own per-phase durations of each test,
# which leaves out start-up, collection and the session's database set-up.
PHASES_HOOK = """

    import json as _json
    import os as _os

    _PHASES = {"setup": 0.0, "call": 0.0, "teardown": 0.0}


    def pytest_runtest_logreport(report):
        _PHASES[report.when] += report.duration


    def pytest_sessionfinish(session):
        if _os.environ.get("BENCH_PHASES"):
            with open(_os.environ["BENCH_PHASES"], "w") as out:
                _json.dump(_PHASES, out)
"""


def write_orm_suite(
    root: Path, tests: int, fixture: str, *, conftest: str = "", ini: str = "", work: str = ""
) -> Path:
    """A project with the three-table models and ``tests`` tests in files of 20; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.py").write_text(textwrap.dedent(MODELS))
    (root / "pytest.ini").write_text("[pytest]\n" + textwrap.dedent(ini))
    if conftest:
        (root / "conftest.py").write_text(textwrap.dedent(conftest))
    for first in range(0, tests, TESTS_PER_FILE):
        body = textwrap.dedent(ORM_HEADER) + "".join(
            textwrap.dedent(ORM_TEST).format(n=n, i=n, fixture=fixture, work=work or "pass")
            for n in range(first, min(first + TESTS_PER_FILE, tests))
        )
        (root / f"test_orm_{first // TESTS_PER_FILE:03d}.py").write_text(body)
    return root


def sealed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without dbguard/pytest settings, plugin autoload off."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DBGUARD_", "PYTEST_", "_DBGUARD"))
    }
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    # Measure what users see: compiled bytecode reused from run to run, kept outside the repo
    # (PYTHONDONTWRITEBYTECODE in a CI shell would make every run recompile dbguard and the tests).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.update(extra or {})
    return env


@dataclasses.dataclass(frozen=True)
class Run:
    """One pytest process: wall seconds (spawn to exit), pytest's own session seconds, output."""

    wall: float
    session: float
    passed: int
    stdout: str
    spawned_at: float  # time.time() just before the spawn


def count_instructions(
    command: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None
) -> int:
    """The instructions ``command``'s own process executes (valgrind's cachegrind, children not
    traced: a server it starts is not counted). Exits with valgrind's output if the run fails."""
    done = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            "--trace-children=no",
            *command,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        sys.exit(f"valgrind run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return int(found.group(1).replace(",", ""))


def pytest_command(*args: str, python: str | None = None, plugins: Sequence[str] = ()) -> list[str]:
    """``python -m pytest -q -p no:cacheprovider -p <plugin>… args``."""
    command = [python or sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    for plugin in plugins:
        command += ["-p", plugin]
    return [*command, *args]


def run_pytest(
    root: Path,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    as_user: str | None = None,
    check: bool = True,
) -> Run:
    """Run ``command`` in ``root``; on failure print the output and stop the benchmark."""
    full = list(command)
    if as_user is not None:
        full = ["runuser", "-u", as_user, "--", *full]
    spawned = time.time()
    started = time.perf_counter()
    done = subprocess.run(
        full, cwd=root, env=dict(env or sealed_env()), capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    summary = SUMMARY.search(done.stdout)
    if check and (done.returncode != 0 or summary is None):
        sys.exit(
            f"benchmark run failed (exit {done.returncode}) in {root}:\n$ {' '.join(full)}\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
        )
    passed, session = (
        (int(summary.group(1)), float(summary.group(2))) if summary else (0, float("nan"))
    )
    return Run(wall, session, passed, done.stdout, spawned)


def alternate(
    configs: Sequence[str],
    runs: int,
    one: Callable[[str], T],
    *,
    warmup: bool | Sequence[str] = True,
) -> dict[str, list[T]]:
    """Run every config once per round, ``runs`` rounds, so machine drift hits them all alike.

    With ``warmup`` one unrecorded round goes first (page cache, initdb cache, .pyc files); a
    list of configs warms up only those.
    """
    results: dict[str, list[T]] = {config: [] for config in configs}
    for config in configs if warmup is True else warmup or ():
        one(config)
    for round_number in range(runs):
        order = configs if round_number % 2 == 0 else list(reversed(configs))
        for config in order:
            results[config].append(one(config))
    return results


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``median (min-max)`` of ``values`` times ``scale``."""
    if not values:
        return "-"
    return f"{median(values) * scale:.{digits}f} ({min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f})"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left/right aligned text table (text left, numbers right)."""
    cells = [[str(cell) for cell in headers]] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_numberish(row[i]) for row in cells[1:]) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        parts = [
            cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _numberish(text: str) -> bool:
    return bool(re.match(r"^[x+\-]?[\d.]+", text))


def load() -> str:
    """The 1/5/15-minute load averages, for the figures' context."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def banner(title: str) -> None:
    print(f"\n== {title} [{load()}, {time.strftime('%Y-%m-%d %H:%M:%S')}]", flush=True)


def bindir() -> Path | None:
    """The PostgreSQL binaries dbguard would use."""
    from pytest_dbguard.server.machine import find_bindir

    return find_bindir()


def postgres_version() -> str:
    folder = bindir()
    if folder is None:
        return "not found"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            [str(folder / "postgres"), "--version"], capture_output=True, text=True
        ).stdout.strip()
    return "unknown"


def machine_note() -> str:
    """CPU model, cores, RAM, Python, PostgreSQL and load: the context every figure needs."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown RAM"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    return (
        f"{cpu}, {os.cpu_count()} cores, {ram}; Python {platform.python_version()} "
        f"({sys.executable}); {postgres_version()}; {platform.system()} {platform.release()}; {load()}"
    )


def demoted_user() -> str | None:
    """``postgres`` when we are root (pg_ctl and initdb refuse root), else None."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(KeyError):
        pwd.getpwnam("postgres")
        return "postgres"
    return "nobody"


def hand_over(root: Path, user: str | None) -> None:
    """Give ``root`` (recursively) to ``user`` so a demoted pytest can write there."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for folder, dirs, files in os.walk(root):
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(folder, name), entry.pw_uid, entry.pw_gid)
    parent = root.parent
    while parent != parent.parent and str(parent).startswith(("/tmp", "/var/tmp")):
        os.chmod(parent, os.stat(parent).st_mode | 0o755)
        parent = parent.parent


@contextlib.contextmanager
def running_cluster(run: str = "bench01") -> Iterator[object]:
    """A dbguard embedded cluster (``cluster_start.prepare_cluster``) that answers queries; stopped after."""
    from pytest_dbguard.server.cluster_start import prepare_cluster
    from pytest_dbguard.server.readiness import wait_until_ready

    cluster, _adopted = prepare_cluster(f"{run}-{os.getpid()}", reuse_for=None)
    try:
        wait_until_ready(cluster.url().resolved(), timeout=60)
        yield cluster
    finally:
        cluster.stop()


def stop_reused_cluster(rootpath: Path) -> None:
    """Stop and remove the cluster a ``--dbguard-reuse`` run of ``rootpath`` left running."""
    import json

    from pytest_dbguard.server import kept_clusters
    from pytest_dbguard.server.cluster import EmbeddedCluster
    from pytest_dbguard.server.machine import find_bindir, storage_root

    folder = storage_root() / f"{kept_clusters.PREFIX}{kept_clusters.reuse_key(rootpath)}"
    with contextlib.suppress(OSError, ValueError, KeyError):
        state = json.loads((folder / "dbguard.json").read_text())
        found = find_bindir()
        if found is not None:
            EmbeddedCluster(bindir=found, root=folder, port=int(state["port"]), keep=True).stop()
    shutil.rmtree(folder, ignore_errors=True)


def importable(python: str, *modules: str, as_user: str | None = None) -> str | None:
    """None when ``python`` (run as ``as_user``) imports ``modules``, else the reason it cannot."""
    command = [python, "-c", "import " + ", ".join(modules)]
    if as_user is not None:
        command = ["runuser", "-u", as_user, "--", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit {done.returncode}"
    return None


def glob_first(pattern: str) -> str | None:
    found = sorted(glob.glob(pattern))
    return found[-1] if found else None
