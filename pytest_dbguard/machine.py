"""What the embedded server needs from this machine: binaries, a user, a port, folders, pids.

Works without pytest; small and free of SQLAlchemy so the janitor and the run plan can ask it
cheaply.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from pytest_dbguard.exceptions import ServerError

RAM_DIR: Final = Path("/dev/shm")
RAM_MIN_FREE: Final = 512 * 1024 * 1024  # containers often give /dev/shm only 64 MiB
_PR_SET_PDEATHSIG: Final = 1


def find_bindir(configured: str | None = None) -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: the configured one only, else PATH,
    ``pg_config --bindir``, then the newest Debian layout."""
    candidates = iter([Path(configured)]) if configured else _bindir_candidates()
    return next(
        (c for c in candidates if (c / "initdb").is_file() and (c / "postgres").is_file()), None
    )


def _bindir_candidates() -> Iterator[Path]:
    on_path = shutil.which("postgres") or shutil.which("initdb")
    if on_path:
        yield Path(on_path).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:  # only asked when PATH had no server binaries: a subprocess costs ~10 ms
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                yield Path(out.stdout.strip())
    yield from sorted(
        (Path(path) for path in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda path: _version_key(path.parent.name),
        reverse=True,
    )


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root (it refuses to run as root), else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise ServerError(
        "Running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as."
    )


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


def storage_root() -> Path:
    """Where run folders live: RAM-backed /dev/shm when it has room, else the temp folder."""
    with contextlib.suppress(OSError):
        stats = os.statvfs(RAM_DIR)
        if stats.f_bavail * stats.f_frsize >= RAM_MIN_FREE:
            return RAM_DIR / f"pytest-dbguard-{os.geteuid()}"
    return Path(tempfile.gettempdir()) / f"pytest-dbguard-{os.geteuid()}"


def cache_root() -> Path:
    """The user's cache folder for initialised data folders and reusable clusters."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-dbguard"


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, parent, process group,
    …), which may itself hold spaces and parens; None where it cannot be read."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by another process) counts as gone."""
    fields = _stat_fields(pid)
    if fields is not None:
        return fields[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(group: int) -> bool:
    """Whether a process of process group ``group`` still runs (zombies do not)."""
    with contextlib.suppress(OSError), os.scandir("/proc") as entries:
        for entry in entries:
            fields = _stat_fields(entry.name) if entry.name.isdigit() else None
            if fields is not None and fields[0] != "Z" and fields[2] == str(group):
                return True
    return False


def children_in_group(parent: int, group: int) -> list[int]:
    """The running children of ``parent`` in process group ``group`` (xdist workers, but not the
    embedded server, which has a session of its own)."""
    found = []
    with contextlib.suppress(OSError), os.scandir("/proc") as entries:
        for entry in entries:
            fields = _stat_fields(entry.name) if entry.name.isdigit() else None
            if fields is not None and fields[0] != "Z" and fields[1:3] == [str(parent), str(group)]:
                found.append(int(entry.name))
    return found


def command_name(pid: int) -> str | None:
    """The command ``pid`` runs now (``/proc/<pid>/comm``), or None."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return None


def process_started_at(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), from /proc; None where that cannot be read."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    try:
        ticks = int(fields[19])  # field 22 of the whole line
        with open("/proc/stat") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")
