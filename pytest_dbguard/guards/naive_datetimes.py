"""Naive datetimes bound where a time zone matters: found on every engine, reported or refused.

A naive value is reported when it meets a timezone-aware type (``DateTime(timezone=True)``,
``timestamptz``), as a column's value or in a comparison, and when the statement gives no type
at all (``text()`` without typed parameters, ``exec_driver_sql``): there it may meet a
``timestamptz`` column, and typing the parameter says it does not. A ``timestamp without time
zone`` (``DateTime()``) parameter is left alone: storing naive UTC there is a design choice.
"""

from __future__ import annotations

import datetime
import re
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from pytest_dbguard.db.engine_listener import INTERNAL_OPTION, EngineListener, one_line
from pytest_dbguard.exceptions import GuardError, NaiveDatetimeError, NaiveDatetimeWarning
from pytest_dbguard.guards.naive_origins import (
    Assignments,
    Place,
    column_zone,
    is_naive,
    stays_naive,
    user_place,
)

NAIVE_MESSAGE: Final = (
    "naive datetime bound as {params} of {statement!r} during {where}; bind an aware datetime "
    "(e.g. datetime.now(timezone.utc)){untyped} or set dbguard_naive_datetime "
    "(--dbguard-naive-datetime) to {other}."
)
UNTYPED_HINT: Final = (
    ", type the parameter if it meets a timestamp without time zone "
    "(text(...).bindparams(bindparam({name!r}, type_=DateTime()))),"
)
UNKNOWN_TYPE: Final = "type unknown"
_EXPANDED: Final = r"_\d+$"  # at_2_1, at_2_2: the values of expanding bind at_2 (as text:
# re compiles it on first use, not in every run's import)
_DATETIME: Final = datetime.datetime
_TIMEZONE: Final = datetime.timezone  # always has an offset: no utcoffset() call needed
_LOOKED_INTO: Final = (datetime.datetime, list, tuple)  # what may be or hold a naive datetime


class NaiveDatetimeGuard(EngineListener):
    """Reports naive datetimes bound on any engine: a warning (``warn``) or an error (``error``)."""

    def __init__(self, mode: str = "warn", *, where: object = "the guarded code") -> None:
        if mode not in ("warn", "error"):
            raise GuardError(f"NaiveDatetimeGuard mode {mode!r}: choose 'warn' or 'error'.")
        self.mode = mode
        self.where = where  # the test running now (its str() is used), named in every report
        self.reports: list[str] = []
        self.assignments = Assignments()
        self._last_many: weakref.ref[Any] | None = None
        self._single: Any = None  # SQLAlchemy's ExecuteStyle.EXECUTE, once installed

    def install(self) -> None:
        """Start listening to every engine, and to mapped classes once the ORM is imported."""
        from sqlalchemy.engine.interfaces import ExecuteStyle

        self._single = ExecuteStyle.EXECUTE
        super().install()
        self.watch_models()

    def remove(self) -> None:
        """Stop listening."""
        super().remove()
        self.assignments.remove()

    def watch_models(self) -> None:
        """Name attributes and lines of ORM assignments, once something imported the ORM."""
        if self.installed and not self.assignments.installed and "sqlalchemy.orm" in sys.modules:
            self.assignments.install()

    def _events(self) -> list[tuple[str, Callable[..., Any], bool]]:
        # The dialect's execute events, not the connection's before_cursor_execute: any
        # connection-level listener sends every statement of every engine through SQLAlchemy's
        # whole event path (before/after execute, before/after cursor execute, each transaction
        # step), about 15 % more instructions per test in a plain ORM suite (benchmarks/ci_path.py).
        return [
            ("do_execute", self._on_execute, False),
            ("do_executemany", self._on_execute, False),
        ]

    def _on_execute(self, cursor: Any, statement: str, parameters: Any, context: Any) -> None:
        """Scan a statement's values just before the driver gets them; None lets it go ahead.

        Every statement of every test comes here: its values are looked at inline, and only a
        statement that binds a datetime, a list or a tuple pays for a call to ``naive_values``
        (and only one that binds a naive datetime for ``_report_found``)."""
        __tracebackhide__ = True
        if context is None:  # a driver-level statement of SQLAlchemy's own
            self._scan(statement, (parameters,), None)
            return
        if context.execution_options.get(INTERNAL_OPTION):
            return
        many = context.execute_style is not self._single  # not the executemany property: a call
        if many:
            # insertmanyvalues sends one context's rows in several batches: scan them once.
            if self._last_many is not None and self._last_many() is context:
                return
            self._last_many = weakref.ref(context)
        # Compiled parameters hold the values before type processing (SQLite turns datetimes
        # into text) and include Python-side defaults such as ``default=datetime.utcnow``.
        compiled = context.compiled
        if compiled is not None:
            parameter_sets = context.compiled_parameters
        else:
            parameter_sets = parameters if many else (parameters,)
        for params in parameter_sets:
            if params:
                for value in params.values() if isinstance(params, dict) else params:
                    if isinstance(value, _LOOKED_INTO):
                        found = naive_values(parameter_sets)
                        if found:
                            self._report_found(statement, found, compiled)
                        return

    def _scan(self, statement: str, parameter_sets: Iterable[Any], compiled: Any) -> None:
        __tracebackhide__ = True
        found = naive_values(parameter_sets)
        if found:
            self._report_found(statement, found, compiled)

    def _report_found(
        self, statement: str, found: dict[str, datetime.datetime], compiled: Any
    ) -> None:
        """Report the naive values ``found`` that are wrong where they go (a ``timestamptz``, or
        an unknown type); a ``timestamp without time zone`` stores naive values on purpose."""
        __tracebackhide__ = True
        described: list[str] = []
        untyped: list[str] = []
        place: Place | None = None
        for name, value in found.items():
            type_ = None if compiled is None else _bind_type(compiled, name)
            zone = None if type_ is None else column_zone(type_)
            if zone is False:
                continue  # a timestamp without time zone: naive on purpose
            if type_ is not None and not stays_naive(type_, value, compiled.dialect):
                continue  # a TypeDecorator that adds the time zone itself
            attribute = _column_attribute(compiled, name, self.assignments.attributes)
            origin = self.assignments.origin(value) if attribute else None
            if origin is not None and origin.key == attribute.rpartition(".")[2]:
                described.append(f"{name!r} ({origin})")
                place = place or origin.place
            elif zone is None:
                described.append(f"{name!r} ({UNKNOWN_TYPE})")
                untyped.append(name)
            else:  # compared with a timestamptz, or written by a Core statement
                described.append(f"{name!r} ({attribute})" if attribute else repr(name))
        if described:
            self.report(statement, described, untyped=untyped, place=place)

    def report(
        self,
        statement: str,
        names: Sequence[str],
        *,
        untyped: Sequence[str] = (),
        place: Place | None = None,
    ) -> None:
        """Warn about, or raise on, one statement that binds naive datetimes.

        ``names`` are the parameters as shown (``'at' (Event.at, set at test_x.py:7)``);
        ``untyped`` those without a type; the warning points at ``place``, else the user's line
        that ran the statement.
        """
        __tracebackhide__ = True
        message = NAIVE_MESSAGE.format(
            params=("parameters " if len(names) > 1 else "parameter ") + ", ".join(names),
            statement=one_line(statement),
            where=self.where,
            untyped=UNTYPED_HINT.format(name=untyped[0]) if untyped else "",
            other="off" if self.mode == "warn" else "warn or off",
        )
        self.reports.append(message)
        if self.mode == "error":
            raise NaiveDatetimeError(message)
        place = place or user_place(sys._getframe(1))
        if place is None:
            warnings.warn(NaiveDatetimeWarning(message), stacklevel=2)
            return
        warnings.warn_explicit(
            NaiveDatetimeWarning(message),
            NaiveDatetimeWarning,
            place.filename,
            place.lineno,
            module=str(place.module_globals.get("__name__", "")),
            registry=place.module_globals.setdefault("__warningregistry__", {}),
            module_globals=place.module_globals,
        )


