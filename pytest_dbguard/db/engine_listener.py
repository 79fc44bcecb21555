"""One ``before_cursor_execute`` listener on every SQLAlchemy engine, installed on demand, and
the registry of the engines dbguard made itself.

The base of the statement guards (naive datetimes, query counts), of the connection guards
(test databases only, leaks) and of the run report's statement timer. SQLAlchemy is imported when a listener is installed, never when
this module is imported.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Dialect, Engine, ExecutionContext

# dbguard sets this execution option on its own engines: their statements are not checked or counted.
INTERNAL_OPTION: Final = "dbguard_internal"
STATEMENT_WIDTH: Final = 120


def one_line(statement: str, width: int = STATEMENT_WIDTH) -> str:
    """The statement on one line, whitespace collapsed, cut to ``width`` characters."""
    text = " ".join(statement.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# The dialects of the engines dbguard made (each engine has its own dialect, shared only with the
# engines derived from it by ``execution_options``). Connect-time and commit-time events see the
# dialect, not the engine: this is how they tell dbguard's own connections from the tests'. A
# process-wide registry of objects, not a setting: an entry goes away with its engine.
_OWN_DIALECTS: Final[weakref.WeakSet[Dialect]] = weakref.WeakSet()


def mark_own(engine: Engine) -> Engine:
    """Record ``engine`` (for an AsyncEngine, its ``sync_engine``) as dbguard's own; returns it."""
    _OWN_DIALECTS.add(engine.dialect)
    return engine


def is_own(dialect: Dialect) -> bool:
    """Whether ``dialect`` belongs to an engine dbguard made (maintenance, fixtures, cleanup)."""
    return dialect in _OWN_DIALECTS


_Listener = TypeVar("_Listener", bound="EngineListener")


class EngineListener:
    """A listener on every ``Engine``, installed and removed on demand: ``before_cursor_execute``
    for the statement guards, or another class-level event a subclass names in :attr:`EVENT`.

    One listener on the ``Engine`` class sees every engine, sync or behind an ``AsyncEngine``,
    existing or future; ``retval=True`` spares SQLAlchemy a wrapper call per statement.
    """

    EVENT: ClassVar[str] = "before_cursor_execute"  # a class-level event of ``Engine``
    RETVAL: ClassVar[bool] = True
    installed = False

    def __enter__(self: _Listener) -> _Listener:
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def install(self) -> None:
        """Start listening."""
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        if not self.installed:
            for name, handler, retval in self._events():
                event.listen(Engine, name, handler, retval=retval)
            self.installed = True

    def remove(self) -> None:
        """Stop listening (never installed: nothing to import, nothing to do)."""
        if self.installed:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            for name, handler, _ in self._events():
                event.remove(Engine, name, handler)
            self.installed = False

    def _events(self) -> list[tuple[str, Callable[..., Any], bool]]:
        """Each event listened to, with its handler and ``retval``: :attr:`EVENT` alone, unless a
        subclass needs a pair (the statement timer: before and after each statement)."""
        return [(self.EVENT, self._handler(), self.RETVAL)]

    def _handler(self) -> Callable[..., Any]:
        """What SQLAlchemy calls for :attr:`EVENT` (the statement hook, unless overridden)."""
        return self._listener

    def _listener(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> tuple[str, Any]:
        raise NotImplementedError
