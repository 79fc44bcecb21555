"""(under construction by the async work: loop policy, async fixtures and diagnosis)"""

from __future__ import annotations

import pytest


def register(config: pytest.Config) -> None:
    """Register the pytest-asyncio integration when pytest-asyncio is present."""


def header_lines(config: pytest.Config) -> list[str]:
    """Header lines about the event-loop policy dbguard applied."""
    return []
