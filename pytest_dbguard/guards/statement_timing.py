"""Timing the statements each test runs, for the run report (``--dbguard-report``).

``StatementTimer`` works without pytest. Installed, it listens to ``before_cursor_execute`` and
``after_cursor_execute`` on the ``Engine`` class (so every engine, sync or behind an
``AsyncEngine``); Django's statements come through ``record`` from dbguard's execute wrapper.
Between ``begin`` and ``end`` it counts the test's statements (dbguard's own and the transaction
bookkeeping left out, as ``dbguard_queries`` counts them), sums their time and keeps the
slowest few of the test and of the run. A statement's text is kept as the driver got it, which
holds placeholders, not parameter values; ``normalise`` also replaces the literals written into
it before anything leaves this object. The parameters are never looked at.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import re
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from pytest_dbguard.db.engine_listener import INTERNAL_OPTION, EngineListener
from pytest_dbguard.guards.query_counter import BOOKKEEPING

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Connection

SQL_WIDTH: Final = 1000  # a normalised statement is cut after this many characters
BOOKKEEPING_CACHE: Final = 4096  # statement texts remembered as bookkeeping or not
PLACEHOLDER: Final = "?"

# One pass over the text, left to right: at each position the first alternative that matches
# wins, so a quote inside a comment or an identifier never starts a string, and a string's text
# is never read as a number or a placeholder.
_TOKENS: Final = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<ident>"(?:[^"]|"")*")
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*|)\$.*?(?:\$(?P=tag)\$|\Z))
    | (?P<escaped>(?<![\w$])[Ee]'(?:\\.|''|[^'\\])*(?:'|\Z))
    | (?P<string>(?:(?<![\w$])(?:[BbXxNn]|[Uu]&))?'(?:''|[^'])*(?:'|\Z))
    | (?P<percent>%%)
    | (?P<param>%\([^)]*\)s|%s|\$\d+|(?<![:\w]):[A-Za-z_]\w*|\?)
    | (?P<number>(?<![\w$.])(?:\d+(?:\.\d*)?|\.\d+)(?:[Ee][+-]?\d+)?(?![\w$]))
    """,
    re.DOTALL | re.VERBOSE,
)


# After the values are gone: an IN list or ARRAY of one placeholder and a run of the same
# parenthesised group (the rows of a multi-row VALUES) are shown once, so that one statement
# sent with 3 or with 50 values reads the same. A function's arguments are left as they are.
_REPEATED_ITEM: Final = re.compile(
    r"(?i)(\bIN \(|\bARRAY\[)(\?(?:::[A-Za-z_][\w ]*?)?)(?:, \2)+(?=[)\]])"
)
_REPEATED_GROUP: Final = re.compile(r"(\([^()]*\))(?:, \1)+")
LIST_TAIL: Final = ", …"


