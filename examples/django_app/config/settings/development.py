"""Local development: DEBUG, and django-debug-toolbar when it is installed.

The toolbar is a development-only package: production images do not install it, so nothing may
import it unconditionally (tests/test_settings.py proves that settings and URLs load without it).
"""

from __future__ import annotations

from config.settings.base import *  # noqa: F403
from config.settings.base import INSTALLED_APPS, MIDDLEWARE

DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
INTERNAL_IPS = ["127.0.0.1"]

try:
    import debug_toolbar  # noqa: F401
except ImportError:  # not installed: develop without it
    pass
else:
    INSTALLED_APPS = [*INSTALLED_APPS, "debug_toolbar"]
    MIDDLEWARE = ["debug_toolbar.middleware.DebugToolbarMiddleware", *MIDDLEWARE]
