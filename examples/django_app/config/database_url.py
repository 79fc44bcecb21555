"""DATABASES from DATABASE_URL, a libpq URL such as postgres://user:pass@host:5432/name.

A few lines of the standard library instead of a dependency (dj-database-url reads the same
form). Query parameters (``?sslmode=require``) become the connection's OPTIONS.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

SCHEMES = ("postgres", "postgresql", "pgsql")


def parse(url: str) -> dict[str, Any]:
    """The Django settings of one database given as a libpq URL."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ImproperlyConfigured(
            f"DATABASE_URL must start with postgres:// or postgresql://, not {parts.scheme}://"
            " (a SQLAlchemy URL such as postgresql+psycopg:// is not a libpq URL)"
        )
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": dict(parse_qsl(parts.query)),
    }


def from_environment(name: str = "DATABASE_URL") -> dict[str, Any]:
    """``parse`` of the environment variable ``name``; a clear error when it is not set."""
    url = os.environ.get(name)
    if not url:
        raise ImproperlyConfigured(
            f"{name} is not set: export it, e.g. {name}=postgres://user:pass@localhost:5432/shop"
        )
    return parse(url)
