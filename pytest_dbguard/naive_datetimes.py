"""Naive datetimes bound as statement parameters: found on every engine, reported or refused."""

from __future__ import annotations

import datetime
import sys
import warnings
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from pytest_dbguard.engine_listener import INTERNAL_OPTION, EngineListener, one_line
from pytest_dbguard.exceptions import GuardError, NaiveDatetimeError, NaiveDatetimeWarning

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

NAIVE_MESSAGE: Final = (
    "naive datetime bound as {params} of {statement!r} during {where}; bind an aware datetime "
    "(e.g. datetime.now(timezone.utc)) or set dbguard_naive_datetime (--dbguard-naive-datetime) "
    "to {other}."
)


class NaiveDatetimeGuard(EngineListener):
    """Reports naive datetimes bound on any engine: a warning (``warn``) or an error (``error``)."""

    def __init__(self, mode: str = "warn", *, where: str = "the guarded code") -> None:
        if mode not in ("warn", "error"):
            raise GuardError(f"NaiveDatetimeGuard mode {mode!r}: choose 'warn' or 'error'.")
        self.mode = mode
        self.where = where  # the test running now, named in every report
        self.reports: list[str] = []
        self._last_many: weakref.ref[Any] | None = None

    def _listener(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> tuple[str, Any]:
        __tracebackhide__ = True
        if context is None:
            if not conn.get_execution_options().get(INTERNAL_OPTION):
                self._scan(statement, parameters if executemany else (parameters,))
        elif not context.execution_options.get(INTERNAL_OPTION):
            if executemany:
                # insertmanyvalues sends one context's rows in several batches: scan them once.
                if self._last_many is not None and self._last_many() is context:
                    return statement, parameters
                self._last_many = weakref.ref(context)
            # Compiled parameters hold the values before type processing (SQLite turns datetimes
            # into text) and include Python-side defaults such as ``default=datetime.utcnow``.
            if context.compiled is not None:
                self._scan(statement, context.compiled_parameters)
            else:
                self._scan(statement, parameters if executemany else (parameters,))
        return statement, parameters

    def _scan(self, statement: str, parameter_sets: Iterable[Any]) -> None:
        __tracebackhide__ = True
        names = naive_parameters(parameter_sets)
        if names:
            self.report(statement, names)

    def report(self, statement: str, names: Sequence[str]) -> None:
        """Warn about, or raise on, one statement that binds naive datetimes."""
        __tracebackhide__ = True
        params = ", ".join(repr(name) for name in names)
        message = NAIVE_MESSAGE.format(
            params=("parameters " if len(names) > 1 else "parameter ") + params,
            statement=one_line(statement),
            where=self.where,
            other="off" if self.mode == "warn" else "warn or off",
        )
        self.reports.append(message)
        if self.mode == "error":
            raise NaiveDatetimeError(message)
        warnings.warn(NaiveDatetimeWarning(message), stacklevel=_caller_level())


_DATETIME: Final = datetime.datetime
_TIMEZONE: Final = datetime.timezone  # always has an offset: no utcoffset() call needed


def _is_naive(value: datetime.datetime) -> bool:
    tz = value.tzinfo
    return tz is None or (type(tz) is not _TIMEZONE and value.utcoffset() is None)


def naive_parameters(parameter_sets: Iterable[Any]) -> list[str]:
    """Names (or ``#position``) of the parameters holding a naive datetime, one level into lists."""
    found: list[str] = []
    for params in parameter_sets:
        if not params:
            continue
        for key, value in params.items() if isinstance(params, dict) else enumerate(params, 1):
            if isinstance(value, _DATETIME):
                tz = value.tzinfo  # inlined _is_naive: this loop runs for every statement
                if tz is not None and (type(tz) is _TIMEZONE or value.utcoffset() is not None):
                    continue
            elif type(value) not in (list, tuple) or not any(
                isinstance(item, _DATETIME) and _is_naive(item) for item in value
            ):
                continue
            name = key if isinstance(key, str) else f"#{key}"
            if name not in found:
                found.append(name)
    return found


def _caller_level() -> int:
    """``stacklevel`` pointing at the first frame outside SQLAlchemy, dbguard and asyncio."""
    frame, level = sys._getframe(2), 2
    while frame is not None:
        module = str(frame.f_globals.get("__name__", "")).partition(".")[0]
        if module not in ("sqlalchemy", "pytest_dbguard", "asyncio", "greenlet", "contextlib"):
            return level
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return 2
