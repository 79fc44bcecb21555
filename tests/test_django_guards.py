"""The guards on Django's ORM: dbguard_queries counts its statements, naive datetimes bound by
raw SQL are reported, and Django's own naive-datetime warnings are folded into one line per
model field and file."""

from __future__ import annotations

import pytest

from tests.django_project import write_project
from tests.helpers import WORKERS, run_dbguard

DJANGO = ("pytest_django.plugin",)

GUARD_TESTS = """
import datetime

import pytest
from django.db import connection

from shop.models import Order

AWARE = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


@pytest.mark.django_db
def test_counts_django_statements(dbguard_queries):
    Order.objects.create(placed=AWARE)
    with dbguard_queries.assert_count(1):
        assert Order.objects.count() == 1
    assert dbguard_queries.count == 2  # the INSERT and the SELECT; no SAVEPOINTs
    assert dbguard_queries.statements[0].startswith('INSERT INTO "shop_order"')


@pytest.mark.django_db
def test_raw_sql_with_a_naive_datetime():
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO shop_order (placed, note) VALUES (%s, %s)",
            [datetime.datetime(2024, 1, 1, 12, 0), "raw"],
        )


@pytest.mark.django_db
@pytest.mark.parametrize("day", range(1, 4))
def test_orm_with_naive_datetimes(day):
    for hour in range(5):
        Order.objects.create(placed=datetime.datetime(2024, 1, day, hour))
    assert Order.objects.filter(placed__gte=AWARE).count() == 5
"""


@pytest.mark.parametrize("workers", WORKERS)
def test_guards_see_the_django_orm(
    pytester: pytest.Pytester, on_server: list[str], workers: tuple[str, ...]
) -> None:
    write_project(pytester)
    pytester.makepyfile(test_guards=GUARD_TESTS)
    result = run_dbguard(pytester, *workers, *on_server, plugins=DJANGO)
    result.assert_outcomes(passed=5, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*NaiveDatetimeWarning: naive datetime bound as parameter '#1' (raw SQL on Django "
            "connection 'default') of 'INSERT INTO shop_order (placed, note) VALUES (%s, %s)' "
            "during test_guards.py::test_raw_sql_with_a_naive_datetime*",
            "dbguard: Django DateTimeFields received 15 naive datetime(s) while USE_TZ = True*",
            "  Order.placed in test_guards.py: 15",
        ]
    )
    result.stdout.no_fnmatch_line("*RuntimeWarning: DateTimeField*")


def test_error_mode_fails_naive_datetimes_given_to_the_orm(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    write_project(pytester, ini_extra="dbguard_naive_datetime = error\n")
    pytester.makepyfile(test_guards=GUARD_TESTS)
    result = run_dbguard(pytester, *on_server, "-k", "naive", plugins=DJANGO)
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "E *NaiveDatetimeError: naive datetime bound as parameter "
            "'Order.placed' (a Django DateTimeField) of 'the Django ORM' during "
            "test_guards.py::test_orm_with_naive_datetimes[[]1[]]; bind an aware datetime *"
            "set dbguard_naive_datetime (--dbguard-naive-datetime) to warn or off.",
        ]
    )
    result.stdout.no_fnmatch_line("*DateTimeFields received*")
