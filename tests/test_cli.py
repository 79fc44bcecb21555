"""``python -m pytest_dbguard``: wait, probe and janitor against a live and a dead server."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pytest_dbguard.cli import parse_duration
from pytest_dbguard.db.janitor import drop_marked, list_marked, sweep
from pytest_dbguard.exceptions import ConfigError, DatabaseSetupError
from tests.helpers import dbguard_cli, mark_text
from tests.pgserver import (
    LIMITED_PASSWORD,
    LIMITED_USER,
    SUPERUSER_PASSWORD,
    TestServer,
    free_port,
)

THREE_DAYS = 3 * 86400.0


def dbguard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command line in a subprocess, with DBGUARD_URL only when ``env`` sets it."""
    environ = {key: value for key, value in os.environ.items() if key != "DBGUARD_URL"}
    return dbguard_cli(*args, env={**environ, **(env or {})})


def dead_url(pg_server: TestServer) -> str:
    return pg_server.url().replace(f":{pg_server.port}/", f":{free_port()}/")


@pytest.fixture
def leftovers(pg_server: TestServer) -> Iterator[dict[str, str]]:
    """A crashed run's marked database, an unmarked look-alike, and a marked non-dbguard name."""
    databases = {
        "marked": "x_dbg_abc123_gw0",
        "unmarked": "x_dbg_abc123_gw1",
        "foreign": "x_marked_plain",
    }
    for name in databases.values():
        pg_server.sql(f"CREATE DATABASE {name}")
    for key in ("marked", "foreign"):
        comment = mark_text("abc123", "gw0", age=THREE_DAYS)
        pg_server.sql(f"COMMENT ON DATABASE {databases[key]} IS '{comment}'")
    yield databases
    for name in databases.values():
        pg_server.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_wait_on_a_live_server(pg_server: TestServer) -> None:
    result = dbguard("wait", pg_server.url(), "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert "ready:" in result.stdout and "1 attempt" in result.stdout
    assert "PostgreSQL 15" in result.stdout
    assert SUPERUSER_PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["wait", "probe", "janitor"])
def test_without_a_url_the_projects_ini_names_the_server(
    pg_server: TestServer, tmp_path: Path, command: str
) -> None:
    """Run from a project (or a folder under it) whose pytest ini sets dbguard_url: no URL to
    repeat on the command line; a bad one there is named with its file."""
    (tmp_path / "pytest.ini").write_text(f"[pytest]\ndbguard_url = {pg_server.url()}\n")
    (tmp_path / "tests").mkdir()
    environ = {key: value for key, value in os.environ.items() if key != "DBGUARD_URL"}
    extra = ["--dry-run", "--older-than", "400d"] if command == "janitor" else []
    result = dbguard_cli(command, *extra, cwd=tmp_path / "tests", env=environ)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"127.0.0.1:{pg_server.port}" in result.stdout
    assert SUPERUSER_PASSWORD not in result.stdout + result.stderr
    (tmp_path / "pytest.ini").write_text("[pytest]\ndbguard_url = postgresql://u:pw@h:0x/db\n")
    bad = dbguard_cli(command, cwd=tmp_path / "tests", env=environ)
    assert bad.returncode == 2
    assert f"ini dbguard_url in {tmp_path / 'pytest.ini'}" in bad.stderr
    assert "port '0x'" in bad.stderr


def test_an_ini_of_another_account_names_no_server(pg_server: TestServer, tmp_path: Path) -> None:
    """Found upwards from the folder, in one that any account may write to (``/tmp``): the
    driver would send PGPASSWORD to the server it names. Another account's own project (a
    checkout bind-mounted into a container, run as root there) is read as pytest reads it."""
    assert os.geteuid() == 0, "run the suite as root, as the README's test command does"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    ini = shared / "pytest.ini"
    ini.write_text(f"[pytest]\ndbguard_url = {pg_server.url(password='')}\n")
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(ini, nobody, nobody)
    environ = {key: value for key, value in os.environ.items() if key != "DBGUARD_URL"}
    environ["PGPASSWORD"] = SUPERUSER_PASSWORD
    offset = pg_server.log_offset()
    result = dbguard_cli("probe", cwd=shared, env=environ)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        f"{ini} is below {shared}, a folder any account may write to, and another account "
        f"(uid {nobody}) made it: dbguard takes no server URL from it" in result.stderr
    )
    assert "Give the URL as the command's argument or in $DBGUARD_URL" in result.stderr
    assert pg_server.connections_since(offset) == []
    # The other account's own project, in no folder that anyone may write to: read. (Moved
    # out of /tmp, where pytest's tmp_path lies: a bind-mounted checkout in a container.)
    own = Path(tempfile.mkdtemp(dir=Path.home()))
    try:
        project = own / "project"
        project.mkdir()
        os.chown(project, nobody, nobody)
        ini.rename(project / "pytest.ini")
        ok = dbguard_cli("probe", cwd=project, env=environ)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    finally:
        shutil.rmtree(own)


