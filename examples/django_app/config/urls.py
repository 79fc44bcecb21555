"""Root URLconf; the toolbar's URLs only when the settings installed it."""

from __future__ import annotations

from django.conf import settings
from django.urls import include, path
from shop.views import health

urlpatterns = [path("health", health, name="health")]

if "debug_toolbar" in settings.INSTALLED_APPS:
    urlpatterns += [path("__debug__/", include("debug_toolbar.urls"))]
