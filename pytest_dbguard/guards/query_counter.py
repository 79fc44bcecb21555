"""Counting the statements every engine runs: ``QueryCounter`` and its count checks."""

from __future__ import annotations

import dis
import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_dbguard.db.engine_listener import INTERNAL_OPTION, EngineListener, one_line

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

# First words of transaction bookkeeping, which the rollback isolation emits around every test.
BOOKKEEPING: Final = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
# The opcode right after the call in ``with counter.assert_max(n):``: 3.10, then 3.11 to 3.13.
_WITH_OPCODES: Final = frozenset({"SETUP_WITH", "BEFORE_WITH"})


class QueryCounter(EngineListener):
    """Records the statements every engine runs while entered, minus dbguard's and bookkeeping."""

    def __init__(self) -> None:
        self._statements: list[str] = []

    def _listener(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> tuple[str, Any]:
        options = context.execution_options if context is not None else conn.get_execution_options()
        if not options.get(INTERNAL_OPTION):
            self.record(statement)
        return statement, parameters

    def record(self, statement: str) -> None:
        """Count a statement run outside SQLAlchemy (Django's ORM); bookkeeping is left out."""
        if not statement.lstrip()[:9].upper().startswith(BOOKKEEPING):
            self._statements.append(statement)

    @property
    def count(self) -> int:
        """How many statements ran so far."""
        return len(self._statements)

    @property
    def statements(self) -> list[str]:
        """The SQL text of each statement so far, in order."""
        return list(self._statements)

    def assert_count(self, expected: int) -> CountCheck:
        """Fail unless exactly ``expected`` statements ran (so far, or inside a ``with`` block)."""
        __tracebackhide__ = True
        return self._check(expected, exact=True, caller=sys._getframe(1))

    def assert_max(self, expected: int) -> CountCheck:
        """Fail if more than ``expected`` statements ran (so far, or inside a ``with`` block)."""
        __tracebackhide__ = True
        return self._check(expected, exact=False, caller=sys._getframe(1))

    def _check(self, expected: int, *, exact: bool, caller: types.FrameType) -> CountCheck:
        __tracebackhide__ = True
        check = CountCheck(self._statements, expected, exact=exact)
        if not _called_by_with(caller):
            check.verify(self._statements, "")
        return check


class CountCheck:
    """What ``assert_count``/``assert_max`` return; as a context manager, checks only its block."""

    def __init__(self, statements: list[str], expected: int, *, exact: bool) -> None:
        self._statements = statements
        self._start = len(statements)
        self.expected = expected
        self.exact = exact

    def __enter__(self) -> CountCheck:
        self._start = len(self._statements)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        __tracebackhide__ = True
        if exc_type is None:  # never hide the block's own error behind a count
            self.verify(self._statements[self._start :], " inside the block")

    def verify(self, ran: Sequence[str], scope: str) -> None:
        """Fail the test, listing the statements, unless ``ran`` meets the expectation."""
        __tracebackhide__ = True
        if len(ran) == self.expected or (not self.exact and len(ran) < self.expected):
            return
        bound = "" if self.exact else "at most "
        lines = [f"  {number}. {one_line(sql, 300)}" for number, sql in enumerate(ran, 1)]
        listing = ":\n" + "\n".join(lines) if lines else "."
        pytest.fail(f"expected {bound}{self.expected} statements{scope}, {len(ran)} ran{listing}")


def _called_by_with(frame: types.FrameType) -> bool:
    """Whether the call just made from ``frame`` is the context expression of a ``with``."""
    following = [i.opname for i in dis.get_instructions(frame.f_code) if i.offset > frame.f_lasti]
    if following[:1] and following[0] in _WITH_OPCODES:
        return True
    return following[:2] == ["COPY", "LOAD_SPECIAL"]  # 3.14
