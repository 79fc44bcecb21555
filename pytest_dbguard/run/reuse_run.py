"""What ``--dbguard-reuse`` means for one run: ``--dbguard-rebuild``, and the header's words for
whether the cluster was started or reused and the template built or reused."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pytest_dbguard.db import kept_templates

if TYPE_CHECKING:
    from pytest_dbguard.db.databases import Provisioned
    from pytest_dbguard.run.config import Settings
    from pytest_dbguard.run.run_plan import RunPlan

NO_REBUILD: Final = (
    "dbguard: {source} has no effect without --dbguard-reuse (ini dbguard_reuse): nothing is "
    "kept, every run builds its template anew"
)
CLUSTER_STARTED: Final = "cluster started (kept for the next run: dbguard stop)"
CLUSTER_REUSED: Final = "cluster reused"
REBUILT: Final = "rebuilt (--dbguard-rebuild)"
BUILT: Final = "built"
DROP_KEPT: Final = "dbguard janitor --older-than 0 drops it"
BUILT_BY_A_WORKER: Final = "built by the first worker"


def cluster_words(settings: Settings, adopted: bool) -> str:
    """``, cluster reused`` / ``, cluster started (…)`` for a kept cluster; empty otherwise."""
    if not settings.reuse:
        return ""
    return f", {CLUSTER_REUSED if adopted else CLUSTER_STARTED}"


def rebuild(plan: RunPlan, settings: Settings, template: str | None, notes: list[str]) -> str:
    """``--dbguard-rebuild``: the server's owner drops the kept templates before any worker clones
    (under xdist the controller, before it starts the workers); the template's word, or "".

    Without reuse nothing is kept and every run builds anew, so the flag only adds a note: an
    error would break a command line shared by machines that reuse and machines that do not.
    """
    if not settings.rebuild or not plan.owns_server:
        return ""
    if not settings.reuse:
        notes.append(NO_REBUILD.format(source=settings.source_of("rebuild")))
        return ""
    if plan.server_url is None or plan.schema is not None:
        return ""
    kept_templates.drop_kept(plan.server_url, plan.server_url.database or "postgres")
    return REBUILT if template else ""


def template_word(
    plan: RunPlan, template: str | None, provisioned: Provisioned | None, *, since: float
) -> str:
    """Whether the kept ``template`` was built or reused: known to a process that provisioned;
    the xdist controller, which does not, looks at the complete one's mark: made before this
    session started (``since``, ``time.time()``), it was reused, else a worker built it."""
    if template is None or plan.server_url is None:
        return ""
    if provisioned is not None:
        return BUILT if provisioned.template_built else "reused"
    mark = kept_templates.complete_mark(plan.server_url, template)
    if mark is not None and mark.created < since:
        return "reused"
    return BUILT_BY_A_WORKER
