"""The signatures of dbguard's markers: ``dbguard(isolation=..., allow=[...])`` and
``dbguard_without(...)``, checked the same way at collection (``db.isolation.read_collected``)
and when a test runs. Their ``--markers`` help is in ``plugin.MARKERS``."""

from __future__ import annotations

from collections.abc import Collection

import pytest

from pytest_dbguard.config_errors import DbguardError
from pytest_dbguard.run import setting_values


def dbguard(
    *, isolation: str = "rollback", allow: Collection[str] = ()
) -> tuple[str, tuple[str, ...]]:
    """Signature of ``@pytest.mark.dbguard``: the test's isolation; databases it may also reach."""
    if isolation not in setting_values.ISOLATION_CHOICES:
        raise pytest.UsageError(
            f"@pytest.mark.dbguard(isolation={isolation!r}): choose one of "
            f"{', '.join(setting_values.ISOLATION_CHOICES)}."
        )
    if isinstance(allow, str) or not all(isinstance(entry, str) and entry for entry in allow):
        raise pytest.UsageError(
            f"@pytest.mark.dbguard(allow={allow!r}): allow takes a list of database names or "
            "URLs, e.g. allow=['analytics'] or allow=['postgresql://reports@db:5432/reports']."
        )
    from pytest_dbguard.guards.foreign_databases import AllowList  # not for --help's marker list

    try:
        AllowList.of(allow, source="@pytest.mark.dbguard(allow=...)")
    except DbguardError as error:
        raise pytest.UsageError(str(error)) from None
    return isolation, tuple(allow)


def dbguard_without(*modules: str) -> tuple[str, ...]:
    """Signature of ``@pytest.mark.dbguard_without``: modules that cannot be imported in the test."""
    if not modules or not all(isinstance(name, str) and name for name in modules):
        raise pytest.UsageError(
            "@pytest.mark.dbguard_without takes one or more module names, "
            "e.g. @pytest.mark.dbguard_without('debug_toolbar')."
        )
    return modules
