"""Load a settings module and its URLconf anew inside a test: Django caches both.

``django.conf.settings`` is read once per process and URLconfs are cached by module and by
resolver, so a test that hides a dev-only package (``@pytest.mark.dbguard_without``) must load
the settings module and the root URLconf again to prove they work without it. This does both,
the way Django's own tests switch settings (``override_settings``), and puts everything back.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Iterator
from typing import Final

# Never switched: the test's connections stay on the test database.
KEPT: Final = frozenset({"DATABASES", "DATABASE_ROUTERS"})


def _load(name: str) -> types.ModuleType:
    module = sys.modules.get(name)
    return importlib.reload(module) if module is not None else importlib.import_module(name)


@contextlib.contextmanager
def reloaded_settings(settings_module: str) -> Iterator[types.ModuleType]:
    """Import ``settings_module`` anew, make its settings (but ``DATABASES``) the live ones, and
    import its ``ROOT_URLCONF`` anew under them; yields the settings module.

    A dev-only import that is not guarded fails here with ``ModuleNotFoundError``. On exit the
    settings and URL caches are as before; modules that saw a hidden package missing are
    reloaded by ``dbguard_without`` when the test ends.
    """
    from django.test import override_settings
    from django.urls import clear_url_caches

    module = _load(settings_module)
    values = {name: getattr(module, name) for name in dir(module) if name.isupper()}
    urlconf = values.get("ROOT_URLCONF")
    with override_settings(**{name: value for name, value in values.items() if name not in KEPT}):
        clear_url_caches()
        try:
            if isinstance(urlconf, str):
                _load(urlconf)
            yield module
        finally:
            clear_url_caches()
    if isinstance(urlconf, str) and urlconf in sys.modules:
        _load(urlconf)  # back to the URLconf of the live settings
