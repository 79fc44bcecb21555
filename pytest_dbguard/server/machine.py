"""What the embedded server needs from this machine: binaries, a user, a port, folders, pids.

Works without pytest; small and free of SQLAlchemy so the janitor and the run plan can ask it
cheaply.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from pytest_dbguard.exceptions import ServerError
from pytest_dbguard.server.processes import process_alive
from pytest_dbguard.server.run_folder_files import postmaster_pid

RAM_DIR: Final = Path("/dev/shm")
RAM_MIN_FREE: Final = 512 * 1024 * 1024  # containers often give /dev/shm only 64 MiB
# A run folder holds a copy of the initialised data folder (about 30 MiB) and the WAL it grows.
DISK_MIN_FREE: Final = 96 * 1024 * 1024
STALE_AFTER: Final = 60.0  # seconds before an orphaned run folder may be swept
_MIB: Final = 1024 * 1024
NOT_OURS: Final = (
    "dbguard will not use {path}: it is {what}, and dbguard keeps its server's files only in a "
    "folder it created itself, owned by this user (uid {uid}) and closed to others. Someone or "
    "something else made it, possibly to redirect this run's files. Remove it (as its owner or "
    "root: `rm -r {path}`) and run again, or use a server of your own with --dbguard-url "
    "(DBGUARD_URL, ini dbguard_url)."
)
NO_STORAGE: Final = (
    "dbguard found no folder for the embedded server's files ({tried}). Free some space there, "
    "or set TMPDIR to a writable folder with at least {need} MiB free, or use a server of your "
    "own with --dbguard-url (DBGUARD_URL, ini dbguard_url)."
)
_PR_SET_PDEATHSIG: Final = 1


def find_bindir(configured: str | None = None) -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: the configured one only, else PATH,
    ``pg_config --bindir``, then the newest Debian layout."""
    candidates = iter([Path(configured)]) if configured else _bindir_candidates()
    return next(
        (c for c in candidates if (c / "initdb").is_file() and (c / "postgres").is_file()), None
    )


MISSING_BINARIES: Final = (
    "No PostgreSQL binaries for the embedded server: looked for initdb and postgres in {looked}. "
    "Fix it one of three ways: install PostgreSQL (e.g. `apt-get install -y postgresql`); name the "
    "folder that holds initdb and postgres with --dbguard-pg-bindir DIR (ini dbguard_pg_bindir); or "
    "test against a running server with --dbguard-url URL (DBGUARD_URL). dbguard uses SQLite only "
    "when asked to (--dbguard-url sqlite)."
)
BINDIR_LACKS: Final = (
    "{source} = {folder!r}: {problem}, so the embedded PostgreSQL cannot start. Name the folder "
    "that holds initdb and postgres (e.g. /usr/lib/postgresql/15/bin; `pg_config --bindir` prints "
    "it), or leave the setting out to let dbguard look on PATH and in /usr/lib/postgresql/*/bin."
)


def require_bindir(configured: str | None, source: str = "--dbguard-pg-bindir") -> Path:
    """The binaries' folder, or a ServerError that says where dbguard looked and how to fix it.

    Never a silent substitute: a suite written for PostgreSQL must not quietly run on SQLite.
    """
    if configured:
        folder = Path(configured)
        missing = [name for name in ("initdb", "postgres") if not (folder / name).is_file()]
        if not folder.is_dir():
            problem = "that folder does not exist"
        elif missing:
            problem = f"that folder has no {' and no '.join(missing)}"
        else:
            return folder
        raise ServerError(BINDIR_LACKS.format(source=source, folder=configured, problem=problem))
    found = find_bindir()
    if found is not None:
        return found
    pg_config = _pg_config_bindir()
    looked = ", ".join(
        [
            "PATH",
            f"`pg_config --bindir` ({pg_config})" if pg_config else "pg_config (not on PATH)",
            "/usr/lib/postgresql/*/bin",
        ]
    )
    raise ServerError(MISSING_BINARIES.format(looked=looked))


