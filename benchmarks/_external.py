"""An external PostgreSQL for the CI-path benchmarks: password auth over TCP, every connection logged.

Not a benchmark itself (``run_all.py`` skips files starting with ``_``). The cluster is what a CI
service container gives a test job: a running server on loopback, ``scram-sha-256`` for TCP
clients, a superuser with a password and an application database (``app``). Like the plugin's own
test server (``tests/pgserver.py``) it runs with ``fsync`` etc. off, as CI services usually do;
``log_connections`` and ``log_statement = ddl`` write every connection and every ``CREATE`` to
its log, which is how the benchmarks count what a run did on the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import _common as common

PASSWORD = "Bench-Pw-Not-For-Output"  # replaced by *** wherever output is printed
APP_DATABASE = "app"
SETTINGS = (
    "listen_addresses=127.0.0.1",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
    "log_connections=on",
    "log_statement=ddl",
)
TICK = os.sysconf("SC_CLK_TCK")


def _demote() -> Callable[[], None] | None:
    """A preexec_fn that becomes ``postgres`` when we are root (the server refuses root)."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("postgres")

    def become() -> None:
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return become


@dataclasses.dataclass
class ExternalServer:
    """A running cluster the benchmark started; the URLs carry the password."""

    bindir: Path
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = APP_DATABASE) -> str:
        return f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def log_offset(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """One statement through psql on the unix socket (trust): not a TCP connection."""
        command = [str(self.bindir / "psql"), "-h", str(self.root), "-p", str(self.port)]
        command += ["-U", "postgres", "-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c"]
        done = subprocess.run(
            [*command, statement], capture_output=True, text=True, preexec_fn=_demote()
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def databases(self) -> set[str]:
        return set(self.sql("SELECT datname FROM pg_database").split())

    def cpu(self) -> float:
        """CPU seconds the server has used: postmaster, its reaped backends, its live children."""
        return server_cpu(self.process.pid if self.process else None)


def log_counts(text: str) -> dict[str, int]:
    """Connections and DDL in a slice of the server log."""
    return {
        "connections": text.count("connection received:"),
        "create database": text.count("statement: CREATE DATABASE"),
        "create table": text.count("CREATE TABLE"),
    }


def _stat(pid: int) -> list[str] | None:
    with contextlib.suppress(OSError, ValueError):
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2 :].split()
    return None


def server_cpu(postmaster: int | None) -> float:
    """utime+stime of the postmaster, of the children it reaped and of the ones still running."""
    if postmaster is None:
        return float("nan")
    own = _stat(postmaster)
    if own is None:
        return float("nan")
    ticks = sum(int(value) for value in own[11:15])
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[1] == str(postmaster):
                ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def external_server() -> Iterator[ExternalServer]:
    """initdb (scram-sha-256 on TCP, trust on the socket), start, create ``app``; stop and remove."""
    bindir = common.bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL binaries not found (PATH, pg_config, /usr/lib/postgresql)")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    root = Path(tempfile.mkdtemp(prefix="dbguard-bench-external-", dir=shm))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = ExternalServer(bindir=bindir, root=root, port=_free_port())
    try:
        pwfile = root / "pw"
        pwfile.write_text(PASSWORD)
        os.chmod(pwfile, 0o644)
        initdb = [str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres"]
        initdb += ["--pwfile", str(pwfile), "-A", "scram-sha-256", "--auth-local=trust"]
        initdb += ["-E", "UTF8", "--locale=C", "--no-sync"]
        subprocess.run(initdb, check=True, capture_output=True, preexec_fn=_demote())
        pwfile.unlink()
        command = [str(bindir / "postgres"), "-D", str(root / "data"), "-p", str(server.port)]
        command += ["-k", str(root)]
        for setting in SETTINGS:
            command += ["-c", setting]
        with open(server.log, "ab") as log:
            server.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_demote()
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                server.sql("SELECT 1")
                break
            except RuntimeError as error:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"external server did not start:\n{server.log.read_text()}"
                    ) from error
                time.sleep(0.05)
        server.sql(f"CREATE DATABASE {APP_DATABASE}")
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGINT)  # fast shutdown
            server.process.wait(30)
        shutil.rmtree(root, ignore_errors=True)


def hide(text: str) -> str:
    """Output with the benchmark's password masked."""
    return text.replace(PASSWORD, "***")
