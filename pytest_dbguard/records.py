"""``Record``: the base of dbguard's immutable records (the run's settings, its plan, the options).

A NamedTuple of twenty fields costs about 3.4M instructions to define (``collections.namedtuple``
builds its ``__new__`` from source and a property per field), and every run defines these at
import, ``--help`` included (``benchmarks/ci_path.py``, c). A class with ``__slots__`` and a
written-out ``__init__`` costs a tenth of it, and keeps what dbguard uses of a NamedTuple:
read-only fields, a ``_replace`` (here ``replace``), equality and a readable repr.
"""

from __future__ import annotations

from typing import Any, TypeVar

R = TypeVar("R", bound="Record")


class Record:
    """Fields are the ``__slots__`` of the subclass, set once by its ``__init__`` (``_set_from``)."""

    __slots__: tuple[str, ...] = ()

    def _set_from(self, arguments: dict[str, Any]) -> None:
        """Every field from ``locals()`` of the subclass's ``__init__``, whose arguments are its
        fields: the fields are written once, in the signature."""
        for name in self.__slots__:
            object.__setattr__(self, name, arguments[name])

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def replace(self: R, **changes: Any) -> R:
        """A copy with the named fields changed (a NamedTuple's ``_replace``)."""
        unknown = set(changes).difference(self.__slots__)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        copy = object.__new__(type(self))
        for name in self.__slots__:
            object.__setattr__(
                copy, name, changes[name] if name in changes else getattr(self, name)
            )
        return copy

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use .replace({name}=...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _compared(self) -> tuple[Any, ...]:
        """What equality and hashing look at: every field, unless a subclass says less."""
        return self._values()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and copy: __setattr__ refuses
        return _restore, (type(self), dict(zip(self.__slots__, self._values(), strict=True)))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


def _restore(cls: type[R], values: dict[str, Any]) -> R:
    record = object.__new__(cls)
    record._set_from(values)
    return record
