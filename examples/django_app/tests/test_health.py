"""GET /health runs a real query on the worker's database."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from shop.models import Order


@pytest.mark.django_db
def test_health_runs_a_query(client: Client, order: Order) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["orders"] == 1
    # The database dbguard gave this worker, not the one a developer's DATABASE_URL names.
    assert body["database"] == connection.settings_dict["NAME"]
    assert body["server_time"].endswith("+00:00")


@pytest.mark.django_db
def test_health_counts_queries(client: Client, django_assert_num_queries) -> None:
    with django_assert_num_queries(2):  # SELECT current_database(), and the count
        assert client.get("/health").json()["orders"] == 0
