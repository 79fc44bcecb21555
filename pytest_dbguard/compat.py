"""The one place that reads other packages' private attributes.

Checked against SQLAlchemy 2.0 and 2.1. Each helper degrades to "nothing found" when the
attribute is gone, so a new release costs a guard some precision, never a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Mapper


def all_mappers() -> list[Mapper[Any]]:
    """Every ORM mapper made so far, configured or not, in every registry.

    SQLAlchemy has no public list of its registries (``sqlalchemy.orm.mapperlib._all_registries``,
    present since 1.4); a mapper event covers the mappers made later.
    """
    from sqlalchemy.orm import mapperlib

    all_registries = getattr(mapperlib, "_all_registries", None)
    if all_registries is None:
        return []
    return [mapper for registry in all_registries() for mapper in registry.mappers]
