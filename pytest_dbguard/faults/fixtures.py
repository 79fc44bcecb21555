"""The ``dbguard_faults`` fixture: a :class:`~pytest_dbguard.faults.injector.Faults` on this
process's test database, every fault undone after the test.

Registered by every run; :mod:`.injector` (with the recovery check and the readiness probe it
uses) is imported by the first test that asks for the fixture, not by the runs that never do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest

from pytest_dbguard.run.environment import embedded_cluster
from pytest_dbguard.run.state import the_run

if TYPE_CHECKING:
    from pytest_dbguard.faults.injector import Faults


def faults_for(config: pytest.Config, **hooks: Callable[[str], NoReturn]) -> Faults:
    """A ``Faults`` on this process's test database; ``skip=`` and ``fail=`` as the fixture's."""
    from pytest_dbguard.faults.injector import Faults
    from pytest_dbguard.faults.restart_fence import fence_of, workers

    run = the_run(config)
    plan = run.plan
    return Faults(
        test_url=plan.test_url,
        server_url=plan.server_url,
        database=plan.database,
        proxy=run.proxy,
        cluster=embedded_cluster(run),
        fence=fence_of(config),
        workers=workers(),
        shared_database=plan.schema is not None,
        wait=run.settings.wait,
        die_with_parent=plan.owns_server,
        **hooks,
    )


@pytest.fixture
def dbguard_faults(request: pytest.FixtureRequest) -> Iterator[Faults]:
    """Function: a ``Faults`` on this worker's database (PostgreSQL; skips what SQLite cannot do).
    Teardown undoes every fault: refusal and latency end, a restarted server answers again."""
    faults = faults_for(request.config, skip=pytest.skip, fail=pytest.fail)
    try:
        yield faults
    finally:
        for problem in faults.undo():
            message = f"dbguard_faults could not undo a fault: {problem}"
            request.node.warn(pytest.PytestWarning(message))
