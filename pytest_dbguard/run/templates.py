"""Which template a run's databases are cloned from: its name, the fingerprint of the schema it
holds, and whether the run keeps it (``--dbguard-reuse``) or shares it (a pipeline's shards)."""

from __future__ import annotations

import os
from typing import Final

from pytest_dbguard.db import kept_templates, schema_fingerprint
from pytest_dbguard.run import environment
from pytest_dbguard.run.config import Settings
from pytest_dbguard.run.run_plan import RunPlan
from pytest_dbguard.run.state import SessionState


def kept_template(plan: RunPlan, settings: Settings, state: SessionState) -> str | None:
    """The name of the template this run keeps or shares with a pipeline's other shards, or None
    (neither, no schema, schema mode)."""
    if (
        not (settings.reuse or plan.pipeline_run)
        or plan.server_url is None
        or plan.schema is not None
    ):
        return None
    if state.metadata is None and state.alembic_ini is None and state.schema_hook is None:
        return None
    return template_for(plan, settings, state)[0]


def fingerprint(settings: Settings, state: SessionState) -> str:
    """A short hash of the schema this worker needs: workers whose schemas differ (a per-worker
    table prefix) get different templates, and a reused template is rebuilt when the schema changes."""
    if state.schema_hook is not None:
        return state.schema_hook.fingerprint()
    if state.metadata is not None:
        return schema_fingerprint.fingerprint_metadata(state.metadata, "postgresql")
    if state.alembic_ini is not None:
        # Migrations may read dbguard_env values (a prefix); those that say where the database
        # is (its name, URL, host, port, role) do not count: with the fault proxy on, each
        # worker's {port} is its own proxy's, and every worker built a template of its own.
        shared = [
            f"{name}={os.environ.get(name, '')}"
            for name, template in environment.parse_env_lines(settings.env_lines)
            if not any(f"{{{key}}}" in template for key in PER_DATABASE_PLACEHOLDERS)
        ]
        return schema_fingerprint.fingerprint_alembic(state.alembic_ini, shared)
    return ""


# Every placeholder but {worker} and {run} says where the database is, not what is in it. A
# per-worker (or per-run) table prefix the migrations read gives a schema, and a template, of
# its own.
PER_DATABASE_PLACEHOLDERS: Final = tuple(
    name for name in environment.PLACEHOLDERS if name not in ("worker", "run")
)


def template_for(plan: RunPlan, settings: Settings, state: SessionState) -> tuple[str, str]:
    """The template's name and the run id its mark carries (reused templates are kept across runs)."""
    from pytest_dbguard.db.names import base_of, template_name

    schema_hash = fingerprint(settings, state) or "000000"
    if plan.server_url is None:
        assert plan.sqlite_dir is not None
        base = base_of(plan.database)
        return str(plan.sqlite_dir / f"{template_name(base, plan.run, schema_hash)}.db"), plan.run
    base = plan.server_url.database or "postgres"
    if settings.reuse:
        return kept_templates.template_name(base, schema_hash), kept_templates.REUSE_RUN
    # Shards of one pipeline (DBGUARD_RUN) share it: built once, under the template's lock.
    return template_name(base, plan.template_run, schema_hash), plan.template_run
