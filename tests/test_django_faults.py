"""dbguard_faults on Django connections: close, terminate and cut them; recovery is proved across
Django request boundaries, so the project's CONN_MAX_AGE and CONN_HEALTH_CHECKS decide."""

from __future__ import annotations

import pytest

from tests.django_project import write_project
from tests.helpers import run_dbguard

DJANGO = ("pytest_django.plugin",)

SEED_TEST = """
import datetime

import pytest
from django.db import connection, connections

from shop.models import Order


def orders():
    return Order.objects.count()


@pytest.mark.django_db(transaction=True)
def test_database_connection_can_be_closed_and_reopened(dbguard_faults):
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc))
    assert dbguard_faults.close(connection) == 1
    recovery = dbguard_faults.assert_recovers(orders, first_try=True)
    assert recovery.attempts == 1
    assert orders() == 1


@pytest.mark.django_db(transaction=True)
def test_terminate_then_the_next_request_works(dbguard_faults):
    assert orders() == 0
    assert dbguard_faults.terminate() >= 1
    dbguard_faults.assert_recovers(connections["default"], first_try=True)


@pytest.mark.django_db(transaction=True)
def test_cut_every_connection_then_recover(dbguard_faults):
    assert orders() == 0
    assert dbguard_faults.cut() >= 1
    dbguard_faults.assert_recovers(connections, first_try=True)
    assert orders() == 0
"""


@pytest.mark.parametrize(
    ("max_age", "health_checks"),
    [("0", "0"), ("none", "1")],
    ids=["closed-after-each-request", "persistent-with-health-checks"],
)
def test_recovers_where_the_settings_recover(
    pytester: pytest.Pytester,
    on_server: list[str],
    monkeypatch: pytest.MonkeyPatch,
    max_age: str,
    health_checks: str,
) -> None:
    monkeypatch.setenv("SHOP_CONN_MAX_AGE", max_age)
    monkeypatch.setenv("SHOP_HEALTH_CHECKS", health_checks)
    write_project(pytester)
    pytester.makepyfile(test_seed=SEED_TEST)
    run_dbguard(pytester, *on_server, plugins=DJANGO).assert_outcomes(passed=3)


def test_persistent_connections_without_health_checks_do_not_recover_at_once(
    pytester: pytest.Pytester, on_server: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONN_MAX_AGE = None without CONN_HEALTH_CHECKS: the next request meets the dead
    connection (Django replaces it only at the end of that failed request)."""
    monkeypatch.setenv("SHOP_CONN_MAX_AGE", "none")
    monkeypatch.setenv("SHOP_HEALTH_CHECKS", "0")
    write_project(pytester)
    pytester.makepyfile(
        test_seed=SEED_TEST
        + """

@pytest.mark.django_db(transaction=True)
def test_a_retry_recovers(dbguard_faults):
    assert orders() == 0
    dbguard_faults.close(connection)
    assert dbguard_faults.assert_recovers(orders).attempts == 2
"""
    )
    result = run_dbguard(pytester, *on_server, "-k", "closed_and_reopened or retry", plugins=DJANGO)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*orders in Django requests on Django connection 'default' (CONN_MAX_AGE=None, "
            "CONN_HEALTH_CHECKS=False): the first call after the fault failed "
            "(*Error: *closed*), so your application's next request would fail too*"
        ]
    )


CLIENT_TESTS = """
import pytest
from django.db import connection, utils


@pytest.mark.django_db(transaction=True)
def test_the_test_client_is_not_a_request_boundary(client, dbguard_faults):
    assert client.get("/health").json() == {"orders": 0}
    dbguard_faults.close(connection)
    with pytest.raises(utils.Error, match="closed"):
        client.get("/health")
    connection.close()  # still broken: drop it before the test's own teardown uses it


@pytest.mark.django_db(transaction=True)
def test_assert_recovers_puts_the_client_inside_a_request(client, dbguard_faults):
    assert client.get("/health").json() == {"orders": 0}
    dbguard_faults.close(connection)
    recovery = dbguard_faults.assert_recovers(lambda: client.get("/health"), first_try=True)
    assert recovery.attempts == 1
    assert client.get("/health").json() == {"orders": 0}
"""


def test_the_test_client_and_request_boundaries(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """What the README says: Django's test client sends request_started/request_finished with
    close_old_connections disconnected, so a broken connection survives client.get(); each
    attempt of assert_recovers passes a real boundary first, so the settings (CONN_MAX_AGE = 0
    here) replace it and the client's request inside the attempt works."""
    write_project(pytester)
    pytester.makepyfile(test_client=CLIENT_TESTS)
    run_dbguard(pytester, *on_server, plugins=DJANGO).assert_outcomes(passed=2)


IN_A_TRANSACTION_TEST = """
import pytest
from django.db import connection

from shop.models import Order


def orders():
    return Order.objects.count()


@pytest.mark.django_db
def test_in_pytest_djangos_transaction(dbguard_faults):
    assert orders() == 0
    dbguard_faults.terminate()
    dbguard_faults.assert_recovers(orders, within=1)
"""


def test_recovery_inside_a_django_db_transaction_says_why_it_cannot_work(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """A plain django_db test runs in pytest-django's transaction, where Django never replaces
    a connection: the failure says so and names transaction=True, and counts calls of the ORM
    query it was given, not SELECT 1 statements. Found by adopting dbguard on Misago."""
    write_project(pytester)
    pytester.makepyfile(test_atomic=IN_A_TRANSACTION_TEST)
    result = run_dbguard(pytester, *on_server, plugins=DJANGO)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*orders in Django requests on Django connection 'default' *did not recover within "
            "1 s: call failed * attempt(s)*Last error: *never inside a transaction, and the "
            "connection of 'default' is in one*django_db(transaction=True)*"
        ]
    )
