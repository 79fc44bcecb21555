"""The mark dbguard puts on every database it creates, and the sweep that drops leftovers.

Only a database whose comment carries this mark (and whose name has dbguard's shape) is ever
dropped; anything else on the server is left alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from typing import Final

MARK_PREFIX: Final = "pytest-dbguard "


@dataclasses.dataclass(frozen=True)
class Mark:
    """Who created a test database: run id, worker, creation time, process and host."""

    run: str
    worker: str
    created: float
    pid: int
    host: str


def make_mark(run: str, worker: str) -> str:
    """The ``COMMENT ON DATABASE`` text for a database this process creates now."""
    payload = {"run": run, "worker": worker, "created": round(time.time(), 3),
               "pid": os.getpid(), "host": socket.gethostname()}
    return MARK_PREFIX + json.dumps(payload, separators=(",", ":"))


def parse_mark(comment: str | None) -> Mark | None:
    """The mark in a database comment, or None when the comment is not dbguard's."""
    if not comment or not comment.startswith(MARK_PREFIX):
        return None
    try:
        data = json.loads(comment[len(MARK_PREFIX):])
        return Mark(run=str(data["run"]), worker=str(data["worker"]), created=float(data["created"]),
                    pid=int(data["pid"]), host=str(data["host"]))
    except (ValueError, KeyError, TypeError):
        return None
