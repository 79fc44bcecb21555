"""Fault injection: prove that code recovers from dropped connections, restarts and a slow network.

``Faults`` works without pytest (it raises ``FaultError`` where the fixture skips or fails);
``dbguard_faults`` wraps it and undoes every fault after each test. ``refuse``, ``latency`` and
``cut`` act on the worker's ``FaultProxy``; ``terminate`` and ``restart`` on the server itself,
never through the proxy. Under xdist all workers share one server, so restarts are fenced: every
test of every worker holds a ``RestartFence`` shared while it runs and ``restart()`` holds it
exclusively, so no other worker has a test running when the server goes away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import inspect
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import pytest

from pytest_dbguard.config import settings_key
from pytest_dbguard.databases import admin_engine
from pytest_dbguard.environment import ORIGIN_VAR, cluster_key, plan_key, proxy_key
from pytest_dbguard.exceptions import DbguardError, FaultError
from pytest_dbguard.readiness import LOOPBACK_POLICY, probe, scrub, wait_until_ready
from pytest_dbguard.urls import DatabaseURL, SecretURL

if TYPE_CHECKING:
    from pytest_dbguard.proxy import FaultProxy
    from pytest_dbguard.server import EmbeddedCluster

GONE_TIMEOUT: Final = 10.0  # seconds for terminated backends to leave pg_stat_activity
FENCE_TIMEOUT: Final = 120.0  # seconds restart() waits for the other workers' running tests
MIN_ATTEMPT: Final = 0.05  # seconds an async attempt gets, even at the deadline
_TERMINATE: Final = (
    "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"
    " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
)
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
_STILL_ALIVE: Final = "terminate(): backends {pids} were still alive after {timeout:g} s."
_NOT_BACK: Final = "restart(): the embedded server did not come back: {error}\nLog tail:\n{log}"
_FENCE_WAIT: Final = (
    "restart() waited {timeout:g} s for the tests running in other xdist workers; one is stuck."
)
_NOT_RECOVERED: Final = (
    "{target} did not recover within {within:g} s: SELECT 1 failed {attempts} attempt(s) "
    "in {elapsed:.2f} s. Last error: {error}"
)
_LOOP_RUNNING: Final = (
    "assert_recovers() cannot drive an AsyncEngine while an event loop runs in this thread; "
    "in an async test use: await dbguard_faults.assert_recovers_async(engine)"
)
_BAD_TARGET: Final = (
    "assert_recovers(): {target!r} is neither an Engine, an AsyncEngine, a connection factory "
    "nor a callable{hint}."
)


def _raise(message: str) -> NoReturn:
    raise FaultError(message)


@dataclasses.dataclass(frozen=True)
class Recovery:
    """How a target came back: attempts (the last one worked), seconds, the first error seen."""

    attempts: int
    seconds: float
    first_error: str | None = None


class RestartFence:
    """A reader-writer lock across processes, on two files in the run folder.

    Tests hold it shared, ``restart()`` exclusively. A writer first closes the gate that every
    reader passes on its way in, so it waits only for the tests already running.
    """

    def __init__(self, folder: Path) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self._gate = os.open(folder / "faults.gate", flags, 0o600)
        self._lock = os.open(folder / "faults.lock", flags, 0o600)
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
    def exclusive(self, timeout: float = FENCE_TIMEOUT) -> Iterator[None]:
        """Held around a restart, from inside ``shared()`` or not; back as it was afterwards."""
        # Let go first: two restarts each holding shared while waiting at the gate would deadlock.
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            deadline = time.monotonic() + timeout
            while not _try_flock(self._lock):  # polled: a stuck test elsewhere becomes a message
                if time.monotonic() > deadline:
                    self._resume()
                    raise FaultError(_FENCE_WAIT.format(timeout=timeout))
                time.sleep(0.005)
            try:
                yield
            finally:
                self._resume()
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def _resume(self) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_SH if self._shared else fcntl.LOCK_UN)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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

    def __repr__(self) -> str:  # shown in tracebacks: never the password
        return f"<Faults on {self.test_url}{' via the fault proxy' if self.proxy else ''}>"

    @property
    def url(self) -> str:
        """The test database URL (sync driver) for engines the test builds itself."""
        return SecretURL(self.test_url.render(hide_password=False))

    @property
    def async_url(self) -> str:
        """The test database URL with an async driver."""
        return SecretURL(self.test_url.asynchronous().render(hide_password=False))

    def terminate(self) -> int:
        """End every other backend on this worker's database, wait until gone; return how many."""
        __tracebackhide__ = True
        from sqlalchemy import text

        server_url = self._postgres("terminate()")
        sql, params = _TERMINATE, dict[str, Any](db=self.database)
        if self.shared_database:
            ports = _own_ports()
            if ports is None:
                self.skip(_NEEDS_PROC.format(database=self.database))
            sql, params = f"{sql} AND client_port = ANY(:ports)", {**params, "ports": list(ports)}
        engine = admin_engine(server_url.with_query(connect_timeout="10"))
        try:
            with engine.connect() as connection:
                pids = [pid for pid, ended in connection.execute(text(sql), params) if ended]
                alive = text("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(:pids)")
                deadline = time.monotonic() + GONE_TIMEOUT
                # pg_terminate_backend only signals: the backend may still be running a while.
                while pids and connection.execute(alive, {"pids": pids}).first():
                    if time.monotonic() > deadline:
                        self.fail(_STILL_ALIVE.format(pids=pids, timeout=GONE_TIMEOUT))
                    time.sleep(0.005)
        finally:
            engine.dispose()
        return len(pids)

    def close(self, target: Any) -> int:
        """Close a DBAPI or SQLAlchemy connection, or each idle one of an Engine or pool, from the
        client side behind SQLAlchemy's back: the next use finds it dead. Returns how many."""
        __tracebackhide__ = True
        connections = _driver_connections(target)
        for connection in connections:
            _close_driver(connection)
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
        except DbguardError as error:
            self.fail(str(error))
        return round(time.monotonic() - started, 3)

    def _restart_now(self) -> None:
        assert self.cluster is not None and self.server_url is not None
        # PR_SET_PDEATHSIG follows the forking thread: a server started from a thread would die
        # with that thread.
        die = self.die_with_parent and threading.current_thread() is threading.main_thread()
        with self.fence.exclusive() if self.fence else contextlib.nullcontext():
            self._restarted = True
            self.cluster.restart(die_with_parent=die)
            try:
                wait_until_ready(self.server_url, timeout=self.wait)
            except DbguardError as error:
                log = self.cluster.log_tail()
                raise FaultError(_NOT_BACK.format(error=error, log=log)) from None

    def refuse(self, seconds: float) -> None:
        """New connections are reset at once for ``seconds``, like a server still starting."""
        __tracebackhide__ = True
        self._proxy("refuse(seconds)").refuse(seconds)

    def latency(self, ms: float) -> None:
        """Every chunk on connections opened from now on is delayed by ``ms``, each way."""
        __tracebackhide__ = True
        self._proxy("latency(ms)").latency(ms)

    def cut(self) -> int:
        """Reset every open connection at the TCP level, with no goodbye; returns how many."""
        __tracebackhide__ = True
        return self._proxy("cut()").cut()

    def assert_recovers(self, target: Any, within: float = 5.0) -> Recovery:
        """Run ``SELECT 1`` through ``target`` until it works, else fail with attempts and error."""
        __tracebackhide__ = True
        if hasattr(target, "sync_engine"):  # an AsyncEngine: its own loop, when none is running
            import asyncio

            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop()
                self.fail(_LOOP_RUNNING)
            return asyncio.run(self._recover_on_own_loop(target, within))
        check, tries = _sync_check(target), _Tries(within)
        while True:
            try:
                check()
                return tries.recovered()
            except Exception as error:
                pause = tries.failed(error, self.test_url.password)
            if pause is None:  # outside the except block: no chained traceback in the report
                self.fail(tries.report(target))
            time.sleep(pause)

    async def assert_recovers_async(self, target: Any, within: float = 5.0) -> Recovery:
        """:meth:`assert_recovers` for async tests: AsyncEngines and async connection factories."""
        __tracebackhide__ = True
        import asyncio

        check, tries = _async_check(target), _Tries(within)
        while True:
            try:
                await asyncio.wait_for(check(), max(tries.left(), MIN_ATTEMPT))
                return tries.recovered()
            except Exception as error:
                pause = tries.failed(error, self.test_url.password)
            if pause is None:
                self.fail(tries.report(target))
            await asyncio.sleep(pause)

    async def _recover_on_own_loop(self, engine: Any, within: float) -> Recovery:
        try:
            return await self.assert_recovers_async(engine, within)
        finally:
            with contextlib.suppress(Exception):  # its connections belong to a loop about to close
                await engine.dispose()

    def undo(self) -> list[str]:
        """End refusal and latency, bring a restarted server back; returns what stayed undone."""
        problems: list[str] = []
        if self.proxy is not None:
            self.proxy.reset()
        restarted, self._restarted = self._restarted, False
        if restarted and self.server_url and probe(self.server_url).status != "ok":
            try:
                self._restart_now()
            except DbguardError as error:
                problems.append(str(error))
        return problems

    def _postgres(self, what: str) -> DatabaseURL:
        __tracebackhide__ = True
        if self.server_url is None:
            self.skip(_NEEDS_POSTGRES.format(what=what))
        return self.server_url

    def _proxy(self, what: str) -> FaultProxy:
        __tracebackhide__ = True
        self._postgres(what)
        if self.proxy is None:
            self.fail(_NEEDS_PROXY.format(what=what))
        return self.proxy


