"""The conftest that used to break: it imports the models at the top, before anything else runs."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session
from storage.models import StoredFile  # imported as soon as pytest loads this file


@pytest.fixture
def session(dbguard_session: Session) -> Session:
    """The app's session in tests: dbguard's, rolled back after each test."""
    return dbguard_session


@pytest.fixture
def some_file(session: Session) -> StoredFile:
    stored = StoredFile(path="/seed.bin", size=10)
    session.add(stored)
    session.commit()
    return stored
