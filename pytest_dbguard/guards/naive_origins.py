"""Where a naive datetime came from, and whether its column cares.

``column_zone`` tells a ``timestamptz`` type from a ``timestamp`` one; ``user_place`` finds the
user's line behind SQLAlchemy, dbguard and an async engine's greenlet; ``Assignments`` listens to
ORM ``set`` events on the timezone-aware attributes of mapped classes and remembers which
attribute, on which line, got each naive value. SQLAlchemy is imported when used, never here.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import types
import weakref
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from pytest_dbguard import compat

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect
    from sqlalchemy.orm import Mapper
    from sqlalchemy.types import TypeEngine

# Frames of these packages are machinery between the user's line and the statement.
MACHINERY: Final = frozenset(
    {"sqlalchemy", "pytest_dbguard", "asyncio", "greenlet", "contextlib", "_pytest", "pluggy"}
)
REMEMBERED: Final = 4096  # naive values whose assignment is remembered, oldest forgotten first

_DATETIME: Final = datetime.datetime
_TIMEZONE: Final = datetime.timezone  # always has an offset: no utcoffset() call needed


def is_naive(value: datetime.datetime) -> bool:
    """Whether ``value`` has no UTC offset (no tzinfo, or one that answers None)."""
    tz = value.tzinfo
    return tz is None or (type(tz) is not _TIMEZONE and value.utcoffset() is None)


def column_zone(type_: TypeEngine[Any]) -> bool | None:
    """True for a timezone-aware datetime type, False for any other type, None when unknown."""
    from sqlalchemy import types as sqltypes

    if isinstance(type_, sqltypes.TypeDecorator):
        type_ = type_.impl_instance
    if isinstance(type_, sqltypes.DateTime):
        return bool(type_.timezone)
    if isinstance(type_, sqltypes.ARRAY):
        return column_zone(type_.item_type)
    if isinstance(type_, sqltypes.NullType):
        return None
    return False


def stays_naive(type_: TypeEngine[Any], value: datetime.datetime, dialect: Dialect) -> bool:
    """Whether a ``TypeDecorator`` leaves ``value`` naive (many add the time zone themselves)."""
    from sqlalchemy import types as sqltypes

    if not isinstance(type_, sqltypes.TypeDecorator):
        return True
    try:
        processed = type_.process_bind_param(value, dialect)
    except NotImplementedError:
        return True  # no bind processing: the value goes out as it is
    except Exception:  # the type refuses the value itself; SQLAlchemy will say so
        return False
    return isinstance(processed, _DATETIME) and is_naive(processed)


# NamedTuples, not frozen dataclasses: every run defines them (see the package docstring).
class Place(NamedTuple):
    """A line of the user's code: where a warning points and a message names."""

    filename: str
    lineno: int
    module_globals: dict[str, Any]

    def __str__(self) -> str:
        try:
            relative = os.path.relpath(self.filename)
        except ValueError:  # another drive on Windows
            relative = ".."
        return f"{self.filename if relative.startswith('..') else relative}:{self.lineno}"


def _is_user(frame: types.FrameType) -> bool:
    if frame.f_code.co_filename.startswith("<"):  # generated __init__, frozen importlib
        return False
    module = str(frame.f_globals.get("__name__", ""))
    return module.partition(".")[0] not in MACHINERY


def installed_package(filename: str) -> str | None:
    """The top-level package of a file under ``site-packages`` or ``dist-packages`` (an installed
    package: a factory library, a framework), else None (the project's own file)."""
    parts = filename.replace(os.sep, "/").split("/")
    for folder in ("site-packages", "dist-packages"):
        if folder in parts[:-1]:
            top = parts[parts.index(folder) + 1]
            return top[: -len(".py")] if top.endswith(".py") else top
    return None


def user_place(frame: types.FrameType | None) -> Place | None:
    """The first frame of the project's code from ``frame`` outwards: past dbguard's and
    SQLAlchemy's machinery and past installed packages (a factory library that sets the value
    for the test that called it); the first installed package's frame when no project frame
    calls it (a project installed into site-packages itself).

    Inside an async engine the statement runs in a greenlet whose frames end at SQLAlchemy's
    ``greenlet_spawn``: the walk goes on in the greenlet that awaits it, up to the user's coroutine.
    """
    glet = None
    installed: Place | None = None
    while True:
        while frame is not None:
            if _is_user(frame):
                place = Place(frame.f_code.co_filename, frame.f_lineno, frame.f_globals)
                if installed_package(place.filename) is None:
                    return place
                installed = installed or place
            frame = frame.f_back
        greenlet = sys.modules.get("greenlet")
        if greenlet is None:
            return installed
        glet = (greenlet.getcurrent() if glet is None else glet).parent
        if glet is None:
            return installed
        frame = glet.gr_frame