class _Tries:
    """The retry bookkeeping that the sync and async ``assert_recovers`` share."""

    def __init__(self, within: float) -> None:
        if not isinstance(within, (int, float)) or not 0 < within < float("inf"):
            raise FaultError(f"assert_recovers(within=...) must be seconds > 0, got {within!r}.")
        self.within, self.started, self.attempts = float(within), time.monotonic(), 0
        self.first_error: str | None = None
        self.last_error = ""

    def left(self) -> float:
        return self.started + self.within - time.monotonic()

    def failed(self, error: BaseException, password: str | None) -> float | None:
        """Count a failed attempt; the pause before the next one, or None when time is up."""
        self.attempts += 1
        lines = str(error).strip().splitlines()
        self.last_error = scrub(f"{type(error).__name__}: {lines[0] if lines else ''}", password)
        self.first_error = self.first_error or self.last_error
        left = self.left()
        return None if left <= 0 else min(LOOPBACK_POLICY.delay(self.attempts), left)

    def recovered(self) -> Recovery:
        elapsed = round(time.monotonic() - self.started, 3)
        return Recovery(self.attempts + 1, elapsed, self.first_error)

    def report(self, target: Any) -> str:
        if not hasattr(target, "pool") and not hasattr(target, "sync_engine"):
            target = getattr(target, "__qualname__", None) or repr(target)
        elapsed = time.monotonic() - self.started  # an engine's repr masks the password
        return _NOT_RECOVERED.format(
            target=target, within=self.within, attempts=self.attempts, elapsed=elapsed,
            error=self.last_error,
        )  # fmt: skip


