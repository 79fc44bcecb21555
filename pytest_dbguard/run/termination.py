"""SIGTERM ends a run the way Ctrl-C does, so dbguard cleans up what it started.

CI runners and ``timeout`` stop a job with SIGTERM, whose default action ends the process on the
spot: no fixture teardown, no DROP DATABASE, the run folder left behind. While dbguard is active
the first SIGTERM raises :class:`~pytest_dbguard.exceptions.Terminated`, a ``KeyboardInterrupt``,
so pytest stops the session and runs its teardown exactly as for Ctrl-C; an xdist controller
passes the signal on to its workers (when it alone was signalled), which then drop their own
databases. Later SIGTERMs are ignored until the cleanup is done: they must not cut it short
(SIGKILL still ends everything). A handler someone else installed is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, Final, NoReturn

import pytest

from pytest_dbguard.exceptions import Terminated

_previous_key: Final = pytest.StashKey[Any]()


def install(config: pytest.Config) -> None:
    """Turn SIGTERM into a Ctrl-C for this process (main thread only, default handler only)."""
    if _previous_key in config.stash or threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is not signal.SIG_DFL:
        return  # the user's (or another plugin's) handler wins
    signal.signal(signal.SIGTERM, _on_sigterm)
    config.stash[_previous_key] = current


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough; the cleanup must finish
    _forward_to_workers(signum)
    raise Terminated(
        "dbguard: SIGTERM received; stopping like Ctrl-C and removing the run's databases"
    )


def exit_before_the_session(config: pytest.Config, interrupt: KeyboardInterrupt) -> NoReturn:
    """SIGTERM while pytest loads the conftests (a Django project's ``django.setup()``, say),
    which pytest, with no session yet, would show as a traceback of the import in progress: one
    line (none from an xdist worker: its controller says it) and exit code 2 (interrupted), as
    in a session. What the run started is stopped at exit (the embedded cluster's atexit hook).
    A Ctrl-C, and a SIGTERM that an outer run's handler raised (a run nested in another's
    process, as pytester's in-process runs are), are left to pytest and that run."""
    if not isinstance(interrupt, Terminated) or _previous_key not in config.stash:
        raise interrupt
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        sys.stderr.write(f"{interrupt}; no test ran\n")
    raise SystemExit(pytest.ExitCode.INTERRUPTED) from None


def _forward_to_workers(signum: int) -> None:
    """An xdist controller signalled alone (``timeout``, ``kill``) passes it on to its workers;
    a worker that already had it from its process group ignores the second one."""
    from pytest_dbguard.server.processes import children_in_group

    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for child in children_in_group(os.getpid(), os.getpgrp()):
        with contextlib.suppress(OSError):
            os.kill(child, signum)


def shield(config: pytest.Config) -> None:
    """From now on ignore SIGTERM: the cleanup that has started must finish. Only where this
    run installed the handler: a run nested in another (pytester in-process) leaves the outer
    run's handler to it, which :func:`restore` could not give back otherwise."""
    if _previous_key in config.stash and threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError):
            if signal.getsignal(signal.SIGTERM) is _on_sigterm:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A Ctrl-C during the run's cleanup waits for its end, then interrupts as usual: cut short,
    it left a half-removed run folder (100 MB in /dev/shm, baserow's trial). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if received:
        raise KeyboardInterrupt


def restore(config: pytest.Config) -> None:
    """Give SIGTERM its previous handler back (matters for in-process nested runs)."""
    if _previous_key in config.stash and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, config.stash[_previous_key])
        del config.stash[_previous_key]
