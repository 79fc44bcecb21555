"""How late ``wait_until_ready`` notices a server that has just become ready.

    python benchmarks/readiness_lag.py [--runs 10] [--policy loopback|remote|both]

It initdb's a throwaway cluster in /dev/shm (as the ``postgres`` user when run as root), then, for
each run, starts ``wait_until_ready`` first, starts the server a little later, and compares the
time ``wait_until_ready`` returned with the timestamp of the server's own log line "database
system is ready to accept connections" (``log_line_prefix='%m '``, millisecond precision, same
clock). The lag includes the first connection and ``SELECT 1``. No assertions: just figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import os
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pytest_dbguard.server.readiness import (
    LOOPBACK_POLICY,
    REMOTE_POLICY,
    RetryPolicy,
    wait_until_ready,
)

READY_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC .*database system is ready to accept connections"
)
POLICIES = {"loopback": LOOPBACK_POLICY, "remote": REMOTE_POLICY}


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
        raise SystemExit("no PostgreSQL binaries found: install postgresql")
    return Path(found).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _cluster() -> Iterator[tuple[Path, Path]]:
    """An initdb'd data directory (trust auth) in /dev/shm; removed afterwards."""
    bindir = _bindir()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    root = Path(tempfile.mkdtemp(prefix="dbguard-lag-", dir=shm))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    try:
        initdb = [str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres"]
        subprocess.run(
            [*initdb, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True,
            capture_output=True,
            preexec_fn=_demote,
        )
        yield bindir, root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ready_at(log: Path, timeout: float = 10.0) -> float:
    """Wall-clock time of the server's 'ready to accept connections' line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            match = READY_LINE.match(line)
            if match:
                stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f")
                return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
        time.sleep(0.01)
    raise RuntimeError(f"no ready line in {log}:\n{log.read_text()[-2000:]}")


def one_run(bindir: Path, root: Path, policy: RetryPolicy, index: int) -> tuple[float, int]:
    """Lag in ms between the server's ready line and wait_until_ready returning; and attempts."""
    port = _free_port()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    returned: list[float] = []
    attempts: list[int] = []

    def waiter() -> None:
        result = wait_until_ready(url, timeout=60, policy=policy)
        returned.append(time.time())
        attempts.append(result.attempts)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(random.uniform(0.3, 0.6))  # the waiter is in its capped steady state by now
    log = root / f"run{index}.log"
    with open(log, "wb") as out:
        settings = [
            "listen_addresses=127.0.0.1",
            "fsync=off",
            "log_line_prefix=%m ",
            "log_timezone=UTC",
        ]
        server = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(root / "data"), "-p", str(port), "-k", str(root)]
            + [part for setting in settings for part in ("-c", setting)],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_demote,
        )
    try:
        thread.join(60)
        ready = _ready_at(log)
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown: the next start needs no recovery
        server.wait(30)
    return (returned[0] - ready) * 1000, attempts[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--policy", choices=["loopback", "remote", "both"], default="loopback")
    args = parser.parse_args()
    names = ["loopback", "remote"] if args.policy == "both" else [args.policy]
    with _cluster() as (bindir, root):
        one_run(bindir, root, LOOPBACK_POLICY, -1)  # warm-up: imports, first start's page cache
        for name in names:
            policy = POLICIES[name]
            results = [one_run(bindir, root, policy, index) for index in range(args.runs)]
            lags = [lag for lag, _ in results]
            print(
                f"{name} policy (first {policy.first_delay * 1000:g} ms, cap "
                f"{policy.max_delay * 1000:g} ms), {args.runs} runs: lag median "
                f"{statistics.median(lags):.1f} ms, max {max(lags):.1f} ms, min {min(lags):.1f} ms"
            )
            print("  per run (ms): " + ", ".join(f"{lag:.1f}" for lag in lags))
            print("  attempts: " + ", ".join(str(count) for _, count in results))


if __name__ == "__main__":
    main()