def _sync_check(target: Any) -> Callable[[], None]:
    from sqlalchemy.engine import Engine

    if isinstance(target, Engine):
        return lambda: _select_one(target.connect())
    if not callable(target):
        raise FaultError(_BAD_TARGET.format(target=target, hint=""))

    def check() -> None:
        result = target()
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            hint = "; it returned an awaitable: use await assert_recovers_async()"
            raise FaultError(_BAD_TARGET.format(target=target, hint=hint))
        _select_one(result)

    return check


def _async_check(target: Any) -> Callable[[], Coroutine[Any, Any, None]]:
    factory = getattr(target, "connect", None) if hasattr(target, "sync_engine") else target
    if not callable(factory):
        raise FaultError(_BAD_TARGET.format(target=target, hint=""))

    async def check() -> None:
        result = factory()
        if inspect.isawaitable(result):
            result = await result
        # asyncpg's fetchval, SQLAlchemy's and psycopg's async connections' statement methods
        names = ("fetchval", "exec_driver_sql", "execute")
        run = next((getattr(result, name) for name in names if hasattr(result, name)), None)
        if not inspect.iscoroutinefunction(run):
            _select_one(result)  # a sync connection, or what a plain callable returned
            return
        try:
            await run("SELECT 1")
        finally:
            await result.close()

    return check


def _select_one(connection: Any) -> None:
    """``SELECT 1`` on what a factory returned, then close it; anything else counts as success."""
    if hasattr(connection, "exec_driver_sql"):  # SQLAlchemy Connection
        with connection:
            connection.exec_driver_sql("SELECT 1").scalar()
    elif hasattr(connection, "cursor") and hasattr(connection, "close"):  # DBAPI connection
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchone()
        finally:
            connection.close()


def _driver_connections(target: Any) -> list[Any]:
    """The driver connections under ``target``: itself, a Connection's, a pool's idle ones."""
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.pool import Pool

    target = getattr(target, "sync_engine", None) or getattr(target, "sync_connection", target)
    if isinstance(target, Engine):
        target = target.pool
    if isinstance(target, Pool):
        records = _idle_records(target)
        return [record.driver_connection for record in records if record.driver_connection]
    if isinstance(target, Connection):
        target = target.connection
    return [getattr(target, "driver_connection", target)]


