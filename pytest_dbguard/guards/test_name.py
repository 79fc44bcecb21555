"""The running test's name for the guards' messages, made into text only when one is written:
pytest 9 builds ``item.nodeid`` anew on every access, and most tests are never named."""

from __future__ import annotations

import pytest


class TestName:
    """``str()`` gives the test's node id."""

    __test__ = False  # not a test class, despite the name
    __slots__ = ("item",)

    def __init__(self, item: pytest.Item) -> None:
        self.item = item

    def __str__(self) -> str:
        return self.item.nodeid
