"""Fault injection: prove that code recovers from dropped connections, restarts and a slow network.

``Faults`` works without pytest (it raises ``FaultError`` where the fixture skips or fails);
``dbguard_faults`` (:mod:`.fixtures`) wraps it and undoes every fault after each test. ``refuse``, ``latency`` and
``cut`` act on the worker's ``FaultProxy``, ``terminate`` and ``restart`` on the server itself.
xdist workers share one server, so restarts are fenced (see ``restart_fence``); recovery is
proved by ``recovery.recover``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NoReturn

from pytest_dbguard.compat import pooled_connection_records
from pytest_dbguard.db import maintenance
from pytest_dbguard.db.urls import DatabaseURL, SecretURL
from pytest_dbguard.django import requests as django_requests
from pytest_dbguard.exceptions import DbguardError, FaultError
from pytest_dbguard.faults.recovery import Recovery, recover, recover_async
from pytest_dbguard.faults.restart_fence import RestartFence
from pytest_dbguard.server.handover import MAINTENANCE_APP
from pytest_dbguard.server.readiness import probe, wait_for_run

if TYPE_CHECKING:
    from pytest_dbguard.faults.proxy import FaultProxy
    from pytest_dbguard.server.cluster import EmbeddedCluster

GONE_TIMEOUT: Final = 10.0  # seconds for terminated backends to leave pg_stat_activity
_TERMINATE: Final = (
    "SELECT pid, client_port, pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"
    " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    " AND application_name IS DISTINCT FROM :maintenance"  # the run's own (schema mode)
)
_ALIVE: Final = "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(:pids)"
_NEEDS_POSTGRES: Final = (
    "dbguard_faults.{what} needs PostgreSQL; this run uses SQLite. Unset --dbguard-url "
    "(DBGUARD_URL, ini dbguard_url) for the embedded PostgreSQL, or point it at a server."
)
_NEEDS_PROXY: Final = (
    "dbguard_faults.{what} needs dbguard's fault proxy, which is off in this run: it is on with "
    "--dbguard-proxy, or when a test file under the run's paths mentions dbguard_faults by name. "
    "Pass --dbguard-proxy (or set ini dbguard_proxy = true)."
)
_NEEDS_EMBEDDED: Final = (
    "dbguard_faults.restart() stops and starts the embedded server that dbguard manages; this run "
    "uses the external server {where}, which dbguard never stops. Unset --dbguard-url "
    "(DBGUARD_URL, ini dbguard_url) to run it on the embedded server."
)
_NEEDS_PROC: Final = (
    "dbguard_faults.terminate() with a schema per worker ends only this process's backends "
    "(other clients share {database}) and finds them in /proc, which this system lacks."
)


def _raise(message: str) -> NoReturn:
    raise FaultError(message)


@dataclasses.dataclass(eq=False, repr=False)
class Faults:
    """Real faults against one test database: terminate, close, restart, refuse, latency, cut."""

    test_url: DatabaseURL  # as the tests reach it: through the proxy when that is on
    server_url: DatabaseURL | None = None  # the server directly (never the proxy); None: SQLite
    database: str | None = None
    proxy: FaultProxy | None = None
    cluster: EmbeddedCluster | None = None  # the managed server; None: external or SQLite
    fence: RestartFence | None = None
    workers: int = 1  # pytest processes sharing the server
    shared_database: bool = False  # a schema per worker: other clients use the database too
    wait: float = 30.0
    die_with_parent: bool = True
    skip: Callable[[str], NoReturn] = _raise
    fail: Callable[[str], NoReturn] = _raise
    _restarted: bool = dataclasses.field(default=False, init=False)

    def __repr__(self) -> str:  # tracebacks show it: never the password
        return f"<Faults on {self.test_url}{' via the fault proxy' if self.proxy else ''}>"

    @property
    def url(self) -> str:
        """The test database URL (sync driver) for engines the test builds itself."""
        return SecretURL(self.test_url)

    @property
    def async_url(self) -> str:
        """The test database URL with an async driver."""
        return SecretURL(self.test_url.asynchronous())

    def terminate(self) -> int:
        """End every other backend on this worker's database, wait until gone; return how many."""
        __tracebackhide__ = True
        server_url = self._postgres("terminate()")
        sql, params = _TERMINATE, dict[str, Any](db=self.database, maintenance=MAINTENANCE_APP)
        if self.shared_database:
            if (ports := _own_ports()) is None:
                self.skip(_NEEDS_PROC.format(database=self.database))
            sql, params["ports"] = f"{sql} AND client_port = ANY(:ports)", list(ports)
        # The run's own maintenance connection (the driver's, no SQLAlchemy), not a second one.
        with maintenance.shared(server_url.with_query(connect_timeout="10")) as connection:
            ended = [(pid, port) for pid, port, ok in connection.rows(sql, params) if ok]
            pids = [pid for pid, _ in ended]
            deadline = time.monotonic() + GONE_TIMEOUT
            # pg_terminate_backend only signals: the backend exits a little later.
            while pids and connection.first(_ALIVE, {"pids": pids}):
                if time.monotonic() > deadline:
                    self.fail(f"terminate(): backends {pids} still alive after {GONE_TIMEOUT} s")
                time.sleep(0.005)
        # Through the proxy, the clients learn of the ends a moment later: wait for that too.
        relayed = [port for _, port in ended if port is not None]
        if self.proxy is not None and not self.proxy.pass_on_server_ends(relayed, GONE_TIMEOUT):
            self.fail(
                f"terminate(): the fault proxy had not passed the ends on after {GONE_TIMEOUT} s"
            )
        return len(pids)

    def close(self, target: Any) -> int:
        """Close a DBAPI or SQLAlchemy connection, or each idle one of an Engine or pool, or a
        Django connection (or all of ``django.db.connections``), on the client side behind the
        library's back, so the next use finds it dead; return how many."""
        __tracebackhide__ = True
        connections = _driver_connections(target)
        for connection in connections:
            if hasattr(connection, "terminate") and hasattr(connection, "is_closed"):
                connection.terminate()  # asyncpg: closes the socket at once, nothing to await
            elif not inspect.iscoroutinefunction(connection.close):
                connection.close()
            elif hasattr(connection, "pgconn"):
                connection.pgconn.finish()  # psycopg's AsyncConnection, without awaiting
            else:
                raise FaultError(
                    f"close(): a {type(connection).__name__} closes only when awaited."
                )
        return len(connections)

    def restart(self) -> float:
        """Fast stop and start of the embedded server; returns seconds until it answered again."""
        __tracebackhide__ = True
        self._postgres("restart()")
        if self.cluster is None:
            self.skip(_NEEDS_EMBEDDED.format(where=self.server_url))
        if self.fence is None and self.workers > 1:
            self.fail(_NEEDS_PROXY.format(what="restart() under xdist"))
        started = time.monotonic()
        try:
            self._restart_now()
            return round(time.monotonic() - started, 3)
        except DbguardError as error:
            problem = str(error)
        self.fail(problem)

    def _restart_now(self) -> None:
        assert self.cluster is not None and self.server_url is not None
        # PR_SET_PDEATHSIG follows the forking thread: a server started from another thread
        # would die with that thread.
        die = self.die_with_parent and threading.current_thread() is threading.main_thread()
        with self.fence.exclusive() if self.fence else contextlib.nullcontext():
            self._restarted = True
            self.cluster.restart(die_with_parent=die)
            # The restart ended this process's maintenance connection; the one that proves the
            # server ready takes its place (other workers replace theirs when they find it dead).
            maintenance.discard(self.server_url)
            try:
                wait_for_run(self.server_url, timeout=self.wait)
            except DbguardError as error:
                log = self.cluster.log_tail()
                raise FaultError(
                    f"restart(): the server did not come back: {error}\n{log}"
                ) from None

    def refuse(self, seconds: float) -> None:
        """New connections are reset at once for ``seconds``, like a server still starting."""
        __tracebackhide__ = True
        self._proxy("refuse(seconds)").refuse(seconds)

    def latency(self, ms: float) -> None:
        """Every chunk on connections opened from now on is delayed by ``ms``, each way (open
        connections keep their pace: dispose the engine, or connect anew, to feel it)."""
        __tracebackhide__ = True
        self._proxy("latency(ms)").latency(ms)

    def cut(self) -> int:
        """Reset every open connection at the TCP level, with no goodbye; returns how many.

        That is every connection this worker has open through the proxy: pooled ones of earlier
        tests and of dbguard's own fixtures count too, so expect ``>= 1``, not an exact number.
        """
        __tracebackhide__ = True
        return self._proxy("cut()").cut()

    def assert_recovers(
        self, target: Any, within: float = 5.0, *, first_try: bool = False
    ) -> Recovery:
        """Run ``SELECT 1`` through ``target`` until it works, else fail with attempts and error.

        ``first_try=True``: the very first attempt must work (what the application's next request
        meets), no retries. An AsyncEngine is driven on a loop of its own (and disposed after),
        when none is running.
        """
        __tracebackhide__ = True
        target = django_requests.in_requests(target)  # Django: each attempt is a request
        return recover(
            target, within, password=self.test_url.password, fail=self.fail, first_try=first_try
        )

    async def assert_recovers_async(
        self, target: Any, within: float = 5.0, *, first_try: bool = False
    ) -> Recovery:
        """:meth:`assert_recovers` for async tests: AsyncEngines and async connection factories."""
        __tracebackhide__ = True
        return await recover_async(
            target, within, password=self.test_url.password, fail=self.fail, first_try=first_try
        )

    def undo(self) -> list[str]:
        """End refusal and latency, bring a restarted server back; returns what stayed undone."""
        if self.proxy is not None:
            self.proxy.reset()
        restarted, self._restarted = self._restarted, False
        if restarted and self.server_url and probe(self.server_url).status != "ok":
            try:
                self._restart_now()
            except DbguardError as error:
                return [str(error)]
        return []

    def _postgres(self, what: str) -> DatabaseURL:
        __tracebackhide__ = True
        if self.server_url is None:
            self.skip(_NEEDS_POSTGRES.format(what=what))
        return self.server_url

    def _proxy(self, what: str) -> FaultProxy:
        __tracebackhide__ = True
        self._postgres(what)
        if self.proxy is None:
            from pytest_dbguard.faults.proxy import NOT_PROXIED, not_proxied

            reason = not_proxied(self.server_url) if self.server_url is not None else None
            if reason is not None:
                self.fail(f"dbguard_faults.{what}: " + NOT_PROXIED.format(reason=reason))
            self.fail(_NEEDS_PROXY.format(what=what))
        return self.proxy


def _driver_connections(target: Any) -> list[Any]:
    """The driver connections under ``target``: itself, a Connection's, a pool's idle ones."""
    if (found := django_requests.driver_connections(target)) is not None:
        return found
    if "sqlalchemy" not in sys.modules:  # so it is no SQLAlchemy object: a driver connection
        return [target]
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.pool import Pool

    target = getattr(target, "sync_engine", None) or getattr(target, "sync_connection", target)
    target = target.pool if isinstance(target, Engine) else target
    if not isinstance(target, Pool):
        target = target.connection if isinstance(target, Connection) else target
        return [getattr(target, "driver_connection", target)]
    records = pooled_connection_records(target)
    return [record.driver_connection for record in records if record and record.driver_connection]


def _own_ports() -> set[int] | None:
    """Local ports of this process's TCP sockets (its own and its proxy's); None without /proc."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone already
            inodes.add(os.readlink(f"/proc/self/fd/{fd}"))
    ports: set[int] = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            rows = [line.split() for line in list(lines)[1:]]
            ports.update(
                int(r[1].rsplit(":", 1)[1], 16) for r in rows if f"socket:[{r[9]}]" in inodes
            )
    return ports
