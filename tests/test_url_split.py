"""``db.urls.split_url`` splits a URL by hand the way SQLAlchemy's URL pattern does: both are run
on the same inputs, hand-picked and generated, and must agree part for part."""

from __future__ import annotations

import random
import re

import pytest

from pytest_dbguard.db.urls import split_url

# The pattern ``split_url`` replaces (SQLAlchemy's shape of a URL, as dbguard used it until
# compiling it proved to cost 2.4M instructions per process).
URL_PATTERN = re.compile(
    r"""
    ^(?P<backend>[a-z][\w]*)(?:\+(?P<driver>[\w]+))?://
    (?:(?P<username>[^:/@]*)(?::(?P<password>[^@]*))?@)?
    (?:\[(?P<ipv6>[^/?]+)\]|(?P<host>[^/?:]*))?
    (?::(?P<port>[^/?]*))?
    (?:/(?P<database>[^?]*))?
    (?:\?(?P<query>.*))?$
    """,
    re.X,
)

SCHEMES = (
    "postgresql://",
    "postgresql+psycopg://",
    "postgres+asyncpg://",
    "sqlite://",
    "sqlite:///",
    "p9_é+d_1://",
    "Postgresql://",
    "9pg://",
    "pg+://",
    "pg+a+b://",
    "pg:/",
    "pg:x://",
    "",
)
# Every character the grammar treats specially, and a few it does not.
ALPHABET = "ab:/@?[]%+_é1 .#-"


def _pattern_split(text: str) -> dict[str, str | None] | None:
    match = URL_PATTERN.match(text)
    return None if match is None else match.groupdict()


@pytest.mark.parametrize(
    "text",
    [
        "postgresql+psycopg://user:secret@db.example:6543/app?sslmode=require&x=",
        "postgresql://u:pa/ss@host/db",
        "postgresql://u:p?x@h/db",
        "postgresql://us/er@host",
        "postgresql://@host/db",
        "postgresql://:pw@h",
        "postgresql://u:nohost",
        "postgresql:///db",
        "postgresql://[::1]:5432/db",
        "postgresql://u:p@[::1]/db",
        "postgresql://[a]b]:1/x",
        "postgresql://[a]:b]x/db",
        "postgresql://[a]x/db",
        "postgresql://[]/db",
        "postgresql://[::1",
        "postgresql://h:/",
        "postgresql://h:port:more/db?q?r",
        "sqlite:////tmp/x.db",
        "sqlite://",
        "pg+a+b://h",
        "Pg://h",
    ],
)
def test_hand_picked_urls_split_as_the_pattern_splits_them(text: str) -> None:
    assert split_url(text) == _pattern_split(text)


def test_generated_urls_split_as_the_pattern_splits_them() -> None:
    chooser = random.Random(20261205)
    checked = 0
    for _ in range(20000):
        tail = "".join(chooser.choice(ALPHABET) for _ in range(chooser.randrange(0, 14)))
        text = chooser.choice(SCHEMES) + tail
        assert split_url(text) == _pattern_split(text), text
        checked += _pattern_split(text) is not None
    assert checked > 5000  # most inputs are URLs, so the parts are compared, not only None


def test_a_newline_is_not_a_url() -> None:
    assert split_url("postgresql://u:p\nw@h/db") is None
