"""The README's examples are run as written: a recipe that does not work is a bug."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()

APP_MODELS = """
    import os
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    table_prefix = os.environ.get("DB_TABLE_PREFIX", "storage_elem_01")

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
"""


def blocks(section: str, language: str) -> list[str]:
    """The fenced ``language`` blocks under the README heading ``section`` (up to the next heading)."""
    found: list[str] = []
    inside, fence = False, None
    current: list[str] = []
    for line in README.splitlines():
        if fence is None and line.startswith("#"):
            inside = line.lstrip("#").strip() == section
        elif line.startswith("```"):
            if fence is None:
                fence, current = line[3:].strip(), []
            else:
                if inside and fence == language:
                    found.append("\n".join(current) + "\n")
                fence = None
        elif fence is not None:
            current.append(line)
    assert found, f"README has no {language} block under {section!r}"
    return found


def test_the_two_commands_come_first() -> None:
    first = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines() if line.strip()]
    assert commands == ["./dev.sh examples", "./dev.sh test"]
    assert README.index(first.group(0)) < README.index("## ")
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "./dev.sh test" in ci


def test_quickstart(pytester: pytest.Pytester) -> None:
    (ini,) = blocks("Quickstart", "ini")
    (test,) = blocks("Quickstart", "python")
    pytester.mkpydir("app")
    pytester.makepyfile(**{"app/models": APP_MODELS})
    pytester.makefile(".ini", pytest=ini)
    pytester.makepyfile(
        test_users="from app.models import User\n\n"
        + test
        + "\n\n"
        + test.replace("def test_create_user", "def test_create_user_again")
    )
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=2)  # the second sees nothing of the first: rolled back
    result.stdout.fnmatch_lines(
        [
            "dbguard: embedded PostgreSQL * at 127.0.0.1:*; database *_dbg_*_main; metadata app.models:Base;*"
        ]
    )


def test_table_prefix_recipe(pytester: pytest.Pytester) -> None:
    python, ini = (
        blocks("Table prefixes and settings read at import time", "python")[0],
        blocks("Table prefixes and settings read at import time", "ini")[0],
    )
    pytester.mkpydir("app")
    pytester.makepyfile(
        **{
            "app/settings": "import os\ntable_prefix = os.environ.get('DB_TABLE_PREFIX', 'storage_elem_01')\n",
            "app/models": "from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column\n"
            "from app import settings\n\nclass Base(DeclarativeBase):\n    pass\n\n"
            + textwrap.dedent(python).replace("# app/models.py\n", "")
            + "    id: Mapped[int] = mapped_column(primary_key=True)\n",
        }
    )
    pytester.makefile(".ini", pytest=ini)
    pytester.makeconftest(
        "from app.models import File  # a top-level import, as real conftests do\n"
    )
    pytester.makepyfile(
        test_files="""
        def test_prefixed(dbguard_session):
            from app.models import File
            assert File.__tablename__ == "test_storage_main_files"
            dbguard_session.add(File())
            dbguard_session.commit()
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


GUARD_SUPPORT = """
import importlib
from datetime import datetime
import pytest
from sqlalchemy import DateTime, ForeignKey, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
import app.settings


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list["Book"]] = relationship()


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))


def render_author_list(session):
    authors = session.scalars(select(Author)).all()
    return [(author.name, len(author.books)) for author in authors]  # lazy loads: N+1


@pytest.fixture(autouse=True)
def some_authors(request):
    if "dbguard_session" in request.fixturenames:
        session = request.getfixturevalue("dbguard_session")
        session.add_all([Author(name=f"a{n}") for n in range(5)])
        session.flush()
"""
SETTINGS = """
try:
    import debug_toolbar  # noqa: F401
    INSTALLED_APPS = ["app", "debug_toolbar"]
except ImportError:
    INSTALLED_APPS = ["app"]
"""


def test_guard_recipes(pytester: pytest.Pytester) -> None:
    """The naive datetime, dbguard_without and query count examples, as the README shows them."""
    naive, without, queries = blocks("Guards", "python")
    pytester.mkpydir("app")
    pytester.makepyfile(**{"app/settings": SETTINGS})
    pytester.mkpydir("debug_toolbar")  # the dev-only package, installed here as in a dev setup
    pytester.makepyfile(
        test_guards=GUARD_SUPPORT + "\n\n" + naive + "\n\n" + without + "\n\n" + queries,
        conftest="from test_guards import Base  # noqa: F401\n",
    )
    pytester.makeini("[pytest]\ndbguard_metadata = test_guards:Base\n")
    result = pytester.runpytest_subprocess(
        "-p", "pytest_dbguard", "-W", "ignore::DeprecationWarning"
    )
    result.assert_outcomes(passed=2, failed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*expected at most 2 statements inside the block, 6 ran:",
            "*1. SELECT authors.id, authors.name FROM authors",
            "*NaiveDatetimeWarning: naive datetime bound as parameter 'at' of 'INSERT INTO events *",
        ]
    )
