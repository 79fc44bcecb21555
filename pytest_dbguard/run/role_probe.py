"""May the run's role create databases? The question behind ``dbguard_worker_isolation = auto``
on the user's server: a database per xdist worker when it may, else a schema per worker.

It is the run's first connection, asked before the conftests load: a wrong password or a
missing database stops the run there, once, instead of in every xdist worker. A run of one
process asks it at once, in this process (its conftests must see the URL of the right layout).
The xdist controller, which runs no test, asks a child process instead, started before its
conftests load and answered at its session start, before xdist starts the workers: the driver's
import and the connection (0.1 to 0.25 s of the controller's, ``benchmarks/ci_path.py`` part 3)
then overlap the conftests' loading instead of delaying every worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Final

from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import ReadinessError

if TYPE_CHECKING:  # the child imports this module: neither pytest nor the settings
    import pytest

    from pytest_dbguard.run.config import Settings

ANSWER_TIMEOUT: Final = 15.0  # seconds for the child; then this process asks itself
# The child imports dbguard from where this process found it (a checkout on sys.path too).
CHILD: Final = (
    "import sys; sys.path.insert(0, {folder!r}); "
    "from pytest_dbguard.run.role_probe import answer_from_child; answer_from_child()"
)


def may_create_databases(server_url: DatabaseURL, source: str) -> bool:
    """Whether the URL's role is a superuser or has CREATEDB. A server that does not answer yet
    counts as yes (the readiness check waits for it later); a failure that waiting does not fix
    (a wrong password, a missing database) is the readiness check's ReadinessError, which says
    that ``source`` gave the URL."""
    from pytest_dbguard.db.worker_schemas import CAN_CREATE_DATABASES
    from pytest_dbguard.server.readiness import first_row, refused_for_good

    started = time.monotonic()
    try:
        # One plain connection: SQLAlchemy's import would delay every xdist worker's start.
        row = first_row(server_url, CAN_CREATE_DATABASES, timeout=2.0)
    except Exception as error:
        final = refused_for_good(server_url, error, time.monotonic() - started)
        if final is not None:
            from pytest_dbguard.server.connect_diagnosis import from_setting

            raise from_setting(final, source) from None
        return True
    return bool(row and row[0])


def asked_by_a_child(config: pytest.Config, settings: Settings) -> bool:
    """This process is about to be the xdist controller (``-n``, not a worker, no ``--pdb``,
    which turns xdist off) of a run that asks the question: it may ask a child."""
    from pytest_dbguard.compat import xdist_loaded

    url = settings.url
    if url is None or url.is_sqlite or settings.worker_isolation != "auto":
        return False
    if os.environ.get("PYTEST_XDIST_WORKER") or not xdist_loaded(config):
        return False
    namespace = config.known_args_namespace
    if getattr(namespace, "usepdb", False):
        return False
    return getattr(namespace, "numprocesses", None) not in (None, 0)


class PendingAnswer:
    """The question asked in a child process; ``answer`` waits for it."""

    def __init__(self, server_url: DatabaseURL, source: str) -> None:
        self.server_url, self.source = server_url, source
        folder = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        request = {"url": server_url.portable(), "source": source}
        self.child: subprocess.Popen[bytes] | None = None
        # The password goes through a pipe (a command line is every account's to read), written
        # whole before the child starts: a request is far below a pipe's buffer.
        reading, writing = os.pipe()
        try:
            try:
                os.write(writing, json.dumps(request).encode())
            finally:
                os.close(writing)
            self.child = subprocess.Popen(
                [sys.executable, "-c", CHILD.format(folder=folder)],
                stdin=reading,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            pass  # this process asks itself
        finally:
            os.close(reading)

    def answer(self) -> bool:
        """The child's answer; asked in this process when the child gave none (it could not
        import the driver from where it runs, say): never a guess."""
        reply = None
        if self.child is not None:
            try:
                output, _ = self.child.communicate(timeout=ANSWER_TIMEOUT)
                reply = json.loads(output)
            except (subprocess.TimeoutExpired, ValueError):
                self.discard()
        if isinstance(reply, dict) and isinstance(reply.get("refused"), str):
            raise ReadinessError(reply["refused"])
        if isinstance(reply, dict) and isinstance(creates := reply.get("creates"), bool):
            return creates
        return may_create_databases(self.server_url, self.source)

    def discard(self) -> None:
        """Stop the child (a run that ended before its session started)."""
        child, self.child = self.child, None
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()


def answer_from_child() -> None:
    """The child's side: the request on stdin, the answer (or the refusal's text, which shows
    no password) on stdout as JSON."""
    request = json.loads(sys.stdin.read())
    url = DatabaseURL.parse(request["url"])
    try:
        reply: dict[str, object] = {"creates": may_create_databases(url, request["source"])}
    except ReadinessError as error:
        reply = {"refused": str(error)}
    sys.stdout.write(json.dumps(reply))
