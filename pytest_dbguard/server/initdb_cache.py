"""The cached initdb output: one initialised data folder per PostgreSQL binary and server user.

A run copies it instead of running initdb (about ten times faster); a run that found no cache
runs initdb in its own run folder and keeps the untouched result here afterwards. The copy is
laid out by the server's own process (see ``server.EmbeddedCluster``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pytest_dbguard.exceptions import ServerError
from pytest_dbguard.server.machine import cache_root


def cache_path(bindir: Path, user: tuple[int, int] | None) -> Path:
    """Where the initialised data folder of ``bindir``'s PostgreSQL, run as ``user``, is kept."""
    # Keyed by the binary itself (path, size, mtime): an upgrade gets a fresh cache, and no
    # `postgres --version` subprocess is needed on the hot path.
    binary = (bindir / "postgres").resolve().stat()
    key = hashlib.sha1(
        f"{bindir.resolve()}:{binary.st_size}:{binary.st_mtime_ns}".encode()
    ).hexdigest()[:10]
    return cache_root() / f"initdb-{key}-{user[0] if user else os.geteuid()}"


def copy_tree(source: Path, target: Path) -> None:
    """Copy a data folder with its owners and modes (links as links); ServerError when that
    fails. ``source`` is opened first, without following a link (it lies in a run folder the
    server's user owns, who could put a link to another folder under its name), and copied
    through that descriptor."""
    try:
        folder = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise ServerError(f"Could not open the data folder {source}: {error}") from error
    try:
        # `cp -a` keeps owners and modes and is several times faster than shutil.copytree here.
        result = subprocess.run(
            ["cp", "-a", f"/proc/self/fd/{folder}/.", str(target)],
            capture_output=True,
            text=True,
            pass_fds=(folder,),
        )
    finally:
        os.close(folder)
    if result.returncode != 0:
        raise ServerError(
            f"Could not copy the data folder {source} to {target}: {result.stderr.strip()}"
        )


def fill(scratch: Path, cached: Path) -> None:
    """Keep a fresh initdb output (``scratch``) as the cache, then remove it (best effort)."""
    if not (scratch / "PG_VERSION").is_file():
        return
    with contextlib.suppress(OSError):
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=cached.name + ".", dir=cached.parent))
        try:
            copy_tree(scratch, staging)
            os.rename(staging, cached)
        except (OSError, ServerError):  # another run cached it first, or the disk is full
            shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
