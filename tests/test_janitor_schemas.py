"""``python -m pytest_dbguard janitor`` also sweeps schema-mode worker schemas left in the named database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.helpers import mark_text
from tests.pgserver import LIMITED_PASSWORD, LIMITED_USER, SUPERUSER_PASSWORD, TestServer

THREE_DAYS = 3 * 86400.0
DATABASE = "app_limited"


def janitor(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != "DBGUARD_URL"}
    return subprocess.run(
        [sys.executable, "-m", "pytest_dbguard", "janitor", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def _schemas(pg_server: TestServer) -> set[str]:
    out = pg_server.sql("SELECT nspname FROM pg_namespace", database=DATABASE).stdout
    return set(out.split())


@pytest.fixture
def schemas(pg_server: TestServer) -> Iterator[dict[str, str]]:
    """A crashed run's marked worker schema, an unmarked look-alike, a marked schema of another
    shape, and one whose creator still runs; each with a table."""
    names = {
        "crashed": "dbg_abc124_gw0",
        "unmarked": "dbg_abc124_gw1",
        "foreign": "app_marked_plain",
        "live": "dbg_abc124_gw2",
    }
    comments = {
        "crashed": mark_text("abc124", "gw0", age=THREE_DAYS),
        "foreign": mark_text("abc124", "gw0", age=THREE_DAYS),
        "live": mark_text("abc124", "gw2", pid=1),  # pid 1: alive, started before the mark
    }
    for key, name in names.items():
        pg_server.sql(
            f"CREATE SCHEMA {name}; CREATE TABLE {name}.notes (id int)", database=DATABASE
        )
        if key in comments:
            pg_server.sql(f"COMMENT ON SCHEMA {name} IS '{comments[key]}'", database=DATABASE)
    yield names
    for name in names.values():
        pg_server.sql(f"DROP SCHEMA IF EXISTS {name} CASCADE", database=DATABASE)


def test_janitor_drops_only_marked_worker_schemas_whose_run_is_over(
    pg_server: TestServer, schemas: dict[str, str]
) -> None:
    url = pg_server.url(DATABASE)
    dry = janitor(url, "--older-than", "0s", "--dry-run")  # 0s: list only, on a shared server
    assert dry.returncode == 0, dry.stderr
    assert (
        f"would drop schema {schemas['crashed']} in {DATABASE} (run abc124, worker gw0, 3d old"
        in dry.stdout
    )
    assert f"kept schema {schemas['live']} in {DATABASE} (run abc124" in dry.stdout
    assert "in use: its creator, process 1 on" in dry.stdout
    assert schemas["unmarked"] not in dry.stdout and schemas["foreign"] not in dry.stdout
    assert set(schemas.values()) <= _schemas(pg_server)

    result = janitor(url, "--older-than", "2d")
    assert result.returncode == 0, result.stderr
    assert f"dropped schema {schemas['crashed']} in {DATABASE}" in result.stdout
    left = _schemas(pg_server)
    assert schemas["crashed"] not in left
    assert {schemas["unmarked"], schemas["foreign"], schemas["live"], "public"} <= left
    assert SUPERUSER_PASSWORD not in result.stdout + result.stderr


def test_janitor_keeps_a_worker_schema_whose_tables_a_session_uses(
    pg_server: TestServer, schemas: dict[str, str]
) -> None:
    name = schemas["crashed"]
    holder = psycopg.connect(pg_server.url(DATABASE).replace("postgresql+psycopg", "postgresql"))
    try:
        holder.execute(f"SELECT count(*) FROM {name}.notes")  # a transaction holding a lock
        kept = janitor(pg_server.url(DATABASE), "--older-than", "2d")
        assert kept.returncode == 0, kept.stderr
        assert f"kept schema {name} in {DATABASE}" in kept.stdout
        assert "in use: 1 session(s) are using its tables" in kept.stdout
        assert name in _schemas(pg_server)
    finally:
        holder.close()
    dropped = janitor(pg_server.url(DATABASE), "--older-than", "2d")
    assert f"dropped schema {name} in {DATABASE}" in dropped.stdout
    assert name not in _schemas(pg_server)


def test_janitor_cleans_up_schemas_of_a_run_killed_with_sigkill(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """A real schema-mode run (a role without CREATEDB) killed mid-test leaves its schema."""
    pytester.makepyfile(
        """
        import os, pathlib, time

        def test_hangs(dbguard_engine):
            pathlib.Path("schema.txt").write_text("dbg_" + os.environ["DBGUARD_RUN"] + "_main")
            time.sleep(120)
        """
    )
    url = pg_server.url(DATABASE, user=LIMITED_USER)
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "pytest_dbguard", "--dbguard-url", url],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (pytester.path / "schema.txt").exists():
            assert run.poll() is None and time.monotonic() < deadline, "the test never started"
            time.sleep(0.05)
        leftover = (pytester.path / "schema.txt").read_text()
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(30)
    try:
        assert leftover in _schemas(pg_server)  # SIGKILL: no teardown ran
        result = janitor(url, "--older-than", "0s")
        assert f"dropped schema {leftover} in {DATABASE}" in result.stdout, result.stdout
        assert leftover not in _schemas(pg_server)
        assert "public" in _schemas(pg_server)
        assert LIMITED_PASSWORD not in result.stdout + result.stderr
    finally:
        pg_server.sql(f"DROP SCHEMA IF EXISTS {leftover} CASCADE", database=DATABASE)


def test_run_teardown_drops_its_worker_schemas_but_not_a_live_same_id_run(
    pg_server: TestServer,
) -> None:
    """A worker stopped before its teardown leaves its schema; the run's owner drops it at the end."""
    from pytest_dbguard.db.schema_janitor import drop_run_schemas
    from pytest_dbguard.db.urls import DatabaseURL

    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    names = {
        "dbg_feed0006_gw0": int(ended.stdout),
        "dbg_feed0006_gw1": 1,
        "dbg_feed0007_gw0": int(ended.stdout),
    }
    for name, pid in names.items():
        run = name.split("_")[1]
        pg_server.sql(f"CREATE SCHEMA {name}", database=DATABASE)
        pg_server.sql(
            f"COMMENT ON SCHEMA {name} IS '{mark_text(run, 'gw0', pid=pid)}'", database=DATABASE
        )
    try:
        url = DatabaseURL.parse(pg_server.url(DATABASE))
        assert drop_run_schemas(url, "feed0006") == ["dbg_feed0006_gw0"]
        left = _schemas(pg_server)
        assert "dbg_feed0006_gw0" not in left
        assert {"dbg_feed0006_gw1", "dbg_feed0007_gw0"} <= left  # a live creator; another run
    finally:
        for name in names:
            pg_server.sql(f"DROP SCHEMA IF EXISTS {name} CASCADE", database=DATABASE)
