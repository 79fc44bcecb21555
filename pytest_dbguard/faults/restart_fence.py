"""Restarts of a server that several xdist workers share, fenced by a lock across processes.

Every test of every worker holds the fence shared while it runs; ``restart()`` holds it
exclusively, so no other worker's test loses its connections halfway. Only active where it is
needed: in one of several xdist workers, with the fault proxy on, on the embedded server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Final

import pytest

from pytest_dbguard.run.environment import embedded_cluster
from pytest_dbguard.run.state import run_of
from pytest_dbguard.server.run_folder_files import open_regular


class RestartFence:
    """A reader-writer lock across processes on two files: tests share it, a restart excludes.

    A restart first closes the gate every test passes on its way in, so it waits only for the
    tests already running, not for a stream of new ones.
    """

    def __init__(self, folder: Path) -> None:
        # In the run folder, which the server's account owns: no link of its followed.
        self._gate = open_regular(folder / "faults.gate", os.O_RDWR | os.O_CREAT)
        self._lock = open_regular(folder / "faults.lock", os.O_RDWR | os.O_CREAT)
        self._shared = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Held around each test: waits while a restart is pending or running."""
        fcntl.flock(self._gate, fcntl.LOCK_SH)
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        fcntl.flock(self._gate, fcntl.LOCK_UN)
        self._shared = True
        try:
            yield
        finally:
            self._shared = False
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held around a restart, from inside ``shared()`` or not; as it was afterwards."""
        # Let go first: two restarts holding shared while both wait at the gate would deadlock.
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX)  # once the tests running elsewhere are done
            try:
                yield
            finally:
                fcntl.flock(self._lock, fcntl.LOCK_SH if self._shared else fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)


_fence_key: Final = pytest.StashKey["RestartFence | None"]()


def workers() -> int:
    with contextlib.suppress(ValueError):
        return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return 1


def fence_of(config: pytest.Config) -> RestartFence | None:
    """Only where needed: in one of several xdist workers, with faults in play, on embedded."""
    if _fence_key not in config.stash:
        run = run_of(config)
        wanted = run is not None and not run.plan.owns_server and run.proxy is not None
        cluster = embedded_cluster(run) if run is not None and wanted and workers() > 1 else None
        config.stash[_fence_key] = RestartFence(cluster.root) if cluster is not None else None
    return config.stash[_fence_key]


@contextlib.contextmanager
def _fenced(config: pytest.Config) -> Iterator[None]:
    fence = fence_of(config)
    with fence.shared() if fence is not None else contextlib.nullcontext():
        yield


class RestartFencing:
    """xdist hooks: hold the fence around each test and each worker's cleanup."""

    # Session start needs no fence: xdist sends no test before every worker has collected, and
    # each worker provisions its database before it collects.
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: object
    ) -> Generator[None, object, object]:
        with _fenced(item.config):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None, object, object]:
        with _fenced(session.config):  # with --dbguard-reuse each worker drops its database here
            return (yield)


def register(config: pytest.Config) -> None:
    """Register the fencing hooks in an xdist worker."""
    if (
        os.environ.get("PYTEST_XDIST_WORKER") and config.pluginmanager.hasplugin("xdist.plugin")
    ) or hasattr(config, "workerinput"):
        config.pluginmanager.register(RestartFencing(), "dbguard-restart-fence")
