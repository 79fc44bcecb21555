"""Base database names with URL and SQL metacharacters, quotes and non-ASCII work end to end."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from sqlalchemy.engine import make_url

from pytest_dbguard.compat import sqlalchemy_decodes_database
from pytest_dbguard.db.names import database_name, is_dbguard_name
from pytest_dbguard.db.sql import quote_ident
from pytest_dbguard.db.urls import DatabaseURL, SecretURL, url_of
from pytest_dbguard.exceptions import ConfigError
from tests.helpers import copy_project, run_dbguard
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

# The fixtures, the exported URL (an application's own engine) and DBGUARD_DB all name the
# same per-worker database, cloned with the schema.
TESTS = """
    import os
    import pytest
    from sqlalchemy import create_engine, text
    from models import Note

    @pytest.mark.parametrize("n", range(4))
    def test_worker_database(dbguard_session, dbguard_url, n):
        name = os.environ["DBGUARD_DB"]
        dbguard_session.add(Note(body=name))
        dbguard_session.commit()
        assert dbguard_session.execute(text("SELECT current_database()")).scalar() == name
        assert dbguard_session.query(Note).count() == 1
        engine = create_engine(os.environ["DBGUARD_URL"])
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == name
            assert conn.execute(text("SELECT count(*) FROM notes")).scalar() == 0
        engine.dispose()
"""
NAMES = [
    pytest.param("per%cent", id="percent"),
    pytest.param("100%s_sure", id="percent-s"),
    pytest.param("what?db", id="question-mark"),
    pytest.param("hash#db", id="hash"),
    pytest.param("with space", id="space"),
    pytest.param('dou"ble', id="double-quote"),
    pytest.param("it's", id="single-quote"),
    pytest.param("prüfung_ß_日本", id="non-ascii"),
    pytest.param("ü" * 30 + "%?# '\"", id="long-mixed"),  # 66 bytes: trimmed
]
# Under -n 2 a run costs three interpreters (controller and two workers), so the names share
# runs: every character above, each in a name the worker databases keep whole, except "?" (on
# SQLAlchemy 2.0 its run stops with a usage error) and the trimmed name, which get runs of their own.
METACHARACTERS = '100%s per%cent #x "q" it\'s ü_ß日本'
RUNS = [pytest.param(False, name.values[0], id=f"serial-{name.id}") for name in NAMES] + [
    pytest.param(True, METACHARACTERS, id="n2-metacharacters", marks=pytest.mark.needs_xdist),
    pytest.param(True, "what?db", id="n2-question-mark", marks=pytest.mark.needs_xdist),
    pytest.param(True, NAMES[-1].values[0], id="n2-long-mixed", marks=pytest.mark.needs_xdist),
]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _special(text: str) -> set[str]:
    return {char for char in text if not (char.isascii() and char.isalnum())}


def test_the_n2_runs_meet_every_special_character() -> None:
    """What the -n 2 runs share loses no character of NAMES, and the shared name stays whole."""
    under_xdist = "".join(str(run.values[1]) for run in RUNS if run.values[0])
    for name in NAMES:
        assert _special(str(name.values[0])) <= _special(under_xdist), name.id
    assert database_name(METACHARACTERS, "0" * 8, "gw1") == f"{METACHARACTERS}_dbg_00000000_gw1"
    assert "?" not in METACHARACTERS


@pytest.mark.parametrize(("xdist", "name"), RUNS)
def test_base_database_name_with_special_characters(
    pytester: pytest.Pytester, pg_server: TestServer, name: str, xdist: bool
) -> None:
    pg_server.sql(f"CREATE DATABASE {quote_ident(name)}")
    try:
        before = set(pg_server.databases())
        copy_project(pytester, "notes")
        pytester.makepyfile(test_names=TESTS)
        pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
        url = pg_server.url(quote(name, safe=""))  # URL-encoded by the user, as RFC 3986 asks
        args = ["--dbguard-url", url] + (["-n", "2"] if xdist else [])
        result = run_dbguard(pytester, *args, inprocess=True)
        output = result.stdout.str() + result.stderr.str()
        assert SUPERUSER_PASSWORD not in output
        if _unwritable(database_name(name, "0" * 8, "gw0")):  # the worker's, maybe trimmed
            assert result.ret == pytest.ExitCode.USAGE_ERROR, output
            assert output.count("which a SQLAlchemy 2.0 URL cannot carry") == 1, output
            assert set(pg_server.databases()) == before
            return
        result.assert_outcomes(passed=4)
        assert set(pg_server.databases()) == before  # every worker database and template dropped
        tables = pg_server.sql(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database=name
        )
        assert tables.stdout.strip() == "0"  # the named database itself is never written to
    finally:
        pg_server.sql(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


def _unwritable(name: str) -> bool:
    """Whether the installed SQLAlchemy has no URL text for a database with this name."""
    return "?" in name and not sqlalchemy_decodes_database()


@pytest.mark.parametrize("name", NAMES)
def test_rendered_urls_keep_the_name(name: str) -> None:
    url = DatabaseURL.parse(f"postgresql+psycopg://u:p@h:5432/{quote(name, safe='')}")
    assert url.database == name
    assert url.to_sqlalchemy().database == name  # what dbguard's own engines take
    if _unwritable(name):
        with pytest.raises(ConfigError, match=r"Upgrade to SQLAlchemy 2\.1"):
            url.render(hide_password=False)
        return
    text = url.render(hide_password=False)
    assert make_url(text).database == name  # the installed SQLAlchemy reads back the same name
    assert url_of(SecretURL(url)) == url  # the fixtures' URL string is never parsed back
    if sqlalchemy_decodes_database():
        assert DatabaseURL.parse(text) == url


def test_trimmed_names_stay_unique_and_whole() -> None:
    first = database_name("é" * 40 + "_orders", "abc123", "gw0")
    second = database_name("é" * 40 + "_people", "abc123", "gw0")
    assert first != second
    for made in (first, second):
        assert len(made.encode()) <= 63
        assert made.endswith("_dbg_abc123_gw0") and is_dbguard_name(made)
        assert made.encode().decode() == made  # no character cut in half
    assert database_name("short", "abc123", "gw0") == "short_dbg_abc123_gw0"
