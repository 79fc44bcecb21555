"""Django under xdist starts sooner: the controller checks the server without SQLAlchemy, and
builds the template (one migrate) while its workers start, so they only clone it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_dbguard.db import kept_templates
from pytest_dbguard.db.urls import DatabaseURL
from tests.django_project import write_project
from tests.helpers import run_dbguard, signal_once_ready
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

DJANGO = ("pytest_django.plugin",)

CHECK_WITHOUT_SQLALCHEMY = """
import sys

from pytest_dbguard.server.readiness import probe, wait_until_ready

ready = wait_until_ready(sys.argv[1], timeout=10)
assert ready.server_version, ready
assert probe(sys.argv[1]).status == "ok"
print("sqlalchemy imported:", "sqlalchemy" in sys.modules)
"""


def test_the_readiness_check_of_a_psycopg_url_does_not_import_sqlalchemy(
    pg_server: TestServer,
) -> None:
    """The xdist controller runs this check before it starts any worker: SQLAlchemy's import
    (a quarter second) is not needed to open one psycopg connection."""
    for url in (pg_server.url(), pg_server.url().replace("+psycopg", "+psycopg2")):
        done = subprocess.run(
            [sys.executable, "-c", CHECK_WITHOUT_SQLALCHEMY, url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "sqlalchemy imported: False"


# A migration of the project that logs who ran it: the xdist controller has no
# PYTEST_XDIST_WORKER. With SHOP_FAIL_IN_CONTROLLER=1 it fails there and nowhere else.
WHO_MIGRATES = """
import logging
import os

from django.db import migrations


def log_who(apps, schema_editor):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    logging.getLogger("shop.migrations").warning("MIGRATION LOG LINE from %s", worker)
    folder = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(folder, "who.log"), "a") as log:
        log.write(worker + " " + schema_editor.connection.settings_dict["NAME"] + "\\n")
    if worker == "controller" and os.environ.get("SHOP_FAIL_IN_CONTROLLER") == "1":
        raise RuntimeError("only the controller fails here")


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_note")]
    operations = [migrations.RunPython(log_who, migrations.RunPython.noop)]
"""

WORKER_TESTS = """
import datetime
import os

import pytest
from django.db import connection

from shop.models import Order


@pytest.mark.django_db
@pytest.mark.parametrize("n", range(4))
def test_each_worker_has_its_own_clone(n):
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc), note=str(n))
    assert Order.objects.count() == 1
    # The controller's build exported the template's variables: none of them reached a worker.
    assert connection.settings_dict["NAME"] == os.environ["DBGUARD_DB"]
    assert os.environ["DATABASE_URL"].endswith("/" + os.environ["DBGUARD_DB"])
    assert os.environ["DBGUARD_WORKER"] == os.environ["PYTEST_XDIST_WORKER"]
"""

ENV_INI = "dbguard_env =\n    DATABASE_URL={pg_url}\n"


def write_logged_project(pytester: pytest.Pytester) -> Path:
    """The shared test project with a third migration that logs who ran it; the log's path."""
    write_project(pytester, ini_extra=ENV_INI)
    (pytester.path / "shop" / "migrations" / "0003_who.py").write_text(WHO_MIGRATES.lstrip())
    pytester.makepyfile(test_shop=WORKER_TESTS)
    return pytester.path / "who.log"


def who_migrated(log: Path) -> list[tuple[str, str]]:
    """(who, database) per migrate of the project."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [(line.split(" ", 1)[0], line.split(" ", 1)[1]) for line in lines]


@pytest.mark.needs_xdist
@pytest.mark.parametrize("server", ["embedded", "external"])
def test_under_xdist_the_controller_migrates_the_template_once_and_workers_clone_it(
    pytester: pytest.Pytester, pg_server: TestServer, server: str
) -> None:
    """The xdist controller builds the template while its workers start: one migrate, in the
    controller, into the template; each worker's database is a clone of it."""
    log = write_logged_project(pytester)
    url = ["--dbguard-url", pg_server.url()] if server == "external" else []
    before = set(pg_server.databases())
    result = run_dbguard(pytester, "-n", "2", *url, plugins=DJANGO)
    result.assert_outcomes(passed=4)
    migrated = who_migrated(log)
    assert len(migrated) == 1, migrated
    assert migrated[0][0] == "controller" and "_tpl" in migrated[0][1], migrated
    assert set(pg_server.databases()) == before  # the template and the clones are dropped
    # The line says how long the migrate took: the pause before the first test (paperless: 22 s).
    result.stdout.fnmatch_lines(
        ["dbguard: *django migrate (djproj.settings); schema built in *.* s; *"]
    )


SLOW_MIGRATION = """
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_who")]
    operations = [migrations.RunSQL("SELECT pg_sleep(120)", migrations.RunSQL.noop)]
"""


