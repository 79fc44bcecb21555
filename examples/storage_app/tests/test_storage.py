from __future__ import annotations

import os

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session
from storage import service, settings
from storage.models import StoredFile, WalEntry


def test_tables_carry_the_test_prefix() -> None:
    expected = f"test_storage_{os.environ['DBGUARD_WORKER']}"
    assert settings.table_prefix == expected
    assert StoredFile.__tablename__ == f"{expected}_files"
    assert WalEntry.__tablename__ == f"{expected}_wal"


def test_store_writes_file_and_wal(session: Session) -> None:
    service.store(session, "/a.txt", 100)
    service.store(session, "/b.txt", 50)
    assert service.total_size(session) == 150
    assert service.wal_length(session) == 2


def test_previous_test_left_nothing(session: Session) -> None:
    assert service.total_size(session) == 0
    assert service.wal_length(session) == 0


def test_seed_fixture(session: Session, some_file: StoredFile) -> None:
    service.store(session, "/c.txt", 5)
    assert service.total_size(session) == 15


@pytest.mark.parametrize("n", range(8))
def test_same_path_in_every_test(session: Session, n: int) -> None:
    """The unique index is named without a prefix: only per-worker databases keep -n 2 apart."""
    service.store(session, "/shared/name.bin", n)
    assert service.total_size(session) == n


@pytest.mark.dbguard(isolation="truncate")
def test_app_engine_commits_for_real() -> None:
    with service.SessionLocal() as own:
        service.store(own, "/committed.bin", 7)
    with service.engine.connect() as conn:
        count = conn.execute(text(f"SELECT count(*) FROM {settings.table_prefix}_files")).scalar()
    assert count == 1
