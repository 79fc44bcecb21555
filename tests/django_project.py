"""A small real Django project that tests write with pytester: settings, one app with a model
that has a DateTimeField, real migration files (one of them RunPython that logs each migrate)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

SETTINGS: Final = """
import os

SECRET_KEY = "not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "shop"]
MIDDLEWARE = []
ROOT_URLCONF = "djproj.urls"
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# None: persistent connections; the fault tests set both from the environment.
MAX_AGE = None if os.environ.get("SHOP_CONN_MAX_AGE") == "none" else int(os.environ.get("SHOP_CONN_MAX_AGE", "0"))
# What a project's local settings say; dbguard points the alias at the worker's database.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop_local",
        "HOST": "127.0.0.1",
        "PORT": "1",
        "USER": "shop",
        "PASSWORD": "local",
        "CONN_MAX_AGE": MAX_AGE,
        "CONN_HEALTH_CHECKS": os.environ.get("SHOP_HEALTH_CHECKS", "1") == "1",
    }
}
"""

URLS: Final = """
from django.http import JsonResponse
from django.urls import path

from shop.models import Order


def health(request):
    return JsonResponse({"orders": Order.objects.count()})


urlpatterns = [path("health", health)]
"""

MODELS: Final = """
from django.db import models


class Order(models.Model):
    placed = models.DateTimeField()
    note = models.CharField(max_length=50, default="")
"""

INITIAL: Final = """
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Order",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                ("placed", models.DateTimeField()),
            ],
        ),
    ]
"""

SECOND: Final = """
import gc
import os

from django.db import migrations, models


def log_migrate(apps, schema_editor):
    # Each migrate of this app appends a line: the tests count how often migrate ran. Then how
    # many objects the garbage collector skips meanwhile (dbguard freezes the older ones).
    folder = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(folder, "migrate.log"), "a") as log:
        name = schema_editor.connection.settings_dict["NAME"]
        log.write(f"{name} frozen={gc.get_freeze_count()}\\n")


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]
    operations = [
        migrations.AddField("order", "note", models.CharField(max_length=50, default="")),
        migrations.RunPython(log_migrate, migrations.RunPython.noop),
    ]
"""


def write_project(pytester: pytest.Pytester, *, ini_extra: str = "") -> Path:
    """The project in pytester's folder; returns the file that receives a line per migrate."""
    pytester.mkpydir("djproj")
    pytester.mkpydir("shop")
    (pytester.path / "shop" / "migrations").mkdir()
    files = {
        "djproj/settings.py": SETTINGS,
        "djproj/urls.py": URLS,
        "shop/models.py": MODELS,
        "shop/migrations/__init__.py": "",
        "shop/migrations/0001_initial.py": INITIAL,
        "shop/migrations/0002_note.py": SECOND,
    }
    for name, text in files.items():
        (pytester.path / name).write_text(text.lstrip())
    pytester.makeini(
        "[pytest]\n"
        "DJANGO_SETTINGS_MODULE = djproj.settings\n"
        "pythonpath = .\n"
        "django_find_project = false\n" + ini_extra
    )
    return pytester.path / "migrate.log"


def migrate_lines(log: Path) -> list[str]:
    """The databases migrate ran in, one line per run of the app's migrations, each followed
    by ``frozen=N``: the objects the garbage collector skipped meanwhile."""
    return log.read_text().splitlines() if log.exists() else []
