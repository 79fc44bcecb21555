"""The embedded default: one throwaway cluster per run, never left behind; no binaries is an error."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_dbguard.server import cluster as server
from pytest_dbguard.server import machine, processes
from tests.helpers import default_sigint, run_dbguard
from tests.pgserver import TestServer

RECORD_RUN = """
    import os, pathlib, time

    def test_record(dbguard_engine):
        from sqlalchemy import text
        with dbguard_engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        pathlib.Path("run.txt").write_text(os.environ["DBGUARD_RUN"])
        {tail}
"""


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"
                ):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _assert_nothing_left(pytester: pytest.Pytester) -> None:
    run = (pytester.path / "run.txt").read_text()
    folder = machine.storage_root() / run
    assert not folder.exists(), f"{folder} was left behind"
    assert not _processes_mentioning(str(folder)), "a postgres process outlived the run"


@pytest.mark.parametrize(
    "tail, outcome",
    [
        pytest.param("", {"passed": 1}, id="passing-run"),
        pytest.param("assert False, 'boom'", {"failed": 1}, id="failing-run"),
    ],
)
def test_cluster_removed_after_run(
    pytester: pytest.Pytester, tail: str, outcome: dict[str, int]
) -> None:
    pytester.makepyfile(RECORD_RUN.format(tail=tail))
    result = run_dbguard(pytester, "-v", inprocess=True)
    result.assert_outcomes(**outcome)
    result.stdout.fnmatch_lines(
        ["dbguard: embedded PostgreSQL 1* at 127.0.0.1:*; database postgres_dbg_*_main;*"]
    )
    if os.geteuid() == 0:  # PostgreSQL refuses root; dbguard runs it as an unprivileged user
        assert "root" not in result.stdout.str().split("dbguard:")[1].split("\n")[0]
    _assert_nothing_left(pytester)


def test_a_libpq_tls_variable_is_named_when_the_embedded_server_refuses(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGSSLMODE=require in the shell applies to dbguard's own server, which has no TLS: the
    message said to check the sslmode of a URL the user never wrote (jupyterhub trial)."""
    pytester.makepyfile("def test_x(dbguard_engine): pass")
    monkeypatch.setenv("PGSSLMODE", "require")
    result = run_dbguard(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(
        [
            "*failed step: TLS*This environment sets PGSSLMODE=require, which libpq applies to "
            "every connection whose URL does not set that parameter, and a server without TLS*"
            "env -u PGSSLMODE pytest*"
        ]
    )
    assert " passed" not in result.stdout.str()


def test_dynamic_shared_memory_lives_in_the_run_folder(pytester: pytest.Pytester) -> None:
    """Not as /dev/shm/PostgreSQL.* files, which a server killed with SIGKILL leaves for good."""
    pytester.makepyfile(
        """
        import json, os
        from pathlib import Path
        from sqlalchemy import text

        def test_setting(dbguard_connection):
            shown = dbguard_connection.execute(text("SHOW dynamic_shared_memory_type")).scalar()
            assert shown == "mmap"
            root = Path(json.loads(os.environ["_DBGUARD_ORIGIN"])["embedded_root"])
            assert list((root / "data" / "pg_dynshmem").glob("mmap.*"))  # the control segment
        """
    )
    run_dbguard(pytester, inprocess=True).assert_outcomes(passed=1)


def test_cluster_removed_after_ctrl_c(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(RECORD_RUN.format(tail="time.sleep(60)"))
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "pytest_dbguard", "-q"],
        cwd=pytester.path,
        preexec_fn=default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (pytester.path / "run.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    _assert_nothing_left(pytester)


def test_cluster_stopped_when_startup_fails(pytester: pytest.Pytester) -> None:
    """A usage error after the server was launched (bad metadata path) still stops it."""
    pytester.makeini("[pytest]\ndbguard_metadata = nowhere.models:Base\n")
    # conftest loads after the server was launched and before the metadata is imported
    pytester.makeconftest(
        "import os, pathlib\npathlib.Path('run.txt').write_text(os.environ['DBGUARD_RUN'])\n"
    )
    pytester.makepyfile("def test_never(): pass")
    result = run_dbguard(pytester, inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*dbguard_metadata*'nowhere.models:Base'*importing 'nowhere.models' failed*"]
    )
    _assert_nothing_left(pytester)


def _bindir_with(name: str, script: str) -> Path:
    """A bindir with the real initdb and postgres, but ``name`` replaced by a shell ``script``
    (``{real}`` is the real binary). A new path, so a cache miss for the initdb cache."""
    real = machine.find_bindir()
    assert real is not None
    # The server runs as an unprivileged user, who must be able to reach the binaries.
    bindir = Path(tempfile.mkdtemp(prefix="dbguard-badbin-", dir="/dev/shm"))
    bindir.chmod(0o755)
    for binary in ("initdb", "postgres"):
        if binary != name:
            (bindir / binary).symlink_to(real / binary)
    (bindir / name).write_text("#!/bin/sh\n" + script.format(real=real / name) + "\n")
    (bindir / name).chmod(0o755)
    return bindir


def test_failed_password_step_shows_its_log(pytester: pytest.Pytester) -> None:
    # Single-user mode, which gives the superuser its password before the server listens, fails.
    bindir = _bindir_with(
        "postgres",
        'case "$1" in --single) echo "single-user mode broke"; exit 1;; esac; exec {real} "$@"',
    )
    pytester.makepyfile("def test_never(dbguard_engine): pass")
    result = run_dbguard(
        pytester, "--dbguard-pg-bindir", str(bindir), "--dbguard-wait", "20", inprocess=True
    )
    shutil.rmtree(bindir)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*Could not set the embedded server's password*Log tail:*", "single-user mode broke"]
    )


def test_server_that_fails_to_start_shows_its_log(pytester: pytest.Pytester) -> None:
    # The real postgres, given a setting it rejects: a genuine start failure.
    # Single-user mode (the password step before the server starts) runs untouched.
    bindir = _bindir_with(
        "postgres",
        'case "$1" in --single) exec {real} "$@";; esac; exec {real} "$@" -c shared_buffers=-5',
    )
    pytester.makepyfile("def test_never(dbguard_engine): pass")
    result = run_dbguard(
        pytester, "--dbguard-pg-bindir", str(bindir), "--dbguard-wait", "20", inprocess=True
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*PostgreSQL exited with code*", "*shared_buffers*"])
    shutil.rmtree(bindir)
    # The message is the server's own log, not a readiness time-out: the dead process was noticed.
    assert "not ready" not in result.stderr.str()


def test_server_starts_while_pytest_collects(pytester: pytest.Pytester) -> None:
    # At collection the server is already up (launched before the conftests), while this
    # worker's database is only made after collection: dbguard waits late.
    pytester.makepyfile(
        """
        import os, time
        import psycopg
        from sqlalchemy import text

        url = os.environ["DBGUARD_URL"].replace("postgresql+psycopg://", "postgresql://")
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(url).close()
                AT_COLLECTION = "database exists"
                break
            except psycopg.OperationalError as error:
                if "does not exist" in str(error):
                    AT_COLLECTION = "server up, database not made yet"
                    break
                if time.monotonic() > deadline:
                    AT_COLLECTION = str(error)
                    break
                time.sleep(0.02)

        def test_database_made_after_collection(dbguard_connection):
            assert AT_COLLECTION == "server up, database not made yet"
            assert dbguard_connection.execute(text("SELECT 1")).scalar() == 1
        """
    )
    result = run_dbguard(pytester, inprocess=True)
    result.assert_outcomes(passed=1)
    # The summary line comes once the server answered, after "collected 1 item".
    result.stdout.fnmatch_lines(["collected 1 item", "dbguard: embedded PostgreSQL *ready after*"])


def test_first_run_fills_the_initdb_cache(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = pytester.path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    pytester.makepyfile(RECORD_RUN.format(tail=""))
    # Empty cache: initdb runs in the server's own process, then its output is kept.
    run_dbguard(pytester, inprocess=True).assert_outcomes(passed=1)
    _assert_nothing_left(pytester)
    kept = list((cache / "pytest-dbguard").glob("initdb-*/PG_VERSION"))
    assert len(kept) == 1, f"no initdb output cached in {cache}"
    # The next run copies the cache and does not run initdb again (no scratch folder to fill).
    run_dbguard(pytester, inprocess=True).assert_outcomes(passed=1)
    assert list((cache / "pytest-dbguard").glob("initdb-*")) == [kept[0].parent]
    _assert_nothing_left(pytester)


def test_stop_while_the_data_folder_is_laid_out_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A usage error right after launch stops the server while its shell still runs initdb (or
    cp): that must end too, or it writes the folder back after it was removed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no cache: initdb, about 1 s
    bindir = machine.find_bindir()
    assert bindir is not None
    cluster = server.EmbeddedCluster(
        bindir, machine.storage_root() / f"stopped-early-{os.getpid()}", machine.free_port()
    )
    shm = Path("/dev/shm")
    before = {path.name for path in shm.glob("PostgreSQL.*")}
    cluster.initialise()
    cluster.launch()
    assert cluster.process is not None
    group = cluster.process.pid
    # initdb is writing once its backend holds dynamic shared memory in /dev/shm (it does not
    # get the server's mmap setting): stop then, when a kill would leave those files for good.
    deadline = time.monotonic() + 5
    while not (made := {p.name for p in shm.glob("PostgreSQL.*")} - before):
        assert time.monotonic() < deadline, "initdb's backend made no /dev/shm segment"
        time.sleep(0.005)
    assert processes.command_name(group) == "sh", "the prelude should still be running"
    cluster.stop()
    time.sleep(1.0)  # an initdb left running would have written into the folder by now
    assert not cluster.root.exists(), f"{cluster.root} came back: the prelude outlived stop()"
    left = made & {path.name for path in shm.glob("PostgreSQL.*")}
    assert not left, f"/dev/shm files of initdb's backend left behind: {sorted(left)}"
    ps = subprocess.run(
        ["ps", "-o", "stat=,pid=,args=", "-g", str(group)], capture_output=True, text=True
    )
    # Zombies are dead already; reaping orphans is init's job (some container inits are slow to).
    running = [line for line in ps.stdout.splitlines() if not line.strip().startswith("Z")]
    assert running == [], f"left running: {running}"


def test_initdb_that_fails_shows_its_output(pytester: pytest.Pytester) -> None:
    bindir = _bindir_with("initdb", "echo 'initdb: disk quota exceeded' >&2; exit 1")
    pytester.makeconftest(
        "import os, pathlib\npathlib.Path('run.txt').write_text(os.environ['DBGUARD_RUN'])\n"
    )
    pytester.makepyfile("def test_never(dbguard_engine): pass")
    try:
        result = run_dbguard(
            pytester, "--dbguard-pg-bindir", str(bindir), "--dbguard-wait", "20", inprocess=True
        )
    finally:
        shutil.rmtree(bindir)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*initdb failed in *", "*initdb: disk quota exceeded*"])
    assert "not ready" not in result.stderr.str()
    _assert_nothing_left(pytester)


SQLITE_PROBE = """
    def test_sqlite(dbguard_url, dbguard_session):
        from sqlalchemy import text
        assert dbguard_url.startswith("sqlite:///")
        assert dbguard_session.execute(text("SELECT 1")).scalar() == 1
"""


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        pytest.param(lambda path: None, "that folder does not exist", id="missing-folder"),
        pytest.param(
            lambda path: path.mkdir(), "that folder has no initdb and no postgres", id="empty"
        ),
    ],
)
def test_named_bindir_without_binaries_stops_the_run(
    pytester: pytest.Pytester, tmp_path: Path, make: Callable[[Path], None], problem: str
) -> None:
    """Never a silent switch to SQLite: a suite written for PostgreSQL would fail (or pass) for
    the wrong reasons."""
    pytester.makepyfile(SQLITE_PROBE)
    folder = tmp_path / "bin"
    make(folder)
    result = run_dbguard(pytester, "--dbguard-pg-bindir", str(folder), inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--dbguard-pg-bindir = '{folder}': {problem}*"])
    assert "SQLite files" not in result.stdout.str()


def test_no_binaries_anywhere_says_where_it_looked(pytester: pytest.Pytester) -> None:
    """With every PostgreSQL folder hidden (a private mount namespace), the run stops before any
    test with the places looked in and the three fixes; SQLite still works when asked for."""
    pytester.makepyfile(SQLITE_PROBE)
    hidden = [
        folder for folder in ("/usr/lib/postgresql", "/usr/local/pgsql") if Path(folder).is_dir()
    ]
    mounts = " && ".join(f"mount -t tmpfs tmpfs {folder}" for folder in hidden) or "true"
    path = os.pathsep.join(
        folder
        for folder in os.environ["PATH"].split(os.pathsep)
        if not (Path(folder) / "postgres").exists()
    )
    command = [sys.executable, "-m", "pytest", "-p", "pytest_dbguard", "-p", "no:cacheprovider"]

    def run(*args: str) -> pytest.RunResult:
        return pytester.run(
            "unshare",
            "-m",
            "sh",
            "-c",
            f'{mounts} && PATH="{path}" exec "$@"',
            "sh",
            *command,
            *args,
            timeout=120,
        )

    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(
        [
            "*No PostgreSQL binaries for the embedded server: looked for initdb and postgres in "
            "PATH*/usr/lib/postgresql/*/bin*apt-get install -y postgresql*--dbguard-pg-bindir DIR*"
            "--dbguard-url URL*--dbguard-url sqlite*"
        ]
    )
    run("--dbguard-url", "sqlite").assert_outcomes(passed=1)


def test_root_without_a_postgres_user_stops_instead_of_running_the_server_as_nobody(
    pytester: pytest.Pytester,
) -> None:
    """PostgreSQL refuses root, so dbguard runs it as 'postgres'. Without that user it ran it as
    'nobody', an account that daemons share: each of them could reach the server's socket as its
    superuser. Now the run stops and says how to make the user (a private mount namespace hides
    it from /etc/passwd)."""
    if os.geteuid() != 0:
        pytest.fail("this test runs pytest as root in a private mount namespace", pytrace=False)
    pytester.makepyfile("def test_x(dbguard_connection): pass")
    passwd = pytester.path / "passwd"
    lines = Path("/etc/passwd").read_text().splitlines()
    passwd.write_text("".join(f"{line}\n" for line in lines if not line.startswith("postgres:")))
    result = pytester.run(
        "unshare", "-m", "sh", "-c", f'mount --bind {passwd} /etc/passwd && exec "$@"', "sh",
        sys.executable, "-m", "pytest", "-p", "pytest_dbguard", "-p", "no:cacheprovider",
        timeout=120,
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(
        ["*runs as root*no 'postgres' user*useradd --system postgres*not run it as 'nobody'*"]
    )
    assert not [
        line
        for line in subprocess.run(
            ["ps", "-eo", "user,args"], capture_output=True, text=True
        ).stdout.splitlines()
        if line.startswith("nobody") and "postgres -D" in line
    ]


def _things_project(pytester: pytest.Pytester, *, colour: bool) -> None:
    """A model with one table, ``things`` (with a ``colour`` column if asked), and a test that
    counts its rows (``colour`` values: the column must be there)."""
    column = "\n    colour: Mapped[str]" if colour else ""
    counted = "colour" if colour else "*"
    pytester.makepyfile(
        models=(
            "from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column\n"
            "class Base(DeclarativeBase):\n"
            "    pass\n"
            "class Thing(Base):\n"
            '    __tablename__ = "things"\n'
            f"    id: Mapped[int] = mapped_column(primary_key=True){column}\n"
        ),
        test_things=(
            "def test_things(dbguard_session):\n"
            "    from sqlalchemy import text\n"
            f'    sql = text("SELECT count({counted}) FROM things")\n'
            "    assert dbguard_session.execute(sql).scalar() == 0\n"
        ),
    )


def test_reuse_keeps_cluster_and_template(pytester: pytest.Pytester) -> None:
    _things_project(pytester, colour=False)
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
    # Leave the machine as we found it: stop this project's kept cluster (and no other), also
    # when an assertion fails (a kept cluster would be adopted by the next run in this folder).
    folder = (
        machine.storage_root()
        / f"reuse-{hashlib.sha1(str(pytester.path).encode()).hexdigest()[:10]}"
    )
    try:
        first = run_dbguard(pytester, "--dbguard-reuse", "-v", inprocess=True)
        first.assert_outcomes(passed=1)
        second = run_dbguard(pytester, "--dbguard-reuse", "-v", inprocess=True)
        second.assert_outcomes(passed=1)
        # From the header line: on a busy machine the wait's progress lines name the port first.
        [header] = [line for line in first.stdout.lines if line.startswith("dbguard: embedded")]
        port = header.split("127.0.0.1:")[1].split(",")[0]
        assert f"127.0.0.1:{port}, cluster reused" in second.stdout.str()
        # The schema changed: the template is rebuilt, and the new column is there.
        _things_project(pytester, colour=True)
        run_dbguard(pytester, "--dbguard-reuse", inprocess=True).assert_outcomes(passed=1)
        assert folder.is_dir()
    finally:
        if folder.is_dir():
            server.EmbeddedCluster(
                bindir=machine.find_bindir() or Path(), root=folder, port=0
            ).stop()
    assert not folder.exists()


def test_bindir_as_two_words_that_would_hide_the_ini_file_is_refused(
    pytester: pytest.Pytester,
) -> None:
    """pytest picks its rootdir and ini file from the command line's words before dbguard's
    options exist: ``--dbguard-pg-bindir /usr/lib/...`` would root the run in ``/usr``."""
    bindir = machine.find_bindir()
    assert bindir is not None
    pytester.makeini("[pytest]\ndbguard_naive_datetime = error\n")
    pytester.makepyfile("def test_one(dbguard_url):\n    assert dbguard_url\n")
    split = run_dbguard(pytester, "--dbguard-pg-bindir", str(bindir), inprocess=True)
    assert split.ret == pytest.ExitCode.USAGE_ERROR
    split.stderr.fnmatch_lines(
        [
            f"ERROR: --dbguard-pg-bindir {bindir}: written as two words, * instead of this "
            f"project's {pytester.path / 'tox.ini'}. Write it as one word, "
            f"--dbguard-pg-bindir={bindir}, or set DBGUARD_PG_BINDIR or ini dbguard_pg_bindir "
            "instead."
        ]
    )
    run_dbguard(pytester, f"--dbguard-pg-bindir={bindir}", inprocess=True).assert_outcomes(passed=1)


def test_a_port_claimed_by_another_run_is_not_handed_out_twice() -> None:
    """Two runs starting at once may each get the same free port from the system: the first to
    claim it keeps it for a minute; a claim older than that is stale and taken over."""
    port = machine.free_port()
    claim = machine.claim_file(machine.storage_root(), port)
    try:
        assert claim.is_file()  # free_port claimed what it returned
        assert not machine.claim_port(port)  # a second run is refused it
        old = time.time() - machine.PORT_CLAIM_SECONDS - 1
        os.utime(claim, (old, old))
        assert machine.claim_port(port)  # stale: taken over
    finally:
        claim.unlink(missing_ok=True)


def test_a_port_taken_by_another_server_is_said_so(
    pytester: pytest.Pytester, pg_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another PostgreSQL got the port between dbguard's pick and its server's start: the run's
    readiness check reaches that server, whose password differs. The message is the embedded
    server's own (it could not bind the port), not "check the user name and password"."""
    from pytest_dbguard.server import cluster_start

    monkeypatch.setattr(cluster_start, "free_port", lambda: pg_server.port)
    pytester.makepyfile("def test_x(dbguard_url): pass")
    result = run_dbguard(pytester, inprocess=True)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret != pytest.ExitCode.OK
    assert "could not listen on port" in output, output
    assert "another server took it after dbguard picked it" in output
    assert "Address already in use" in output
    assert "check the user name and password" not in output


def test_a_run_takes_its_port_claim_away_with_its_server(pytester: pytest.Pytester) -> None:
    """The claim only bridges the pick and the server's bind: a run that stops its server leaves
    no claim file behind in the storage folder."""
    pytester.makepyfile("def test_x(dbguard_url): pass")
    result = run_dbguard(pytester, inprocess=True)
    result.assert_outcomes(passed=1)
    port = re.search(r"embedded PostgreSQL \S+ at 127\.0\.0\.1:(\d+)", result.stdout.str())
    assert port is not None, result.stdout.str()
    assert not machine.claim_file(machine.storage_root(), int(port.group(1))).exists()
