"""The generated Django project of ``django_setup.py``: four apps, 20 migrations of their own.

Not a benchmark itself (``run_all.py`` skips files starting with ``_``). Each app (``catalog``,
``orders``, ``billing``, ``blog``) has two models (one with a foreign key to the other and to
``auth.User``) built up over five migrations: ``CreateModel``, ``AddField`` (two of them),
``AddIndex`` with a ``RunPython`` data step, and ``RunSQL`` that creates a view. With
``django.contrib`` auth, contenttypes, sessions and admin that is 38 migrations per ``migrate``.
The ``RunPython`` step of ``catalog`` appends a line to ``migrate.log`` (the database it ran in),
which is how the benchmark counts the migrates of a run. Settings read ``DATABASE_URL``
(``postgres://user:password@host:port/name``), as projects using dj-database-url do.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path

APPS = ("catalog", "orders", "billing", "blog")
DB_TESTS_PER_FILE = 50

SETTINGS = """
    import os
    import urllib.parse

    SECRET_KEY = "benchmark-only"
    DEBUG = False
    USE_TZ = True
    TIME_ZONE = "UTC"
    ALLOWED_HOSTS = ["*"]
    INSTALLED_APPS = [
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        {apps}
    ]
    MIDDLEWARE = []
    ROOT_URLCONF = "benchproj.urls"
    DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
    TEMPLATES = [
        {{
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {{
                "context_processors": [
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                    "django.template.context_processors.request",
                ]
            }},
        }}
    ]

    _url = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
    DATABASES = {{
        "default": {{
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _url.path.lstrip("/"),
            "USER": urllib.parse.unquote(_url.username or ""),
            "PASSWORD": urllib.parse.unquote(_url.password or ""),
            "HOST": _url.hostname or "",
            "PORT": str(_url.port or ""),
        }}
    }}
"""

URLS = """
    from django.contrib import admin
    from django.urls import path

    urlpatterns = [path("admin/", admin.site.urls)]
"""

MODELS = """
    from django.conf import settings
    from django.db import models
    from django.utils import timezone


    class Item(models.Model):
        name = models.CharField(max_length=100)
        created = models.DateTimeField(default=timezone.now)
        price = models.DecimalField(max_digits=10, decimal_places=2, default=0)
        slug = models.SlugField(max_length=100, blank=True, default="")

        class Meta:
            indexes = [models.Index(fields=["name"], name="{app}_item_name_idx")]


    class Entry(models.Model):
        item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="entries")
        quantity = models.IntegerField(default=1)
        owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
        note = models.TextField(blank=True, default="")
