"""Settings read once, when this module is first imported (the pattern that bites test suites)."""

from __future__ import annotations

import os

# Outside tests the tables are called storage_elem_01_files, storage_elem_01_wal, ...
table_prefix = os.environ.get("DB_TABLE_PREFIX", "storage_elem_01")
database_url = os.environ.get("DATABASE_URL", "postgresql+psycopg://storage@localhost/storage")
