"""Proving recovery: run ``SELECT 1`` through an engine, a connection factory or a callable until it works.

Works without pytest: ``recover`` and ``recover_async`` return a ``Recovery`` or call ``fail`` with
the attempts, the time spent and the last error (the password scrubbed out).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, NoReturn

from pytest_dbguard.exceptions import FaultError
from pytest_dbguard.server.connect_diagnosis import scrub
from pytest_dbguard.server.readiness import LOOPBACK_POLICY, MIN_ATTEMPT

if TYPE_CHECKING:
    import asyncio

NOT_RECOVERED: Final = (
    "{target} did not recover within {within:g} s: {what} failed {attempts} attempt(s) "
    "in {elapsed:.2f} s. Last error: {error}{hint}"
)
BAD_TARGET: Final = (
    "assert_recovers(): {target!r} is not an Engine, an AsyncEngine, a connection factory or a "
    "callable."
)
ASYNC_ENGINE_IN_LOOP: Final = (
    "assert_recovers(): {target!r} is an AsyncEngine, and this test's event loop is already "
    "running, so assert_recovers() cannot drive it. In an async test write: "
    "await dbguard_faults.assert_recovers_async(engine)"
)
ASYNC_CALLABLE: Final = (
    "assert_recovers(): {target!r} returned a coroutine: an async factory or callable needs "
    "await dbguard_faults.assert_recovers_async(...)"
)
FIRST_TRY_FAILED: Final = (
    "{target}: the first {what} after the fault failed ({error}), so your application's next "
    "request would fail too, although a retry may work. Make the first request succeed (e.g. "
    "create_engine(..., pool_pre_ping=True), or Django's CONN_HEALTH_CHECKS = True), or drop "
    "first_try=True if one failed request is acceptable.{hint}"
)


@dataclasses.dataclass(frozen=True)
class Recovery:
    """How a target came back: attempts (the last one worked), seconds, the first error seen."""

    attempts: int
    seconds: float
    first_error: str | None = None


def recover(
    target: Any,
    within: float,
    *,
    password: str | None,
    fail: Callable[[str], NoReturn],
    first_try: bool = False,
) -> Recovery:
    """``SELECT 1`` through ``target`` until it works; ``fail`` with the story when time is up.

    An AsyncEngine is driven on a loop of its own (and disposed after), when none is running.
    """
    __tracebackhide__ = True
    if hasattr(target, "sync_engine"):
        import asyncio

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            fail(ASYNC_ENGINE_IN_LOOP.format(target=target))
        return _run_on_a_private_loop(
            _recover_on_own_loop(target, within, password=password, fail=fail, first_try=first_try)
        )
    tries = Tries(within, target, first_try=first_try)
    while True:
        try:
            _select_one(target.connect() if hasattr(target, "pool") else tries.call())
            return tries.recovered()
        except Exception as error:
            pause = tries.failed(error, password)
        if pause is None:  # outside the except block: no chained traceback in the report
            fail(tries.report())
        time.sleep(pause)


def _run_on_a_private_loop(coroutine: Coroutine[Any, Any, Recovery]) -> Recovery:
    """``asyncio.run(coroutine)``, but on a loop never made the thread's current one: asyncio.run
    leaves the thread with none, and pytest-asyncio 0.24 takes the session loop from there for
    the next async test ("There is no current event loop in thread 'MainThread'"). Shut down as
    asyncio.run does: leftover tasks (a driver's cancel request after a timeout) cancelled and
    awaited, async generators and the default executor closed."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:  # gathered on this loop, not the thread's current one
                loop.run_until_complete(_settled(left))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


async def _settled(tasks: set[asyncio.Task[Any]]) -> None:
    import asyncio

    await asyncio.gather(*tasks, return_exceptions=True)


async def recover_async(
    target: Any,
    within: float,
    *,
    password: str | None,
    fail: Callable[[str], NoReturn],
    first_try: bool = False,
) -> Recovery:
    """:func:`recover` for async code: AsyncEngines and async connection factories."""
    __tracebackhide__ = True
    import asyncio

    tries = Tries(within, getattr(target, "connect", None) or target, first_try=first_try)
    while True:
        try:
            await asyncio.wait_for(_select_one_async(tries), max(tries.left(), MIN_ATTEMPT))
            return tries.recovered()
        except Exception as error:
            pause = tries.failed(error, password)
        if pause is None:
            fail(tries.report())
        await asyncio.sleep(pause)


async def _recover_on_own_loop(
    engine: Any,
    within: float,
    *,
    password: str | None,
    fail: Callable[[str], NoReturn],
    first_try: bool,
) -> Recovery:
    try:
        return await recover_async(
            engine, within, password=password, fail=fail, first_try=first_try
        )
    finally:
        with contextlib.suppress(Exception):  # its connections belong to a loop about to close
            await engine.dispose()


class Tries:
    """What the sync and async ``assert_recovers`` share: the target, the clock, the errors."""

    def __init__(self, within: float, target: Any, *, first_try: bool = False) -> None:
        if not isinstance(within, (int, float)) or not 0 < within < float("inf"):
            raise FaultError(f"assert_recovers(within=...) must be seconds > 0, got {within!r}.")
        if not callable(target) and not hasattr(target, "pool"):
            raise FaultError(BAD_TARGET.format(target=target))
        self.target, self.within, self.first_try = target, float(within), first_try
        self.started, self.attempts = time.monotonic(), 0
        self.first_error: str | None = None
        self.last_error = ""

    def call(self) -> Any:
        """What the factory or callable returns; a coroutine here means the async variant."""
        result = self.target()
        if inspect.iscoroutine(result):
            result.close()
            raise FaultError(ASYNC_CALLABLE.format(target=self.target))
        return result

    def left(self) -> float:
        return self.started + self.within - time.monotonic()

    def failed(self, error: BaseException, password: str | None) -> float | None:
        """Count a failed attempt: the pause before the next one, or None when time is up."""
        if isinstance(error, FaultError):
            raise error  # a misuse, not a failed attempt
        self.attempts += 1
        lines = str(error).strip().splitlines()
        self.last_error = scrub(f"{type(error).__name__}: {lines[0] if lines else ''}", password)
        self.first_error = self.first_error or self.last_error
        left = self.left()
        if left <= 0 or self.first_try:
            return None
        return min(LOOPBACK_POLICY.delay(self.attempts), left)

    def recovered(self) -> Recovery:
        return Recovery(
            self.attempts + 1, round(time.monotonic() - self.started, 3), self.first_error
        )

    def report(self) -> str:
        owner = getattr(self.target, "__self__", None)  # an AsyncEngine's connect
        target = owner if hasattr(owner, "sync_engine") else self.target
        engine = hasattr(target, "pool") or hasattr(target, "sync_engine")
        if not engine:  # engines hide the password
            target = getattr(target, "__qualname__", None) or repr(target)
        elapsed, error = time.monotonic() - self.started, self.last_error
        # What each attempt ran: SELECT 1 through an engine (or a Django connection), else a
        # call of the callable (an ORM query, a factory whose connection then runs SELECT 1).
        what = getattr(self.target, "recovery_attempt", None) or ("SELECT 1" if engine else "call")
        explain = getattr(self.target, "recovery_hint", None)
        hint = explain() if callable(explain) else ""
        if self.first_try:
            return FIRST_TRY_FAILED.format(target=target, what=what, error=error, hint=hint)
        return NOT_RECOVERED.format(
            target=target,
            what=what,
            within=self.within,
            attempts=self.attempts,
            elapsed=elapsed,
            error=error,
            hint=hint,
        )


def _select_one(connection: Any) -> None:
    """``SELECT 1`` on a connection, then close it; anything else a callable returns passes."""
    if hasattr(connection, "exec_driver_sql"):  # SQLAlchemy Connection
        with connection:
            connection.exec_driver_sql("SELECT 1").scalar()
    elif hasattr(connection, "cursor") and hasattr(connection, "close"):  # DBAPI connection
        try:
            connection.cursor().execute("SELECT 1")
        finally:
            connection.close()


async def _select_one_async(tries: Tries) -> None:
    result = tries.target()
    if inspect.isawaitable(result):
        result = await result
    # asyncpg's fetchval, or the statement method of SQLAlchemy's or psycopg's async connection
    names = ("fetchval", "exec_driver_sql", "execute")
    run = next((getattr(result, name) for name in names if hasattr(result, name)), None)
    if not inspect.iscoroutinefunction(run):
        return _select_one(result)  # a sync connection, or what a plain callable returned
    try:
        await run("SELECT 1")
    finally:
        await result.close()
