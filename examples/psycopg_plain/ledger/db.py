"""Connections come from PG_DSN, a libpq connection string, read when they are opened."""

from __future__ import annotations

import os

import psycopg


def connect() -> psycopg.Connection:
    """A new connection to the ledger database."""
    return psycopg.connect(os.environ["PG_DSN"])
