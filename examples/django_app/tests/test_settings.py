"""Production and development settings, and the root URLconf, load without debug_toolbar.

debug_toolbar is a development-only package. A settings module or urls.py that imports it
unconditionally passes every test on a developer's machine, then breaks the production build
(``collectstatic``: ModuleNotFoundError). ``dbguard_without`` hides the package for one test and
``reloaded_settings`` imports the settings and their ROOT_URLCONF anew (Django caches both), so
these tests fail if an unguarded import comes back.
"""

from __future__ import annotations

import sys

import pytest
from django.core.management import call_command
from django.urls import Resolver404, resolve
from shop.views import health

from pytest_dbguard.django import reloaded_settings

PRODUCTION_ENV = {
    "DJANGO_SECRET_KEY": "a-long-random-production-key-" + "x7Qz9" * 10,
    "DJANGO_ALLOWED_HOSTS": "shop.example.com",
}


def toolbar_routes() -> list[str]:
    urls = sys.modules["config.urls"]
    return [str(pattern.pattern) for pattern in urls.urlpatterns if "debug" in str(pattern.pattern)]


@pytest.mark.dbguard_without("debug_toolbar")
def test_production_settings_and_urls_load_without_the_toolbar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)
    with reloaded_settings("config.settings.production") as production:
        assert "debug_toolbar" not in production.INSTALLED_APPS
        assert resolve("/health").func is health
        call_command("check", deploy=True, fail_level="WARNING")  # SystemCheckError if not


@pytest.mark.dbguard_without("debug_toolbar")
def test_development_settings_load_without_the_toolbar() -> None:
    with reloaded_settings("config.settings.development") as development:
        assert development.DEBUG
        assert "debug_toolbar" not in development.INSTALLED_APPS
        assert toolbar_routes() == []
        with pytest.raises(Resolver404):
            resolve("/__debug__/")


def test_development_settings_add_the_toolbar_when_installed() -> None:
    with reloaded_settings("config.settings.development") as development:
        assert "debug_toolbar" in development.INSTALLED_APPS
        assert toolbar_routes() == ["__debug__/"]
