"""Under xdist, the controller builds a Django project's template while its workers start.

Without it, the worker that finishes collecting first migrates while the other waits for the
template's lock: the first test waits for the spawn, the imports, the collection and one
migrate in a row. The controller has Django set up, and proves the server ready right after
xdist has started the workers (``lifecycle.start_controller``), so it can build the template
itself. It starts the build in a thread then: the workers have inherited its environment, so the
variables exported for the build's database (``building_in``) never reach them. The build
holds the template's advisory lock like a worker's would: a worker that asks for the template
meanwhile waits and clones it, and one that gets there first builds it and the controller
finds it complete. A build that fails here is only noted in the summary line: the workers find
no template, build it themselves and fail as they always did (the cause printed once, by
``worker_failures``).

Only Django's schema source (``migrate``) is built early; metadata and alembic runs keep
building in the first worker.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Final

import pytest

from pytest_dbguard.db import databases
from pytest_dbguard.exceptions import DbguardError, brief
from pytest_dbguard.run import lifecycle, reuse_run, templates, thread_stop
from pytest_dbguard.run.run_plan import RunPlan
from pytest_dbguard.run.state import the_run

FAILED_NOTE: Final = (
    "dbguard: the xdist controller's early build of the template {template} failed "
    "({error}); the workers built it instead"
)


def wanted(config: pytest.Config) -> bool:
    """Whether this process is an xdist controller whose run builds a Django template that
    its workers clone, on a server that has answered."""
    run = the_run(config)
    plan, state = run.plan, run.session
    return (
        state is not None
        and not state.runs_tests
        and state.answered
        and state.schema_hook is not None
        and plan.server_url is not None
        and plan.schema is None
    )


THREAD_NAME: Final = "dbguard-template-build"


def start(config: pytest.Config) -> None:
    """Start the build in a thread (joined by ``lifecycle`` before it cleans up); called once
    xdist has started the workers and the controller has proven the server ready."""
    if not wanted(config):
        return
    state = the_run(config).session
    assert state is not None
    thread = threading.Thread(target=build, args=(config,), name=THREAD_NAME, daemon=True)
    state.template_build = thread
    thread.start()


def build(config: pytest.Config) -> None:
    """Build the template unless a complete one is there (a kept one, or a worker's)."""
    run = the_run(config)
    plan, settings, state = run.plan, run.settings, run.session
    assert state is not None and plan.server_url is not None
    template, template_run = templates.template_for(plan, settings, state)
    started = time.perf_counter()
    try:
        with (
            _logging_hidden(),
            lifecycle.building_in(plan, settings, state, template) as schema_build,
        ):
            assert schema_build is not None
            built = databases.ensure_template(
                plan.server_url, template, schema_build, run=template_run
            )
    except thread_stop.Stopped:
        return  # the run is over; the build's own failure path dropped the template
    except Exception as error:  # the workers build it and report what fails
        state.notes.append(FAILED_NOTE.format(template=template, error=_cause(error, plan)))
        return
    # The run report's controller entry: which template, how long it took, built or found.
    state.early_build = (template, (time.perf_counter() - started) * 1000, built)
    if built and state.template == reuse_run.BUILT_BY_A_WORKER:  # what the header says
        state.template = reuse_run.BUILT


class _OtherThreadsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != THREAD_NAME


@contextlib.contextmanager
def _logging_hidden() -> Iterator[None]:
    """The build's own log records go nowhere: a migration that logs (pretalx's RunPython) wrote
    them to the controller's captured stderr, which pytest prints after the run's summary line.
    Under pytest-django each worker migrates inside a fixture, whose output is shown only when
    it fails; a failed build here leaves it to the workers, which show theirs that way."""
    # A copy in one step: the main thread may create loggers meanwhile.
    loggers = [logging.root, *list(logging.root.manager.loggerDict.values())]
    handlers = {
        handler
        for logger in loggers
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
    }
    if logging.lastResort is not None:  # where a record goes when no logger has a handler
        handlers.add(logging.lastResort)
    quiet = _OtherThreadsOnly()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _cause(error: Exception, plan: RunPlan) -> str:
    """``Type: first line`` of what went wrong (the driver's or the migration's own error,
    which dbguard's wraps), without the password; for a failed migrate, the alias and the
    migration too."""
    if isinstance(error, DbguardError) and error.cause_line:
        return error.cause_line
    cause = error.__cause__ if isinstance(error.__cause__, Exception) else error
    password = plan.server_url.password if plan.server_url is not None else None
    return brief(cause, password)
