"""A real PostgreSQL server for the plugin's own tests, started independently of the plugin.

From the plugin's point of view this is an *external* server: it has a password (scram), a
superuser and a role without CREATEDB, so the tests can check password hiding, the schema fallback
and that dbguard never touches what it did not create.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

SUPERUSER_PASSWORD = "S3cret-Pw-Do-Not-Print"
LIMITED_USER = "limited"
LIMITED_PASSWORD = "L1mited-Pw-Do-Not-Print"
MISSING_MESSAGE = (
    "PostgreSQL binaries were not found (looked in PATH, pg_config --bindir and "
    "/usr/lib/postgresql/*/bin). The test suite needs a real server: install it with "
    "'apt-get install -y postgresql' (Debian/Ubuntu) or run the README's test command, which does."
)


def find_bindir() -> Path:
    """The directory holding initdb and postgres; fails the test run with a remedy when absent."""
    candidates: list[Path] = []
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    raise RuntimeError(MISSING_MESSAGE)


def free_port() -> int:
    """A free port claimed as dbguard claims its servers' (``machine.free_port``): a test server
    and an embedded one starting at once must not be handed the same port."""
    from pytest_dbguard.server import machine

    return machine.free_port()


def _demote() -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)


@dataclasses.dataclass
class TestServer:
    """A running PostgreSQL cluster with password authentication on loopback."""

    __test__ = False  # not a test class, despite the name

    bindir: Path
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(
        self,
        database: str = "postgres",
        *,
        user: str = "postgres",
        password: str | None = None,
        driver: str = "psycopg",
    ) -> str:
        secret = SUPERUSER_PASSWORD if password is None and user == "postgres" else password
        secret = LIMITED_PASSWORD if secret is None and user == LIMITED_USER else secret
        auth = f"{user}:{secret}@" if secret else f"{user}@"
        return f"postgresql+{driver}://{auth}127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.datadir),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                    "-c",  # tests count the connections a run makes (log_connections_since)
                    "log_connections=on",
                    "-c",  # a killed test server must not leave /dev/shm/PostgreSQL.* behind
                    "dynamic_shared_memory_type=mmap",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_demote,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.sql("SELECT 1", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"test server did not start: {(self.root / 'server.log').read_text()[-2000:]}"
        )

    def sql(
        self, statement: str, *, database: str = "postgres", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run one statement through psql as the superuser (over the unix socket)."""
        return subprocess.run(
            [
                str(self.bindir / "psql"),
                "-h",
                str(self.root),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            check=check,
            preexec_fn=_demote,
        )

    def log_offset(self) -> int:
        """Where the server's log ends now (for :meth:`connections_since`)."""
        return (self.root / "server.log").stat().st_size

    def connections_since(self, offset: int) -> list[str]:
        """The database of every connection authorized since ``offset``, in order."""
        with open(self.root / "server.log", "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        return re.findall(r"connection authorized: user=\S+ database=(\S+)", text)

    def databases(self) -> list[str]:
        out = self.sql("SELECT datname FROM pg_database ORDER BY 1").stdout
        return [line for line in out.splitlines() if line]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            self.process.wait(10)
        self.process = None


@contextlib.contextmanager
def running_server() -> Iterator[TestServer]:
    """Start a fresh cluster with a password-protected superuser and a role without CREATEDB."""
    bindir = find_bindir()
    root = Path(
        tempfile.mkdtemp(
            prefix="dbguard-testserver-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
    )
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    pwfile = root / "pw"
    pwfile.write_text(SUPERUSER_PASSWORD)
    os.chmod(pwfile, 0o644)
    subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(root / "data"),
            "-U",
            "postgres",
            "--pwfile",
            str(pwfile),
            "-A",
            "scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        preexec_fn=_demote,
    )
    pwfile.unlink()
    server = TestServer(bindir=bindir, root=root, port=free_port())
    try:
        server.start()
        server.sql(f"CREATE ROLE {LIMITED_USER} LOGIN PASSWORD '{LIMITED_PASSWORD}' NOCREATEDB")
        server.sql(f"CREATE DATABASE app_limited OWNER {LIMITED_USER}")
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclasses.dataclass
class DelayedServer:
    """A cluster whose port is known at once but whose server process starts ``delay`` s later."""

    server: TestServer
    delay: float
    launched_at: float | None = None  # time.monotonic() when the postgres process was started
    by_condition: bool = False  # started because delayed_server's ``when`` came true
    error: BaseException | None = None

    def _launch(self) -> None:
        self.launched_at = time.monotonic()
        try:
            self.server.start()
        except BaseException as error:  # reported by the test, not lost in the timer thread
            self.error = error


@contextlib.contextmanager
def delayed_server(
    delay: float, *, when: Callable[[], bool] | None = None
) -> Iterator[DelayedServer]:
    """A fresh password-protected cluster, started by a timer ``delay`` seconds after entry; with
    ``when``, as soon as ``when()`` is true instead (checked every 50 ms), or after ``delay`` at
    the latest (``DelayedServer.by_condition`` says which): an order of events that holds on a
    loaded machine, where a fixed delay may pass before the events it waits for."""
    import threading

    bindir = find_bindir()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    root = Path(tempfile.mkdtemp(prefix="dbguard-delayed-", dir=shm))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    pwfile = root / "pw"
    pwfile.write_text(SUPERUSER_PASSWORD)
    os.chmod(pwfile, 0o644)
    initdb = [str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres"]
    initdb += ["--pwfile", str(pwfile), "-A", "scram-sha-256", "--auth-local=trust"]
    initdb += ["-E", "UTF8", "--locale=C", "--no-sync"]
    subprocess.run(initdb, check=True, capture_output=True, preexec_fn=_demote)
    pwfile.unlink()
    delayed = DelayedServer(TestServer(bindir=bindir, root=root, port=free_port()), delay)
    cancelled = threading.Event()

    def launch_later() -> None:
        deadline = time.monotonic() + delay
        while not cancelled.is_set() and time.monotonic() < deadline:
            if when is not None and when():
                delayed.by_condition = True
                break
            cancelled.wait(0.05 if when is not None else deadline - time.monotonic())
        if not cancelled.is_set():
            delayed._launch()

    timer = threading.Thread(target=launch_later, daemon=True)
    try:
        timer.start()
        yield delayed
    finally:
        cancelled.set()
        timer.join(60)
        delayed.server.stop()
        shutil.rmtree(root, ignore_errors=True)
