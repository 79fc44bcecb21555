"""Django's own test-database settings, honoured as Django's test setup honours them: apps without
migrations get their tables, ``TEST['MIGRATE'] = False`` and pytest-django's ``--nomigrations``
build the tables from the models, ``TEST['TEMPLATE']`` and ``TEST['CHARSET']`` shape the
database, and ``TEST['COLLATION']`` (which PostgreSQL cannot take) stops the run."""

from __future__ import annotations

import uuid

import pytest

from pytest_dbguard.db import kept_templates
from pytest_dbguard.db.urls import DatabaseURL
from tests.django_project import migrate_lines, write_project
from tests.helpers import WORKERS, run_dbguard, stopped_once
from tests.pgserver import TestServer
from tests.test_django import DJANGO

# An app with a model and no migrations package, as a reusable app's test suite has.
NOTES_MODELS = """
from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=20)
"""
TESTS = """
import pytest
from django.db import connection

from notes.models import Note
from shop.models import Order


@pytest.mark.django_db
def test_unmigrated_app_has_its_table():
    Note.objects.create(text="a")
    assert Note.objects.count() == 1


@pytest.mark.django_db
def test_migrated_app_has_its_columns():
    assert Order.objects.filter(note="").count() == 0


@pytest.mark.django_db
def test_database_shape():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
        )
        encoding = cursor.fetchone()[0]
        cursor.execute("SELECT to_regclass('public.from_the_template') IS NOT NULL")
        from_template = cursor.fetchone()[0]
    with open("shape.txt", "a") as shape:
        shape.write(f"{encoding} {from_template}\\n")
"""


DISABLE_MIGRATIONS = """

class DisableMigrations:
    def __contains__(self, item):
        return True

    def __getitem__(self, item):
        return None


MIGRATION_MODULES = DisableMigrations()
"""


def _project(pytester: pytest.Pytester, settings_tail: str = "") -> None:
    """The shop project plus an app without migrations; ``settings_tail`` appended to its
    settings (to change ``DATABASES['default']['TEST']``)."""
    write_project(pytester)
    pytester.mkpydir("notes")
    (pytester.path / "notes" / "models.py").write_text(NOTES_MODELS.lstrip())
    settings = pytester.path / "djproj" / "settings.py"
    text = settings.read_text().replace('"shop"]', '"shop", "notes"]')
    settings.write_text(text + settings_tail)
    pytester.makepyfile(test_project=TESTS)


def _shape(pytester: pytest.Pytester) -> list[str]:
    """The test database's encoding and whether it has the TEST template's table, as the test
    found them."""
    return (pytester.path / "shape.txt").read_text().splitlines()


@pytest.mark.parametrize("workers", WORKERS)
def test_an_app_without_migrations_gets_its_tables(
    pytester: pytest.Pytester, on_server: list[str], workers: tuple[str, ...]
) -> None:
    _project(pytester)
    result = run_dbguard(pytester, *workers, *on_server, plugins=DJANGO)
    result.assert_outcomes(passed=3)
    assert len(migrate_lines(pytester.path / "migrate.log")) == 1  # the migrations ran, once
    assert _shape(pytester) == ["UTF8 False"]


@pytest.mark.needs_xdist  # the inner run uses -n 2
@pytest.mark.parametrize(
    ("how", "reason"),
    [
        pytest.param("--nomigrations", "--nomigrations", id="nomigrations"),
        pytest.param("TEST", "TEST['MIGRATE'] = False", id="TEST-MIGRATE"),
        # Test settings' own idiom (pretix): every app's migrations module is None.
        pytest.param(
            "MIGRATION_MODULES", "MIGRATION_MODULES in djproj.settings", id="MIGRATION_MODULES"
        ),
    ],
)
def test_migrations_off_builds_the_tables_from_the_models(
    pytester: pytest.Pytester, on_server: list[str], how: str, reason: str
) -> None:
    tail = {
        "TEST": 'DATABASES["default"]["TEST"] = {"MIGRATE": False}\n',
        "MIGRATION_MODULES": DISABLE_MIGRATIONS,
    }.get(how, "")
    _project(pytester, tail)
    args = ["--nomigrations"] if how == "--nomigrations" else []
    result = run_dbguard(pytester, "-n", "2", *on_server, *args, plugins=DJANGO)
    result.assert_outcomes(passed=3)
    assert migrate_lines(pytester.path / "migrate.log") == []  # no migration ran
    result.stdout.fnmatch_lines(
        [
            "dbguard: *django migrate (djproj.settings), tables from the models without "
            f"migrations ({reason.replace('[', '[[]')})*"
        ]
    )