def _replace(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind == "ident":
        return match.group()  # a quoted name is a name, not a value
    if kind == "percent":
        return "%"  # the pyformat drivers' escaped %
    return " " if kind == "comment" else PLACEHOLDER


@functools.lru_cache(maxsize=2048)
def normalise(statement: str, width: int = SQL_WIDTH) -> str:
    """The statement's shape: every literal (strings, dollar-quoted strings, numbers) and every
    placeholder (``%(name)s``, ``%s``, ``$1``, ``:name``, ``?``) becomes ``?``, comments are
    dropped, whitespace is collapsed, repeated list items and VALUES rows are shown once
    (``IN (?, …)``), and the text is cut to ``width`` characters. An unterminated string or
    comment is replaced up to the end, so no value can slip through."""
    text = " ".join(_TOKENS.sub(_replace, statement).split())
    text = _REPEATED_ITEM.sub(r"\1\2" + LIST_TAIL, text)
    text = _REPEATED_GROUP.sub(r"\1" + LIST_TAIL, text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_bookkeeping(statement: str) -> bool:
    return statement.lstrip()[:9].upper().startswith(BOOKKEEPING)


@dataclasses.dataclass
class TestTiming:
    """One test's statements: how many, their total time, the slowest (normalised SQL, ms)."""

    nodeid: str
    statements: int = 0
    database_ms: float = 0.0
    slowest: list[tuple[str, float]] = dataclasses.field(default_factory=list)


class StatementTimer(EngineListener):
    """Times every engine's statements (and Django's, through ``record``) test by test."""

    def __init__(self, per_test: int = 5, per_run: int = 20) -> None:
        self.per_test = per_test
        self.per_run = per_run
        self._nodeid: str | None = None  # the test being timed; None between tests
        self._count = 0
        self._total = 0.0
        self._test_heap: list[tuple[float, int, str]] = []  # (ms, order, raw SQL), smallest first
        self._run_heap: list[tuple[float, int, str, str]] = []  # (ms, order, raw SQL, test id)
        self._order = itertools.count()
        self._started: dict[int, float] = {}  # id(cursor) -> perf_counter() at its statement
        # Statement text -> whether it is transaction bookkeeping; bounded, as texts can vary.
        self._bookkeeping: dict[str, bool] = {}

    def _events(self) -> list[tuple[str, Callable[..., Any], bool]]:
        return [
            ("before_cursor_execute", self._before, True),
            ("after_cursor_execute", self._after, False),
        ]

    def begin(self, nodeid: str) -> None:
        """Start timing the statements of test ``nodeid``."""
        if len(self._bookkeeping) > BOOKKEEPING_CACHE:
            self._bookkeeping.clear()
        self._nodeid = nodeid
        self._count, self._total = 0, 0.0
        self._test_heap = []
        self._started.clear()

    def end(self) -> TestTiming:
        """Stop timing the current test; what it ran. Statements that raised count, untimed."""
        timing = TestTiming(
            self._nodeid or "",
            statements=self._count + len(self._started),
            database_ms=self._total,
            slowest=[(normalise(sql), ms) for ms, _, sql in sorted(self._test_heap, reverse=True)],
        )
        self._nodeid = None
        self._started.clear()
        return timing

    def run_slowest(self) -> list[tuple[str, float, str]]:
        """The run's slowest statements so far, slowest first: (normalised SQL, ms, test id)."""
        return [
            (normalise(sql), ms, nodeid)
            for ms, _, sql, nodeid in sorted(self._run_heap, reverse=True)
        ]

    def record(self, statement: str, ms: float) -> None:
        """One statement of the current test that took ``ms`` (Django's execute wrapper)."""
        if self._nodeid is not None and not _is_bookkeeping(statement):
            self._add(statement, ms)

    def _add(self, statement: str, ms: float) -> None:
        nodeid = self._nodeid
        if nodeid is None:
            return
        self._count += 1
        self._total += ms
        if len(self._test_heap) < self.per_test:
            heapq.heappush(self._test_heap, (ms, next(self._order), statement))
        elif ms > self._test_heap[0][0]:
            heapq.heapreplace(self._test_heap, (ms, next(self._order), statement))
        if len(self._run_heap) < self.per_run:
            heapq.heappush(self._run_heap, (ms, next(self._order), statement, nodeid))
        elif ms > self._run_heap[0][0]:
            heapq.heapreplace(self._run_heap, (ms, next(self._order), statement, nodeid))

    def _before(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> tuple[str, Any]:
        if self._nodeid is not None:
            options = (
                context.execution_options if context is not None else conn.get_execution_options()
            )
            if not options.get(INTERNAL_OPTION):
                bookkeeping = self._bookkeeping.get(statement)
                if bookkeeping is None:  # once per statement text: SQLAlchemy reuses the strings
                    bookkeeping = self._bookkeeping[statement] = _is_bookkeeping(statement)
                if not bookkeeping:
                    # Keyed by the cursor: async connections of one test may interleave statements.
                    self._started[id(cursor)] = perf_counter()
        return statement, parameters

    def _after(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        started = self._started.pop(id(cursor), None)
        if started is not None:
            self._add(statement, (perf_counter() - started) * 1000)
