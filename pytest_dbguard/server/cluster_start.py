"""A run's embedded cluster: a fresh one launched, or with ``--dbguard-reuse`` the one an earlier
run kept for the project adopted; and the run folders of killed runs swept away first."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from pytest_dbguard.exceptions import ServerError
from pytest_dbguard.server import kept_clusters
from pytest_dbguard.server.cluster import EmbeddedCluster
from pytest_dbguard.server.cluster_auth import ident_path
from pytest_dbguard.server.machine import (
    free_port,
    require_bindir,
    running_postmaster,
    server_user,
    storage_root,
    sweep_stale,
)
from pytest_dbguard.server.run_folder_files import state_of


def sweep_orphans(root: Path) -> None:
    """Remove run folders whose server is gone (a run killed with SIGKILL cannot clean up itself).

    Only folders of ours (owned by this user or the server's user), never links, never a kept
    ``--dbguard-reuse`` cluster or a SQLite run's folder.
    """
    user = server_user()
    owners = {os.geteuid(), *([user[0]] if user else [])}

    def alive(run_dir: Path) -> bool:
        if run_dir.name.startswith("reuse-") or run_dir.name.endswith("-sqlite"):
            return True
        return running_postmaster(run_dir / "data") is not None

    sweep_stale(root, owners, alive)
    _sweep_start_locks(root)


def _sweep_start_locks(root: Path) -> None:
    """Remove the start locks (see :func:`_one_start_at_a_time`) of kept clusters that are gone,
    a minute old and held by nobody: a test suite that reuses in many projects left one each."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            name = entry.name
            if not (name.startswith(".reuse-") and name.endswith(START_LOCK)):
                continue
            cluster = root / name[1 : -len(START_LOCK)]
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if cluster.exists() or now - info.st_mtime < STALE_LOCK_AFTER:
                    continue
                descriptor = os.open(entry.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody starts now
                    os.unlink(entry.path)
                finally:
                    os.close(descriptor)


START_LOCK: Final = ".start-lock"
STALE_LOCK_AFTER: Final = 60.0  # seconds


def prepare_cluster(
    run: str, *, reuse_for: Path | None, bindir: Path | None = None
) -> tuple[EmbeddedCluster, bool]:
    """A cluster for this run, launched; with ``reuse_for`` (the project's rootdir) the one an
    earlier run kept for that project is adopted when it still runs, else one is started and kept;
    either way held in use by this process (``kept_clusters.hold``) until the run releases it.

    Returns the cluster and whether it was adopted (already running from an earlier run).
    """
    bindir = bindir or require_bindir(None)
    root = storage_root()
    if reuse_for is None:
        sweep_orphans(root)
        cluster = EmbeddedCluster(bindir=bindir, root=root / run, port=free_port())
        try:
            cluster.initialise()
            cluster.launch()
        except BaseException:
            cluster.stop()
            raise
        return cluster, False
    reuse_root = root / f"{kept_clusters.PREFIX}{kept_clusters.reuse_key(reuse_for)}"
    with _one_start_at_a_time(reuse_root):
        adopted = _adopt(bindir, reuse_root)
        if adopted is None and kept_clusters.in_use(reuse_root):
            adopted = _adopt_once_it_answers(bindir, reuse_root)
        if adopted is not None:
            kept_clusters.hold(reuse_root)  # `dbguard stop` leaves it alone until this run ends
            return adopted, True
        shutil.rmtree(reuse_root, ignore_errors=True)  # no run holds it: a stopped leftover
        cluster = EmbeddedCluster(
            bindir=bindir, root=reuse_root, port=free_port(), keep=True, project=str(reuse_for)
        )
        cluster.initialise()
        kept_clusters.hold(reuse_root)
        cluster.launch()
    return cluster, False


ADOPT_WAIT: Final = 30.0  # seconds: a restart, or another run's launch, takes a few


@contextlib.contextmanager
def _one_start_at_a_time(reuse_root: Path) -> Iterator[None]:
    """Runs of one project that start together adopt (or start) its kept cluster in turn: the
    second waits until the first holds the cluster it launched. A hidden lock file beside the
    folder, in this user's private storage folder."""
    lock = reuse_root.with_name(f".{reuse_root.name}{START_LOCK}")
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _adopt_once_it_answers(bindir: Path, root: Path) -> EmbeddedCluster | None:
    """The kept cluster another run holds, once it answers: that run is restarting it
    (``dbguard_faults.restart()``) or has just launched it. None when that run ends first (what
    is left is a leftover); ServerError when it still holds a cluster that does not answer."""
    deadline = time.monotonic() + ADOPT_WAIT
    while kept_clusters.in_use(root):
        if time.monotonic() > deadline:
            raise ServerError(IN_USE_NOT_ANSWERING.format(root=root, seconds=int(ADOPT_WAIT)))
        time.sleep(0.1)
        adopted = _adopt(bindir, root)
        if adopted is not None:
            return adopted
    return None


IN_USE_NOT_ANSWERING: Final = (
    "--dbguard-reuse: the kept cluster in {root} is used by another pytest run but has not "
    "answered on its port for {seconds} s; dbguard does not remove a cluster that a run still "
    "uses. Let that run end (or stop it), then run again; `dbguard stop` then stops the cluster."
)


def _adopt(bindir: Path, root: Path) -> EmbeddedCluster | None:
    """The cluster a previous ``--dbguard-reuse`` run left running in ``root``, if it still runs."""
    state = state_of(root)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cluster = EmbeddedCluster(bindir=bindir, root=root, port=int(state["port"]), keep=True)
        # Kept by a version without passwords, or whose socket trusted the server's account
        # (no pg_ident file of its own): stopped and started anew, never adopted as it is.
        if not isinstance(state.get("password"), str) or not ident_path(root).exists():
            if cluster.postmaster_pid() is not None:
                cluster.stop()
            return None
        cluster.password = state["password"]
        cluster.project = state.get("project")
        # Its own server, not whatever has the number or the port now: that would get the password.
        if cluster.postmaster_pid() is not None:
            with socket.create_connection(("127.0.0.1", cluster.port), timeout=0.5):
                return cluster
    return None
