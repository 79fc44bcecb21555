"""The session's database lifecycle: wait for the server, provision this worker's database, clean up.

Called from plugin.py hooks. The server was launched before the conftests loaded; ``ensure_started``
waits for it as late as it can: after collection in the processes that run tests (a single run,
each xdist worker), so the server starts while pytest collects, and in the xdist controller, whose
header names the server, at its test loop, once xdist has started the workers. Every process
proves the server answers a real query.
``finish`` drops this worker's database, ``stop`` stops the embedded server and drops what the
run left on an external one.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

from pytest_dbguard.compat import xdist_loaded
from pytest_dbguard.db import (
    databases,
    janitor,
    maintenance,
    schema,
    schema_drift,
    worker_schemas,
)
from pytest_dbguard.db.engines import dispose_own_engines
from pytest_dbguard.exceptions import DatabaseSetupError, DbguardError, ReadinessError, ServerError
from pytest_dbguard.run import (
    environment,
    remote_workers,
    reuse_run,
    templates,
    termination,
    worker_failures,
)
from pytest_dbguard.run.config import Settings
from pytest_dbguard.run.run_plan import SINGLE_PROCESS, RunPlan
from pytest_dbguard.run.state import DbguardRun, SessionState, run_of, the_run

if TYPE_CHECKING:
    from pytest_dbguard.db.databases import Provisioned


def _is_xdist_controller(config: pytest.Config) -> bool:
    return config.pluginmanager.getplugin("dsession") is not None


def configure(config: pytest.Config) -> None:
    """Validate the schema source before anything runs (a bad path is a usage error, not a failed test)."""
    run = the_run(config)
    settings = run.settings
    state = SessionState(runs_tests=True, schema_source=_schema_source(settings))
    if settings.metadata and not settings.alembic_ini:  # both: alembic builds, see schema_drift
        if not _starts_xdist_workers(config):
            _load_metadata(config, settings, state)
    elif settings.alembic_ini:
        state.alembic_ini = schema.alembic_path(
            settings.alembic_ini, settings.source_of("alembic_ini"), config.rootpath
        )
        schema_drift.configure(config)
    run.session = state
    worker_failures.register(config)
    remote_workers.register(config)


def _starts_xdist_workers(config: pytest.Config) -> bool:
    """This process is about to be pytest-xdist's controller: xdist registers its session after
    this hook, but its ``pytest_cmdline_main`` has set ``dist`` already (a worker's is "no").
    The controller imports the models only once xdist has started the workers, which import
    them themselves: the workers start that much sooner."""
    return xdist_loaded(config) and config.getoption("dist", "no") != "no"


def _load_metadata(config: pytest.Config, settings: Settings, state: SessionState) -> None:
    """Import the models (a bad path is a usage error, not a failed test) and check their prefixes."""
    assert settings.metadata is not None
    state.metadata = schema.load_metadata(
        settings.metadata, settings.source_of("metadata"), config.rootpath
    )
    schema.check_table_prefixes(state.metadata, environment.parse_env_lines(settings.env_lines))


NO_SCHEMA: Final = "no schema"
EXIT_GRACE: Final = 5.0  # seconds for an embedded server that could not bind its port to exit


def _schema_source(settings: Settings) -> str:
    if settings.alembic_ini:
        return f"alembic {settings.alembic_ini}"
    if settings.metadata:
        return f"metadata {settings.metadata}"
    return NO_SCHEMA


def start(config: pytest.Config) -> None:
    """At session start, before xdist starts any worker: only ``--dbguard-rebuild`` with reuse
    makes the controller act now (it drops the kept templates before a worker could clone one)."""
    run = run_of(config)
    if run is None or run.session is None:
        return
    state = run.session
    state.runs_tests = not _is_xdist_controller(config)
    state.started_at = time.time()
    if not state.runs_tests and run.settings.rebuild and run.settings.reuse:
        ensure_started(config)


def start_controller(config: pytest.Config) -> bool:
    """The xdist controller's wait for the server, at its test loop: xdist has started the
    workers by then (the controller collects nothing), so they import and collect while an
    embedded cluster starts or a late server comes up, and wait for it themselves after
    collecting. A failure raised here still lets xdist shut the workers down (its session
    finish) before ``stop`` cleans up. True in the controller."""
    run = run_of(config)
    if run is None or run.session is None or run.session.runs_tests:
        return False
    ensure_started(config)
    return True


def ensure_started(config: pytest.Config) -> None:
    """Prove the server answers, then create this worker's database from the template (once)."""
    run = run_of(config)
    if run is None or run.session is None or run.session.started:
        return
    if worker_failures.session_failed(config):  # a collection hook stopped the run: no build
        return
    plan, settings, state = run.plan, run.settings, run.session
    state.started = True
    try:
        if state.metadata is None and settings.metadata and not settings.alembic_ini:
            _load_metadata(config, settings, state)  # the xdist controller's, see configure
        if state.runs_tests:
            _check_compared_metadata(config, settings)
        if plan.server_url is not None:
            _wait_ready(config, run, state)
            _check_can_create_databases(plan, settings)
        kept = templates.kept_template(plan, settings, state)
        state.template = reuse_run.rebuild(plan, settings, kept, state.notes)
        if state.runs_tests:
            state.provisioned = _provision(plan, settings, state)
            schema_drift.check_at_start(config, state.provisioned)
            proxy = run.proxy
            if proxy is not None:
                proxy.start()
                state.details.append(
                    f"dbguard: fault proxy on 127.0.0.1:{proxy.port} in front of the server"
                )
        state.template = state.template or reuse_run.template_word(
            plan, kept, state.provisioned, since=state.started_at
        )
        if kept and settings.reuse and not plan.embedded:
            # No cluster of dbguard's to stop: the template stays as a database on that server.
            state.kept_on_server = kept
    except DbguardError as error:
        if state.runs_tests:  # the controller stops at unconfigure, once xdist's workers are gone
            stop(config)
        worker_failures.fail_session(config, str(error))


def _check_compared_metadata(config: pytest.Config, settings: Settings) -> None:
    """With both schema sources and the check off, Alembic builds the schema and the metadata
    is only what ``dbguard check-schema`` compares it with: a typo in it must stop the run, not
    pass unnoticed. Imported where tests run (their modules import the models anyway; here,
    after collection, it is already done), not in the xdist controller."""
    if settings.metadata and settings.alembic_ini and settings.check_schema == "off":
        schema.load_metadata(settings.metadata, settings.source_of("metadata"), config.rootpath)


def _check_can_create_databases(plan: RunPlan, settings: Settings) -> None:
    """With ``worker_isolation = database`` asked for, the server's owner checks the role once:
    its error is the run's, printed once, whatever the xdist workers meet meanwhile."""
    if not plan.owns_server or plan.embedded or plan.schema is not None:
        return
    if settings.worker_isolation != "database" or plan.server_url is None:
        return
    if not worker_schemas.can_create_databases(plan.server_url):
        url = plan.server_url
        raise DatabaseSetupError(
            f"{settings.source_of('worker_isolation')} = 'database', but on {url.host}:{url.port} "
            + databases.NO_CREATEDB.format(user=url.username)
        )


def _wait_ready(config: pytest.Config, run: DbguardRun, state: SessionState) -> None:
    from pytest_dbguard.server import readiness

    plan, settings, cluster = run.plan, run.settings, run.cluster
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def progress(line: str) -> None:
        if cluster is not None and (died := cluster.exited_early()):
            raise ServerError(died)
        if reporter is not None and plan.owns_server:
            reporter.write_line(f"dbguard: {line}")

    assert plan.server_url is not None
    try:
        result = readiness.wait_for_run(plan.server_url, timeout=settings.wait, progress=progress)
    except ReadinessError as error:
        if not plan.embedded:  # the user's server: say which setting to fix
            from pytest_dbguard.server.connect_diagnosis import from_setting

            raise from_setting(error, settings.source_of("url")) from None
        # dbguard's own server refuses nothing dbguard asks: a refusal came from another server
        # on its port, and ours, which could not bind it, is on its way out. Say that instead.
        died = cluster.died_within(EXIT_GRACE) if cluster is not None else None
        if died is None:
            raise
        raise ServerError(died) from None
    state.answered = True
    state.ready_attempts = result.attempts
    state.ready_ms = result.elapsed_ms
    state.server_version = result.server_version or "?"
    if cluster is not None:
        state.server_start_ms = cluster.start_ms() or 0.0


def _provision(plan: RunPlan, settings: Settings, state: SessionState) -> Provisioned:
    # A single run that keeps nothing has no one to share a template with: it builds the schema
    # in its own database, one CREATE DATABASE (and one DROP) fewer, and needs no fingerprint.
    in_place = (
        plan.server_url is not None
        and plan.schema is None
        and plan.worker == SINGLE_PROCESS
        and not settings.reuse
        and plan.pipeline_run is None
    )
    if in_place or plan.schema is not None:  # schema mode: no template, the worker's schema
        template, template_run = plan.database, plan.run
    else:
        template, template_run = templates.template_for(plan, settings, state)
    with building_in(plan, settings, state, template) as build:
        if plan.server_url is None:
            return databases.provision_sqlite(plan.test_url, Path(template), build)
        if plan.schema is not None:
            return worker_schemas.provision_schema(
                plan.server_url, plan.schema, build, run=plan.run, worker=plan.worker
            )
        # The engine that builds the schema in place stays for the tests, unless they reach the
        # database through the fault proxy (another address, so another engine).
        direct = (plan.test_url.host, plan.test_url.port) == (
            plan.server_url.host,
            plan.server_url.port,
        )
        return databases.provision_database(
            plan.server_url,
            plan.database,
            None if in_place else template,
            build,
            run=plan.run,
            worker=plan.worker,
            template_run=template_run,
            keep_build_engine=in_place and direct,
        )


@contextlib.contextmanager
def building_in(
    plan: RunPlan, settings: Settings, state: SessionState, database: str
) -> Iterator[databases.SchemaBuild | None]:
    """The run's schema build aimed at ``database`` (a template, an in-place worker database, a
    kept failed test's), with the exported variables naming that database while it runs. In
    schema mode there is no template: it is aimed at the worker's schema in the named database."""
    if plan.server_url is None:
        url = plan.test_url
    elif plan.schema is not None:
        url = worker_schemas.schema_url(plan.server_url, plan.schema)
    else:
        url = plan.server_url.with_database(database)
    build = (
        state.schema_hook.builder(url)
        if state.schema_hook is not None
        else schema.builder(
            state.metadata,
            state.alembic_ini,
            url,
            state.schema_source,
            own_process=plan.server_url is not None and plan.schema is None,
            worker_schema=plan.schema,
        )
    )
    # While the schema is built, the exported variables name its database: an alembic env.py
    # that reads DATABASE_URL (or DBGUARD_URL) migrates that one, not the worker's database.
    # In schema mode the worker's own variables: its schema is where the build goes.
    target_plan = (
        plan
        if plan.schema is not None
        else plan.replace(test_url=url, async_url=url.asynchronous(), database=database)
    )
    assignments = environment.parse_env_lines(settings.env_lines)
    with schema.environ_override(environment.variables(target_plan, assignments)):
        yield build


def wait_for_template_build(state: SessionState) -> None:
    """Let the xdist controller's early template build (run.early_template) finish."""
    build, state.template_build = state.template_build, None
    if build is not None:
        build.join()


def end_template_build(plan: RunPlan, state: SessionState) -> None:
    """At the run's end, the xdist controller's early build still going means the run ended
    before its tests could start (Ctrl-C, SIGTERM, a worker's usage error): stop it rather than
    wait for the whole migrate (a big project's takes many seconds), then let it finish."""
    build, hook, url = state.template_build, state.schema_hook, plan.server_url
    if build is not None and build.is_alive() and hook is not None and url is not None:
        from pytest_dbguard.run import thread_stop

        print("dbguard: stopping the template build, the run is over", file=sys.stderr)
        hook.interrupt(url)
        if not thread_stop.stop(build):
            state.template_build = None  # not waited for: the process's exit ends it
            print(
                f"dbguard: the template build did not stop within {thread_stop.WITHIN:.0f} s (a "
                "migration inside one long call); leaving it to end with this process",
                file=sys.stderr,
            )
    wait_for_template_build(state)


def finish(config: pytest.Config) -> None:
    """Drop this worker's database (best effort: a failure here becomes a warning)."""
    run = run_of(config)
    if run is None or run.session is None:
        return
    plan, state = run.plan, run.session
    end_template_build(plan, state)
    provisioned, state.provisioned = state.provisioned, None
    if provisioned is None or plan.server_url is None:
        return
    if plan.embedded and not run.settings.reuse:
        return  # the whole cluster goes away at the end
    try:
        if provisioned.mode == "schema" and provisioned.schema:
            worker_schemas.drop_schema(plan.server_url, provisioned.schema)
        else:
            databases.drop_database(plan.server_url, provisioned.database)
    except Exception as error:  # cleanup must never hide the tests' own outcome
        warnings.warn(
            pytest.PytestWarning(f"dbguard could not drop {provisioned.database}: {error}"),
            stacklevel=1,
        )


def stop(config: pytest.Config) -> None:
    """Stop the embedded server (or drop the run's leftovers on an external one) and restore the environment."""
    run = run_of(config)
    if run is None or run.stopped:
        return  # a failed start already stopped; unconfigure comes again
    run.stopped = True
    termination.shield(config)  # a SIGTERM now must not cut the cleanup short
    with termination.interrupts_deferred():  # nor a Ctrl-C
        _stop(config, run)


def _stop(config: pytest.Config, run: DbguardRun) -> None:
    if run.session is not None:
        end_template_build(run.plan, run.session)  # before anything it made is dropped or stopped
    plan, settings, cluster, proxy = run.plan, run.settings, run.cluster, run.proxy
    answered = run.session is not None and run.session.answered
    if proxy is not None:
        proxy.stop()
    try:
        if plan.owns_server:
            if cluster is not None and answered:
                cluster.fill_cache()  # a first run's initdb output, for the runs after it
            # --dbguard-keep-failed kept databases in the run's own cluster: it runs on until
            # `dbguard stop`, with the copies only.
            stays = cluster is not None and not settings.reuse and run.kept_failed
            if cluster is not None and not settings.reuse and not stays:
                cluster.stop()  # what the run made there goes with it
            elif plan.server_url is not None and answered:
                with maintenance.shared(plan.server_url) as connection:
                    janitor.drop_run(plan.server_url, plan.run, connection=connection)
                if plan.schema is not None:  # workers stopped before their teardown (SIGTERM)
                    from pytest_dbguard.db.schema_janitor import drop_run_schemas

                    drop_run_schemas(plan.server_url, plan.run)
            if stays and cluster is not None:
                cluster.detach(str(config.rootpath))
            if plan.sqlite_dir is not None:
                shutil.rmtree(plan.sqlite_dir, ignore_errors=True)
    except Exception as error:
        print(f"dbguard: cleanup failed: {error}", file=sys.stderr)
    finally:
        dispose_own_engines()
        maintenance.close_shared()
        if cluster is not None and settings.reuse:
            from pytest_dbguard.server import kept_clusters

            kept_clusters.release(cluster.root)  # `dbguard stop` may stop it from now on
        if cluster is not None and (settings.reuse or cluster.kept_failed):
            cluster.let_go()
        environment.leave(config)
