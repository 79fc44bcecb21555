"""The embedded PostgreSQL cluster: find the binaries, lay out a data folder, start, stop, restart.

Works without pytest. Tuned for tests (no fsync, no synchronous commit, no full page writes),
kept on RAM-backed storage when there is room, started from a cached, already initialised data
folder instead of running initdb each time, and run as an unprivileged user when we are root.
Closed to every other local account: its run folder (with the socket) is private, and TCP needs
a per-run password (see ``cluster_auth``); the run folders live in a private folder of ours in a
shared place (``machine.storage_root``).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Final

from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import ServerError
from pytest_dbguard.server import cluster_auth, initdb_cache, run_folder_files
from pytest_dbguard.server.machine import (
    child_setup,
    release_port,
    running_postmaster,
    server_user,
)
from pytest_dbguard.server.processes import (
    command_name,
    group_alive,
    group_members,
    wait_gone,
    wait_group_gone,
)

SUPERUSER: Final = cluster_auth.SUPERUSER
SERVER_SETTINGS: Final = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=300",
    "shared_buffers=64MB",
    "listen_addresses=127.0.0.1",
    "unix_socket_permissions=0700",  # and the socket's folder is 0700 too: see cluster_auth
    "log_min_messages=warning",
    "autovacuum=off",
    # Dynamic shared memory in the data folder, not as files in /dev/shm that a server killed
    # with SIGKILL (a killed CI job) leaves behind for good; the run folder takes it along.
    "dynamic_shared_memory_type=mmap",
)
# The server's process lays out its data folder first (initdb on a cache miss, a copy), then
# becomes the server (same pid, same parent-death signal): pytest does not wait for either.
PRELUDE_GRACE: Final = 5.0  # seconds initdb gets to finish its step and end on SIGTERM
PASSWORD_FAILED: Final = 96
COPY_FAILED: Final = 97
INITDB_FAILED: Final = 98
PASSWORD_FAILED_MESSAGE: Final = (
    "Could not set the embedded server's password (PostgreSQL single-user mode) in {folder}. "
    "The postgres binary in {bindir} must run as the server's user (when pytest runs as root: "
    "'postgres'); point --dbguard-pg-bindir (ini dbguard_pg_bindir) at a working installation, "
    "or use a server of your own with --dbguard-url. Log tail:\n{log}"
)
PORT_TAKEN: Final = (
    "The embedded PostgreSQL could not listen on port {port}: another server took it after "
    "dbguard picked it (another run, or a program that started meanwhile); run again, and it "
    "picks another port. Log tail:\n{log}"
)
INITDB_FAILED_MESSAGE: Final = (
    "initdb failed in {folder}. The PostgreSQL binaries must be executable by the user the server "
    "runs as (when pytest runs as root: 'postgres'), and the folder writable. Log tail:\n{log}"
)


@dataclasses.dataclass
class EmbeddedCluster:
    """A throwaway PostgreSQL cluster in ``root`` (data folder, socket, log), on a loopback port."""

    bindir: Path
    root: Path
    port: int
    keep: bool = False  # --dbguard-reuse: survive the run, detached from pytest
    project: str | None = None  # the rootdir a kept cluster serves, for `dbguard stop`
    kept_failed: bool = False  # kept after the run for --dbguard-keep-failed's databases
    user: tuple[int, int] | None = dataclasses.field(default_factory=server_user)
    # The superuser's password for TCP (scram-sha-256), set before the server first listens.
    password: str = dataclasses.field(default_factory=cluster_auth.new_password, repr=False)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.time() of the launch
    # The first launch lays out the data folder in the server's own process: initdb on a cache
    # miss, then a copy (of the cache, or of that initdb output).
    _pending_initdb: bool = False
    _pending_copy: bool = False

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, driver: str | None = None) -> DatabaseURL:
        """The maintenance URL over TCP (database ``postgres``, the superuser with its password)."""
        return DatabaseURL(
            "postgresql", driver, SUPERUSER, self.password, "127.0.0.1", self.port, "postgres"
        )

    def initialise(self) -> None:
        """Lay out the run folder and decide where the data folder comes from.

        A copy of the cached initdb output (made once per PostgreSQL binary), or on a cache miss a
        fresh initdb. Either runs in the server's own process at :meth:`launch`, so pytest goes on
        importing conftests and collecting meanwhile; :meth:`fill_cache` keeps a fresh initdb.
        """
        # A fresh name inside our private storage root: mkdir fails rather than reuse anything.
        os.mkdir(self.root, 0o700)
        self._own(self.root)
        cluster_auth.write_hba(self.root, self.user)
        self.datadir.mkdir(mode=0o700)
        self._own(self.datadir)
        if not (self.initdb_cache / "PG_VERSION").exists():
            self._scratch.mkdir(mode=0o700)
            self._own(self._scratch)
            self._pending_initdb = True
        self._pending_copy = True

    def _own(self, folder: Path) -> None:
        if self.user is not None:
            os.chown(folder, *self.user, follow_symlinks=False)

    @property
    def _scratch(self) -> Path:
        # initdb runs as the server user, which cannot write into root's home: it builds here,
        # and fill_cache moves the untouched result into the cache.
        return self.root / "initdb"

    @property
    def initdb_cache(self) -> Path:
        return initdb_cache.cache_path(self.bindir, self.user)

    def fill_cache(self) -> None:
        """Keep this run's initdb output for later runs (best effort; call once the server answered)."""
        initdb_cache.fill(self._scratch, self.initdb_cache)

    def _prelude(self) -> tuple[str, int | None]:
        """The shell steps that lay out the data folder before the server starts, and the folder
        descriptor the child must inherit (see :meth:`_copy_source`)."""
        steps = []
        source_fd = None
        if self._pending_initdb:
            initdb = [
                str(self.bindir / "initdb"),
                *("-D", str(self._scratch), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8"),
                *("--locale=C", "--no-sync", "--no-instructions", "--wal-segsize=1"),
            ]
            steps.append(f"{shlex.join(initdb)} || exit {INITDB_FAILED}")
            source = str(self._scratch)
        else:
            source, source_fd = self._copy_source(self.initdb_cache)
        target = shlex.quote(str(self.datadir))
        steps.append(f"cp -a -- {shlex.quote(source + '/.')} {target} || exit {COPY_FAILED}")
        # The superuser's password, set in single-user mode before the server listens on TCP:
        # the statement (a verifier, not the password) comes on stdin, never in argv.
        single = [str(self.bindir / "postgres"), "--single", "-D", str(self.datadir)]
        single += [*cluster_auth.SINGLE_USER_SETTINGS, SUPERUSER]
        steps.append(f"{shlex.join(single)} || exit {PASSWORD_FAILED}")
        return "; ".join([*steps, 'exec "$@" </dev/null']), source_fd

    def launch(self) -> None:
        """Start the server process and return at once; :meth:`wait_started` or a readiness check follows."""
        command = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-k",
            str(self.root),
            "-c",
            f"hba_file={cluster_auth.hba_path(self.root)}",
            "-c",
            f"ident_file={cluster_auth.ident_path(self.root)}",
        ]
        for setting in SERVER_SETTINGS:
            command += ["-c", setting]
        server = command[0]
        source_fd: int | None = None
        statement: bytes | None = None  # the prelude's single-user step reads it on stdin
        if self._pending_copy:
            prelude, source_fd = self._prelude()
            command = ["sh", "-c", prelude, "dbguard-postgres", *command]
            statement = cluster_auth.password_statement(self.password)
        log = open(  # noqa: SIM115 - the child owns it
            run_folder_files.open_regular(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT),
            "ab",
        )
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL if statement is None else subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_setup(self.user, die_with_parent=not self.keep),
                # Its own process group, so stop() reaches the prelude's cp or initdb too; and a
                # Ctrl-C in the terminal goes to pytest, which stops the server in order.
                start_new_session=True,
                pass_fds=() if source_fd is None else (source_fd,),
                env=cluster_auth.server_environment(self.password),
            )
        except OSError as error:
            raise ServerError(f"Could not start {server}: {error}") from error
        finally:
            log.close()
            if source_fd is not None:
                os.close(source_fd)
        if statement is not None and self.process.stdin is not None:
            with contextlib.suppress(OSError):  # a prelude that failed early: exited_early says why
                self.process.stdin.write(statement)
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        self._pending_copy = self._pending_initdb = False
        self.started_at = time.time()
        self._write_state()
        if not self.keep:  # last resort when pytest never reaches unconfigure
            atexit.register(self._stop_at_exit)

    def _copy_source(self, cached: Path) -> tuple[str, int | None]:
        """How the server user reaches the cache: its path, or an open folder passed to the child
        when the cache sits in root's home, which the server user cannot enter."""
        if self.user is None:
            return str(cached), None
        try:
            descriptor = os.open(cached, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise ServerError(f"Could not open the cached data folder {cached}: {error}") from error
        return f"/proc/self/fd/{descriptor}", descriptor

    def _stop_at_exit(self) -> None:
        if self.process is not None:
            self.stop()

    def exited_early(self) -> str | None:
        """The log tail if the server process has already died, else None."""
        if self.process is not None and self.process.poll() is not None:
            if self.process.returncode == INITDB_FAILED:
                return INITDB_FAILED_MESSAGE.format(folder=self._scratch, log=self.log_tail())
            if self.process.returncode == PASSWORD_FAILED:
                return PASSWORD_FAILED_MESSAGE.format(
                    folder=self.datadir, bindir=self.bindir, log=self.log_tail()
                )
            if self.process.returncode == COPY_FAILED:
                return (
                    f"Could not copy the initialised data folder into {self.datadir}. "
                    f"Log tail:\n{self.log_tail()}"
                )
            tail = self.log_tail()
            if "Address already in use" in tail:  # another server bound the port after our pick
                return PORT_TAKEN.format(port=self.port, log=tail)
            return f"PostgreSQL exited with code {self.process.returncode}. Log tail:\n{tail}"
        return None

    def died_within(self, seconds: float) -> str | None:
        """:meth:`exited_early`, waiting up to ``seconds`` for a server on its way out."""
        deadline = time.monotonic() + seconds
        while (died := self.exited_early()) is None and time.monotonic() < deadline:
            if self.process is None:
                return None
            time.sleep(0.05)
        return died

    def log_tail(self, lines: int = 20) -> str:
        try:
            tail = run_folder_files.read_text(self.log_path).splitlines()[-lines:]
        except ServerError as error:  # not our log: say so, show nothing of it
            return str(error)
        except OSError:
            tail = []
        if tail:
            return "\n".join(tail)
        return (
            f"(the log {self.log_path} is empty or missing: is {self.root.parent} full or "
            f"read-only? `df -h {self.root.parent}`; set TMPDIR to a folder with room)"
        )

    def start_ms(self) -> float | None:
        """Launch to accepting connections (data folder laid out, server up), in ms; None if unknown.

        The server rewrites its pid file when it becomes ready: its mtime is that moment, however
        late dbguard asked.
        """
        with contextlib.suppress(OSError):
            ready = (self.datadir / run_folder_files.PID_FILE).stat().st_mtime
            if self.started_at and ready >= self.started_at:
                return (ready - self.started_at) * 1000
        return None

    def postmaster_pid(self) -> int | None:
        """The pid of this cluster's server while it runs (its pid file, checked against the
        process: the number of a server that is gone may be another's now)."""
        return running_postmaster(self.datadir)

    def stop(self, *, remove: bool = True, mode: signal.Signals = signal.SIGQUIT) -> None:
        """Stop the server (immediate shutdown by default: the data is throwaway) and remove its folder."""
        # After a restart from an xdist worker our own process handle is stale: ask the pid file.
        own = self.process is not None and self.process.poll() is None
        pid = self.process.pid if own and self.process is not None else self.postmaster_pid()
        if not own:
            self.process = None
        prelude = own and pid is not None and command_name(pid) == "sh"
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                if prelude:  # still laying out the folder: the copy is throwaway, end it now
                    _end_prelude(pid)
                else:
                    os.kill(pid, mode)
            wait_gone(pid, self.process, timeout=15)
            if prelude:  # cp or initdb may outlive the shell by a moment, writing into the folder
                wait_group_gone(pid, timeout=15)
        self.process = None
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
            release_port(self.root.parent, self.port)  # its claim, beside the folder

    def restart(self, *, die_with_parent: bool = True) -> None:
        """Fast shutdown and start again on the same port; the caller waits for readiness.

        An xdist worker restarting the controller's server passes ``die_with_parent=False``: the
        worker may exit before the others are done, and the controller stops the server at the end.
        """
        self.stop(remove=False, mode=signal.SIGINT)
        with contextlib.suppress(FileNotFoundError):
            (self.datadir / run_folder_files.PID_FILE).unlink()
        keep = self.keep
        self.keep = keep or not die_with_parent
        try:
            self.launch()
        finally:
            self.keep = keep

    def detach(self, project: str) -> None:
        """Keep the server running after pytest exits (``--dbguard-keep-failed`` kept databases
        in it), until ``dbguard stop`` run from ``project``: restarted, no longer tied to pytest."""
        atexit.unregister(self._stop_at_exit)
        self.project, self.kept_failed = project, True
        self.restart(die_with_parent=False)

    def let_go(self) -> None:
        """This process no longer waits for the server, which outlives it on purpose (a kept
        cluster, ``dbguard stop`` ends it): Python would warn at exit that its child still runs
        (``ResourceWarning: subprocess … is still running``, shown by ``-X dev`` or ``-W error``)."""
        if self.process is not None and self.process.poll() is None:
            self.process.returncode = 0  # not ours to reap: the state file names its pid
        self.process = None

    def _write_state(self) -> None:
        state = {
            "port": self.port,
            "pid": self.process.pid if self.process else None,
            "root": str(self.root),
            "password": self.password,  # for the run that adopts a --dbguard-reuse cluster
            "project": self.project,
            "kept_failed": self.kept_failed,
        }
        cluster_auth.write_private(self.root / run_folder_files.STATE_FILE, json.dumps(state))


def _end_prelude(group: int) -> None:
    """End the shell that lays out the data folder (the group's leader) and its initdb or cp
    with SIGTERM, and let PostgreSQL's own processes end by themselves; kill what is left after
    a moment. initdb's backends keep their dynamic shared memory in /dev/shm (the server's
    ``mmap`` setting does not reach them): one killed outright, or whose shell is, leaves those
    files behind for good, while initdb on SIGTERM finishes its step, ends its backend normally
    and removes its folder (tests/test_embedded.py, tried at each step of the prelude)."""
    for pid in group_members(group):
        if pid == group or command_name(pid) in ("initdb", "cp"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    wait_group_gone(group, timeout=PRELUDE_GRACE)
    if group_alive(group):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