def _idle_records(pool: Any) -> list[Any]:
    """The records a pool holds checked in; SQLAlchemy has no public way to list them."""
    queue = getattr(pool, "_pool", None)  # QueuePool: a Queue; the async one: an asyncio.Queue
    held = getattr(queue, "queue", None)
    if held is None and queue is not None:
        held = getattr(vars(queue).get("_queue"), "_queue", None)  # made on first use only
    records = [*(held or ()), *getattr(pool, "_all_conns", ())]  # SingletonThreadPool
    if "connection" in vars(pool):  # StaticPool, once connected
        records.append(vars(pool)["connection"])
    return records


def _close_driver(connection: Any) -> None:
    if hasattr(connection, "terminate") and hasattr(connection, "is_closed"):
        connection.terminate()  # asyncpg: closes the socket at once, nothing to await
    elif inspect.iscoroutinefunction(getattr(connection, "close", None)):
        if not hasattr(connection, "pgconn"):
            raise FaultError(f"close(): cannot close a {type(connection).__name__} synchronously.")
        connection.pgconn.finish()  # psycopg's AsyncConnection, without awaiting
    else:
        connection.close()


def _own_ports() -> set[int] | None:
    """Local ports of this process's TCP sockets (its own and its proxy's); None without /proc."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone already
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports: set[int] = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            rows = [line.split() for line in list(lines)[1:]]
            ports.update(int(row[1].rsplit(":", 1)[1], 16) for row in rows if row[9] in inodes)
    return ports


# pytest wiring: the fixture, and the fence around each test and the session's database work.

_fence_key: Final = pytest.StashKey["RestartFence | None"]()
_worker_cluster_key: Final = pytest.StashKey["EmbeddedCluster | None"]()


def _workers() -> int:
    with contextlib.suppress(ValueError):
        return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return 1


def _cluster_of(config: pytest.Config) -> EmbeddedCluster | None:
    """The embedded server: the owner's own, or in an xdist worker one rebuilt from the origin."""
    plan = config.stash[plan_key]
    if not plan.embedded or plan.server_url is None:
        return None
    if cluster_key in config.stash:
        owned: EmbeddedCluster = config.stash[cluster_key]
        return owned
    if _worker_cluster_key not in config.stash:  # kept: it holds the process it may restart
        from pytest_dbguard.server import EmbeddedCluster

        origin = json.loads(os.environ.get(ORIGIN_VAR) or "{}")
        root, bindir, port = origin.get("embedded_root"), origin.get("bindir"), plan.server_url.port
        reuse = config.stash[settings_key].reuse
        cluster = EmbeddedCluster(Path(bindir), Path(root), port or 5432, keep=reuse)
        config.stash[_worker_cluster_key] = cluster if root and bindir else None
    return config.stash[_worker_cluster_key]


def _fence(config: pytest.Config) -> RestartFence | None:
    """Only where it is needed: an xdist worker of several, faults in play, embedded server."""
    if _fence_key not in config.stash:
        plan = config.stash.get(plan_key, None)
        wanted = plan is not None and not plan.owns_server and proxy_key in config.stash
        cluster = _cluster_of(config) if wanted and _workers() > 1 else None
        config.stash[_fence_key] = RestartFence(cluster.root) if cluster is not None else None
    return config.stash[_fence_key]


@contextlib.contextmanager
def _fenced(config: pytest.Config) -> Iterator[None]:
    fence = _fence(config)
    with fence.shared() if fence is not None else contextlib.nullcontext():
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    # Not needed around session start: xdist sends no test before every worker has collected,
    # which is after each worker has provisioned its database.
    with _fenced(item.config):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, object, object]:
    with _fenced(session.config):  # with --dbguard-reuse each worker drops its database
        return (yield)


def faults_for(config: pytest.Config, **hooks: Callable[[str], NoReturn]) -> Faults:
    """A ``Faults`` on this process's test database; ``skip=`` and ``fail=`` as the fixture's."""
    plan, settings = config.stash[plan_key], config.stash[settings_key]
    return Faults(
        plan.test_url, plan.server_url, plan.database, config.stash.get(proxy_key, None),
        _cluster_of(config), _fence(config), _workers(), plan.schema is not None, settings.wait,
        plan.owns_server, **hooks,
    )  # fmt: skip


@pytest.fixture
def dbguard_faults(request: pytest.FixtureRequest) -> Iterator[Faults]:
    """Function: a ``Faults`` on this worker's database (PostgreSQL; skips what SQLite cannot do).
    Teardown undoes every fault: refusal and latency end, a restarted server answers again."""
    faults = faults_for(request.config, skip=pytest.skip, fail=pytest.fail)
    try:
        yield faults
    finally:
        for problem in faults.undo():
            message = f"dbguard_faults could not undo a fault: {problem}"
            request.node.warn(pytest.PytestWarning(message))
