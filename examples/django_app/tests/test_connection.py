"""The database connection survives being closed under it: Django replaces it at the next request.

The seed test of the issue that brought Django to dbguard: a project whose tests failed with
``InterfaceError: connection already closed`` after ``connection.close()``. ``dbguard_faults``
closes the connection for real, and each attempt of ``assert_recovers`` is one Django request,
so the project's CONN_MAX_AGE and CONN_HEALTH_CHECKS (config/settings/base.py) decide.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from shop.models import Customer, Order


def orders() -> int:
    return Order.objects.count()


@pytest.mark.django_db(transaction=True)  # inside a transaction Django never replaces a connection
def test_database_connection_can_be_closed_and_reopened(dbguard_faults) -> None:
    customer = Customer.objects.create(name="Ada", email="ada@example.com")
    Order.objects.create(customer=customer, placed=timezone.now())
    assert dbguard_faults.close(connection) == 1
    recovery = dbguard_faults.assert_recovers(orders, first_try=True)
    assert recovery.attempts == 1
    assert orders() == 1


@pytest.mark.django_db(transaction=True)
def test_health_answers_after_the_server_terminated_every_connection(dbguard_faults) -> None:
    client = Client()

    def health_is_ok() -> None:
        response = client.get("/health")
        assert response.status_code == 200, response.json()

    health_is_ok()
    assert dbguard_faults.terminate() >= 1
    # Django's test client skips the request boundary (close_old_connections); assert_recovers
    # passes it, so CONN_HEALTH_CHECKS replaces the terminated connection before the view runs.
    dbguard_faults.assert_recovers(health_is_ok, first_try=True)