def test_wait_reads_the_url_from_the_environment(pg_server: TestServer) -> None:
    result = dbguard("wait", "--timeout", "10", env={"DBGUARD_URL": pg_server.url()})
    assert result.returncode == 0, result.stderr


def test_wait_on_a_dead_server_gives_the_staged_diagnosis(pg_server: TestServer) -> None:
    url = dead_url(pg_server)
    result = dbguard("wait", url, "--timeout", "1.5")  # the helper's own timeout catches a hang
    assert result.returncode == 1
    assert re.search(r"Gave up after \d+ attempts in 1\.\d s", result.stderr), result.stderr
    assert result.stdout == ""
    assert "failed step: TCP connect" in result.stderr
    assert url.split("@")[1].split("/")[0] in result.stderr
    assert "waiting for" in result.stderr, "progress lines go to stderr"
    assert ", failed step: TCP connect (Connection refused)" in result.stderr
    assert SUPERUSER_PASSWORD not in result.stderr


def test_probe_json_on_a_live_server(pg_server: TestServer) -> None:
    result = dbguard("probe", pg_server.url(), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "ok" and report["server_version"].startswith("15")
    assert isinstance(report["latency_ms"], float) and report["stage"] is None
    assert report["url"] == pg_server.url().replace(SUPERUSER_PASSWORD, "***")
    assert SUPERUSER_PASSWORD not in result.stdout


def test_probe_json_on_a_dead_server(pg_server: TestServer) -> None:
    result = dbguard("probe", dead_url(pg_server), "--json", "--timeout", "2")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["status"], report["stage"]) == ("error", "TCP connect")
    assert "refused" in report["error"].lower()


def test_probe_text_names_the_failing_step(pg_server: TestServer) -> None:
    result = dbguard("probe", pg_server.url(password="Wr0ng-Pw-Never-Shown"))
    assert result.returncode == 1
    assert ": failed step: authentication. " in result.stdout
    assert "authentication failed" in result.stdout
    assert "Wr0ng-Pw-Never-Shown" not in result.stdout + result.stderr