def _bindir_candidates() -> Iterator[Path]:
    on_path = shutil.which("postgres") or shutil.which("initdb")
    if on_path:
        yield Path(on_path).resolve().parent
    pg_config = _pg_config_bindir()  # only asked when PATH had none: a subprocess costs ~10 ms
    if pg_config:
        yield Path(pg_config)
    yield from sorted(
        (Path(path) for path in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda path: _version_key(path.parent.name),
        reverse=True,
    )


def _pg_config_bindir() -> str | None:
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
    return None


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


# How long a port picked for a server stays claimed: it binds within a second or two.
PORT_CLAIM_SECONDS: Final = 60.0
PORT_CLAIM_PREFIX: Final = "port-"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, and no other run of this user picked in the
    last minute: two runs starting at once (parallel tox envs, CI jobs, xdist workers of a suite
    that starts servers) may each be handed the same free port by the system, and the second
    server to bind it fails while its run reaches the first ("password authentication failed")."""
    root = _claims_folder()
    for _ in range(20):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if root is None or _claim(root, port):
            break
    return port


def claim_port(port: int) -> bool:
    """Claim ``port`` for this run (as :func:`free_port` does); False when another run holds a
    claim younger than a minute."""
    root = _claims_folder()
    return root is None or _claim(root, port)


def claim_file(folder: Path, port: int) -> Path:
    """Where the claim on ``port`` lives in ``folder`` (the storage folder)."""
    return folder / f"{PORT_CLAIM_PREFIX}{port}"


def release_port(folder: Path, port: int) -> None:
    """Drop the claim on ``port`` in ``folder`` (the storage folder), once its server is gone."""
    with contextlib.suppress(OSError):
        os.unlink(claim_file(folder, port))


def _claims_folder() -> Path | None:
    """The storage folder, its stale claims removed; None when there is none (the system's
    answer alone then)."""
    try:
        root = storage_root()
    except (OSError, ServerError):
        return None
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(PORT_CLAIM_PREFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > PORT_CLAIM_SECONDS:
                        os.unlink(entry.path)
    return root


def _claim(root: Path, port: int) -> bool:
    """A claim file for ``port``, created only if none is there (``O_EXCL``: of two runs, one
    wins; ``O_NOFOLLOW``: a link planted under the name is never followed)."""
    try:
        os.close(
            os.open(
                claim_file(root, port),
                os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW,
                0o600,
            )
        )
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


NO_SERVER_USER: Final = (
    "pytest runs as root, and PostgreSQL refuses to run as root, but this machine has no "
    "'postgres' user to run the embedded server as. Create one (`useradd --system postgres`; "
    "installing PostgreSQL's package, `apt-get install -y postgresql`, makes it), or run pytest "
    "as another user, or give a server of your own (--dbguard-url URL). dbguard does not run it "
    "as 'nobody': every daemon that runs as that shared account would own the test server."
)


def server_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root (it refuses to run as root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError(NO_SERVER_USER) from None
    return entry.pw_uid, entry.pw_gid


def postmaster_runs(pid: int, datadir: Path) -> bool:
    """Whether ``pid`` is the server of ``datadir``: alive, run by the server's user, started as
    ``postgres -D datadir``. A pid file outlives its server, and the number may since be any
    process's, another account's too: one that listens on the cluster's port would be handed
    the password, one of root's would be signalled."""
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        user = server_user()
    except (OSError, ServerError):
        return False
    if owner != (user[0] if user is not None else os.geteuid()) or not process_alive(pid):
        return False
    if not argv[0].endswith("postgres") or "--single" in argv:
        return False
    return any(
        flag == "-D" and value in (str(datadir), os.path.realpath(datadir))
        for flag, value in itertools.pairwise(argv)
    )


def running_postmaster(datadir: Path) -> int | None:
    """The pid in ``datadir``'s pid file while that process is still its server
    (:func:`postmaster_runs`); None when no server of that folder runs."""
    pid = postmaster_pid(datadir)
    return pid if pid is not None and postmaster_runs(pid, datadir) else None


def child_setup(user: tuple[int, int] | None, die_with_parent: bool) -> Callable[[], None]:
    """A ``preexec_fn``: become ``user`` (when given), and die with the parent when asked."""

    def setup() -> None:
        if user is not None:
            os.setgid(user[1])
            os.setgroups([])
            os.setuid(user[0])
        if die_with_parent:
            # Set after setuid, which clears it: if pytest is killed outright, the server follows.
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT)

    return setup


