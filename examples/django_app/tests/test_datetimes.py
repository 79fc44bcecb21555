"""USE_TZ = True: aware datetimes round-trip; naive ones are reported, by Django and by dbguard."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection
from django.utils import timezone
from shop.models import Customer, Order

from pytest_dbguard import NaiveDatetimeWarning

BERLIN = datetime.timezone(datetime.timedelta(hours=1))


@pytest.mark.django_db
def test_aware_datetime_round_trips(customer: Customer) -> None:
    placed = datetime.datetime(2024, 3, 1, 9, 30, tzinfo=BERLIN)
    order = Order.objects.create(customer=customer, placed=placed)
    stored = Order.objects.get(pk=order.pk).placed
    assert stored == placed  # the same instant ...
    assert stored.utcoffset() == datetime.timedelta(0)  # ... read back in UTC
    assert Order.objects.filter(placed__lt=timezone.now()).count() == 1


@pytest.mark.django_db
def test_a_naive_datetime_in_the_orm_is_reported_by_django(customer: Customer) -> None:
    # Unchecked, this is one RuntimeWarning per row; dbguard folds those into one summary line
    # per field and file (dbguard_naive_datetime = error makes them fail the test instead).
    with pytest.warns(RuntimeWarning, match=r"Order\.placed received a naive datetime"):
        Order.objects.create(customer=customer, placed=datetime.datetime(2024, 3, 1, 9, 30))


@pytest.mark.django_db
def test_a_naive_datetime_in_raw_sql_is_reported_by_dbguard(customer: Customer) -> None:
    # Raw SQL bypasses Django's check; dbguard's guard sees the parameter on the connection.
    reported = pytest.warns(NaiveDatetimeWarning, match="raw SQL on Django connection 'default'")
    with reported, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO shop_order (customer_id, placed, status) VALUES (%s, %s, %s)",
            [customer.pk, datetime.datetime(2024, 3, 1, 9, 30), "placed"],
        )
    assert Order.objects.count() == 1
