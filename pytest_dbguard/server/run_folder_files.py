"""Files in a cluster's run folder, opened without trusting what is there.

Run as root, dbguard gives the run folder to the account the server runs as (``postgres``), which
may then put anything under the names dbguard uses: a link to a file only root may write (root
would append the server's log to it, or create it), a FIFO (root's read would block for ever).
Every file dbguard opens there is opened here: a link is never followed (``O_NOFOLLOW``), and
anything but a regular file with a single name is refused (opened with ``O_NONBLOCK``, so that a
FIFO cannot block the check itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Final

from pytest_dbguard.exceptions import ServerError

PID_FILE: Final = "postmaster.pid"  # in the data folder, written by the server
STATE_FILE: Final = "dbguard.json"  # in the run folder, written by dbguard (port, password...)
NOT_OURS: Final = (
    "{path} is not a regular file of dbguard's (a link, a FIFO or a hard link, put there by the "
    "account the server runs as?): dbguard does not open it. Stop the server, remove its folder "
    "{folder} and run again."
)


def open_regular(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` of ``path`` that follows no link and returns only a regular file with one
    name (inheritable to no child); ServerError otherwise. ``FileNotFoundError`` as ``os.open``."""
    try:
        descriptor = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as error:
        if isinstance(error, FileNotFoundError):
            raise
        if os.path.islink(path) or not os.path.isfile(path):  # ELOOP, ENXIO (a FIFO), ...
            raise ServerError(NOT_OURS.format(path=path, folder=path.parent)) from None
        raise
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        os.close(descriptor)
        raise ServerError(NOT_OURS.format(path=path, folder=path.parent))
    os.set_blocking(descriptor, True)
    return descriptor


def read_text(path: Path) -> str:
    """The text of ``path`` (``errors="replace"``), read as :func:`open_regular` opens it."""
    with open(open_regular(path, os.O_RDONLY), "rb") as file:
        return file.read().decode(errors="replace")


def postmaster_pid(datadir: Path) -> int | None:
    """The pid the server wrote in ``datadir``'s pid file; None when there is no readable one."""
    with contextlib.suppress(OSError, ValueError, IndexError, ServerError):
        return int(read_text(datadir / PID_FILE).splitlines()[0])
    return None


def state_of(root: Path) -> dict[str, Any]:
    """What dbguard's state file in the run folder ``root`` says; empty when it is missing,
    unreadable, not a regular file of dbguard's, or not a JSON object."""
    with contextlib.suppress(OSError, ValueError, ServerError):
        state = json.loads(read_text(root / STATE_FILE))
        if isinstance(state, dict):
            return state
    return {}
