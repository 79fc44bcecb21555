"""--dbguard-keep-failed for pytest-django tests: a failed ``django_db`` test's view of the
database (its rows, before pytest-django's rollback or, ``transaction=True``, its flush) is
copied into ``<db>_failed_<n>``, named in the report as for SQLAlchemy tests.

Whole runs of the shared Django project (``tests/django_project.py``) on the external test
server; the kept databases are read with psycopg.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import psycopg
import pytest

from tests.django_project import migrate_lines, write_project
from tests.helpers import WORKERS, kept_by, run_dbguard
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

DJANGO = ("pytest_django.plugin",)
ODD = """it's "odd", (x) \\ y %s"""  # quotes, a comma, parentheses, a backslash and a %
TESTS = f"""
import datetime

import pytest

from shop.models import Order


def now():
    return datetime.datetime(2026, 12, 4, 16, 0, tzinfo=datetime.timezone.utc)


@pytest.mark.django_db
def test_passes():
    Order.objects.create(placed=now(), note="passing")


@pytest.mark.django_db
def test_fails():
    Order.objects.create(placed=now(), note="failing")
    Order.objects.create(placed=now(), note={ODD!r})
    assert Order.objects.count() == 3, "the failure"


@pytest.mark.django_db(transaction=True)
def test_fails_transactional():
    Order.objects.create(placed=now(), note="committed")
    assert False, "the transactional failure"


@pytest.fixture
def seeded(db):
    Order.objects.create(placed=now(), note="from setup")
    raise RuntimeError("the setup failure")


def test_setup_fails(seeded):
    pass


def test_fails_without_the_database():
    assert False, "no database in this one"


@pytest.mark.django_db
def test_passes_after():
    assert Order.objects.count() == 0
"""
# The report section of a failed test (a failed setup's report has no teardown section to
# show it in), and the lines at the end of the run, one per kept database.
SECTION = re.compile(r"^(\S+) failed; its view of the database \((.*)\) is kept in (\S+):$", re.M)
LISTED = re.compile(r"^  (\S+): psql -h \S+ -p \d+ -U postgres -d (\S+)$", re.M)


def _query(server: TestServer, database: str, statement: str) -> list[tuple[Any, ...]]:
    url = server.url(database).replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as connection:
        return list(connection.execute(statement).fetchall())


def _run_keeping(
    pytester: pytest.Pytester, pg_server: TestServer, workers: tuple[str, ...] = ()
) -> pytest.RunResult:
    """A Django run with --dbguard-keep-failed on the external test server."""
    return run_dbguard(
        pytester,
        *workers,
        "--dbguard-url",
        pg_server.url(),
        "--dbguard-keep-failed",
        plugins=DJANGO,
    )


