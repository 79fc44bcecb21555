"""dbguard's one summary line: what it says (``text``) and where it is shown, right after the
collection line, in every mode.

A single run (and each xdist worker) waits for the server only after collection, so its line
follows ``collected N items``; the xdist controller knows the server once xdist has started the
workers (at its test loop), but holds its line back until the first test starts, which is after
``N workers [M items]``. Under ``-q`` the line is shown only when something is worth knowing: a
note (a Django alias switched to PostgreSQL, a flag with no effect, a failed early build), a
reused cluster or template, worker schemas instead of databases, or a slow start.
"""

from __future__ import annotations

from typing import Final

import pytest

from pytest_dbguard.db.names import schema_name
from pytest_dbguard.run import lifecycle, reuse_run
from pytest_dbguard.run.state import DbguardRun, SessionState, run_of

SLOW_MS: Final = 1000.0  # a server start or readiness wait longer than this is worth a line


def noteworthy(run: DbguardRun) -> bool:
    """Whether the line says something a ``-q`` run should still see."""
    state = run.session
    assert state is not None
    return (
        bool(state.notes)
        or run.settings.reuse
        or run.plan.schema is not None
        or state.ready_attempts > 1
        or max(state.ready_ms, state.server_start_ms) > SLOW_MS
    )


def shown(config: pytest.Config) -> list[str]:
    """The summary line, unless ``-q`` asked for quiet and nothing is worth knowing."""
    run = run_of(config)
    if run is None or run.session is None:
        return []
    quiet = config.get_verbosity() < 0
    if quiet and not noteworthy(run):
        return []
    return text(config, details=not quiet)


def text(config: pytest.Config, *, details: bool = True) -> list[str]:
    """The line (and the run's notes after it): target, worker databases, schema source, server start and readiness."""
    run = run_of(config)
    if run is None or run.session is None:
        return []  # not active, or a command that only shows something: nothing started
    plan, state, settings = run.plan, run.session, run.settings
    if plan.server_url is None:
        target = f"SQLite files in {plan.sqlite_dir}"
    elif plan.embedded:
        reuse = reuse_run.cluster_words(settings, run.adopted)
        target = (
            f"embedded PostgreSQL {state.server_version} at "
            f"{plan.server_url.host}:{plan.server_url.port} ({plan.server_url.driver}){reuse}"
        )
    else:
        target = f"{plan.server_url} (PostgreSQL {state.server_version})"
    if plan.schema is not None:
        layout = f"schemas {schema_name(plan.run, '<worker>')} in {plan.database} (the role may not create databases)"
    elif state.runs_tests:
        layout = f"database {plan.database}"
    else:
        layout = f"databases {plan.database.rsplit('_', 1)[0]}_<worker>, one per xdist worker"
    schema_source = state.schema_source
    if state.template:
        schema_source += f", template {state.template}"
        if state.kept_on_server:
            schema_source += (
                f" (kept on the server as {state.kept_on_server}: {reuse_run.DROP_KEPT})"
            )
    parts = [f"dbguard: {target}", layout, schema_source]
    if (built_ms := _build_ms(state)) is not None:
        # A migrate of many seconds (paperless: 22 s) is a pause the line should explain.
        parts.append(f"schema built in {built_ms / 1000:.1f} s")
    if plan.server_url is not None:
        started = (
            f"started in {state.server_start_ms:.0f} ms, "
            if plan.embedded and state.server_start_ms
            else ""
        )
        parts.append(
            f"{started}ready after {state.ready_attempts} attempt(s), {state.ready_ms:.0f} ms"
        )
    return ["; ".join(parts), *state.notes, *(state.details if details else ())]


def _build_ms(state: SessionState) -> float | None:
    """How long this process spent building the schema, when it built one (the xdist
    controller's early template, or a single run's template or in-place build); None without a
    schema source, where provisioning times only the empty database or schema."""
    if state.schema_source == lifecycle.NO_SCHEMA:
        return None
    if state.early_build is not None:
        _, milliseconds, built = state.early_build
        return milliseconds if built else None
    provisioned = state.provisioned
    if provisioned is not None and provisioned.template_built and provisioned.template_ms:
        return provisioned.template_ms
    return None


def after_collection(config: pytest.Config) -> list[str]:
    """A single run's (or worker's) line, for ``pytest_report_collectionfinish``."""
    run = run_of(config)
    if run is None or run.session is None or not run.session.started:
        return []  # the session was stopped during collection: nothing started to describe
    return shown(config) if run.session.runs_tests else []


class ControllerLine:
    """The xdist controller's line, written once, when the first test starts."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.written = False

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        if self.written:
            return
        self.written = True
        run = run_of(self.config)
        if run is not None and run.session is not None:
            lifecycle.wait_for_template_build(run.session)  # done by now: the line tells its end
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        for line in shown(self.config):
            reporter.write_line(line)


def register_for_controller(config: pytest.Config) -> None:
    """In the xdist controller, show the line after the workers' collection line."""
    if config.pluginmanager.getplugin("dsession") is not None:
        config.pluginmanager.register(ControllerLine(config), "dbguard-summary-line")