def test_version() -> None:
    result = dbguard("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dbguard {importlib.metadata.version('pytest-dbguard')}"


def test_janitor_drops_only_marked_dbguard_databases(
    pg_server: TestServer, leftovers: dict[str, str]
) -> None:
    # Three days old, so nothing another test left on the shared server is touched.
    dry = dbguard("janitor", pg_server.url(), "--older-than", "2d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would drop {leftovers['marked']} (run abc123, worker gw0, 3d old" in dry.stdout
    assert set(leftovers.values()) <= set(pg_server.databases())

    too_young = dbguard("janitor", pg_server.url(), "--older-than", "4d")
    assert too_young.returncode == 0, too_young.stderr
    assert "nothing to drop" in too_young.stdout and "older than 4d" in too_young.stdout
    # Named, not dropped: the oldest first (what other tests made here is seconds old).
    assert f"younger than 4d: {leftovers['marked']} (run abc123, 3d old)" in too_young.stdout

    result = dbguard("janitor", pg_server.url(), "--older-than", "2d")
    assert result.returncode == 0, result.stderr
    assert f"dropped {leftovers['marked']}" in result.stdout
    assert leftovers["unmarked"] not in result.stdout
    assert leftovers["foreign"] not in result.stdout
    remaining = set(pg_server.databases())
    assert leftovers["marked"] not in remaining
    assert {leftovers["unmarked"], leftovers["foreign"], "postgres"} <= remaining
    assert SUPERUSER_PASSWORD not in result.stdout + result.stderr


def test_janitor_names_the_kept_templates_it_leaves(pg_server: TestServer) -> None:
    """A template kept by --dbguard-reuse two hours ago is younger than the default 6 h: the
    janitor leaves it and says so, with how to drop it."""
    name = "x_dbg_feedbeef_tpl"
    pg_server.sql(f"CREATE DATABASE {name} IS_TEMPLATE true")
    try:
        pg_server.sql(f"COMMENT ON DATABASE {name} IS '{mark_text('reuse', 'tpl', age=7200)}'")
        result = dbguard("janitor", pg_server.url(), "--dry-run")
        assert result.returncode == 0, result.stderr
        (left,) = [line for line in result.stdout.splitlines() if line.startswith("left ")]
        assert "younger than 6h: " in left
        assert f"{name} (kept template of --dbguard-reuse, 2h old)" in left
        assert left.endswith("--older-than 0 drops them too, except those a run is using")
        assert name in pg_server.databases()
    finally:
        pg_server.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", check=False)


def test_janitor_reports_a_database_its_role_may_not_drop(pg_server: TestServer) -> None:
    """Another role's leftover: one line that names it and the server's reason, exit 1; it was
    a traceback of the driver's InsufficientPrivilege."""
    name = "x_dbg_feed0009_gw0"
    pg_server.sql(f"CREATE DATABASE {name}")
    try:
        pg_server.sql(
            f"COMMENT ON DATABASE {name} IS '{mark_text('feed0009', 'gw0', age=THREE_DAYS)}'"
        )
        url = pg_server.url(user=LIMITED_USER)
        result = dbguard("janitor", url, "--older-than", "2d")
        assert result.returncode == 1, result.stdout + result.stderr
        (line,) = [line for line in result.stdout.splitlines() if f" {name} " in line]
        assert line.startswith(f"failed {name} (run feed0009, worker gw0, 3d old")
        assert line.endswith(
            f"Could not drop '{name}' on {url.rsplit('/', 1)[0].replace(LIMITED_PASSWORD, '***')}: must be owner of database {name}"
        )
        assert "Traceback" not in result.stderr
        assert LIMITED_PASSWORD not in result.stdout + result.stderr
        assert name in pg_server.databases()
    finally:
        pg_server.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", check=False)


def test_janitor_keeps_a_database_a_live_run_uses(
    pg_server: TestServer, leftovers: dict[str, str]
) -> None:
    """Old enough to sweep, but its run is still going: its creator lives, or a session is on it."""
    name = leftovers["marked"]
    live = mark_text("abc123", "gw0", pid=1)  # pid 1: alive, and started before a mark dated now
    pg_server.sql(f"COMMENT ON DATABASE {name} IS '{live}'")
    # --older-than 0s reaches every marked database on the shared server: list only.
    dry = dbguard("janitor", pg_server.url(), "--older-than", "0s", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"kept {name} (run abc123, worker gw0" in dry.stdout
    assert "in use: its creator, process 1 on" in dry.stdout

    # Dated three days ago by this process, which started later: a crashed run's, unless in use.
    pg_server.sql(f"COMMENT ON DATABASE {name} IS '{mark_text('abc123', 'gw0', age=THREE_DAYS)}'")
    holder = psycopg.connect(pg_server.url(name).replace("postgresql+psycopg", "postgresql"))
    try:
        kept = dbguard("janitor", pg_server.url(), "--older-than", "2d")
        assert kept.returncode == 0, kept.stderr
        assert f"kept {name} (run abc123" in kept.stdout
        assert "in use: 1 session(s) are connected to it" in kept.stdout
        assert name in pg_server.databases()
    finally:
        holder.close()
    deadline = time.monotonic() + 10
    # The closed session's backend ends a moment later.
    while (
        f"kept {name}"
        in (dropped := dbguard("janitor", pg_server.url(), "--older-than", "2d")).stdout
    ):
        assert time.monotonic() < deadline, dropped.stdout
        time.sleep(0.05)
    assert f"dropped {name}" in dropped.stdout
    assert name not in pg_server.databases()


def test_drop_marked_refuses_what_dbguard_did_not_create(
    pg_server: TestServer, leftovers: dict[str, str]
) -> None:
    for key, reason in [("unmarked", "does not carry"), ("foreign", "name does not have")]:
        with pytest.raises(DatabaseSetupError, match=reason):
            drop_marked(pg_server.url(), leftovers[key])
    with pytest.raises(DatabaseSetupError, match="does not exist"):
        drop_marked(pg_server.url(), "x_dbg_abc123_gw9")
    assert {leftovers["unmarked"], leftovers["foreign"]} <= set(pg_server.databases())


def test_drop_marked_never_drops_the_database_the_url_names(
    pg_server: TestServer, leftovers: dict[str, str]
) -> None:
    url = pg_server.url(leftovers["marked"])
    with pytest.raises(DatabaseSetupError, match="the database the URL names"):
        drop_marked(url, leftovers["marked"])
    swept = sweep(url, older_than=0, dry_run=True).swept
    assert leftovers["marked"] not in [item.database.name for item in swept]


def test_list_sweep_and_drop_a_leftover_template(pg_server: TestServer) -> None:
    name = "x_dbg_def456_tpl"
    pg_server.sql(f"CREATE DATABASE {name} IS_TEMPLATE true")
    try:
        pg_server.sql(
            f"COMMENT ON DATABASE {name} IS '{mark_text('def456', 'gw0', age=THREE_DAYS)}'"
        )
        found = {item.name: item for item in list_marked(pg_server.url())}
        assert found[name].is_template and found[name].mark.run == "def456"
        assert found[name].age > THREE_DAYS - 60
        dry = sweep(pg_server.url(), older_than=2 * 86400, dry_run=True).swept
        assert [(item.database.name, item.action) for item in dry] == [(name, "would drop")]
        assert drop_marked(pg_server.url(), name).name == name
        assert name not in pg_server.databases()
    finally:
        pg_server.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", check=False)


def test_janitor_api_refuses_sqlite() -> None:
    with pytest.raises(ConfigError, match="PostgreSQL"):
        list_marked("sqlite:///x.db")


def test_janitor_on_a_dead_server(pg_server: TestServer) -> None:
    result = dbguard("janitor", dead_url(pg_server))
    assert result.returncode == 1
    assert "TCP connect" in result.stderr and "Connection refused" in result.stderr
    assert SUPERUSER_PASSWORD not in result.stderr


def test_janitor_refuses_sqlite() -> None:
    result = dbguard("janitor", "sqlite:///x.db")
    assert result.returncode == 2
    assert "PostgreSQL" in result.stderr


@pytest.mark.parametrize("command", ["wait", "probe", "janitor"])
def test_no_url_is_a_usage_error(command: str) -> None:
    result = dbguard(command)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: dbguard")
    assert "DBGUARD_URL" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["wait", "mysql://u:pw@h/db"], "supports postgresql", id="unknown-backend"),
        pytest.param(["probe", "postgresql+nodriver://h/db"], "unknown driver", id="bad-driver"),
        pytest.param(["wait", "postgresql://h:99999/db"], "port", id="bad-port"),
        pytest.param(["janitor", "--older-than", "6x", "postgresql://h/db"], "duration", id="age"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args: list[str], expected: str) -> None:
    result = dbguard(*args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("30m", 1800.0), ("6h", 21600.0), ("2d", 172800.0), ("0s", 0.0), ("1.5", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_janitor_cleans_up_after_a_run_killed_with_sigkill(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """A real run killed mid-test cannot drop its database; the janitor can, and nothing else."""
    import signal

    pg_server.sql('CREATE DATABASE "postgres_dbg_killed_gw9"')  # a lookalike without the mark
    pytester.makepyfile(
        """
        import os, pathlib, time

        def test_hangs(dbguard_engine):
            pathlib.Path("db.txt").write_text(os.environ["DBGUARD_DB"])
            time.sleep(120)
        """
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "pytest_dbguard", "--dbguard-url", pg_server.url()],
        cwd=pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        written = pytester.path / "db.txt"
        # Until it holds the name: the file exists for a moment before write_text fills it.
        while not (written.exists() and written.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        leftover = written.read_text()
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(30)
    try:
        assert leftover in pg_server.databases()  # SIGKILL: no cleanup ran
        result = dbguard("janitor", pg_server.url(), "--older-than", "0s")
        assert result.returncode == 0, result.stderr
        assert leftover in result.stdout
        names = pg_server.databases()
        assert leftover not in names
        assert "postgres_dbg_killed_gw9" in names
        assert not [name for name in names if "_dbg_" in name and name != "postgres_dbg_killed_gw9"]
    finally:
        pg_server.sql('DROP DATABASE IF EXISTS "postgres_dbg_killed_gw9"')
