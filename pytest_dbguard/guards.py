"""Guards: naive datetimes bound as parameters, modules hidden from a test, statement counts.

Each guard is a class that works without pytest (``NaiveDatetimeGuard``, ``HiddenModules``,
``QueryCounter``); the hooks and the ``dbguard_queries`` fixture below only wire them in.
SQLAlchemy is imported when a guard is installed, never at import time.
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import datetime
import dis
import importlib
import importlib.util
import os
import sys
import types
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import pytest

from pytest_dbguard import config as dbguard_config
from pytest_dbguard.exceptions import GuardError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, ExecutionContext

# The core sets this execution option on its own engines: not checked, not counted.
INTERNAL_OPTION: Final = "dbguard_internal"
# First words of transaction bookkeeping, which the rollback isolation emits around every test.
BOOKKEEPING: Final = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
STATEMENT_WIDTH: Final = 120
NAIVE_MESSAGE: Final = (
    "naive datetime bound as {params} of {statement!r} during {where}; bind an aware datetime "
    "(e.g. datetime.now(timezone.utc)) or set dbguard_naive_datetime (--dbguard-naive-datetime) "
    "to {other}."
)
SWALLOWED_MESSAGE: Final = (
    "dbguard_naive_datetime = error: {count} statement(s) with a naive datetime were aborted, "
    "and the code under test caught the error:\n{reports}"
)
HIDDEN_MESSAGE: Final = (
    "No module named {name!r} (hidden by @pytest.mark.dbguard_without in {where})"
)
UNKNOWN_MODULE_MESSAGE: Final = (
    "{where}: @pytest.mark.dbguard_without({name!r}) names a module that is not installed, so "
    "hiding it proves nothing; check the spelling (importlib.util.find_spec({name!r}) is None)."
)
UTCNOW_MARK: Final = "utcnow()"
# The opcode right after the call in ``with counter.assert_max(n):``: 3.10, then 3.11 to 3.13.
_WITH_OPCODES: Final = frozenset({"SETUP_WITH", "BEFORE_WITH"})


class GuardWarning(pytest.PytestWarning):
    """Base of the warnings dbguard's guards attach to a test."""


class NaiveDatetimeWarning(GuardWarning):
    """A naive datetime was bound as a statement parameter (``dbguard_naive_datetime = warn``)."""


class NaiveDatetimeError(GuardError):
    """A naive datetime was bound as a statement parameter (``dbguard_naive_datetime = error``)."""


def one_line(statement: str, width: int = STATEMENT_WIDTH) -> str:
    """The statement on one line, whitespace collapsed, cut to ``width`` characters."""
    text = " ".join(statement.split())
    return text if len(text) <= width else text[: width - 1] + "…"


_Listener = TypeVar("_Listener", bound="_EngineListener")


class _EngineListener:
    """A ``before_cursor_execute`` listener on every ``Engine``, installed and removed on demand.

    One listener on the ``Engine`` class sees every engine, sync or behind an ``AsyncEngine``,
    existing or future; ``retval=True`` spares SQLAlchemy a wrapper call per statement.
    """

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
            event.listen(Engine, "before_cursor_execute", self._listener, retval=True)
            self.installed = True

    def remove(self) -> None:
        """Stop listening."""
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        if self.installed:
            event.remove(Engine, "before_cursor_execute", self._listener)
            self.installed = False

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


class NaiveDatetimeGuard(_EngineListener):
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


class QueryCounter(_EngineListener):
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
        if not options.get(INTERNAL_OPTION) and not statement.lstrip()[:9].upper().startswith(
            BOOKKEEPING
        ):
            self._statements.append(statement)
        return statement, parameters

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


