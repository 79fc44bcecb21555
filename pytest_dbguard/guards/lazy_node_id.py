"""The running test's node id for the guards' messages, made into text only when one is written:
pytest 9 builds ``item.nodeid`` anew on every access, and most tests are never named. (Not
``test_name.py``: pytest would take a module named like a test file for one and rewrite its
asserts.)"""

from __future__ import annotations

import pytest


class LazyNodeId:
    """``str()`` gives the test's node id."""

    __slots__ = ("item",)

    def __init__(self, item: pytest.Item) -> None:
        self.item = item

    def __str__(self) -> str:
        return self.item.nodeid