# Python's own work between statements (a RunPython, rendering a big project's model states):
# ending the connection stops it only at its next statement (label-studio: 15-25 s).
SLOW_PYTHON_MIGRATION = """
import time

from django.db import migrations


def work(apps, schema_editor):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.01)


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_who")]
    operations = [migrations.RunPython(work, migrations.RunPython.noop)]
"""


# ... that catches what it can: dbguard's stop is not an Exception.
CATCHING_PYTHON_MIGRATION = SLOW_PYTHON_MIGRATION.replace(
    "        time.sleep(0.01)\n",
    "        try:\n            time.sleep(0.01)\n        except Exception:\n            pass\n",
)
# ... inside one call into C, which no exception reaches: left to end with the process.
ONE_LONG_CALL_MIGRATION = SLOW_PYTHON_MIGRATION.replace(
    "    deadline = time.monotonic() + 120\n    while time.monotonic() < deadline:\n"
    "        time.sleep(0.01)\n",
    "    time.sleep(60)\n",
)


@pytest.mark.needs_xdist
@pytest.mark.parametrize(
    "slow",
    [SLOW_MIGRATION, SLOW_PYTHON_MIGRATION, CATCHING_PYTHON_MIGRATION, ONE_LONG_CALL_MIGRATION],
    ids=["sql", "python", "python-catching", "one-long-call"],
)
def test_ctrl_c_during_the_controllers_build_does_not_wait_for_the_migrate(
    pytester: pytest.Pytester, pg_server: TestServer, slow: str
) -> None:
    """Ctrl-C while the controller migrates the template (a big project's migrate takes many
    seconds): the build is stopped, not waited for, and nothing is left on the server."""
    log = write_logged_project(pytester)
    (pytester.path / "shop" / "migrations" / "0004_slow.py").write_text(slow.lstrip())
    before = set(pg_server.databases())
    # Ctrl-C in a terminal reaches the whole process group; the slow migration alone lasts
    # 120 s, longer than the helper waits for the run to end.
    returncode, output = signal_once_ready(
        pytester.path,
        ("-n", "2"),
        ["-p", "pytest_django.plugin", "--dbguard-url", pg_server.url()],
        [log.name],  # the controller has reached the migrations
        group=True,
        signum=signal.SIGINT,
    )
    assert returncode == pytest.ExitCode.INTERRUPTED, output
    assert "dbguard: stopping the template build, the run is over" in output
    left = "dbguard: the template build did not stop within 10 s (a migration inside one long call)"
    assert (left in output) == (slow is ONE_LONG_CALL_MIGRATION), output
    assert SUPERUSER_PASSWORD not in output
    deadline = time.monotonic() + 10  # the ended backend leaves the server a moment later
    while set(pg_server.databases()) != before:
        assert time.monotonic() < deadline, set(pg_server.databases()) - before
        time.sleep(0.1)