@pytest.mark.needs_xdist  # the inner run uses -n 2
def test_test_template_and_charset_shape_the_database(
    pytester: pytest.Pytester, pg_server: TestServer, on_server: list[str]
) -> None:
    """TEST['TEMPLATE'] names a database the server has (with an extension or a table the
    project relies on); TEST['CHARSET'] its encoding (template0 can take any)."""
    base = f"tpl_{uuid.uuid4().hex[:8]}"
    pg_server.sql(f"CREATE DATABASE {base} TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C'")
    try:
        pg_server.sql("CREATE TABLE from_the_template (id int)", database=base)
        _project(
            pytester,
            f'DATABASES["default"]["TEST"] = {{"TEMPLATE": "{base}", "CHARSET": "LATIN1"}}\n',
        )
        result = run_dbguard(pytester, "-n", "2", *on_server, plugins=DJANGO)
        result.assert_outcomes(passed=3)
        assert _shape(pytester) == ["LATIN1 True"]
    finally:
        pg_server.sql(f"DROP DATABASE IF EXISTS {base}")


def test_a_test_template_the_server_lacks_stops_the_run(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """No silent substitute: the embedded cluster, or a server without it, has no such database."""
    _project(pytester, 'DATABASES["default"]["TEST"] = {"TEMPLATE": "template_postgis"}\n')
    result = run_dbguard(pytester, *on_server, plugins=DJANGO)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret != 0 and " passed" not in output
    assert 'template database "template_postgis" does not exist' in output
    assert (
        'dbguard created it with TEMPLATE "template_postgis", as '
        "DATABASES['default']['TEST']['TEMPLATE'] in djproj.settings asks: that server must "
        "have such a database" in output
    ), output


@pytest.mark.needs_xdist  # the inner run uses -n 2
@pytest.mark.parametrize(
    ("tail", "message"),
    [
        pytest.param(
            'DATABASES["default"]["TEST"] = {"COLLATION": "C"}\n',
            "DATABASES['default']['TEST']['COLLATION'] is set in djproj.settings, but PostgreSQL "
            "takes no collation when it creates a database",
            id="collation",
        ),
        pytest.param(
            'DATABASES["other"] = dict(DATABASES["default"], TEST={"CHARSET": "LATIN1"})\n'
            'DATABASES["default"]["TEST"] = {"CHARSET": "UTF8"}\n',
            "DATABASES aliases default, other in djproj.settings set TEST['CHARSET'] differently "
            "(default: 'UTF8', other: 'LATIN1')",
            id="aliases-differ",
        ),
    ],
)
def test_test_settings_dbguard_cannot_honour_stop_the_run_once(
    pytester: pytest.Pytester, on_server: list[str], tail: str, message: str
) -> None:
    _project(pytester, tail)
    pytester.makeini(
        "[pytest]\nDJANGO_SETTINGS_MODULE = djproj.settings\npythonpath = .\n"
        "django_find_project = false\ndbguard_django_databases = default other\n"
        if "other" in tail
        else "[pytest]\nDJANGO_SETTINGS_MODULE = djproj.settings\npythonpath = .\n"
        "django_find_project = false\n"
    )
    stopped_once(run_dbguard(pytester, "-n", "2", *on_server, plugins=DJANGO), message)


def test_reuse_keeps_separate_templates_with_and_without_migrations(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """A template built from the models is not the migrated one: --dbguard-reuse keeps one of
    each, and a run with --nomigrations never clones the migrated template."""
    _project(pytester)
    url = pg_server.url()
    before = set(pg_server.databases())
    reuse = ("--dbguard-reuse", "--dbguard-url", url)
    try:
        run_dbguard(pytester, *reuse, plugins=DJANGO).assert_outcomes(passed=3)
        off = run_dbguard(pytester, *reuse, "--nomigrations", plugins=DJANGO)
        off.assert_outcomes(passed=3)
        off.stdout.fnmatch_lines(["dbguard: *without migrations (--nomigrations), template built*"])
        again = run_dbguard(pytester, *reuse, "--nomigrations", plugins=DJANGO)
        again.stdout.fnmatch_lines(
            ["dbguard: *without migrations (--nomigrations), template reused*"]
        )
        assert len(migrate_lines(pytester.path / "migrate.log")) == 1  # only the first run's
    finally:
        dropped = kept_templates.drop_kept(DatabaseURL.parse(url), "postgres")
    assert len(dropped) == 2
    assert set(pg_server.databases()) == before


OTHER_ALIAS_TESTS = """
import datetime

import pytest
from django.db import connections

from shop.models import Order


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_uses_two_aliases():
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc))
    with connections["other"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM shop_order")
        assert cursor.fetchone()[0] == 1
"""


# pytest-django 4.5 to 4.8 have no _get_databases_for_setup (they set every alias up): a
# conftest takes it away, and dbguard must find the aliases the tests ask for by itself (it
# found none, and baserow's test reached the developer's database through its second alias).
WITHOUT_ALIAS_READER = """
import pytest_django.fixtures

del pytest_django.fixtures._get_databases_for_setup
"""


@pytest.mark.parametrize("release", ["current", "before 4.9"])
@pytest.mark.parametrize("workers", WORKERS)
def test_an_alias_dbguard_does_not_serve_stops_the_run_before_it_is_flushed(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    on_server: list[str],
    workers: tuple[str, ...],
    release: str,
) -> None:
    """The alias names a real database (a developer's): pytest-django would flush it after the
    transactional test. The run stops before any test, printed once, and its rows stay; a
    single run stops before it migrates (pytest calls the collection's last hook even after an
    earlier one failed: it migrated the whole project first, Misago's 29 s)."""
    if release != "current":
        pytester.makeconftest(WITHOUT_ALIAS_READER)
    real = f"real_{uuid.uuid4().hex[:8]}"
    pg_server.sql(f"CREATE DATABASE {real}")
    try:
        pg_server.sql(
            "CREATE TABLE shop_order (id bigint, placed timestamptz, note text)", database=real
        )
        pg_server.sql("INSERT INTO shop_order VALUES (1, now(), 'keep me')", database=real)
        target = DatabaseURL.parse(pg_server.url())
        _project(
            pytester,
            'DATABASES["other"] = dict(DATABASES["default"], '
            f'NAME="{real}", HOST="{target.host}", PORT="{target.port}", USER="postgres", '
            f'PASSWORD="{target.password}")\n',
        )
        pytester.makepyfile(test_project=OTHER_ALIAS_TESTS)
        output = stopped_once(
            run_dbguard(pytester, *workers, *on_server, plugins=DJANGO),
            "Tests ask for the database alias(es) 'other' (django_db(databases=...) or a "
            "TestCase's databases), which dbguard does not serve: Django would use the database "
            f"that DATABASES['other'] in djproj.settings names ({real} on {target.host})",
        )
        assert "ini dbguard_django_databases = default other" in output
        assert target.password and target.password not in output
        if not workers:  # xdist's controller starts its build before a worker's collection ends
            assert migrate_lines(pytester.path / "migrate.log") == []
            assert "dbguard: " not in output
        kept = pg_server.sql("SELECT note FROM shop_order", database=real).stdout.split()
        assert kept == ["keep", "me"]
    finally:
        pg_server.sql(f"DROP DATABASE IF EXISTS {real}")


@pytest.mark.needs_xdist  # the inner run uses -n 2
def test_a_mirror_alias_reaches_the_workers_database(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """TEST['MIRROR'] = 'default' (a read replica): Django's test setup points it at the
    default alias's test database, and so does dbguard's, in every worker."""
    _project(
        pytester,
        'DATABASES["other"] = dict(DATABASES["default"], NAME="replica", HOST="replica.invalid", '
        'TEST={"MIRROR": "default"})\n',
    )
    pytester.makepyfile(test_project=OTHER_ALIAS_TESTS)
    result = run_dbguard(pytester, "-n", "2", *on_server, plugins=DJANGO)
    result.assert_outcomes(passed=1)


# Reads through the mirror while migrating (saleor's replica, used by code a migration runs).
READS_THE_MIRROR = """
from django.db import connections, migrations


def read(apps, schema_editor):
    with connections["other"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM shop_order")


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_note")]
    operations = [migrations.RunPython(read, migrations.RunPython.noop)]
"""


@pytest.mark.parametrize("workers", WORKERS)
def test_a_migration_that_reads_through_a_mirror_reaches_the_template(
    pytester: pytest.Pytester, on_server: list[str], workers: tuple[str, ...]
) -> None:
    """The build pointed only the served aliases at the template: the mirror kept the settings'
    host, and under -n 2 the controller's early build failed (saleor: its workers built it)."""
    _project(
        pytester,
        'DATABASES["other"] = dict(DATABASES["default"], NAME="replica", HOST="replica.invalid", '
        'TEST={"MIRROR": "default"})\n',
    )
    (pytester.path / "shop" / "migrations" / "0003_read.py").write_text(READS_THE_MIRROR.lstrip())
    pytester.makepyfile(test_project=OTHER_ALIAS_TESTS)
    result = run_dbguard(pytester, *workers, *on_server, plugins=DJANGO)
    result.assert_outcomes(passed=1)
    assert "early build" not in result.stdout.str()
