"""Django + pytest-django: dbguard's server, one migrate per run into a template, a clone per worker."""

from __future__ import annotations

import pytest

from pytest_dbguard.db import kept_templates
from pytest_dbguard.db.urls import DatabaseURL
from tests.django_project import migrate_lines, write_project
from tests.helpers import WORKERS, run_dbguard, stopped_once
from tests.pgserver import TestServer

DJANGO = ("pytest_django.plugin",)

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


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("server", ["embedded", "external"])
def test_migrate_once_and_a_clone_per_worker(
    pytester: pytest.Pytester, pg_server: TestServer, server: str, workers: tuple[str, ...]
) -> None:
    log = write_project(pytester)
    pytester.makepyfile(test_shop=ORM_TESTS)
    url = ["--dbguard-url", pg_server.url()] if server == "external" else []
    before = set(pg_server.databases())
    result = run_dbguard(pytester, *workers, *url, plugins=DJANGO)
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["dbguard: *django migrate (djproj.settings)*"])
    migrated = migrate_lines(log)
    assert len(migrated) == 1, migrated  # once per run, whatever the number of workers
    database, frozen = migrated[0].split()
    if workers:
        assert "_tpl" in database  # into the template the workers cloned
    assert int(frozen.removeprefix("frozen=")) > 1000  # the modules, settings and apps before it
    assert set(pg_server.databases()) == before  # everything dbguard made is dropped