"""

MIGRATIONS = {
    "0001_initial": """
        import django.db.models.deletion
        import django.utils.timezone
        from django.db import migrations, models


        class Migration(migrations.Migration):
            initial = True
            dependencies = []
            operations = [
                migrations.CreateModel(
                    name="Item",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                        ("name", models.CharField(max_length=100)),
                        ("created", models.DateTimeField(default=django.utils.timezone.now)),
                    ],
                ),
                migrations.CreateModel(
                    name="Entry",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                        ("quantity", models.IntegerField(default=1)),
                        (
                            "item",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="entries",
                                to="{app}.item",
                            ),
                        ),
                    ],
                ),
            ]
    """,
    "0002_item_price_slug": """
        from django.db import migrations, models


        class Migration(migrations.Migration):
            dependencies = [("{app}", "0001_initial")]
            operations = [
                migrations.AddField(
                    "item", "price", models.DecimalField(decimal_places=2, default=0, max_digits=10)
                ),
                migrations.AddField(
                    "item", "slug", models.SlugField(blank=True, default="", max_length=100)
                ),
            ]
    """,
    "0003_entry_owner_note": """
        import django.db.models.deletion
        from django.conf import settings
        from django.db import migrations, models


        class Migration(migrations.Migration):
            dependencies = [
                ("{app}", "0002_item_price_slug"),
                migrations.swappable_dependency(settings.AUTH_USER_MODEL),
            ]
            operations = [
                migrations.AddField(
                    "entry",
                    "owner",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AddField("entry", "note", models.TextField(blank=True, default="")),
            ]
    """,
    "0004_item_name_idx_seed": """
        import os

        from django.db import migrations, models


        def seed(apps, schema_editor):
            Item = apps.get_model("{app}", "Item")
            Item.objects.bulk_create([Item(name=f"seed {{n}}", slug=f"seed-{{n}}") for n in range(20)])
            if "{app}" == "catalog":  # one line per migrate of the project
                with open(os.environ["BENCH_MIGRATE_LOG"], "a") as log:
                    log.write(schema_editor.connection.settings_dict["NAME"] + "\\n")


        class Migration(migrations.Migration):
            dependencies = [("{app}", "0003_entry_owner_note")]
            operations = [
                migrations.AddIndex("item", models.Index(fields=["name"], name="{app}_item_name_idx")),
                migrations.RunPython(seed, migrations.RunPython.noop),
            ]
    """,
    "0005_summary_view": """
        from django.db import migrations


        class Migration(migrations.Migration):
            dependencies = [("{app}", "0004_item_name_idx_seed")]
            operations = [
                migrations.RunSQL(
                    "CREATE VIEW {app}_summary AS SELECT item_id, sum(quantity) AS total "
                    "FROM {app}_entry GROUP BY item_id",
                    "DROP VIEW {app}_summary",
                )
            ]
    """,
}

# Four rows in three tables and a join, like a small API test; the seed rows stay out of the count.
DB_TEST = """

    @pytest.mark.django_db
    def test_{n}():
        user = User.objects.create(username="user{n}")
        item = catalog.Item.objects.create(name="item{n}", slug="item-{n}")
        catalog.Entry.objects.create(item=item, owner=user, quantity=2)
        orders.Item.objects.create(name="order{n}")
        assert catalog.Entry.objects.filter(item__name="item{n}", owner=user).count() == 1
"""

DB_HEADER = """
    import pytest
    from django.contrib.auth.models import User

    from catalog import models as catalog
    from orders import models as orders
"""

PLAIN_TEST = """
    def test_no_database():
        from django.conf import settings

        assert settings.USE_TZ
"""

# Records when the first test body of this process starts, and the wall and CPU seconds of each
# test's whole protocol (setup, call, teardown and every plugin's report hooks), in run order.
CONFTEST = """
    import json
    import os
    import time

    import pytest

    _STARTED = []
    _TESTS = []


    def pytest_runtest_call(item):
        if not _STARTED:
            _STARTED.append(time.time())


    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(item, nextitem):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return (yield)
        finally:
            _TESTS.append((time.perf_counter() - wall, time.process_time() - cpu))


    def pytest_sessionfinish(session):
        folder = os.environ.get("BENCH_OUT")
        if folder and _STARTED:
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            with open(os.path.join(folder, worker + ".json"), "w") as out:
                json.dump({"first": _STARTED[0], "tests": _TESTS}, out)
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


def write_project(root: Path, db_tests: int, ini_lines: Iterable[str]) -> Path:
    """The project in ``root`` with ``db_tests`` ``django_db`` tests and one without the
    database (``test_plain.py``); ``ini_lines`` go into its pytest.ini. Returns ``root``."""
    apps = "\n        ".join(f'"{app}",' for app in APPS)
    _write(root / "manage.py", "")
    _write(root / "benchproj" / "__init__.py", "")
    _write(root / "benchproj" / "settings.py", SETTINGS.format(apps=apps))
    _write(root / "benchproj" / "urls.py", URLS)
    for app in APPS:
        _write(root / app / "__init__.py", "")
        _write(root / app / "models.py", MODELS.format(app=app))
        _write(root / app / "migrations" / "__init__.py", "")
        for name, text in MIGRATIONS.items():
            _write(root / app / "migrations" / f"{name}.py", text.format(app=app))
    ini = ["[pytest]", "DJANGO_SETTINGS_MODULE = benchproj.settings", "pythonpath = ."]
    _write(root / "pytest.ini", "\n".join([*ini, *ini_lines]) + "\n")
    _write(root / "conftest.py", CONFTEST)
    _write(root / "test_plain.py", PLAIN_TEST)
    for first in range(0, db_tests, DB_TESTS_PER_FILE):
        last = min(first + DB_TESTS_PER_FILE, db_tests)
        body = textwrap.dedent(DB_HEADER) + "".join(
            textwrap.dedent(DB_TEST).format(n=n) for n in range(first, last)
        )
        (root / f"test_db_{first // DB_TESTS_PER_FILE:02d}.py").write_text(body)
    return root


def migration_count(root: Path) -> int:
    """The project's own migration files."""
    return sum(1 for app in APPS for _ in (root / app / "migrations").glob("0*.py"))
