"""Settings, read once from the environment when the application is imported."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

DEFAULT_DATABASE_URL = "postgresql+asyncpg://app:app@localhost:5432/app"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the application reads from its environment."""

    database_url: str
    startup_timeout: float  # seconds startup waits for the database before the app gives up
    retry_after: int  # seconds a 503 tells clients to wait (the Retry-After header)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Settings from ``DATABASE_URL``, ``STARTUP_TIMEOUT`` and ``RETRY_AFTER``."""
        return cls(
            database_url=environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
            startup_timeout=float(environ.get("STARTUP_TIMEOUT", "30")),
            retry_after=int(environ.get("RETRY_AFTER", "5")),
        )


# Under pytest-dbguard, ini `dbguard_env = DATABASE_URL={async_url}` sets DATABASE_URL to the
# worker's test database before any conftest (and so this module) is imported.
settings = Settings.from_environment()