def _bind_type(compiled: Any, name: str) -> Any:
    """The SQLAlchemy type of bound parameter ``name``; None when the statement has no such bind."""
    bind = compiled.binds.get(name)
    if bind is None:
        bind = compiled.binds.get(re.sub(_EXPANDED, "", name))
        if bind is None or not bind.expanding:
            return None
    return bind.type


def _column_attribute(compiled: Any, name: str, attributes: dict[tuple[str, str], str]) -> str:
    """``Event.at`` (or ``events.at``) for a value an INSERT or UPDATE writes; else ``""``."""
    table = getattr(compiled.statement, "table", None) if compiled is not None else None
    if table is None or not (compiled.isinsert or compiled.isupdate):
        return ""
    columns = getattr(table, "c", {})
    for key in (name, re.sub(r"_m\d+$", "", name)):
        if key in columns:
            return attributes.get((table.fullname, key)) or f"{table.name}.{key}"
    return ""


def naive_values(parameter_sets: Iterable[Any]) -> dict[str, datetime.datetime]:
    """The first naive datetime of each parameter (``#position`` when unnamed), one level into lists."""
    found: dict[str, datetime.datetime] = {}
    for params in parameter_sets:
        if not params:
            continue
        for key, value in params.items() if isinstance(params, dict) else enumerate(params, 1):
            if isinstance(value, _DATETIME):
                tz = value.tzinfo  # inlined is_naive: this loop runs for every statement
                if tz is not None and (type(tz) is _TIMEZONE or value.utcoffset() is not None):
                    continue
            elif type(value) not in (list, tuple):
                continue
            else:
                value = next((i for i in value if isinstance(i, _DATETIME) and is_naive(i)), None)
                if value is None:
                    continue
            name = key if isinstance(key, str) else f"#{key}"
            if name not in found:
                found[name] = value
    return found


def naive_parameters(parameter_sets: Iterable[Any]) -> list[str]:
    """Names (or ``#position``) of the parameters holding a naive datetime, one level into lists."""
    return list(naive_values(parameter_sets))
