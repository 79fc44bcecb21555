"""Settings, read once from the environment when the application is imported."""

from __future__ import annotations

import os

# Under pytest-dbguard, ini `dbguard_env = DATABASE_URL={async_url}` sets this to the worker's
# test database before any conftest (and so this module) is imported.
DATABASE_URL: str = os.environ.get(
    "DATABASE_URL", "postgresql+asyncpg://app:app@localhost:5432/app"
)