@pytest.mark.parametrize("workers", WORKERS)
def test_failed_django_tests_keep_their_rows(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    kept_here: set[str],
    workers: tuple[str, ...],
) -> None:
    log = write_project(pytester)
    pytester.makepyfile(test_shop=TESTS)
    result = _run_keeping(pytester, pg_server, workers)
    kept_here.update(kept_by(pg_server, result))
    result.assert_outcomes(passed=2, failed=3, errors=1)
    # Serially the run migrates its own database in place, then one template for the copies
    # (not one migrate per failed test); under xdist the workers' template serves the copies.
    assert len(migrate_lines(log)) == (1 if workers else 2), migrate_lines(log)
    output = result.stdout.str()
    kept = dict(LISTED.findall(output))
    shown = {nodeid: (text, name) for nodeid, text, name in SECTION.findall(output)}
    assert set(kept) == {
        "test_shop.py::test_fails",
        "test_shop.py::test_fails_transactional",
        "test_shop.py::test_setup_fails",
    }
    assert shown == {
        "test_shop.py::test_fails": (
            "2 rows in 1 table: shop_order 2",
            kept["test_shop.py::test_fails"],
        ),
        "test_shop.py::test_fails_transactional": (
            "1 row in 1 table: shop_order 1",
            kept["test_shop.py::test_fails_transactional"],
        ),
    }
    # Exactly one database per failed database test, each on the server, nothing else kept.
    assert set(kept.values()) == kept_here
    worker = r"gw[01]" if workers else "main"
    for name in kept.values():
        assert re.fullmatch(rf"postgres_dbg_[0-9a-f]+_{worker}_failed_\d", name), name
    runs = {name.split("_")[2] for name in kept.values()}
    assert not [
        name
        for name in pg_server.databases()
        if name.split("_")[2:3] == list(runs) and name.endswith("_tpl")
    ]  # the template the copies came from is dropped
    assert SUPERUSER_PASSWORD not in output + result.stderr.str()
    result.stdout.fnmatch_lines(["dbguard: kept 3 failed test databases; they stay on the server*"])
    expected = {
        "test_shop.py::test_fails": ["failing", ODD],
        "test_shop.py::test_fails_transactional": ["committed"],
        "test_shop.py::test_setup_fails": ["from setup"],
    }
    for nodeid, notes in expected.items():
        name = kept[nodeid]
        rows = _query(pg_server, name, "SELECT note, placed FROM shop_order ORDER BY id")
        assert [note for note, _ in rows] == notes
        assert {placed.isoformat() for _, placed in rows} == {"2026-12-04T16:00:00+00:00"}
        # The rest of the worker's database as the test saw it: migrated, Django's own rows.
        [(migrations,)] = _query(
            pg_server, name, "SELECT count(*) FROM django_migrations WHERE app = 'shop'"
        )
        assert migrations == 2
        [(permissions,)] = _query(
            pg_server, name, "SELECT count(*) FROM auth_permission WHERE codename LIKE '%_order'"
        )
        assert permissions == 4
        # The ids continue where the test left them.
        [(next_id,)] = _query(
            pg_server, name, "SELECT nextval(pg_get_serial_sequence('shop_order', 'id'))"
        )
        [(last_id,)] = _query(pg_server, name, "SELECT max(id) FROM shop_order")
        assert next_id == last_id + 1
        [(comment,)] = _query(
            pg_server,
            "postgres",
            f"SELECT shobj_description(oid, 'pg_database') FROM pg_database "
            f"WHERE datname = '{name}'",
        )
        assert f'"failed_test":"{nodeid}"' in comment


def test_passing_django_tests_keep_nothing(
    pytester: pytest.Pytester, pg_server: TestServer, kept_here: set[str]
) -> None:
    write_project(pytester)
    pytester.makepyfile(
        test_shop=TESTS.replace(
            "assert Order.objects.count() == 3", "assert Order.objects.count() == 2"
        )
        .replace('assert False, "the transactional failure"', "pass")
        .replace('raise RuntimeError("the setup failure")', "")
        .replace('assert False, "no database in this one"', "pass")
    )
    result = _run_keeping(pytester, pg_server)
    result.assert_outcomes(passed=6)
    kept_here.update(kept_by(pg_server, result))
    assert kept_here == set()
    result.stdout.no_fnmatch_line("*failed test database*")
    result.stdout.no_fnmatch_line("*its view of the database*")


DATE_STYLE_TEST = """
import datetime

import pytest
from django.db import connection

from shop.models import Order


@pytest.mark.django_db
def test_fails_after_changing_the_date_style():
    with connection.cursor() as cursor:
        cursor.execute("SET DateStyle = 'SQL, DMY'")  # 4 December is written 04/12/2026
    Order.objects.create(
        placed=datetime.datetime(2026, 12, 4, 16, 0, tzinfo=datetime.timezone.utc), note="dmy"
    )
    assert False, "the failure"
"""


