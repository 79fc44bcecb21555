"""The readiness check's public names under the import path earlier releases documented;
``from pytest_dbguard import await_ready`` is the spelling to use now."""

from __future__ import annotations

from pytest_dbguard.server.readiness import (
    Probe,
    Readiness,
    RetryPolicy,
    await_ready,
    probe,
    wait_until_ready,
)

__all__ = ["Probe", "Readiness", "RetryPolicy", "await_ready", "probe", "wait_until_ready"]
