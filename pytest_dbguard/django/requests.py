"""Faults on Django connections: the driver connection under a Django connection, and recovery
proved across request boundaries, as Django's own handler passes them.

Django replaces a broken connection only at a request's start and end (``request_started`` and
``request_finished`` run ``close_if_unusable_or_obsolete``, governed by ``CONN_MAX_AGE`` and
``CONN_HEALTH_CHECKS``). So each attempt of ``assert_recovers`` on a Django target is one
request: the project's real settings decide whether the next request works. Recognises Django
objects by their module; never imports Django unless one is given (or Django runs).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Final

IN_A_TRANSACTION: Final = (
    " Django replaces a broken connection only between requests and never inside a transaction, "
    "and the connection of {aliases} is in one (pytest-django runs a django_db test in a "
    "transaction): prove recovery in a test marked django_db(transaction=True)."
)


def _is_django(target: Any) -> bool:
    return type(target).__module__.startswith("django.")


def _wrappers(target: Any) -> list[Any] | None:
    """The Django connections ``target`` stands for: a connection (``django.db.connection``,
    ``connections[alias]``) or every open one of ``django.db.connections``; None: not Django."""
    if not _is_django(target):
        return None
    if hasattr(target, "all") and hasattr(target, "close_all"):  # the ConnectionHandler
        return list(target.all(initialized_only=True))
    if hasattr(target, "ensure_connection") and hasattr(target, "settings_dict"):
        return [target]
    return None


def driver_connections(target: Any) -> list[Any] | None:
    """The open DBAPI connections under a Django target (closing them is a fault Django only
    notices on use); None when ``target`` is not a Django connection."""
    wrappers = _wrappers(target)
    if wrappers is None:
        return None
    return [wrapper.connection for wrapper in wrappers if wrapper.connection is not None]


def _django_runs() -> bool:
    if "django.conf" not in sys.modules or "django.apps" not in sys.modules:
        return False
    from django.apps import apps
    from django.conf import settings

    return bool(settings.configured and apps.ready)


def describe(wrapper: Any) -> str:
    """``Django connection 'default' (CONN_MAX_AGE=0, CONN_HEALTH_CHECKS=False)``."""
    settings = wrapper.settings_dict
    return (
        f"Django connection {wrapper.alias!r} (CONN_MAX_AGE={settings.get('CONN_MAX_AGE')!r}, "
        f"CONN_HEALTH_CHECKS={settings.get('CONN_HEALTH_CHECKS')!r})"
    )


def in_requests(target: Any) -> Any:
    """``target`` made into a callable whose every call is one request, between Django's
    ``request_started`` and ``request_finished``; other targets as they are.

    A Django connection runs ``SELECT 1``; a callable (an ORM query) runs as it is, when Django
    runs in this process.
    """
    wrappers = _wrappers(target)
    if wrappers is None and not (callable(target) and _django_runs()):
        return target
    if wrappers is None and hasattr(target, "pool"):
        return target  # a SQLAlchemy engine in a Django project: no Django boundary applies
    from django.core.signals import request_finished, request_started

    def select_one() -> None:
        for wrapper in wrappers or []:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT 1")

    work: Callable[[], Any] = select_one if wrappers is not None else target

    def one_request() -> Any:
        request_started.send(sender=one_request)
        try:
            return work()
        finally:
            request_finished.send(sender=one_request)

    from django.db import connections

    if wrappers:
        one_request.__qualname__ = ", ".join(describe(wrapper) for wrapper in wrappers)
        one_request.recovery_attempt = "SELECT 1"  # type: ignore[attr-defined]
    else:
        named = getattr(target, "__qualname__", None) or repr(target)
        settings = ", ".join(describe(wrapper) for wrapper in connections.all())
        one_request.__qualname__ = f"{named} in Django requests on {settings}"

    def in_a_transaction() -> str:
        held = [
            wrapper.alias for wrapper in wrappers or connections.all() if wrapper.in_atomic_block
        ]
        return (
            IN_A_TRANSACTION.format(aliases=", ".join(repr(alias) for alias in held))
            if held
            else ""
        )

    one_request.recovery_hint = in_a_transaction  # type: ignore[attr-defined]
    return one_request