def test_values_are_kept_whatever_the_sessions_settings(
    pytester: pytest.Pytester, pg_server: TestServer, kept_here: set[str]
) -> None:
    """The rows travel as text written under the test session's settings: the copy reads them
    under the same ones (an ISO, MDY session would take 04/12/2026 for 12 April)."""
    write_project(pytester)
    pytester.makepyfile(test_shop=DATE_STYLE_TEST)
    result = _run_keeping(pytester, pg_server)
    kept_here.update(kept_by(pg_server, result))
    result.assert_outcomes(failed=1)
    [name] = kept_here
    [(placed,)] = _query(pg_server, name, "SELECT placed FROM shop_order WHERE note = 'dmy'")
    assert placed.astimezone(datetime.timezone.utc) == datetime.datetime(
        2026, 12, 4, 16, 0, tzinfo=datetime.timezone.utc
    )


UNITTEST_CASES = """
import datetime

from django.test import SimpleTestCase, TestCase, TransactionTestCase

from shop.models import Order

PLACED = datetime.datetime(2026, 12, 4, 16, 0, tzinfo=datetime.timezone.utc)


class OrderTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        Order.objects.create(placed=PLACED, note="class data")

    def setUp(self):
        Order.objects.create(placed=PLACED, note="from setUp")

    def test_fails(self):
        Order.objects.create(placed=PLACED, note="tc")
        assert False, "the TestCase failure"

    def test_passes(self):
        assert Order.objects.count() == 2

    def test_skipped(self):
        Order.objects.create(placed=PLACED, note="skipped")
        self.skipTest("a skip is not a failure")


class SubTests(TestCase):
    def test_a_subtest_fails(self):
        Order.objects.create(placed=PLACED, note="sub")
        for n in (1, 2):
            with self.subTest(n=n):
                assert n == 1, "the subtest failure"


class CommittedOrderTests(TransactionTestCase):
    def test_fails_transactional(self):
        Order.objects.create(placed=PLACED, note="committed")
        assert False, "the TransactionTestCase failure"


class NoDatabaseTests(SimpleTestCase):
    def test_fails_without_the_database(self):
        assert False, "no database in this one"
"""


@pytest.mark.parametrize("workers", WORKERS)
def test_failed_django_testcase_methods_keep_their_rows(
    pytester: pytest.Pytester, pg_server: TestServer, kept_here: set[str], workers: tuple[str, ...]
) -> None:
    """unittest runs a TestCase's transaction around setUp, the test and its cleanups: the rows
    the failed test saw (class data, setUp's and its own) are kept, once each; a failed subtest
    too; a skip, a pass or no database keeps and says nothing."""
    write_project(pytester)
    pytester.makepyfile(test_cases=UNITTEST_CASES)
    result = _run_keeping(pytester, pg_server, workers)
    # pytest 8 counts a failed subtest as its test's failure, pytest 9 reports it apart.
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    kept_here.update(kept_by(pg_server, result))
    output = result.stdout.str()
    listed = LISTED.findall(output)
    kept = dict(listed)
    assert len(listed) == len(kept) == 3, listed  # each kept test named once
    assert set(kept) == {
        "test_cases.py::OrderTests::test_fails",
        "test_cases.py::SubTests::test_a_subtest_fails",
        "test_cases.py::CommittedOrderTests::test_fails_transactional",
    }
    result.stdout.fnmatch_lines(["dbguard: kept 3 failed test databases; they stay on the server*"])
    assert set(kept.values()) == kept_here
    expected = {
        "test_cases.py::OrderTests::test_fails": ["class data", "from setUp", "tc"],
        "test_cases.py::SubTests::test_a_subtest_fails": ["sub"],
        "test_cases.py::CommittedOrderTests::test_fails_transactional": ["committed"],
    }
    for nodeid, notes in expected.items():
        rows = _query(pg_server, kept[nodeid], "SELECT note FROM shop_order ORDER BY id")
        assert [note for (note,) in rows] == notes
    assert "could not keep its data" not in output  # the SimpleTestCase has nothing to keep
