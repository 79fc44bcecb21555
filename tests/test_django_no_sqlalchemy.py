"""A Django run imports no SQLAlchemy, in any process: dbguard's own maintenance (CREATE and DROP
DATABASE, marks, locks, the janitor) runs on the driver alone, and the connection guards go in
only once the project imports SQLAlchemy itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.django_project import migrate_lines, write_project
from tests.helpers import kept_by, run_dbguard
from tests.pgserver import TestServer

DJANGO = ("pytest_django.plugin",)
WORKER_ROWS = [
    pytest.param((), ["controller"], id="serial"),
    pytest.param(
        ("-n", "2"), ["controller", "gw0", "gw1"], id="xdist", marks=pytest.mark.needs_xdist
    ),
]


# Every process (the test process, the xdist controller) writes the SQLAlchemy modules it holds
# once dbguard has cleaned up: trylast, so after dbguard's own unconfigure has run.
CONFTEST = """
import json
import os
import sys

import pytest


def _loaded():
    return sorted(name for name in sys.modules if name.split(".")[0] == "sqlalchemy")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    worker = getattr(config, "workerinput", {}).get("workerid", "controller")
    with open(os.path.join(str(config.rootpath), f"modules-{worker}.json"), "w") as out:
        json.dump(_loaded(), out)
"""

TESTS = """
import datetime
import sys

import pytest

from shop.models import Order


def _loaded():
    return sorted(name for name in sys.modules if name.split(".")[0] == "sqlalchemy")


@pytest.mark.parametrize("n", range(3))
@pytest.mark.django_db
def test_orm_without_sqlalchemy(n):
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc), note=str(n))
    assert Order.objects.count() == 1
    assert _loaded() == []


def test_transactional_without_sqlalchemy(transactional_db):
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc))
    assert _loaded() == []
"""


def _written(folder: Path) -> dict[str, list[str]]:
    return {
        path.stem.removeprefix("modules-"): json.loads(path.read_text())
        for path in sorted(folder.glob("modules-*.json"))
    }


@pytest.mark.parametrize(("workers", "processes"), WORKER_ROWS)
@pytest.mark.parametrize("server", ["embedded", "external"])
def test_a_django_run_imports_no_sqlalchemy(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    server: str,
    workers: tuple[str, ...],
    processes: list[str],
) -> None:
    log = write_project(pytester)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_shop=TESTS)
    url = ["--dbguard-url", pg_server.url()] if server == "external" else []
    before = set(pg_server.databases())
    result = run_dbguard(pytester, *workers, *url, plugins=DJANGO)
    result.assert_outcomes(passed=4)
    assert _written(pytester.path) == {name: [] for name in processes}
    assert len(migrate_lines(log)) == 1  # the template was still built once
    assert set(pg_server.databases()) == before  # and everything dbguard made dropped


GUARDED_LATE = """
import pytest


def test_no_sqlalchemy_yet():
    import sys

    assert "sqlalchemy" not in sys.modules


def test_sqlalchemy_imported_in_the_test_is_guarded(dbguard_url):
    import sqlalchemy

    from pytest_dbguard.exceptions import ForeignDatabaseError

    foreign = sqlalchemy.make_url(dbguard_url).set(database="postgres")
    engine = sqlalchemy.create_engine(foreign)
    with pytest.raises(ForeignDatabaseError):
        engine.connect()
    engine.dispose()
"""


def test_guards_go_in_when_the_project_imports_sqlalchemy(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """A run that had not imported SQLAlchemy when its first test began still guards the
    connections of an engine made after a test imports it."""
    pytester.makepyfile(test_late=GUARDED_LATE)
    result = run_dbguard(pytester, "--dbguard-url", pg_server.url(), "-p", "no:randomly")
    result.assert_outcomes(passed=2)


FAULT_TESTS = """
import datetime
import sys

import pytest

from shop.models import Order


def _loaded():
    return sorted(name for name in sys.modules if name.split(".")[0] == "sqlalchemy")


def orders():
    return Order.objects.count()


@pytest.mark.django_db(transaction=True)
def test_terminate_then_django_reconnects(dbguard_faults):
    assert orders() == 0
    assert dbguard_faults.terminate() >= 1
    assert dbguard_faults.assert_recovers(orders, first_try=True).attempts == 1
    assert _loaded() == []


@pytest.mark.django_db(transaction=True)
def test_restart_then_django_reconnects_and_terminate_works_again(dbguard_faults):
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc))
    assert dbguard_faults.restart() > 0
    assert dbguard_faults.assert_recovers(orders, first_try=True).attempts == 1
    assert orders() == 1
    # The restart dropped the run's maintenance connection: terminate() works on its successor.
    assert dbguard_faults.terminate() >= 1
    assert dbguard_faults.assert_recovers(orders, first_try=True).attempts == 1
    assert _loaded() == []
"""


@pytest.mark.parametrize(("workers", "processes"), WORKER_ROWS)
def test_terminate_and_restart_in_a_django_run_import_no_sqlalchemy(
    pytester: pytest.Pytester, workers: tuple[str, ...], processes: list[str]
) -> None:
    """terminate() and restart() work on dbguard's maintenance connection (the driver's own),
    not a SQLAlchemy engine of their own; Django's next request reconnects after each."""
    write_project(pytester)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_faults=FAULT_TESTS)
    result = run_dbguard(pytester, *workers, plugins=DJANGO)
    result.assert_outcomes(passed=2)
    assert _written(pytester.path) == {name: [] for name in processes}


FAILING_TESTS = """
import datetime

import pytest

from shop.models import Order


@pytest.mark.django_db
def test_fails():
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc))
    assert Order.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_fails_transactional():
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc))
    assert Order.objects.count() == 2
"""


def test_keep_failed_with_failing_django_tests_imports_no_sqlalchemy(
    pytester: pytest.Pytester, pg_server: TestServer, on_server: list[str], kept_here: set[str]
) -> None:
    """--dbguard-keep-failed hooks into every test's report and keeps both failed tests' rows;
    failing Django tests still leave SQLAlchemy unimported. On the session's server: on the
    embedded default the kept databases would keep that cluster running after the run."""
    write_project(pytester)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_shop=FAILING_TESTS)
    result = run_dbguard(pytester, *on_server, "--dbguard-keep-failed", plugins=DJANGO)
    result.assert_outcomes(failed=2)
    kept_here.update(kept_by(pg_server, result))
    assert len(kept_here) == 2, result.stdout.str()
    assert _written(pytester.path) == {"controller": []}
