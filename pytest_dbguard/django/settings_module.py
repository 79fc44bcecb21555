"""Which Django settings a run has, and a settings module that cannot be loaded, explained
before the first test.

pytest-django loads ``DJANGO_SETTINGS_MODULE`` while pytest reads its initial conftests, and on
failure raises an ``ImportError`` that names neither the settings module nor the line that
failed (for a settings file that imports a missing package, only "No module named 'x'"). dbguard
wraps that hook: it tells a module that does not exist from one that fails while importing,
names the module, where its name came from and the failing line, and says how to fix it. Never
imports Django itself: the error it reads is one Django already raised.
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Sequence
from typing import Final

from pytest_dbguard.exceptions import ConfigError
from pytest_dbguard.run.environment import DJANGO_SETTINGS_ENV

SETTINGS_ENV: Final = DJANGO_SETTINGS_ENV
MISSING: Final = (
    "Django's settings module {module!r} (DJANGO_SETTINGS_MODULE, from {source}) does not exist: "
    "{error}. No test ran: dbguard serves Django's database only once pytest-django has loaded "
    "the settings.{worker} Fix the module name ({source}), or put the folder that holds it on "
    "sys.path (ini pythonpath = ., or manage.py beside it with pytest-django's django_find_project)."
)
# An xdist worker inherits the controller's environment, where a conftest may have set the
# variable (and put the module's folder on sys.path while pytest imported it); the worker loads
# the settings before any conftest (django-oscar: fine with python -m pytest, broken with pytest).
IN_A_WORKER: Final = (
    " This xdist worker inherited DJANGO_SETTINGS_MODULE from the controller, where a conftest may "
    "have set it; pytest-django loads the settings before any conftest, so only what the command "
    "line and the ini put on sys.path reaches them here (plain `pytest` does not add the "
    "current folder; `python -m pytest` does)."
)
BROKEN: Final = (
    "Django's settings module {module!r} (DJANGO_SETTINGS_MODULE, from {source}) failed while "
    "importing: {error}{where}.{hint} No test ran: dbguard serves Django's database only once "
    "pytest-django has loaded the settings. Fix that line{advice}, or point "
    "DJANGO_SETTINGS_MODULE ({source}) at the settings module meant for tests."
)
IMPORT_ADVICE: Final = " (a dev-only package is best imported inside try/except ImportError)"

SQLALCHEMY_URL: Final = (
    "Django could not use the URL that ini dbguard_env gives {names}: {error}. {{url}} and "
    "{{async_url}} are SQLAlchemy URLs ('{scheme}://...'), which Django, dj-database-url and "
    "django-environ do not read. Write {first}={{pg_url}} in dbguard_env: the same database as "
    "postgres://user:password@host:port/name."
)


def settings_label() -> str:
    """The settings module, or ``settings.configure()`` for a project that has none (its conftest
    configures Django in ``pytest_configure``, as pytest-django documents)."""
    return os.environ.get(SETTINGS_ENV) or "settings.configure()"


def source_of_module(option: str | None, environment_before: str | None) -> str:
    """Where pytest-django took the module name from, in its own order: --ds, env, ini."""
    if option:
        return "--ds"
    if environment_before:
        return "the environment"
    return "the ini key DJANGO_SETTINGS_MODULE"


def explain(error: BaseException, source: str, hint: str = "") -> ConfigError | None:
    """The settings failure pytest-django raised as ``error`` (its ``ImportError``, or any
    error raised while the settings module ran), as a ConfigError naming the module, the cause,
    the line and the fix, with ``hint`` (a sentence on what dbguard gave the settings); None when
    ``error`` is not one (dbguard leaves it alone)."""
    from pytest_dbguard.db.urls import hide_password_in
    from pytest_dbguard.django import compat

    module = os.environ.get(SETTINGS_ENV)
    if not module:
        return None
    original = compat.settings_import_failure(error)
    if original is None and _raised_in(error, module):
        original = error  # pytest-django passes on anything but an ImportError as it is
    if original is None:
        return None
    cause = f"{type(original).__name__}: {hide_password_in(str(original))}"
    missing = getattr(original, "name", None)
    if isinstance(original, ModuleNotFoundError) and missing and _is_part_of(module, missing):
        worker = IN_A_WORKER if source == "the environment" and _in_xdist_worker() else ""
        return ConfigError(MISSING.format(module=module, source=source, error=cause, worker=worker))
    return ConfigError(
        BROKEN.format(
            module=module,
            source=source,
            error=cause,
            where=_where(original),
            hint=f" {hint}" if hint else "",
            advice=IMPORT_ADVICE if isinstance(original, ImportError) else "",
        )
    )


def _in_xdist_worker() -> bool:
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


def _raised_in(error: BaseException, module: str) -> bool:
    """Whether ``error`` passed through the code of ``module`` (or a module it imported)."""
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_globals.get("__name__") == module:
            return True
        frame = frame.tb_next
    return False


def _is_part_of(module: str, missing: str) -> bool:
    """``config.settings.test`` is missing when ``config``, ``config.settings`` or itself is."""
    return module == missing or module.startswith(missing + ".")


def _where(error: BaseException) -> str:
    """`` (at file:line)``: the last line of Python source (not the import machinery) the
    error passed through, i.e. the failing import in the settings module."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<") and f"{os.sep}importlib{os.sep}" not in frame.filename
    ]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


# What Django and dj-database-url say of a SQLAlchemy scheme (django-environ passes the scheme on
# to Django as the ENGINE).
_SCHEME_REFUSED: Final = (
    r"'(postgresql\+\w+)' isn't an available database backend",
    r"No support for '(postgresql\+\w+)'",  # dj-database-url before 3
    r"Scheme '(postgresql\+\w+)://' is unknown",  # dj-database-url 3 (UnknownSchemeError)
)


def sqlalchemy_url_failure(error: BaseException, env_lines: Sequence[str]) -> ConfigError | None:
    """Django refusing a ``postgresql+driver://`` URL that dbguard_env gave it through ``{url}``
    (Django: "'postgresql+psycopg' isn't an available database backend", dj-database-url: "No
    support for 'postgresql+psycopg'", from 3.0 "Scheme 'postgresql+psycopg://' is unknown"),
    explained with the fix; None for any other error."""
    from pytest_dbguard.db.urls import hide_password_in

    text = str(error)
    refused = next(filter(None, (re.search(shape, text) for shape in _SCHEME_REFUSED)), None)
    names = sqlalchemy_url_names(env_lines)
    if refused is None or not names:
        return None
    first_sentence = text.strip().splitlines()[0].split(". ")[0].rstrip(".")
    return ConfigError(
        SQLALCHEMY_URL.format(
            names=", ".join(names),
            error=f"{type(error).__name__}: {hide_password_in(first_sentence)}",
            scheme=refused.group(1),
            first=names[0],
        )
    )


def sqlalchemy_url_names(env_lines: Sequence[str]) -> list[str]:
    """The variables that dbguard_env gives a SQLAlchemy URL (``{url}``, ``{async_url}``), those
    whose name says DATABASE first (the one Django's settings read)."""
    from pytest_dbguard.run.environment import parse_env_lines

    names = [
        name
        for name, value in parse_env_lines(env_lines)  # read before the conftests: no error now
        if "{url}" in value or "{async_url}" in value
    ]
    return sorted(names, key=lambda name: "DATABASE" not in name.upper())