@pytest.mark.parametrize("workers", WORKERS)
def test_pytest_djangos_own_database_flags_are_said_to_have_no_effect(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    """A project's addopts often carry --reuse-db: the run goes on, and the header says so once."""
    write_project(pytester)
    pytester.makepyfile(test_shop=ORM_TESTS)
    result = run_dbguard(pytester, *workers, "--reuse-db", "--create-db", plugins=DJANGO)
    result.assert_outcomes(passed=8)
    note = "dbguard: pytest-django's --reuse-db and --create-db have no effect: dbguard serves"
    assert result.stdout.str().count(note) == 1, result.stdout.str()
    # From addopts: the note says where to take it out.
    ini = pytester.path / "tox.ini"
    ini.write_text(ini.read_text().replace("[pytest]\n", "[pytest]\naddopts = --reuse-db\n", 1))
    result = run_dbguard(pytester, *workers, plugins=DJANGO)
    result.assert_outcomes(passed=8)
    note = "dbguard: pytest-django's --reuse-db (from addopts in tox.ini) has no effect:"
    assert result.stdout.str().count(note) == 1, result.stdout.str()


def test_reuse_keeps_the_template_until_a_migration_changes(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """--dbguard-reuse: the second run clones the kept template without migrating; a changed
    migration file gives another fingerprint, so the third run migrates again, and so does a
    changed model file for the fourth."""
    log = write_project(pytester)
    pytester.makepyfile(test_shop=ORM_TESTS)
    url = pg_server.url()
    before = set(pg_server.databases())
    try:
        first = run_dbguard(pytester, "--dbguard-reuse", "--dbguard-url", url, plugins=DJANGO)
        first.assert_outcomes(passed=8)
        second = run_dbguard(pytester, "--dbguard-reuse", "--dbguard-url", url, plugins=DJANGO)
        second.assert_outcomes(passed=8)
        second.stdout.fnmatch_lines(
            ["dbguard: *django migrate (djproj.settings), template reused*"]
        )
        assert len(migrate_lines(log)) == 1
        migration = pytester.path / "shop" / "migrations" / "0002_note.py"
        migration.write_text(migration.read_text() + "\n# a reviewed change\n")
        third = run_dbguard(pytester, "--dbguard-reuse", "--dbguard-url", url, plugins=DJANGO)
        third.assert_outcomes(passed=8)
        assert len(migrate_lines(log)) == 2
        models = pytester.path / "shop" / "models.py"
        models.write_text(models.read_text() + "\n# a model file changed too\n")
        fourth = run_dbguard(pytester, "--dbguard-reuse", "--dbguard-url", url, plugins=DJANGO)
        fourth.assert_outcomes(passed=8)
        assert len(migrate_lines(log)) == 3
        kept = set(pg_server.databases()) - before
        assert len(kept) == 3 and all(name.endswith("_tpl") for name in kept), kept
    finally:
        dropped = kept_templates.drop_kept(DatabaseURL.parse(url), "postgres")
    assert len(dropped) == 3
    assert set(pg_server.databases()) == before


# A project's post_migrate handler with an effect outside the database (weblate's writes the git
# identity its tests commit with): each process that runs tests must have run it.
HANDLER_APPS = """
import os

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def note_the_process(sender, using, **kwargs):
    folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(folder, "handlers.log"), "a") as log:
        log.write(f"{os.getpid()} {using}\\n")
    # A row made without looking first: once in a database that migrate made.
    from django.contrib.auth.models import Group

    Group.objects.using(using).create(name=f"seeded-{Group.objects.using(using).count()}")


class ShopConfig(AppConfig):
    name = "shop"

    def ready(self):
        post_migrate.connect(note_the_process, sender=self)
"""
HANDLER_TESTS = """
import os
import pathlib

import pytest
from django.contrib.auth.models import Group, Permission


@pytest.mark.parametrize("n", range(4))
@pytest.mark.django_db
def test_the_handlers_ran_in_this_process(n):
    lines = pathlib.Path("handlers.log").read_text().splitlines()
    assert f"{os.getpid()} default" in lines
    assert Permission.objects.filter(codename="add_order").count() == 1
    assert list(Group.objects.values_list("name", flat=True)) == ["seeded-0"]
"""


@pytest.mark.parametrize("workers", WORKERS)
def test_post_migrate_handlers_run_in_every_test_process(
    pytester: pytest.Pytester, pg_server: TestServer, workers: tuple[str, ...]
) -> None:
    """pytest-django migrates in every worker, and with --reuse-db too: a project's post_migrate
    handlers ran in each process that runs tests. So they do under dbguard, where one process
    migrates the template: in each xdist worker, and when a kept template is reused. What they
    write to the database is taken back: the clone is as migrate made it (one permission each,
    one row of a handler that creates without looking)."""
    write_project(pytester)
    (pytester.path / "shop" / "apps.py").write_text(HANDLER_APPS.lstrip())
    pytester.makepyfile(test_shop=HANDLER_TESTS)
    url = pg_server.url()
    before = set(pg_server.databases())
    try:
        for run in ("first", "reused"):
            result = run_dbguard(
                pytester, "--dbguard-reuse", "--dbguard-url", url, *workers, plugins=DJANGO
            )
            result.assert_outcomes(passed=4)
            if run == "reused":
                result.stdout.fnmatch_lines(["dbguard: *template reused*"])
    finally:
        kept_templates.drop_kept(DatabaseURL.parse(url), "postgres")
    assert set(pg_server.databases()) == before


# A second alias with the same settings as the first (baserow's "default-copy"): Django's test
# setup makes one database for both and migrates it once, the second alias its mirror.
SAME_SETTINGS_ALIAS = """
import copy

DATABASES["copy"] = copy.deepcopy(DATABASES["default"])
"""
SAME_SETTINGS_TESTS = """
import os
import pathlib

import pytest
from django.contrib.auth.models import Group


@pytest.mark.parametrize("n", range(4))
@pytest.mark.django_db(databases=["default", "copy"])
def test_the_handlers_ran_once_in_this_process(n):
    lines = pathlib.Path("handlers.log").read_text().splitlines()
    assert [line for line in lines if line.startswith(f"{os.getpid()} ")] == [
        f"{os.getpid()} default"
    ]
    assert list(Group.objects.values_list("name", flat=True)) == ["seeded-0"]
    assert list(Group.objects.using("copy").values_list("name", flat=True)) == ["seeded-0"]
"""


@pytest.mark.parametrize("served", ["default copy", "copy default"])
@pytest.mark.parametrize("workers", WORKERS)
def test_aliases_with_the_same_settings_are_migrated_once(
    pytester: pytest.Pytester, on_server: list[str], workers: tuple[str, ...], served: str
) -> None:
    """Two served aliases whose settings name one database: Django's test setup migrates it
    once, through ``default`` whatever the order, and makes the other a mirror, so post_migrate
    handlers run once per test process. Under dbguard they ran for each alias (twice in the
    template, a row of a handler that creates without looking made twice)."""
    write_project(pytester, ini_extra=f"dbguard_django_databases = {served}\n")
    settings = pytester.path / "djproj" / "settings.py"
    settings.write_text(settings.read_text() + SAME_SETTINGS_ALIAS)
    (pytester.path / "shop" / "apps.py").write_text(HANDLER_APPS.lstrip())
    pytester.makepyfile(test_shop=SAME_SETTINGS_TESTS)
    run_dbguard(pytester, *on_server, *workers, plugins=DJANGO).assert_outcomes(passed=4)


def test_pg_url_placeholder_is_a_libpq_url(pytester: pytest.Pytester, on_server: list[str]) -> None:
    """{pg_url} is what dj-database-url and django-environ read: postgres://, no +driver."""
    pytester.makeini("[pytest]\ndbguard_env =\n    DATABASE_URL={pg_url}\n")
    pytester.makepyfile(
        """
        import os

        import psycopg


        def test_libpq_reads_it():
            url = os.environ["DATABASE_URL"]
            assert url.startswith("postgres://") and "+" not in url.split("://")[0]
            with psycopg.connect(url) as connection:
                name = connection.execute("SELECT current_database()").fetchone()[0]
            assert name == os.environ["DBGUARD_DB"]
        """
    )
    run_dbguard(pytester, *on_server).assert_outcomes(passed=1)


NO_DJANGO_TEST = """
import sys


def test_django_was_not_imported():
    assert "django" not in sys.modules
"""


@pytest.mark.parametrize(
    ("plugins", "workers"),
    [
        pytest.param((), (), id="without-pytest-django"),
        pytest.param(DJANGO, (), id="no-settings"),
        pytest.param(DJANGO, ("-n", "2"), id="no-settings-xdist", marks=pytest.mark.needs_xdist),
    ],
)
def test_runs_without_django_settings_never_import_django(
    pytester: pytest.Pytester,
    on_server: list[str],
    plugins: tuple[str, ...],
    workers: tuple[str, ...],
) -> None:
    pytester.makepyfile(test_plain=NO_DJANGO_TEST)
    result = run_dbguard(pytester, *on_server, *workers, plugins=plugins)
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*django migrate*")


@pytest.mark.parametrize("workers", WORKERS)
def test_a_failing_migration_stops_before_the_first_test_once(
    pytester: pytest.Pytester, on_server: list[str], workers: tuple[str, ...]
) -> None:
    write_project(pytester)
    broken = pytester.path / "shop" / "migrations" / "0003_broken.py"
    broken.write_text(
        "from django.db import migrations\n\n\n"
        "class Migration(migrations.Migration):\n"
        '    dependencies = [("shop", "0002_note")]\n'
        '    operations = [migrations.RunSQL("ALTER TABLE no_such_table ADD COLUMN x int")]\n'
    )
    pytester.makepyfile(test_shop=ORM_TESTS)
    result = run_dbguard(pytester, *on_server, *workers, plugins=DJANGO)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert (
        output.count("Django's migrate (database alias 'default', settings djproj.settings) failed")
        == 1
    )
    assert 'relation "no_such_table" does not exist' in output
    assert "in migration shop.0003_broken" in output
    assert " passed" not in output


@pytest.mark.parametrize("workers", WORKERS)
def test_an_alias_missing_from_databases_is_a_usage_error(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    write_project(pytester, ini_extra="dbguard_django_databases = default replica\n")
    pytester.makepyfile(test_plain=NO_DJANGO_TEST.replace("not in", "in"))
    stopped_once(
        run_dbguard(pytester, *workers, plugins=DJANGO),
        "ini dbguard_django_databases in tox.ini names the database alias 'replica', which "
        "settings.DATABASES of djproj.settings does not define (it has: default)",
    )
    # Given with -o, the message says so (the ini file does not hold it).
    stopped_once(
        run_dbguard(pytester, "-o", "dbguard_django_databases=defualt", plugins=DJANGO),
        "ini dbguard_django_databases in -o names the database alias 'defualt', which",
    )


@pytest.mark.needs_xdist
def test_a_conftest_that_extends_django_db_setup_keeps_working(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """pytest-django's documented recipe: a session fixture that requests django_db_setup and
    seeds data; under dbguard it gets dbguard's override, and the seed lands in the worker's clone."""
    write_project(pytester)
    pytester.makeconftest(
        """
        import datetime

        import pytest


        @pytest.fixture(scope="session")
        def django_db_setup(django_db_setup, django_db_blocker):
            from shop.models import Order

            with django_db_blocker.unblock():
                Order.objects.create(placed=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc), note="seed")
        """
    )
    pytester.makepyfile(
        test_seed="""
        import pytest

        from shop.models import Order


        @pytest.mark.django_db
        @pytest.mark.parametrize("n", range(3))
        def test_seeded(n):
            assert list(Order.objects.values_list("note", flat=True)) == ["seed"]
        """
    )
    run_dbguard(pytester, *on_server, "-n", "2", plugins=DJANGO).assert_outcomes(passed=3)


def test_serialized_rollback_restores_what_migrate_wrote(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """The override keeps Django's serialized copy of the migrated database, as pytest-django's
    own setup does: after a transactional test empties every table, the next one with
    serialized_rollback=True gets the rows a data migration wrote back."""
    write_project(pytester)
    (pytester.path / "shop" / "migrations" / "0003_first_order.py").write_text(
        "import datetime\n\nfrom django.db import migrations\n\n\n"
        "def first_order(apps, schema_editor):\n"
        '    apps.get_model("shop", "Order").objects.create(\n'
        "        placed=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),\n"
        '        note="from migration",\n'
        "    )\n\n\n"
        "class Migration(migrations.Migration):\n"
        '    dependencies = [("shop", "0002_note")]\n'
        "    operations = [migrations.RunPython(first_order, migrations.RunPython.noop)]\n"
    )
    pytester.makepyfile(
        test_serialized="""
        import pytest

        from shop.models import Order


        @pytest.mark.django_db(transaction=True, serialized_rollback=True)
        @pytest.mark.parametrize("n", range(2))
        def test_the_migrated_row_is_there(n):
            assert Order.objects.filter(note="from migration").count() == 1
            Order.objects.all().delete()
        """
    )
    run_dbguard(pytester, *on_server, plugins=DJANGO).assert_outcomes(passed=2)


@pytest.mark.parametrize("workers", WORKERS)
def test_django_databases_without_django_settings_is_a_usage_error(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    pytester.makeini("[pytest]\ndbguard_django_databases = default\n")
    pytester.makepyfile(test_plain=NO_DJANGO_TEST)
    output = stopped_once(
        run_dbguard(pytester, *workers, plugins=DJANGO),
        "ini dbguard_django_databases is set, but this run has no Django",
    )
    assert "settings.configure() in your conftest's pytest_configure" in output


FIRST_TESTS = """
import datetime

import pytest

from shop.models import Order


@pytest.mark.parametrize("n", range(3))
@pytest.mark.django_db
def test_orm(n):
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc), note=str(n))
    assert Order.objects.count() == 1
"""


def test_a_single_process_migrates_and_tests_on_one_connection(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """Built in place (one process, nothing kept), the worker's database is migrated on the
    Django connection the tests then use, as pytest-django's own setup does: the first test
    does not connect (TCP, authentication) again."""
    write_project(pytester)
    pytester.makepyfile(test_first=FIRST_TESTS)
    offset = pg_server.log_offset()
    result = run_dbguard(pytester, "--dbguard-url", pg_server.url(), plugins=DJANGO)
    result.assert_outcomes(passed=3)
    worker = [name for name in pg_server.connections_since(offset) if "_dbg_" in name]
    assert len(worker) == 1, worker


def test_an_unset_alias_list_is_named_as_its_default(pytester: pytest.Pytester) -> None:
    """Settings without a 'default' alias and no dbguard_django_databases: the error blamed the
    ini file, which does not set the key."""
    pytester.makepyfile(
        settings=(
            'SECRET_KEY = "x"\nINSTALLED_APPS = ["django.contrib.contenttypes"]\n'
            'DATABASES = {"primary": {"ENGINE": "django.db.backends.postgresql", "NAME": "app"}}\n'
        ),
        test_plain="def test_x(): pass",
    )
    pytester.makeini("[pytest]\nDJANGO_SETTINGS_MODULE = settings\npythonpath = .\n")
    stopped_once(
        run_dbguard(pytester, plugins=DJANGO),
        "the default of ini dbguard_django_databases (unset) names the database alias 'default'",
    )


def test_a_django_model_as_dbguard_metadata_says_django_needs_none(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """Misago's trial pointed dbguard_metadata at a Django model: the error named a ModelBase
    and asked for a MetaData; a Django project needs no dbguard_metadata at all."""
    write_project(pytester, ini_extra="dbguard_metadata = shop.models:Order\n")
    pytester.makepyfile(test_x="def test_x(db):\n    pass\n")
    result = run_dbguard(pytester, *on_server, plugins=DJANGO)
    stopped_once(result, "A Django project needs no dbguard_metadata")
    result.stderr.fnmatch_lines(["*'shop.models:Order' is a ModelBase*migrate. Remove the line.*"])
