"""Django support: pytest-django suites get dbguard's server, a template migrated once per run, and a
clone of it per xdist worker; faults and guards see Django's connections.

Nothing here imports Django unless the run has configured it (pytest-django active and
``DJANGO_SETTINGS_MODULE`` or ``--ds`` set, or a conftest's ``settings.configure()``):
``activation`` decides, the other modules import Django only inside the code that runs once it has.

- ``activation``: whether Django runs; wires the schema hook, the fixtures and the guards.
- ``settings_module``: which settings the run has; a settings module that fails to load, explained.
- ``targets``: ``settings.DATABASES`` aliases pointed at a dbguard database.
- ``migrate``: the template build (Django's ``migrate``) and its fingerprint for ``--dbguard-reuse``.
- ``later_tables``: the tables of models that test modules declare, which a template built before
  collection lacks.
- ``fixtures``: pytest-django's ``django_db_setup`` overridden to use the worker's clone.
- ``statements``: Django's statements fed to ``dbguard_queries`` and the naive-datetime guard.
- ``kept_failed``: ``--dbguard-keep-failed`` for ``django_db`` tests: their rows read before
  pytest-django's rollback or flush.
- ``naive_warnings``: Django's naive-datetime warnings folded into one line per field and file.
- ``requests``: faults on Django connections, recovery across request boundaries.
- ``reloading``: settings and URLconf loaded anew in a test (``dbguard_without``).
- ``compat``: the few private attributes of pytest-django this reads, with the versions checked.
"""

from __future__ import annotations

from pytest_dbguard.django.reloading import reloaded_settings

__all__ = ["reloaded_settings"]
