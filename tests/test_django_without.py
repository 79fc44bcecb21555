"""dbguard_without for Django: a settings module and root URLconf that import debug_toolbar only
when it is installed load without it; an unconditional import fails with a clear error."""

from __future__ import annotations

import pytest

from tests.django_project import write_project
from tests.helpers import run_dbguard

DJANGO = ("pytest_django.plugin",)

DEV_SETTINGS = """
from djproj.settings import *  # noqa: F403

DEBUG = True
try:
    import debug_toolbar  # noqa: F401
except ImportError:  # production builds do not install it
    pass
else:
    INSTALLED_APPS = [*INSTALLED_APPS, "debug_toolbar"]
"""

URLS_WITH_TOOLBAR = """
from django.conf import settings
from django.http import JsonResponse
from django.urls import include, path

from shop.models import Order


def health(request):
    return JsonResponse({"orders": Order.objects.count()})


urlpatterns = [path("health", health)]
if "debug_toolbar" in settings.INSTALLED_APPS:
    urlpatterns += [path("__debug__/", include("debug_toolbar.urls"))]
"""

TESTS = """
import pytest
from django.urls import Resolver404, resolve

from pytest_dbguard.django import reloaded_settings


def test_with_the_toolbar_installed():
    with reloaded_settings("djproj.settings_dev") as dev:
        assert "debug_toolbar" in dev.INSTALLED_APPS
        assert resolve("/__debug__/").url_name == "toolbar"


@pytest.mark.dbguard_without("debug_toolbar")
def test_dev_settings_and_urls_load_without_the_toolbar():
    with reloaded_settings("djproj.settings_dev") as dev:
        assert "debug_toolbar" not in dev.INSTALLED_APPS
        assert resolve("/health").url_name is None
        with pytest.raises(Resolver404):
            resolve("/__debug__/")


@pytest.mark.dbguard_without("debug_toolbar")
def test_unconditional_import():
    with reloaded_settings("djproj.settings_unguarded"):
        pass


def test_after_the_hidden_tests_everything_is_back():
    import debug_toolbar  # noqa: F401

    with reloaded_settings("djproj.settings_dev") as dev:
        assert "debug_toolbar" in dev.INSTALLED_APPS
"""


def test_settings_and_urls_load_without_a_dev_only_package(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    write_project(pytester)
    pytester.mkpydir("debug_toolbar")
    (pytester.path / "debug_toolbar" / "urls.py").write_text(
        "from django.http import HttpResponse\nfrom django.urls import path\n\n"
        'urlpatterns = [path("", lambda request: HttpResponse("toolbar"), name="toolbar")]\n'
    )
    (pytester.path / "djproj" / "settings_dev.py").write_text(DEV_SETTINGS.lstrip())
    (pytester.path / "djproj" / "settings_unguarded.py").write_text(
        "from djproj.settings import *  # noqa: F403\n\nimport debug_toolbar  # noqa: F401\n"
    )
    (pytester.path / "djproj" / "urls.py").write_text(URLS_WITH_TOOLBAR.lstrip())
    pytester.makepyfile(test_without=TESTS)
    result = run_dbguard(pytester, *on_server, "-p", "no:randomly", plugins=DJANGO)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_unconditional_import*",
            "E   ModuleNotFoundError: No module named 'debug_toolbar' (hidden by "
            "@pytest.mark.dbguard_without in test_without.py::test_unconditional_import)",
        ]
    )