@pytest.mark.needs_xdist
def test_a_build_that_fails_only_in_the_controller_is_built_by_a_worker(
    pytester: pytest.Pytester, pg_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller's early build is an optimisation: when it fails, nothing is left of it,
    and the first worker builds the template as it would without it; the run passes, and its
    summary line says what happened."""
    log = write_logged_project(pytester)
    monkeypatch.setenv("SHOP_FAIL_IN_CONTROLLER", "1")
    before = set(pg_server.databases())
    result = run_dbguard(pytester, "-n", "2", "--dbguard-url", pg_server.url(), plugins=DJANGO)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "dbguard: the xdist controller's early build of the template *_tpl* failed "
            "(alias 'default': RuntimeError: only the controller fails here in migration "
            "shop.0003_who (at */shop/migrations/0003_who.py:*)); the workers built it instead"
        ]
    )
    migrated = who_migrated(log)
    assert migrated[0][0] == "controller", migrated
    assert sorted(who for who, _ in migrated[1:]) in (["gw0"], ["gw1"]), migrated
    assert len({database for _, database in migrated}) == 1, migrated  # one template name
    assert set(pg_server.databases()) == before
    assert "Bench-" not in result.stdout.str()


@pytest.mark.needs_xdist
def test_a_failing_migration_under_xdist_is_reported_once_with_its_cause(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """A migration that fails everywhere: the controller's attempt is silent, a worker's
    failure stops the run before the first test, printed once, and nothing is left over."""
    log = write_logged_project(pytester)
    broken = pytester.path / "shop" / "migrations" / "0004_broken.py"
    broken.write_text(
        "from django.db import migrations\n\n\n"
        "class Migration(migrations.Migration):\n"
        '    dependencies = [("shop", "0003_who")]\n'
        '    operations = [migrations.RunSQL("ALTER TABLE no_such_table ADD COLUMN x int")]\n'
    )
    before = set(pg_server.databases())
    result = run_dbguard(pytester, "-n", "2", "--dbguard-url", pg_server.url(), plugins=DJANGO)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert output.count("Django's migrate (database alias 'default'") == 1, output
    assert 'relation "no_such_table" does not exist' in output
    assert "in migration shop.0004_broken" in output
    assert " passed" not in output and "early build" not in output
    assert who_migrated(log)[0][0] == "controller"
    assert set(pg_server.databases()) == before


@pytest.mark.needs_xdist
def test_reuse_under_xdist_the_controller_builds_the_kept_template_once(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """--dbguard-reuse -n 2: the first run's controller builds the kept template (the header
    says built), the second run clones it without migrating (reused)."""
    log = write_logged_project(pytester)
    url = pg_server.url()
    before = set(pg_server.databases())
    args = ("-n", "2", "--dbguard-reuse", "--dbguard-url", url)
    try:
        first = run_dbguard(pytester, *args, plugins=DJANGO)
        first.assert_outcomes(passed=4)
        # On an external server the kept template is a database there, which the header names.
        kept = "(kept on the server as postgres_dbg_*_tpl: dbguard janitor --older-than 0 drops it)"
        first.stdout.fnmatch_lines(
            [f"dbguard: *django migrate (djproj.settings), template built {kept};*"]
        )
        second = run_dbguard(pytester, *args, plugins=DJANGO)
        second.assert_outcomes(passed=4)
        second.stdout.fnmatch_lines([f"dbguard: *template reused {kept};*"])
        migrated = who_migrated(log)
        assert [who for who, _ in migrated] == ["controller"], migrated
    finally:
        dropped = kept_templates.drop_kept(DatabaseURL.parse(url), "postgres")
    assert len(dropped) == 1
    assert set(pg_server.databases()) == before


LAB_SETTINGS = """
SECRET_KEY = "x"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "lab"]
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app"}}
USE_TZ = True
"""
MODEL_IN_A_TEST_MODULE = """
import pytest
from django.contrib.auth.models import Permission
from django.db import models


class Sample(models.Model):  # app "lab" has no migrations: migrate --run-syncdb makes its table
    name = models.CharField(max_length=20)


@pytest.mark.django_db
@pytest.mark.parametrize("n", range(2))
def test_its_table_is_there(n):
    Sample.objects.create(name="a")
    assert Sample.objects.count() == 1
    # and what migrate's post_migrate writes for it
    assert Permission.objects.filter(codename="add_sample").exists()
"""


@pytest.mark.needs_xdist
def test_a_model_declared_in_a_test_module_gets_its_table(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """pytest-django migrates (run_syncdb) in each process after collection, which registers
    the models that test modules declare for an app without migrations (taiga). The xdist
    controller builds the template before anything is collected, and a serial run may reuse
    what it kept: the test processes add those tables, with their permissions. The app's
    migrations folder has no __init__.py, which Django counts as no migrations. Nothing
    connected through Django before the controller's build here, which then failed on Django
    3.2 and 6.1 (KeyError: 'OPTIONS')."""
    pytester.makepyfile(settings=LAB_SETTINGS)
    pytester.mkpydir("lab")
    (pytester.path / "lab" / "models.py").write_text("")
    (pytester.path / "lab" / "migrations").mkdir()
    (pytester.path / "lab" / "test_lab.py").write_text(MODEL_IN_A_TEST_MODULE)
    pytester.makeini(
        "[pytest]\nDJANGO_SETTINGS_MODULE = settings\npythonpath = .\ndjango_find_project = false\n"
    )
    url = pg_server.url()
    before = set(pg_server.databases())
    try:
        for args in (("-n", "2"), ()):  # then a serial run that reuses what the first kept
            result = run_dbguard(
                pytester, "--dbguard-reuse", "--dbguard-url", url, *args, plugins=DJANGO
            )
            result.assert_outcomes(passed=2)
            assert "early build" not in result.stdout.str()
    finally:
        kept_templates.drop_kept(DatabaseURL.parse(url), "postgres")
    assert set(pg_server.databases()) == before


LOG_TO_STDERR = """
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
"""


@pytest.mark.needs_xdist
def test_what_the_controllers_build_logs_is_not_shown(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """A migration that logs (pretalx's): its lines came after the run's summary line, from the
    controller's captured stderr; pytest-django shows a worker's migrate output only when it
    fails."""
    log = write_logged_project(pytester)
    settings = pytester.path / "djproj" / "settings.py"
    settings.write_text(settings.read_text() + LOG_TO_STDERR)
    result = run_dbguard(pytester, "-n", "2", "--dbguard-url", pg_server.url(), plugins=DJANGO)
    result.assert_outcomes(passed=4)
    assert [who for who, _ in who_migrated(log)] == ["controller"]
    assert "MIGRATION LOG LINE" not in result.stdout.str() + result.stderr.str()
