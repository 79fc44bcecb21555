"""The ``dbguard_queries`` fixture: a :class:`~pytest_dbguard.guards.query_counter.QueryCounter`
for the test.

Registered by every run, ``--fixtures`` included, so it imports nothing more until a test asks
for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_dbguard.guards.query_counter import QueryCounter


@pytest.fixture
def dbguard_queries() -> Iterator[QueryCounter]:
    """Function scope: a QueryCounter of every engine's statements from here to the test's end.

    Yields the counter (``.count``, ``.statements``, ``assert_count(n)``, ``assert_max(n)``);
    teardown stops counting. dbguard's own statements and SAVEPOINT/RELEASE/ROLLBACK are left out.
    """
    from pytest_dbguard.guards.query_counter import QueryCounter

    with QueryCounter() as counter:
        yield counter
