"""Stopping a thread of dbguard's own from outside: the xdist controller's early template build
(``early_template``) when the run ends before its tests.

Ending the build's connection stops a migrate only at its next statement, and its Python work in
between (a RunPython, rendering a big project's model states) ran on for 15-25 s (label-studio):
``stop`` raises ``Stopped`` in the thread at its next Python line instead.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Final

WITHIN: Final = 10.0  # seconds: then the thread is left to end with the process


class Stopped(BaseException):
    """Raised inside a thread that ``stop`` stops; not an ``Exception``, which a migration's
    ``except Exception`` (and Django's own) would swallow."""


def stop(thread: threading.Thread, within: float = WITHIN) -> bool:
    """Raise ``Stopped`` in ``thread`` at its next Python line, again until it ends (code may
    catch one), for up to ``within`` seconds; whether it ended. One long call into C
    (``time.sleep(60)``) cannot be interrupted: the thread, a daemon, is then left to the
    process's exit (a half-built template keeps its incomplete mark, and is swept)."""
    deadline = time.monotonic() + within
    thread.join(timeout=0.5)  # a statement that the ended connection fails ends it
    while thread.is_alive() and time.monotonic() < deadline:
        if thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread.ident), ctypes.py_object(Stopped)
            )
        thread.join(timeout=0.2)
    return not thread.is_alive()
