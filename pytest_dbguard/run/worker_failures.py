"""Under pytest-xdist, a worker whose setup fails ends the whole run, with its cause printed once.

pytest-xdist does not pass a worker's ``UsageError`` on to the controller (pytest-xdist#109): the
controller only sees a worker that finished early, and then either waits for that worker's
collection forever or reports an INTERNALERROR about a "crashed" test that hides the cause. So
the worker records its message in ``config.workeroutput``, which xdist sends with the worker's
"finished" event, and the controller raises it as its own ``UsageError`` from
``pytest_testnodedown``: pytest prints it once, exits with code 4, and xdist shuts the other
workers down.
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

import pytest

from pytest_dbguard.compat import xdist_loaded

SETUP_ERROR_KEY: Final = "dbguard_setup_error"
_failed_key: Final = pytest.StashKey[str]()


def fail_session(config: pytest.Config, message: str) -> NoReturn:
    """Stop this process's session with a usage error; an xdist worker also hands it on."""
    workeroutput = getattr(config, "workeroutput", None)  # set by xdist in its workers only
    if isinstance(workeroutput, dict):
        workeroutput.setdefault(SETUP_ERROR_KEY, message)
    config.stash.setdefault(_failed_key, message)
    raise pytest.UsageError(message)


def session_failed(config: pytest.Config) -> bool:
    """Whether this process's session was stopped by :func:`fail_session`: pytest still calls
    ``pytest_collection_finish`` after a collection hook raised, where nothing should be built."""
    return _failed_key in config.stash


class ControllerRelay:
    """xdist controller hooks: raise the first worker setup error as the run's own."""

    def __init__(self) -> None:
        self.raised = False

    @pytest.hookimpl(tryfirst=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        output = getattr(node, "workeroutput", None)
        message = output.get(SETUP_ERROR_KEY) if isinstance(output, dict) else None
        if message and not self.raised:
            self.raised = True  # the other workers fail the same way: print the cause once
            raise pytest.UsageError(str(message))


def register(config: pytest.Config) -> None:
    """Register the controller hooks when xdist is loaded (its hook specs exist only then)."""
    manager = config.pluginmanager
    if xdist_loaded(config) and not manager.hasplugin("dbguard-worker-failures"):
        manager.register(ControllerRelay(), "dbguard-worker-failures")
