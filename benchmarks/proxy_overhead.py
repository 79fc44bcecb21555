"""What dbguard's fault proxy adds to each round trip when no fault is active.

    python benchmarks/proxy_overhead.py [--url postgresql+psycopg://user:pw@host:port/db]

Without ``--url`` it starts a throwaway PostgreSQL cluster in /dev/shm (fsync off) and removes it
afterwards. Direct and proxied runs alternate for ``--rounds`` rounds so that drift in the machine
hits both alike; the figures are medians over every sample. No assertions: just figures.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import sqlalchemy as sa
from sqlalchemy import orm

from pytest_dbguard.faults.proxy import FaultProxy


class _Base(orm.DeclarativeBase):
    pass


class _Item(_Base):
    __tablename__ = "dbguard_bench_item"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(50))


def _demote() -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)


def _bindir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        return Path(candidate)
    found = shutil.which("initdb")
    if found is None:
        raise SystemExit("no PostgreSQL binaries found: install postgresql or pass --url")
    return Path(found).parent


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[str]:
    """A trust-auth cluster on 127.0.0.1 in /dev/shm, fsync off; yields its URL."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="dbguard-bench-", dir="/dev/shm"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
        check=True,
        capture_output=True,
        preexec_fn=_demote,
    )
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log")]
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*pg_ctl, "-o", options, "start"], check=True, capture_output=True, preexec_fn=_demote
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*pg_ctl, "-m", "immediate", "stop"], capture_output=True, preexec_fn=_demote
        )
        shutil.rmtree(root, ignore_errors=True)


def _timed(operation: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        operation()
        samples.append(time.perf_counter() - start)
    return samples


@contextlib.contextmanager
def _select_one(url: sa.URL) -> Iterator[Callable[[], object]]:
    """One psycopg connection; yields a ``SELECT 1`` round trip on it."""
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn, conn.cursor() as cursor:

        def query() -> None:
            cursor.execute("SELECT 1")
            cursor.fetchone()

        yield query


@contextlib.contextmanager
def _orm(url: sa.URL) -> Iterator[Callable[[], object]]:
    """One engine and ORM session; yields an insert, commit and select back by id."""
    engine = sa.create_engine(url)
    names = itertools.count()
    try:
        with orm.Session(engine) as session:

            def insert_and_select() -> None:
                item = _Item(name=f"item-{next(names)}")
                session.add(item)
                session.commit()
                session.scalars(sa.select(_Item).where(_Item.id == item.id)).one()

            yield insert_and_select
    finally:
        engine.dispose()


def _compare(
    workload: Callable[[sa.URL], contextlib.AbstractContextManager[Callable[[], object]]],
    direct_url: sa.URL,
    proxied_url: sa.URL,
    count: int,
    rounds: int,
) -> tuple[list[float], list[float]]:
    """Alternate direct and proxied batches, so that load from elsewhere hits both alike."""
    direct: list[float] = []
    proxied: list[float] = []
    batch = max(1, count // rounds)
    with workload(direct_url) as on_direct, workload(proxied_url) as on_proxy:
        _timed(on_direct, 20)  # warm up: caches, prepared statements, pool
        _timed(on_proxy, 20)
        for _ in range(rounds):
            direct += _timed(on_direct, batch)
            proxied += _timed(on_proxy, batch)
    return direct, proxied


def _report(label: str, direct: list[float], proxied: list[float]) -> None:
    d, p = statistics.median(direct) * 1000, statistics.median(proxied) * 1000
    print(
        f"{label:<28} direct {d:7.3f} ms   proxied {p:7.3f} ms   "
        f"+{(p - d) * 1000:6.1f} us   ratio {p / d:4.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", help="SQLAlchemy URL (postgresql+psycopg://...); default: throwaway"
    )
    parser.add_argument("-n", type=int, default=2000, help="SELECT 1 round trips per side")
    parser.add_argument("--orm", type=int, default=300, help="ORM insert+select per side")
    parser.add_argument("--rounds", type=int, default=10, help="alternating batches per side")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        raw = args.url or stack.enter_context(_throwaway_cluster())
        url = sa.make_url(raw).set(drivername="postgresql+psycopg")
        proxy = stack.enter_context(FaultProxy(url.host or "127.0.0.1", url.port or 5432))
        via_proxy = url.set(host=proxy.listen_host, port=proxy.port)
        print(f"direct {url.render_as_string(hide_password=True)}, proxied port {proxy.port}")
        select = _compare(_select_one, url, via_proxy, args.n, args.rounds)
        engine = sa.create_engine(url)
        _Base.metadata.create_all(engine)
        try:
            inserts = _compare(_orm, url, via_proxy, args.orm, args.rounds)
        finally:
            _Base.metadata.drop_all(engine)
            engine.dispose()
        print(f"medians per operation, {args.rounds} alternating batches")
        _report(f"psycopg SELECT 1 (n={args.n})", *select)
        _report(f"ORM insert+select (n={args.orm})", *inserts)


if __name__ == "__main__":
    main()
