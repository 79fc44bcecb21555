"""The embedded clusters that ``--dbguard-reuse`` keeps between runs (and a run keeps for the
databases of its failed tests, ``--dbguard-keep-failed``): find them, stop them.

Works without pytest (``dbguard stop`` uses it). A kept cluster lives in ``reuse-<key>`` inside
this user's private storage folder (``machine.storage_root``), where ``<key>`` is a hash of the
project's rootdir. Only folders of ours are touched: the storage folder must pass
``machine.private_folder``'s checks, and a kept folder must be a real folder (never a link)
owned by this user or the server's user, as the orphan sweep requires.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import signal
import stat
import tempfile
from pathlib import Path
from typing import Final

from pytest_dbguard.exceptions import ServerError
from pytest_dbguard.server.machine import (
    RAM_DIR,
    private_folder,
    release_port,
    running_postmaster,
    server_user,
)
from pytest_dbguard.server.processes import wait_gone
from pytest_dbguard.server.run_folder_files import open_regular, state_of

PREFIX: Final = "reuse-"


def reuse_key(rootdir: Path) -> str:
    """The key of the project in ``rootdir``: the same for every run of it, and for ``dbguard stop``."""
    return hashlib.sha1(str(rootdir).encode()).hexdigest()[:10]


def storage_folders() -> list[Path]:
    """This user's storage folders that exist (RAM-backed and temp: a run may have used either)."""
    found = []
    for base in (RAM_DIR, Path(tempfile.gettempdir())):
        folder = base / f"pytest-dbguard-{os.geteuid()}"
        if os.path.lexists(folder) and folder not in found:
            found.append(private_folder(folder))  # ServerError when it is not ours
    return found


@dataclasses.dataclass(frozen=True)
class KeptCluster:
    """One kept cluster's folder and what its state file says."""

    root: Path
    project: str | None  # the rootdir it was kept for (None: kept by an older version)
    port: int | None

    @property
    def server_pid(self) -> int | None:
        """The running postgres of this folder (its pid file, checked against the process name)."""
        return running_postmaster(self.root / "data")

    def describe(self) -> str:
        where = f" on 127.0.0.1:{self.port}" if self.port else ""
        project = f" for {self.project}" if self.project else ""
        return f"the kept PostgreSQL cluster{project}{where} ({self.root})"


def _ours(path: Path) -> bool:
    user = server_user()
    owners = {os.geteuid(), *([user[0]] if user else [])}
    with contextlib.suppress(OSError):
        info = path.lstat()
        return stat.S_ISDIR(info.st_mode) and info.st_uid in owners
    return False


def _read(root: Path) -> KeptCluster:
    state = state_of(root)
    project = state.get("project") if isinstance(state.get("project"), str) else None
    port = None
    with contextlib.suppress(KeyError, ValueError, TypeError):
        port = int(state["port"])
    return KeptCluster(root, project, port)


def kept(key: str | None = None) -> list[KeptCluster]:
    """The kept clusters of this user: all of them, or those of the project with ``key`` (the
    one ``--dbguard-reuse`` keeps, and those runs kept for ``--dbguard-keep-failed``)."""
    found = []
    for folder in storage_folders():
        for name in sorted(os.listdir(folder)):
            root = folder / name
            if (name.startswith(PREFIX) and key in (None, name[len(PREFIX) :]) and _ours(root)) or (
                not name.startswith(PREFIX) and _kept_failed(root, key)
            ):
                found.append(_read(root))
    return found


def _kept_failed(root: Path, key: str | None) -> bool:
    """Whether ``root`` is a run's cluster kept for its failed tests' data (of project ``key``)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        if not _ours(root):
            return False
        state = state_of(root)
        project = state.get("project")
        return (
            state.get("kept_failed") is True
            and isinstance(project, str)
            and (key is None or reuse_key(Path(project)) == key)
        )
    return False


# Each run that uses a kept cluster holds a shared lock on this file until it ends; `dbguard stop`
# leaves a cluster alone while anyone holds one.
IN_USE_FILE: Final = "in-use.lock"
_held: dict[Path, int] = {}  # this process's locks, by cluster folder


def hold(root: Path) -> None:
    """Mark the kept cluster in ``root`` as used by this process, until :func:`release` or exit."""
    if root in _held:
        return
    fd = open_regular(root / IN_USE_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held[root] = fd


def release(root: Path) -> None:
    """This process no longer uses the kept cluster in ``root``."""
    fd = _held.pop(root, None)
    if fd is not None:
        os.close(fd)  # and its lock with it


def in_use(root: Path) -> bool:
    """Whether a running pytest (this process included) uses the kept cluster in ``root``."""
    if root in _held:
        return True
    try:
        fd = open_regular(root / IN_USE_FILE, os.O_RDWR)
    except ServerError:
        return True  # not our lock file: never treat the cluster as free
    except OSError:
        return False  # no run ever held it (kept by an older version), or gone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def stop(cluster: KeptCluster) -> None:
    """Stop the cluster's server (immediate shutdown: its data is throwaway) and remove its folder.

    The templates it held go with it.
    """
    import shutil

    pid = cluster.server_pid
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        wait_gone(pid, None, timeout=15)
    # rmtree refuses links and works on descriptors (the symlink-attack safe variant).
    shutil.rmtree(cluster.root)
    if cluster.port is not None:
        release_port(cluster.root.parent, cluster.port)  # its claim, beside the folder
