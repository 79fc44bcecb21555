"""Django + pytest-django: dbguard's server, one migrate per run into a template, a clone per worker."""

from __future__ import annotations

import pytest

from tests.conftest import run_dbguard
from tests.django_project import migrate_lines, write_project
from tests.pgserver import TestServer

DJANGO = ("pytest_django.plugin",)
DJANGO_XDIST = ("pytest_django.plugin", "xdist.plugin")

ORM_TESTS = """
import datetime
import json
import os
import urllib.request

import pytest
from django.db import connection, connections

from shop.models import Order


@pytest.mark.django_db
def test_orm_in_the_worker_database(django_assert_num_queries):
    with django_assert_num_queries(1):
        Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc), note="a")
    assert connection.settings_dict["NAME"] == os.environ["DBGUARD_DB"]
    assert Order.objects.count() == 1


@pytest.mark.django_db
def test_rolled_back_between_tests():
    assert Order.objects.count() == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_migrations WHERE app = 'shop'")
        assert cursor.fetchone()[0] == 2


def test_transactional(transactional_db):
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc))
    assert Order.objects.count() == 1


def test_live_server(live_server):
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc))
    with urllib.request.urlopen(live_server.url + "/health") as response:
        assert json.load(response) == {"orders": 1}


@pytest.mark.parametrize("n", range(4))
@pytest.mark.django_db
def test_many(n):
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc), note=str(n))
    assert list(Order.objects.values_list("note", flat=True)) == [str(n)]
"""


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
@pytest.mark.parametrize("server", ["embedded", "external"])
def test_migrate_once_and_a_clone_per_worker(
    pytester: pytest.Pytester, pg_server: TestServer, server: str, workers: tuple[str, ...]
) -> None:
    log = write_project(pytester)
    pytester.makepyfile(test_shop=ORM_TESTS)
    url = ["--dbguard-url", pg_server.url()] if server == "external" else []
    before = set(pg_server.databases())
    result = run_dbguard(pytester, *workers, *url, plugins=DJANGO_XDIST)
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["dbguard: *django migrate (djproj.settings)*"])
    migrated = migrate_lines(log)
    assert len(migrated) == 1, migrated  # once per run, whatever the number of workers
    if workers:
        assert "_tpl" in migrated[0]  # into the template the workers cloned
    assert set(pg_server.databases()) == before  # everything dbguard made is dropped