class HiddenModules:
    """While entered, ``names`` and their submodules cannot be imported, as if not installed.

    Hides them from ``sys.modules`` and from the packages that stay, refuses them with a
    ``sys.meta_path`` finder placed first, and makes ``importlib.util.find_spec`` answer None.
    On exit everything is put back. Modules first imported inside that saw a hidden module missing,
    directly or through another such module, are dropped so the next import sees the real
    package; modules reloaded inside are reloaded again. Other new modules stay: dropping them
    would leave two copies of their classes.
    """

    def __init__(self, names: Iterable[str], *, where: str = "this block") -> None:
        self.names = tuple(names)
        self.where = where
        self._prefixes = tuple(name + "." for name in self.names)
        self._before: dict[str, types.ModuleType] = {}
        self._hidden: dict[str, types.ModuleType] = {}
        self._detached: list[tuple[types.ModuleType, str, types.ModuleType]] = []
        self._tainted: set[str] = set()  # new modules that saw a hidden module missing
        self._reloaded: dict[str, types.ModuleType] = {}
        self._find_spec: Callable[..., Any] = importlib.util.find_spec
        self._import: Callable[..., Any] = builtins.__import__

    def hides(self, fullname: str) -> bool:
        """Whether ``fullname`` is one of the hidden modules or below one."""
        return fullname in self.names or fullname.startswith(self._prefixes)

    def __enter__(self) -> HiddenModules:
        self._before = dict(sys.modules)
        self._hidden = {name: sys.modules.pop(name) for name in self._before if self.hides(name)}
        for name, module in self._hidden.items():
            parent_name, _, child = name.rpartition(".")
            parent = sys.modules.get(parent_name)
            if parent is not None and getattr(parent, child, None) is module:
                delattr(parent, child)
                self._detached.append((parent, child, module))
        self._find_spec, importlib.util.find_spec = importlib.util.find_spec, self._util_find_spec
        self._import, builtins.__import__ = builtins.__import__, self._tracking_import
        sys.meta_path.insert(0, self)
        return self

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        """Meta path hook: refuse hidden modules, let every other import through."""
        if self.hides(fullname):
            self._note_dependants()
            message = HIDDEN_MESSAGE.format(name=fullname, where=self.where)
            raise ModuleNotFoundError(message, name=fullname)

    def _util_find_spec(self, name: str, package: str | None = None) -> Any:
        fullname = importlib.util.resolve_name(name, package) if name.startswith(".") else name
        if self.hides(fullname):
            self._note_dependants()
            return None
        return self._find_spec(name, package)

    def _tracking_import(
        self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        module = self._import(name, globals, locals, fromlist, level)
        importer = str(globals.get("__name__")) if isinstance(globals, dict) else ""
        if (self._tainted or self._reloaded) and self._is_new(importer):
            if level:  # relative imports always have a fromlist: ``module`` is the one named
                name = getattr(module, "__name__", name)
            targets = [name] + [f"{name}.{item}" for item in fromlist or ()]
            if any(target in self._tainted or target in self._reloaded for target in targets):
                self._tainted.add(importer)
        return module

    def _is_new(self, name: str) -> bool:
        return self._before.get(name) is not sys.modules.get(name)

    def _note_dependants(self) -> None:
        """Remember the modules being imported or reloaded now: they saw a hidden module missing."""
        frame: types.FrameType | None = sys._getframe(2)
        while frame is not None:
            if frame.f_code is importlib.reload.__code__:
                module = frame.f_locals.get("module")
                if isinstance(module, types.ModuleType) and not self._is_new(module.__name__):
                    self._reloaded[module.__name__] = module
            elif frame.f_code.co_name == "<module>":
                name = str(frame.f_globals.get("__name__"))
                module = sys.modules.get(name)
                if self._is_new(name) and getattr(module, "__dict__", None) is frame.f_globals:
                    self._tainted.add(name)
            frame = frame.f_back

    def __exit__(self, *exc_info: object) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        importlib.util.find_spec, builtins.__import__ = self._find_spec, self._import
        for name in [name for name in sys.modules if self.hides(name)]:
            del sys.modules[name]
        sys.modules.update(self._hidden)
        for parent, child, module in self._detached:
            setattr(parent, child, module)
        for name in self._tainted:
            self._restore(name)
        failures = []
        for module in self._reloaded.values():
            try:
                importlib.reload(module)
            except Exception as error:
                failures.append(f"{module.__name__}: {type(error).__name__}: {error}")
        self._hidden, self._detached, self._tainted, self._reloaded = {}, [], set(), {}
        if failures:
            warnings.warn(
                GuardWarning(
                    f"dbguard_without in {self.where}: reloading these modules with the hidden "
                    f"ones back failed; they keep the state they had inside: {'; '.join(failures)}"
                ),
                stacklevel=2,
            )

    def _restore(self, name: str) -> None:
        """Put back what ``sys.modules`` and the parent package held for ``name`` before."""
        new, old = sys.modules.pop(name, None), self._before.get(name)
        if old is not None:
            sys.modules[name] = old
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules.get(parent_name)
        if parent is not None and new is not None and getattr(parent, child, None) is new:
            if old is not None:
                setattr(parent, child, old)
            else:
                delattr(parent, child)


# pytest wiring.


@dataclasses.dataclass
class _GuardState:
    """Per-run state of the guards, kept in ``config.stash``."""

    naive_mode: str
    naive: NaiveDatetimeGuard | None = None
    utcnow: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


_state_key: Final = pytest.StashKey[_GuardState]()
_hidden_key: Final = pytest.StashKey[HiddenModules]()


def _state(config: pytest.Config) -> _GuardState:
    state = config.stash.get(_state_key, None)
    if state is None:
        settings = config.stash.get(dbguard_config.settings_key, None)
        mode = settings.naive_datetime if settings is not None else "warn"
        state = config.stash[_state_key] = _GuardState(naive_mode=mode)
    return state


def _watch_naive(state: _GuardState, where: str) -> NaiveDatetimeGuard | None:
    """The run's naive datetime guard, installed once SQLAlchemy has been imported by anyone."""
    if state.naive is None and state.naive_mode != "off" and "sqlalchemy.engine" in sys.modules:
        state.naive = NaiveDatetimeGuard(state.naive_mode)
        state.naive.install()
    if state.naive is not None:
        state.naive.where = where
    return state.naive


def _hidden_modules(item: pytest.Item) -> HiddenModules | None:
    """The modules the test's ``dbguard_without`` markers hide; fails the test on a bad marker."""
    __tracebackhide__ = True
    names: list[str] = []
    for marker in item.iter_markers("dbguard_without"):
        from pytest_dbguard.plugin import dbguard_without

        try:
            names += dbguard_without(*marker.args, **marker.kwargs)
        except (pytest.UsageError, TypeError) as error:
            problem = str(error)
        else:
            continue
        pytest.fail(f"{item.nodeid}: {problem}", pytrace=False)
    if not names:
        return None
    for name in names:
        try:
            missing = name not in sys.modules and importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            missing = True
        if missing:
            pytest.fail(UNKNOWN_MODULE_MESSAGE.format(where=item.nodeid, name=name), pytrace=False)
    return HiddenModules(names, where=item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    state = _state(item.config)
    guard = _watch_naive(state, item.nodeid)
    if guard is not None:
        guard.reports.clear()
    hidden = _hidden_modules(item)
    if hidden is not None:
        # Entered here and left after teardown, so fixtures run with the modules hidden too.
        item.stash[_hidden_key] = hidden.__enter__()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    state = _state(item.config)
    guard = _watch_naive(state, item.nodeid)  # the test's fixtures may have imported SQLAlchemy
    result = yield
    if guard is not None and guard.mode == "error" and guard.reports:
        __tracebackhide__ = True
        reports = "\n".join(f"  {report}" for report in guard.reports)
        pytest.fail(
            SWALLOWED_MESSAGE.format(count=len(guard.reports), reports=reports), pytrace=False
        )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        hidden = item.stash.get(_hidden_key, None)
        if hidden is not None:
            del item.stash[_hidden_key]
            hidden.__exit__(None, None, None)
        state = _state(item.config)
        if state.naive is not None:
            state.naive.where = "no test (between tests)"


class _UtcnowSummary:
    """Counts ``datetime.utcnow()`` DeprecationWarnings per test file; one line in the summary."""

    def __init__(self, counts: collections.Counter[str]) -> None:
        self.counts = counts

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, nodeid: str
    ) -> None:
        if issubclass(warning_message.category, DeprecationWarning) and UTCNOW_MARK in str(
            warning_message.message
        ):
            where = nodeid.split("::", 1)[0] or os.path.relpath(warning_message.filename)
            self.counts[where] += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        total = sum(self.counts.values())
        if total:
            files = ", ".join(f"{name}: {count}" for name, count in self.counts.most_common())
            terminalreporter.write_line(
                f"dbguard: {total} datetime.utcnow() deprecation warnings ({files})"
            )


def pytest_configure(config: pytest.Config) -> None:
    state = _state(config)
    if state.naive_mode != "off":
        config.pluginmanager.register(_UtcnowSummary(state.utcnow), "dbguard-utcnow")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_state_key, None)
    if state is not None and state.naive is not None:
        state.naive.remove()


@pytest.fixture
def dbguard_queries() -> Iterator[QueryCounter]:
    """Function scope: a QueryCounter of every engine's statements from here to the test's end.

    Yields the counter (``.count``, ``.statements``, ``assert_count(n)``, ``assert_max(n)``);
    teardown stops counting. dbguard's own statements and SAVEPOINT/RELEASE/ROLLBACK are left out.
    """
    with QueryCounter() as counter:
        yield counter