def _mapper_event() -> str:
    """``after_mapper_constructed`` (SQLAlchemy 2.0.2+), else ``mapper_configured``."""
    from sqlalchemy.orm import MapperEvents

    if hasattr(MapperEvents, "after_mapper_constructed"):
        return "after_mapper_constructed"
    return "mapper_configured"


class Origin(NamedTuple):
    """The attribute a naive value was set on (``Event.at``) and the user's line that did it."""

    attribute: str
    place: Place | None

    @property
    def key(self) -> str:
        """The attribute's name without its class (``at``)."""
        return self.attribute.rpartition(".")[2]

    def __str__(self) -> str:
        return self.attribute if self.place is None else f"{self.attribute}, set at {self.place}"


class Assignments:
    """Remembers the ``Model.attr`` and line of naive datetimes set on timezone-aware attributes.

    Listens to ``set`` events only on mapped attributes whose column is timezone-aware, so other
    attributes cost nothing; the listener records only naive values. Also maps each such column
    (``table``, ``key``) to its attribute name, for values that were never set one by one.
    """

    def __init__(self) -> None:
        self.attributes: dict[tuple[str, str], str] = {}  # (table.fullname, column key) -> Event.at
        self._origins: dict[int, tuple[datetime.datetime, weakref.ref[Any], Origin]] = {}
        self._listened: list[Any] = []
        self.installed = False

    def install(self) -> None:
        """Listen on every mapped class made so far and every one made later."""
        from sqlalchemy import event
        from sqlalchemy.orm import Mapper

        if not self.installed:
            event.listen(Mapper, _mapper_event(), self._on_mapper)
            self.installed = True
            for mapper in compat.all_mappers():
                self._on_mapper(mapper, mapper.class_)

    def remove(self) -> None:
        """Stop listening and forget what was recorded."""
        from sqlalchemy import event
        from sqlalchemy.exc import InvalidRequestError
        from sqlalchemy.orm import Mapper

        if self.installed:
            event.remove(Mapper, _mapper_event(), self._on_mapper)
            for attribute in self._listened:
                # Gone with its mapper (clear_mappers): nothing left to remove.
                with contextlib.suppress(InvalidRequestError):
                    event.remove(attribute, "set", self._on_set)
            self._listened.clear()
            self._origins.clear()
            self.installed = False

    def _on_mapper(self, mapper: Mapper[Any], class_: type) -> None:
        from sqlalchemy import event

        # ``columns`` and the class's attributes exist from construction on: reading them does
        # not configure the mapper (``column_attrs`` would, and fail on half-imported models).
        for key, column in mapper.columns.items():
            attribute = mapper.class_manager.get(key)
            if not column_zone(column.type) or attribute is None:
                continue
            table = getattr(column, "table", None)
            if table is not None and hasattr(table, "fullname"):
                self.attributes.setdefault((table.fullname, column.key), f"{class_.__name__}.{key}")
            if not event.contains(attribute, "set", self._on_set):
                event.listen(attribute, "set", self._on_set)
                self._listened.append(attribute)

    def _on_set(self, target: object, value: Any, oldvalue: Any, initiator: Any) -> None:
        if isinstance(value, _DATETIME) and is_naive(value):
            origin = Origin(
                f"{type(target).__name__}.{initiator.key}", user_place(sys._getframe(1))
            )
            self._origins.pop(id(value), None)
            # Holding the value keeps its id unique; the instance is only watched.
            self._origins[id(value)] = (value, weakref.ref(target), origin)
            if len(self._origins) > REMEMBERED:
                del self._origins[next(iter(self._origins))]

    def origin(self, value: datetime.datetime) -> Origin | None:
        """Where ``value`` (this very object) was set on an attribute of a live instance holding it.

        A value shared by several statements (a module constant) is named only while the
        instance it was set on still holds it: a later Core statement binding the same constant
        after that instance is gone gets no stale line.
        """
        found = self._origins.get(id(value))
        if found is None or found[0] is not value:
            return None
        target, origin = found[1](), found[2]
        if target is None or getattr(target, "__dict__", {}).get(origin.key) is not value:
            return None
        return origin