def private_folder(path: Path) -> Path:
    """``path``, a folder of ours in a shared place such as /dev/shm or /tmp, made safe to use.

    Created 0700 if missing; never followed when it is a symbolic link; it must be a folder owned
    by this user, else ServerError (an OSError such as a read-only file system passes through).
    As root the mode is 0711: the server runs as another user (``server_user``), which must pass
    through this folder to its own 0700 run folder inside; others may pass but not list it, and
    every run folder in it is closed to them.
    """
    mode = 0o711 if os.geteuid() == 0 else 0o700
    with contextlib.suppress(FileExistsError):  # mkdir never follows a link at the last step
        os.mkdir(path, mode)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        what = "a symbolic link" if os.path.islink(path) else "not a folder"
        raise ServerError(NOT_OURS.format(path=path, what=what, uid=os.geteuid())) from None
    try:
        info = os.fstat(descriptor)
        if info.st_uid != os.geteuid():
            what = f"owned by {_user_name(info.st_uid)}, not by this user"
            raise ServerError(NOT_OURS.format(path=path, what=what, uid=os.geteuid()))
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(descriptor, mode)  # the folder we checked, not whatever the path names now
    finally:
        os.close(descriptor)
    return path


def _user_name(uid: int) -> str:
    with contextlib.suppress(KeyError):
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    return f"uid {uid}"


def shared_root(base: Path) -> Path:
    """This user's private folder ``pytest-dbguard-<uid>`` in the shared folder ``base``."""
    return private_folder(base / f"pytest-dbguard-{os.geteuid()}")


def storage_root() -> Path:
    """Where run folders live, created private: RAM-backed /dev/shm when it is writable and has
    room, else the temp folder; ServerError saying what was tried when neither will do."""
    tried: list[str] = []
    for base, need in ((RAM_DIR, RAM_MIN_FREE), (Path(tempfile.gettempdir()), DISK_MIN_FREE)):
        try:
            stats = os.statvfs(base)
            free = stats.f_bavail * stats.f_frsize
            if stats.f_flag & os.ST_RDONLY:
                tried.append(f"{base} is read-only")
            elif free < need:
                tried.append(f"{base} has {free // _MIB} MiB free, {need // _MIB} MiB needed")
            else:
                return shared_root(base)
        except OSError as error:
            tried.append(f"{base}: {error.strerror or error}")
    raise ServerError(NO_STORAGE.format(tried="; ".join(tried), need=DISK_MIN_FREE // _MIB))


def sweep_stale(root: Path, owners: set[int], alive: Callable[[Path], bool]) -> None:
    """Remove the stale run folders in ``root``: folders (never links) owned by ``owners``,
    untouched for a minute, that ``alive`` says no process uses any more."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if (
                    not stat.S_ISDIR(info.st_mode)
                    or info.st_uid not in owners
                    or now - info.st_mtime < STALE_AFTER
                    or alive(Path(entry.path))
                ):
                    continue
                # rmtree works on descriptors here and refuses links (shutil's symlink-attack
                # safe variant), so nothing outside the folder is touched.
                shutil.rmtree(entry.path, ignore_errors=True)


def cache_root() -> Path:
    """The user's cache folder for initialised data folders and reusable clusters."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-dbguard"
