"""Django settings as projects give them: a module that cannot be loaded stops the run before the
first test with the cause and the fix; a conftest's settings.configure() gets dbguard's database."""

from __future__ import annotations

import json

import pytest

from tests.django_project import SETTINGS, migrate_lines, write_project
from tests.helpers import WORKERS, run_dbguard, stopped_once
from tests.pgserver import LIMITED_PASSWORD, LIMITED_USER, TestServer
from tests.test_django import DJANGO, ORM_TESTS

IN_WORKERS = pytest.mark.parametrize("workers", WORKERS)


def _stopped_once(pytester: pytest.Pytester, args: tuple[str, ...], message: str) -> str:
    """A run of the ORM tests with ``args`` stops as a usage error before any test, printing
    ``message`` exactly once; its output."""
    pytester.makepyfile(test_shop=ORM_TESTS)
    output = stopped_once(run_dbguard(pytester, *args, plugins=DJANGO), message)
    assert "Traceback" not in output
    return output


@IN_WORKERS
def test_a_settings_module_that_does_not_exist(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    write_project(pytester)
    pytester.makeini(
        "[pytest]\nDJANGO_SETTINGS_MODULE = djproj.nosuch\npythonpath = .\n"
        "django_find_project = false\n"
    )
    output = _stopped_once(
        pytester,
        workers,
        "Django's settings module 'djproj.nosuch' (DJANGO_SETTINGS_MODULE, from the ini key "
        "DJANGO_SETTINGS_MODULE) does not exist: ModuleNotFoundError: No module named "
        "'djproj.nosuch'.",
    )
    assert "Fix the module name (the ini key DJANGO_SETTINGS_MODULE)" in output


def test_a_settings_module_named_by_ds_that_does_not_exist(pytester: pytest.Pytester) -> None:
    """The message names the option the module came from: --ds, which wins over the ini."""
    write_project(pytester)
    _stopped_once(
        pytester,
        ("--ds", "nosuch.settings"),
        "Django's settings module 'nosuch.settings' (DJANGO_SETTINGS_MODULE, from --ds) does not "
        "exist: ModuleNotFoundError: No module named 'nosuch'.",
    )


def test_a_settings_module_named_by_the_environment_that_does_not_exist(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest-django takes the environment's module before the ini's; the message says so
    (read before pytest-django, which writes the variable itself)."""
    write_project(pytester)
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "envonly.settings")
    output = _stopped_once(
        pytester,
        (),
        "Django's settings module 'envonly.settings' (DJANGO_SETTINGS_MODULE, from the "
        "environment) does not exist: ModuleNotFoundError: No module named 'envonly'.",
    )
    assert "ini key" not in output


@IN_WORKERS
def test_a_settings_module_that_fails_to_import(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    """The debug_toolbar case: the settings import a dev-only package that is not installed."""
    write_project(pytester)
    settings = pytester.path / "djproj" / "settings.py"
    settings.write_text(SETTINGS.lstrip() + "\nimport debug_toolbar  # dev-only\n")
    line = settings.read_text().splitlines().index("import debug_toolbar  # dev-only") + 1
    output = _stopped_once(
        pytester,
        workers,
        "Django's settings module 'djproj.settings' (DJANGO_SETTINGS_MODULE, from the ini key "
        "DJANGO_SETTINGS_MODULE) failed while importing: ModuleNotFoundError: No module named "
        f"'debug_toolbar' (at {settings}:{line}).",
    )
    assert "imported inside try/except ImportError" in output


# Settings that parse DATABASE_URL with their own pattern (TandoorRecipes does): a SQLAlchemy
# URL or a SQLite one makes the match None, and the settings fail with an AttributeError.
PARSES_DATABASE_URL = """
import re

_parts = re.match(
    r"postgres(?:ql)?://(?P<user>[^:]*):(?P<password>[^@]*)@(?P<host>[^:/]*):(?P<port>\\d+)/(?P<name>.*)",
    os.environ["DATABASE_URL"],
)
DATABASES["default"].update(NAME=_parts.groupdict()["name"])
"""


@pytest.mark.needs_xdist  # the inner run uses -n 2
@pytest.mark.parametrize(
    ("args", "env", "hint"),
    [
        pytest.param(
            (),
            "DATABASE_URL={url}",
            "ini dbguard_env gives DATABASE_URL a SQLAlchemy URL ({url}: "
            "'postgresql+psycopg://...'); settings that read it as a database URL take {pg_url} "
            "(DATABASE_URL={pg_url}: 'postgres://user:password@host:port/name').",
            id="url",
        ),
        pytest.param(
            ("--dbguard-url", "sqlite"),
            "DATABASE_URL={pg_url}",
            "Django support needs a PostgreSQL server: this run uses SQLite (--dbguard-url).",
            id="sqlite",
        ),
    ],
)
def test_settings_that_fail_on_what_dbguard_gave_them_say_so(
    pytester: pytest.Pytester, args: tuple[str, ...], env: str, hint: str
) -> None:
    """Any error raised while the settings module runs (not only an ImportError) is named with
    its line, and with what dbguard gave the settings: a SQLAlchemy URL, or SQLite."""
    write_project(pytester, ini_extra=f"dbguard_env =\n    {env}\n")
    settings = pytester.path / "djproj" / "settings.py"
    settings.write_text(SETTINGS.lstrip() + PARSES_DATABASE_URL)
    line = (
        settings.read_text()
        .splitlines()
        .index('DATABASES["default"].update(NAME=_parts.groupdict()["name"])')
        + 1
    )
    output = _stopped_once(
        pytester,
        ("-n", "2", *args),
        "Django's settings module 'djproj.settings' (DJANGO_SETTINGS_MODULE, from the ini key "
        "DJANGO_SETTINGS_MODULE) failed while importing: AttributeError: 'NoneType' object has "
        f"no attribute 'groupdict' (at {settings}:{line}). {hint}",
    )
    assert "imported inside try/except ImportError" not in output


@IN_WORKERS
def test_conftest_activation_after_the_settings_loaded_says_to_use_p(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    """pytest-django loads the settings before any conftest: dbguard_env enabled from a
    conftest comes too late for settings that read it (they fell back to SQLite in a trial)."""
    write_project(pytester, ini_extra="dbguard_env =\n    DATABASE_URL={pg_url}\n")
    pytester.makeconftest('pytest_plugins = ["pytest_dbguard"]\n')
    pytester.makepyfile(test_shop=ORM_TESTS)
    plugins = ["-p", "pytest_django.plugin", *(["-p", "xdist"] if workers else [])]
    output = stopped_once(
        pytester.runpytest_subprocess(*plugins, *workers, timeout=300),
        "Django's settings module djproj.settings was loaded before pytest-dbguard set the test "
        "environment (",
    )
    assert "Fix: enable it on the command line instead: `pytest -p pytest_dbguard`" in output


CONFIGURE_CONFTEST = """
from django.conf import settings


def pytest_configure():
    # pytest-django's recipe for a project without a settings module.
    from djproj import settings as values

    settings.configure(**{name: getattr(values, name) for name in dir(values) if name.isupper()})
"""


@IN_WORKERS
def test_settings_configure_in_a_conftest_gets_the_database(
    pytester: pytest.Pytester, on_server: list[str], workers: tuple[str, ...]
) -> None:
    """No DJANGO_SETTINGS_MODULE: the conftest configures Django in pytest_configure (which runs
    after dbguard's own). dbguard still migrates once and points DATABASES at the worker's
    database; with the ini key dbguard_django_databases set too, no "no settings" error."""
    log = write_project(pytester)
    pytester.makeini(
        "[pytest]\npythonpath = .\ndjango_find_project = false\n"
        "dbguard_django_databases = default\n"
    )
    pytester.makeconftest(CONFIGURE_CONFTEST)
    pytester.makepyfile(test_shop=ORM_TESTS)
    result = run_dbguard(pytester, *on_server, *workers, plugins=DJANGO)
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["dbguard: *django migrate (settings.configure())*"])
    assert len(migrate_lines(log)) == 1


# What django-environ does with a scheme it does not know: it becomes the ENGINE.
ENVIRON_LIKE_SETTINGS = """
from urllib.parse import urlsplit
_scheme = urlsplit(os.environ["DATABASE_URL"]).scheme
DATABASES["default"]["ENGINE"] = {"postgres": "django.db.backends.postgresql"}.get(_scheme, _scheme)
"""


@IN_WORKERS
def test_a_sqlalchemy_url_given_to_django_names_pg_url(
    pytester: pytest.Pytester, workers: tuple[str, ...]
) -> None:
    """The Quickstart's DATABASE_URL={url} in a Django project: stopped with the placeholder to use."""
    write_project(pytester, ini_extra="dbguard_env =\n    DATABASE_URL={url}\n")
    settings = pytester.path / "djproj" / "settings.py"
    settings.write_text(SETTINGS.lstrip() + ENVIRON_LIKE_SETTINGS)
    output = _stopped_once(
        pytester,
        workers,
        "Django could not use the URL that ini dbguard_env gives DATABASE_URL: "
        "ImproperlyConfigured: 'postgresql+psycopg' isn't an available database backend or "
        "couldn't be imported. {url} and {async_url} are SQLAlchemy URLs",
    )
    assert "Write DATABASE_URL={pg_url} in dbguard_env" in output

    ini = pytester.path / "tox.ini"  # what pytester.makeini writes
    ini.write_text(ini.read_text().replace("{url}", "{pg_url}"))
    run_dbguard(pytester, *workers, plugins=DJANGO).assert_outcomes(passed=8)


DJ_DATABASE_URL_SETTINGS = """
import dj_database_url
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
"""


def test_dj_database_url_3_refusing_a_sqlalchemy_url_names_pg_url(
    pytester: pytest.Pytester,
) -> None:
    """dj-database-url 3 says "Scheme 'postgresql+psycopg://' is unknown" (UnknownSchemeError,
    not the older "No support for"): the same one line, not pytest-django's 92-line traceback."""
    write_project(pytester, ini_extra="dbguard_env =\n    DATABASE_URL={url}\n")
    settings = pytester.path / "djproj" / "settings.py"
    settings.write_text(SETTINGS.lstrip() + DJ_DATABASE_URL_SETTINGS)
    output = _stopped_once(
        pytester,
        (),
        "Django could not use the URL that ini dbguard_env gives DATABASE_URL: "
        "UnknownSchemeError: Scheme 'postgresql+psycopg://' is unknown",
    )
    assert "Write DATABASE_URL={pg_url} in dbguard_env" in output

    ini = pytester.path / "tox.ini"
    ini.write_text(ini.read_text().replace("{url}", "{pg_url}"))
    run_dbguard(pytester, plugins=DJANGO).assert_outcomes(passed=8)


def test_an_unrelated_error_naming_a_sqlalchemy_url_is_left_as_it_is(
    pytester: pytest.Pytester,
) -> None:
    """Only Django's (or dj-database-url's) refusal of the scheme is explained, not a project's own
    error that happens to print the URL."""
    write_project(pytester, ini_extra="dbguard_env =\n    DATABASE_URL={url}\n")
    pytester.makeconftest(
        "import os\n\nraise RuntimeError('cannot reach ' + os.environ['DATABASE_URL'])\n"
    )
    pytester.makepyfile(test_shop=ORM_TESTS)
    result = run_dbguard(pytester, plugins=DJANGO)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # pytest's own for a conftest that fails
    assert "RuntimeError: cannot reach postgresql+psycopg://" in output
    assert "Django could not use" not in output


SQLITE_DEFAULT = """
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": "local.sqlite3",
        "OPTIONS": {"init_command": "PRAGMA foreign_keys = ON"},
    }
}
"""
VENDOR_TEST = """
from django.db import connection

from shop.models import Order


def test_on_postgresql(db):
    assert connection.vendor == "postgresql"
    assert Order.objects.count() == 0
"""


@IN_WORKERS
def test_a_sqlite_default_is_served_on_postgresql_without_its_options(
    pytester: pytest.Pytester, on_server: list[str], workers: tuple[str, ...]
) -> None:
    """A project that defaults to SQLite (as healthchecks does): its alias runs on PostgreSQL,
    the header says so once, and SQLite's OPTIONS (init_command) are not handed to psycopg,
    which refused to connect ("invalid connection option")."""
    write_project(pytester)
    (pytester.path / "djproj" / "settings.py").write_text(SETTINGS + SQLITE_DEFAULT)
    pytester.makepyfile(test_vendor=VENDOR_TEST)
    # -q: the note changes what runs, so it shows there too (label-studio's models read
    # connection.vendor at import, and a quiet run failed with only a migration's error).
    result = run_dbguard(pytester, *on_server, *workers, "-q", plugins=DJANGO)
    result.assert_outcomes(passed=1)
    note = (
        "dbguard: DATABASES['default'] in djproj.settings uses django.db.backends.sqlite3; "
        "dbguard serves PostgreSQL, so the tests run on django.db.backends.postgresql, without "
        "its OPTIONS (init_command). What the settings or models chose for that backend stays "
        "chosen (a setting computed from it, a model that reads connection.vendor at import): "
        "give the settings the PostgreSQL backend with a dbguard_env line (their variable, or "
        "DATABASE_URL={pg_url})"
    )
    assert (result.stdout.str() + result.stderr.str()).count(note) == 1


def test_options_that_refuse_the_connection_are_not_blamed_on_a_migration(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    write_project(pytester)
    options = '\nDATABASES["default"]["OPTIONS"] = {"no_such_option": "1"}\n'
    (pytester.path / "djproj" / "settings.py").write_text(SETTINGS + options)
    output = _stopped_once(pytester, tuple(on_server), "Django could not connect to the template ")
    assert 'invalid connection option "no_such_option"' in output
    assert "check its OPTIONS" in output
    assert "Fix that migration" not in output


@IN_WORKERS
@pytest.mark.parametrize("port_from", ["url", "PGPORT"])
def test_a_role_that_may_not_create_databases_is_named(
    pytester: pytest.Pytester,
    pg_server: TestServer,
    monkeypatch: pytest.MonkeyPatch,
    workers: tuple[str, ...],
    port_from: str,
) -> None:
    # auto falls back to a schema per worker for such a role, which Django support cannot serve:
    # the message names the role, the server and the fix (pretix's trial read "default, or ...").
    # A URL without a port names the server libpq reaches (PGPORT), not "127.0.0.1:None".
    write_project(pytester)
    url = pg_server.url(database="app_limited", user=LIMITED_USER)
    if port_from == "PGPORT":
        url = url.replace(f":{pg_server.port}/", "/")
        monkeypatch.setenv("PGPORT", str(pg_server.port))
    output = _stopped_once(
        pytester,
        (*workers, "--dbguard-url", url),
        f"the role 'limited' may not create databases on 127.0.0.1:{pg_server.port}",
    )
    assert 'ALTER ROLE "limited" CREATEDB' in output
    assert LIMITED_PASSWORD not in output


def test_worker_schemas_asked_for_are_named(pytester: pytest.Pytester) -> None:
    write_project(pytester)
    _stopped_once(
        pytester,
        ("--dbguard-worker-isolation", "schema"),
        "but --dbguard-worker-isolation = 'schema' asks for one schema per worker",
    )


@pytest.mark.parametrize("command", ["--help", "--markers"])
def test_help_and_markers_import_none_of_dbguards_django_modules(
    pytester: pytest.Pytester, command: str
) -> None:
    """With pytest-django and a settings module, --help and --markers have no database to point
    anywhere: dbguard's Django support stays unimported (about 5M instructions of ~1.2G)."""
    write_project(pytester)
    pytester.makeconftest(
        """
        import json, sys

        def pytest_unconfigure(config):
            wanted = ("pytest_dbguard", "djproj")  # dbguard's modules, the project's settings
            loaded = sorted(name for name in sys.modules if name.startswith(wanted))
            with open("loaded.json", "w") as file:
                json.dump(loaded, file)
        """
    )
    result = run_dbguard(pytester, command, plugins=DJANGO)
    assert result.ret == 0, result.stdout.str()
    loaded = json.loads((pytester.path / "loaded.json").read_text())
    assert "pytest_dbguard.run.environment" in loaded  # a run with dbguard active
    assert "djproj.settings" in loaded  # and Django's settings loaded by pytest-django
    assert [name for name in loaded if name.startswith("pytest_dbguard.django.")] == []


@pytest.mark.needs_xdist
def test_a_settings_module_a_conftest_sets_is_explained_in_the_workers(
    pytester: pytest.Pytester,
) -> None:
    """django-oscar: its conftest sets DJANGO_SETTINGS_MODULE and makes the module importable;
    xdist's workers inherit the variable but load the settings before any conftest. "Fix the
    module name" pointed the wrong way: the name is right, the workers' sys.path lacks it."""
    write_project(pytester)
    (pytester.path / "src").mkdir()
    (pytester.path / "djproj").rename(pytester.path / "src" / "djproj")
    pytester.makeini("[pytest]\ndjango_find_project = false\npythonpath = .\n")
    pytester.makeconftest(
        """
        import os, sys

        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "src"))
        os.environ["DJANGO_SETTINGS_MODULE"] = "djproj.settings"
        """
    )
    pytester.makepyfile(test_shop=ORM_TESTS)
    result = run_dbguard(pytester, "-n", "2", "--max-worker-restart", "0", plugins=DJANGO)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret != pytest.ExitCode.OK and " passed" not in output
    assert "This xdist worker inherited DJANGO_SETTINGS_MODULE from the controller" in output
    assert "(DJANGO_SETTINGS_MODULE, from the environment) does not exist" in output
