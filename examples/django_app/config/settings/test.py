"""The test suite: dbguard sets DATABASE_URL to each xdist worker's database (pytest.ini)."""

from __future__ import annotations

from config.settings.base import *  # noqa: F403

DEBUG = False
ALLOWED_HOSTS = ["testserver"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, tests only
