"""Security: nobody but the user who started pytest reaches the embedded server, and no password
shows in any output; dbguard's folders in shared places cannot be turned against other folders."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from pytest_dbguard.db.urls import DatabaseURL
from pytest_dbguard.exceptions import ServerError
from pytest_dbguard.server import cluster as server
from pytest_dbguard.server import kept_clusters, machine, processes
from tests.helpers import dbguard_cli, run_dbguard
from tests.pgserver import SUPERUSER_PASSWORD, TestServer


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "these tests switch to the 'nobody' user (runuser) and mount private file systems "
            "(unshare -m): run the suite as root, as the README's test command does",
            pytrace=False,
        )


def _psql() -> str:
    bindir = machine.find_bindir()
    assert bindir is not None
    return str(bindir / "psql")


# Each whole run once serially and once with -n 2.
SINGLE_AND_XDIST = pytest.mark.parametrize(
    "xdist",
    [
        pytest.param([], id="single"),
        pytest.param(["-n", "2"], id="xdist", marks=pytest.mark.needs_xdist),
    ],
)

# Runs inside the inner run. Writes the password where the outer test can look for it.
OTHER_USERS = """
import json, os, subprocess
from pathlib import Path
import pytest
from sqlalchemy import create_engine, make_url, text

PSQL = {psql!r}
ORIGIN = json.loads(os.environ["_DBGUARD_ORIGIN"])
SERVER = make_url(ORIGIN["server_url"])
URL = make_url(os.environ["DBGUARD_URL"])
Path("password.txt").write_text(URL.password)


def as_nobody(host, port, account="nobody"):
    # No password given, no PGPASSWORD, no ~/.pgpass: what any other account on the machine has.
    command = [PSQL, "-w", "-h", host, "-p", str(port), "-U", "postgres", "-d", URL.database]
    return subprocess.run(
        ["runuser", "-u", account, "--", *command, "-c", "SELECT 1"],
        capture_output=True, text=True, env={{"PATH": os.environ["PATH"]}},
    )


# The server URL names the maintenance database, which the foreign-database guard refuses unless
# a test allows it.
@pytest.mark.dbguard(allow=["postgres"])
def test_other_users_cannot_connect(dbguard_faults, dbguard_connection):
    assert URL.port != SERVER.port  # the test URL goes through the fault proxy
    tcp = as_nobody("127.0.0.1", SERVER.port)
    assert tcp.returncode != 0 and "no password supplied" in tcp.stderr, tcp.stderr
    proxy = as_nobody("127.0.0.1", URL.port)
    assert proxy.returncode != 0 and "no password supplied" in proxy.stderr, proxy.stderr
    sock = as_nobody(ORIGIN["embedded_root"], SERVER.port)
    assert sock.returncode != 0 and "Permission denied" in sock.stderr, sock.stderr
    # The server's own account reaches the socket (its folder), and other programs run as it.
    own = as_nobody(ORIGIN["embedded_root"], SERVER.port, account="postgres")
    assert own.returncode != 0 and "Peer authentication failed" in own.stderr, own.stderr
    # ... while this run's own fixtures, DBGUARD_URL and the server URL all work.
    assert dbguard_connection.execute(text("SELECT 1")).scalar() == 1
    for url in (os.environ["DBGUARD_URL"], ORIGIN["server_url"], dbguard_faults.url):
        with create_engine(url).connect() as connection:
            assert connection.execute(text("SELECT current_user")).scalar() == "postgres"


def test_password_in_no_argv_nor_server_environment(dbguard_faults, dbguard_engine):
    dbguard_faults.restart()  # under -n 2 from a worker, whose environment holds the password
    dbguard_faults.assert_recovers(dbguard_engine)
    pid = (Path(ORIGIN["embedded_root"]) / "data" / "postmaster.pid").read_text().split()[0]
    environ = Path(f"/proc/{{pid}}/environ").read_bytes().decode()
    assert URL.password not in environ and "DBGUARD_" not in environ
    # Nor the run's other variables: the server's account reads them there.
    assert "CI_DEPLOY_TOKEN" not in environ and "PGPASSWORD" not in environ
    assert "PATH=" in environ
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert URL.password not in cmdline.read_bytes().decode(errors="replace"), cmdline
        except OSError:
            continue


def test_fixture_reprs_hide_the_password(
    dbguard_url, dbguard_engine, dbguard_connection, dbguard_session, dbguard_faults
):
    for value in (dbguard_url, dbguard_engine, dbguard_connection, dbguard_session, dbguard_faults):
        assert URL.password not in repr(value), type(value)


def test_failing_comparison(dbguard_url):
    plain = str(dbguard_url)
    print("captured:", plain, os.environ["_DBGUARD_ORIGIN"])
    assert dbguard_url == "postgresql+psycopg://postgres:wrong@127.0.0.1:5432/other"
"""


@SINGLE_AND_XDIST
def test_embedded_server_is_closed_to_other_users(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, xdist: list[str]
) -> None:
    _require_root()
    monkeypatch.setenv("CI_DEPLOY_TOKEN", "ghp-token-of-the-ci-job")
    monkeypatch.setenv("PGPASSWORD", "a-password-for-another-server")
    pytester.makepyfile(test_others=OTHER_USERS.format(psql=_psql()))
    result = run_dbguard(
        pytester,
        *xdist,
        *("-v", "--tb=long", "-l", "-rA", "--junitxml=report.xml"),
        inprocess=True,
    )
    result.assert_outcomes(passed=3, failed=1)
    password = (pytester.path / "password.txt").read_text()
    assert len(password) >= 32
    output = result.stdout.str() + result.stderr.str()
    report = (pytester.path / "report.xml").read_text()
    for shown in (output, report):
        assert password not in shown
        assert "postgres:***@127.0.0.1" in shown  # the failing comparison, masked
    assert "captured: postgresql+psycopg://postgres:***@" in output


@pytest.mark.needs_xdist
def test_external_password_never_in_output(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    pytester.makepyfile(
        """
        import os
        import warnings

        def test_compare(dbguard_url):
            assert dbguard_url == "postgresql+psycopg://postgres:other@127.0.0.1:5432/x"

        def test_locals_and_output(dbguard_url):
            plain, environ = str(dbguard_url), dict(os.environ)
            print("captured:", plain)
            assert {"url": plain} == {"url": "x"}

        def test_passes(dbguard_engine):
            print(os.environ["DBGUARD_URL"])

        def test_warns(dbguard_engine):
            warnings.warn(f"pool for {os.environ['DBGUARD_URL']}")
        """
    )
    args = ["--dbguard-url", pg_server.url(), "-n", "2", "-v", "--tb=long", "-l", "-rA"]
    result = run_dbguard(pytester, *args, "--junitxml=report.xml", inprocess=True)
    result.assert_outcomes(passed=2, failed=2, warnings=1)
    output = result.stdout.str() + result.stderr.str()
    assert "pool for postgresql+psycopg://postgres:***@127.0.0.1" in output  # warnings summary
    for shown in (output, (pytester.path / "report.xml").read_text()):
        assert SUPERUSER_PASSWORD not in shown
        assert "postgres:***@127.0.0.1" in shown


QUERY_PASSWORD_TESTS = """
import json
import os

import pytest

URL = os.environ["DBGUARD_URL"]
SERVER = json.loads(os.environ["_DBGUARD_ORIGIN"])["server_url"]  # the same in every worker


@pytest.mark.parametrize("url", [URL], ids=[SERVER])
def test_compare(url, dbguard_connection):
    print("captured:", url)
    assert url == "postgresql+psycopg://postgres@127.0.0.1:5432/x"
"""


@pytest.mark.needs_xdist
def test_a_password_in_the_urls_query_string_is_masked_too(
    pytester: pytest.Pytester, pg_server: TestServer
) -> None:
    """libpq and SQLAlchemy take ``?password=...`` as the user info's password: a failure, its
    captured output, the test id and the run report mask it the same way."""
    pytester.makepyfile(QUERY_PASSWORD_TESTS)
    url = f"{pg_server.url(password='')}?password={SUPERUSER_PASSWORD}"
    assert "@" in url and f":{SUPERUSER_PASSWORD}" not in url
    args = ["--dbguard-url", url, "-n", "2", "-v", "-l", "-rA", "--dbguard-report", "run.json"]
    result = run_dbguard(pytester, *args)
    result.assert_outcomes(failed=1)
    # pytest prints a test id as its author wrote it (here with the server's URL): the lines
    # that show it are pytest's; the run report masks it, as every other line is masked.
    output = "\n".join(
        line
        for line in (result.stdout.lines + result.stderr.lines)
        if "test_compare[postgresql" not in line
    )
    report = (pytester.path / "run.json").read_text()
    assert "test_compare[postgresql+psycopg://postgres@127.0.0.1:" in report
    for shown in (output, report):
        assert SUPERUSER_PASSWORD not in shown
        assert "?password=***" in shown
    assert "captured: postgresql+psycopg://postgres@127.0.0.1" in output


def test_short_passwords_are_masked_only_inside_urls() -> None:
    from pytest_dbguard.run.redaction import secrets_for

    secrets = secrets_for([DatabaseURL.parse("postgresql://app:test@db:5432/test")])
    assert secrets.scrub("postgresql://app:test@db/test: test failed") == (
        "postgresql://app:***@db/test: test failed"
    )
    secrets = secrets_for([DatabaseURL.parse("postgresql://app:p%40ss%2Fw0rd!@db/app")])
    text = "url postgresql://app:p%40ss%2Fw0rd!@db/app, raw p@ss/w0rd!, other :x@"
    assert secrets.scrub(text) == "url postgresql://app:***@db/app, raw ***, other :x@"


def test_a_query_strings_password_is_masked_however_it_is_encoded() -> None:
    """``?password=`` as dbguard's own URLs write it (a space as ``+``), percent-encoded, as
    typed, and a short one followed by a bracket: each masked, the rest of the text kept."""
    from pytest_dbguard.run.redaction import secrets_for

    url = DatabaseURL.parse("postgresql://app@db:5432/app?password=my+secret+pw")
    secrets = secrets_for([url])
    for shown in ("?password=my+secret+pw", "?password=my%20secret%20pw", "?password=my secret pw"):
        assert secrets.found_in(f"url {shown}&sslmode=off")
        assert secrets.scrub(f"url {shown}&sslmode=off") == "url ?password=***&sslmode=off"
    short = secrets_for([DatabaseURL.parse("postgresql://app@db/app?password=s3cr")])
    assert short.scrub("(postgresql://app@db/app?password=s3cr)") == (
        "(postgresql://app@db/app?password=***)"
    )
    assert short.scrub("?password=other") == "?password=other"


def test_a_password_cut_short_by_pytest_is_masked() -> None:
    """pytest shows a long string's two ends around "...": 25 of a password's 32 characters
    were shown (a security audit's finding)."""
    from pytest_dbguard.run.redaction import secrets_for

    password = "6nL77F7m4kM2xQ9r8sT0uV1w05AC3PhokGTyv"
    secrets = secrets_for([DatabaseURL.parse(f"postgresql://app:{password}@db/app")])
    for shown, masked in (
        (f"assert '{password[:12]}...{password[-13:]}' == 'x'", "assert '***' == 'x'"),
        (f"E   '{password[:5]}...' and '...{password[-6:]}'", "E   '***' and '***'"),
        ("Waiting... done... 6nL7", "Waiting... done... 6nL7"),  # no end of it next to "..."
    ):
        assert secrets.found_in(shown) == (shown != masked)
        assert secrets.scrub(shown) == masked


SHOWN_ELSEWHERE = """
import os
from pathlib import Path

import pytest
from sqlalchemy import make_url

def password():
    return make_url(os.environ["DBGUARD_URL"]).password

Path("password.txt").write_text(password())

def test_xfail_reason(dbguard_url):
    pytest.xfail("xf " + str(dbguard_url))

def test_cut_short(dbguard_url):
    assert password() * 3 == "x"
"""
SUBTESTS = """
def test_subtests(subtests, dbguard_url):
    with subtests.test(msg="sub " + str(dbguard_url), url=str(dbguard_url)):
        assert False
"""
PYTEST_SUBTESTS = int(pytest.__version__.split(".")[0]) >= 9  # pytest's own subtests fixture


@SINGLE_AND_XDIST
def test_password_in_an_xfail_reason_a_subtest_or_cut_short_is_masked(
    pytester: pytest.Pytester, xdist: list[str]
) -> None:
    pytester.makepyfile(test_shown=SHOWN_ELSEWHERE + (SUBTESTS if PYTEST_SUBTESTS else ""))
    result = run_dbguard(pytester, *xdist, "-rA", "--junitxml=report.xml", inprocess=True)
    outcomes = result.parseoutcomes()
    assert outcomes["xfailed"] == 1 and outcomes["failed"] == 1 + 2 * PYTEST_SUBTESTS, outcomes
    output = result.stdout.str() + result.stderr.str()
    report = (pytester.path / "report.xml").read_text()
    result.stdout.fnmatch_lines(
        ["XFAIL*test_xfail_reason - xf postgresql+psycopg://postgres:***@*"]
    )
    if PYTEST_SUBTESTS:
        result.stdout.fnmatch_lines(["SUBFAILED[[]sub postgresql+psycopg://postgres:***@*"])
    result.stdout.fnmatch_lines(["E  *assert '***' == 'x'"])  # the cut-short comparison
    password = (pytester.path / "password.txt").read_text()
    assert len(password) >= 32
    for shown in (output, report):
        assert password[:6] not in shown and password[-6:] not in shown


def test_reused_cluster_keeps_its_password_private(pytester: pytest.Pytester) -> None:
    _require_root()
    pytester.makepyfile(
        test_reuse=OTHER_USERS.format(psql=_psql()).split("def test_password_in_no_argv")[0]
    )
    first = run_dbguard(pytester, "--dbguard-reuse", "-v", inprocess=True)
    folder = (
        machine.storage_root()
        / f"reuse-{hashlib.sha1(str(pytester.path).encode()).hexdigest()[:10]}"
    )
    try:
        first.assert_outcomes(passed=1)
        password = (pytester.path / "password.txt").read_text()
        # The adopting run reads the password from the kept cluster's private state file.
        second = run_dbguard(pytester, "--dbguard-reuse", "-v", inprocess=True)
        second.assert_outcomes(passed=1)
        assert ", cluster reused" in second.stdout.str()
        assert (pytester.path / "password.txt").read_text() == password
        state = folder / "dbguard.json"
        assert json.loads(state.read_text())["password"] == password
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert password not in first.stdout.str() + second.stdout.str()
    finally:
        server.EmbeddedCluster(bindir=machine.find_bindir() or Path(), root=folder, port=0).stop()
    assert not folder.exists()


def test_a_kept_cluster_whose_socket_trusted_the_servers_account_is_replaced(
    pytester: pytest.Pytester,
) -> None:
    """A cluster kept by a version whose socket trusted every process of the server's account
    (no pg_ident file of its own) is not adopted as it is: the next run starts one anew."""
    _require_root()
    pytester.makepyfile(test_one="def test_one(dbguard_connection): pass")
    folder = machine.storage_root() / f"reuse-{kept_clusters.reuse_key(pytester.path)}"
    try:
        run_dbguard(pytester, "--dbguard-reuse", inprocess=True).assert_outcomes(passed=1)
        old = int((folder / "data" / "postmaster.pid").read_text().split()[0])
        (folder / "pg_ident.conf").unlink()  # as the older version left it
        second = run_dbguard(pytester, "--dbguard-reuse", inprocess=True)
        second.assert_outcomes(passed=1)
        assert ", cluster started" in second.stdout.str()
        assert (folder / "pg_ident.conf").is_file()
        assert not processes.process_alive(old)
    finally:
        dbguard_cli("stop", cwd=pytester.path)
    assert not folder.exists()


def _squat(port: int, report: int) -> None:
    """Another account's listener on ``port`` (in a forked child that became ``nobody``): it
    asks each client for its password in plain text and writes what it gets to ``report``."""
    import socket
    import struct

    os.setgid(65534)
    os.setgroups([])
    os.setuid(65534)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the server's closed ones
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    os.write(report, f"listening {os.getpid()}\n".encode())
    while True:
        client, _ = listener.accept()
        client.settimeout(5)
        with contextlib.suppress(OSError, struct.error):
            size = struct.unpack("!I", client.recv(4))[0]
            body = client.recv(size - 4)
            if body[:4] == struct.pack("!I", 80877103):  # an SSL request: no, then the startup
                client.sendall(b"N")
                client.recv(struct.unpack("!I", client.recv(4))[0] - 4)
            client.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
            os.write(report, client.recv(4096) + b"\n")
        client.close()


def test_a_reused_cluster_whose_server_died_is_not_taken_for_another_accounts(
    pytester: pytest.Pytester,
) -> None:
    """The kept cluster's server died (the OOM killer) and another account now has its process
    number and listens on its port: the next run must not adopt that listener, which would be
    handed the password. It starts a server of its own."""
    _require_root()
    pytester.makepyfile(test_one="def test_one(dbguard_connection): pass")
    folder = machine.storage_root() / f"reuse-{kept_clusters.reuse_key(pytester.path)}"
    run_dbguard(pytester, "--dbguard-reuse", inprocess=True).assert_outcomes(passed=1)
    squatter = 0
    try:
        state = json.loads((folder / "dbguard.json").read_text())
        pid_file = folder / "data" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        processes.wait_gone(postmaster, None, timeout=15)
        reading, writing = os.pipe()
        squatter = os.fork()
        if squatter == 0:  # pragma: no cover - the child
            try:
                os.close(reading)
                _squat(state["port"], writing)
            finally:
                os._exit(0)
        os.close(writing)
        with os.fdopen(reading, "rb") as heard:
            assert heard.readline().startswith(b"listening")
            lines = pid_file.read_text().splitlines()  # the number is the other account's now
            pid_file.write_text("\n".join([str(squatter), *lines[1:]]) + "\n")
            second = run_dbguard(pytester, "--dbguard-reuse", "--dbguard-wait", "5", inprocess=True)
            second.assert_outcomes(passed=1)
            assert ", cluster started" in second.stdout.str()
            os.kill(squatter, signal.SIGKILL)
            os.waitpid(squatter, 0)
            squatter = 0
            got = heard.read()
        assert state["password"].encode() not in got and b"pytest-dbguard" not in got, got
    finally:
        if squatter:
            os.kill(squatter, signal.SIGKILL)
            os.waitpid(squatter, 0)
        dbguard_cli("stop", cwd=pytester.path)
    assert not folder.exists()


# Shared folders: runs in a private mount namespace with a fresh /dev/shm, as root.


def _victim(pytester: pytest.Pytester) -> tuple[Path, dict[str, object]]:
    """A folder someone else owns, with an old entry a careless sweep would delete."""
    victim = pytester.path / "victim"
    (victim / "old-entry").mkdir(parents=True)
    (victim / "old-entry" / "precious.txt").write_text("keep me")
    for path in (victim / "old-entry", victim):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    victim.chmod(0o750)
    return victim, _snapshot(victim)


def _snapshot(folder: Path) -> dict[str, object]:
    return {
        "mode": stat.S_IMODE(folder.stat().st_mode),
        "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*")),
        "precious": (folder / "old-entry" / "precious.txt").read_text(),
    }


def _in_namespace(
    pytester: pytest.Pytester, setup: str, *args: str, after: str = ""
) -> pytest.RunResult:
    """pytest with dbguard in a private mount namespace, after ``setup`` (shell) ran there."""
    command = shlex.join([sys.executable, "-m", "pytest", "-p", "pytest_dbguard", *args])
    script = f"set -e; {setup}; set +e; {command}; code=$?; {after} exit $code"
    return pytester.run(
        "unshare", "-m", "--propagation", "private", "sh", "-c", script, timeout=300
    )


ROOT_FOLDER = f"/dev/shm/pytest-dbguard-{os.geteuid()}"
FRESH_SHM = "mount -t tmpfs -o size=1g tmpfs /dev/shm"
# A temp folder for the namespace: a fresh file system the server's user can reach (pytester's
# own folders are closed to it), mounted over /mnt in the namespace only.
TMP = Path("/mnt")


def test_planted_root_folder_link_stops_the_run(pytester: pytest.Pytester) -> None:
    _require_root()
    victim, before = _victim(pytester)
    pytester.makepyfile("def test_never(dbguard_engine): pass")
    plant = f"ln -s {victim} {ROOT_FOLDER} && chown -h nobody {ROOT_FOLDER}"
    result = _in_namespace(pytester, f"{FRESH_SHM} && {plant}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(
        [f"*dbguard will not use {ROOT_FOLDER}: it is a symbolic link*Remove it*--dbguard-url*"]
    )
    assert "Traceback" not in result.stderr.str()
    assert _snapshot(victim) == before


def test_sweep_skips_links_and_removes_only_our_stale_run_folders(
    pytester: pytest.Pytester,
) -> None:
    _require_root()
    victim, before = _victim(pytester)
    pytester.makepyfile("def test_runs(dbguard_engine): pass")
    plant = (
        f"mkdir -m 0711 {ROOT_FOLDER} && ln -s {victim} {ROOT_FOLDER}/0badc0de && "
        f"mkdir {ROOT_FOLDER}/0ldrun00 && touch -h -d '2 hours ago' {ROOT_FOLDER}/*"
    )
    report = f"test -e {ROOT_FOLDER}/0ldrun00 && echo STALE-KEPT || echo STALE-SWEPT;"
    result = _in_namespace(pytester, f"{FRESH_SHM} && {plant}", after=report)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["STALE-SWEPT"])
    assert _snapshot(victim) == before


def test_read_only_dev_shm_falls_back_to_the_temp_folder(pytester: pytest.Pytester) -> None:
    _require_root()
    pytester.makepyfile(
        f"""
        import json, os

        def test_runs(dbguard_engine):
            root = json.loads(os.environ["_DBGUARD_ORIGIN"])["embedded_root"]
            assert root.startswith({f"{TMP}/pytest-dbguard-"!r})
        """
    )
    setup = (
        f"mount -t tmpfs -o ro tmpfs /dev/shm && mount -t tmpfs tmpfs {TMP} && export TMPDIR={TMP}"
    )
    _in_namespace(pytester, setup).assert_outcomes(passed=1)


def test_full_disks_give_one_clear_error(pytester: pytest.Pytester) -> None:
    _require_root()
    tmp = TMP
    pytester.makepyfile("def test_never(dbguard_engine): pass")
    setup = (
        f"mount -t tmpfs -o size=1m tmpfs /dev/shm && mount -t tmpfs -o size=1m tmpfs {tmp} "
        f"&& export TMPDIR={tmp}"
    )
    result = _in_namespace(pytester, setup)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(
        [
            "ERROR: dbguard found no folder for the embedded server's files "
            f"(/dev/shm has 1 MiB free, 512 MiB needed; {tmp} has 1 MiB free, 96 MiB needed)."
            " Free some space there, or set TMPDIR to a writable folder with at least 96 MiB "
            "free, or use a server of your own with --dbguard-url*"
        ]
    )
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "Log tail" not in output


def test_missing_dev_shm_falls_back_and_a_foreign_root_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machine, "RAM_DIR", tmp_path / "no-shm")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = machine.storage_root()
    assert root == tmp_path / f"pytest-dbguard-{os.geteuid()}"
    expected = 0o711 if os.geteuid() == 0 else 0o700
    assert stat.S_IMODE(root.lstat().st_mode) == expected
    root.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    root.symlink_to(elsewhere)
    with pytest.raises(ServerError, match="it is a symbolic link"):
        machine.storage_root()
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755


def test_sqlite_folder_is_private_too(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim, before = _victim(pytester)
    tmp = pytester.mkdir("tmp")
    link = tmp / f"pytest-dbguard-{os.geteuid()}"
    link.symlink_to(victim)
    monkeypatch.setenv("TMPDIR", str(tmp))
    pytester.makepyfile("def test_never(dbguard_engine): pass")
    # A subprocess: tempfile reads TMPDIR once per process.
    result = run_dbguard(pytester, "--dbguard-url", "sqlite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*dbguard will not use {link}: it is a symbolic link*"])
    assert _snapshot(victim) == before


def test_the_report_never_follows_another_accounts_link_nor_replaces_its_file(
    pytester: pytest.Pytester,
) -> None:
    """``--dbguard-report`` into a folder anyone may write (``/tmp``): a link that another
    account put on the way is not followed (in a folder of its own too, or behind a link of
    this account's), and its files are not replaced."""
    _require_root()
    nobody = pwd.getpwnam("nobody").pw_uid
    pytester.makepyfile(test_one="def test_one(dbguard_url):\n    pass\n")
    shared, victim = pytester.path / "shared", pytester.path / "victim"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    victim.mkdir()
    (victim / "important.conf").write_text("")
    (shared / "reports").symlink_to(victim)
    os.lchown(shared / "reports", nobody, nobody)
    (shared / "theirs.json").write_text("")
    os.chown(shared / "theirs.json", nobody, nobody)
    theirs = shared / "theirs"  # a folder of the other account's, closed to others
    theirs.mkdir(mode=0o755)
    os.chown(theirs, nobody, nobody)
    (theirs / "reports").symlink_to(victim)
    os.lchown(theirs / "reports", nobody, nobody)
    (pytester.path / "mylink").symlink_to(shared / "reports")  # this account's own link
    link = (
        f"a link that another account (uid {nobody}) made below a folder any account may write "
        "to; dbguard follows no such link"
    )
    refusals = {
        "shared/reports/important.conf": f"*shared/reports is {link}*",
        "shared/theirs/reports/important.conf": f"*shared/theirs/reports is {link}*",
        "mylink/important.conf": f"*shared/reports is {link}*",
        "shared/theirs.json": f"*is a file of another account (uid {nobody})*",
    }
    for path, message in refusals.items():
        result = run_dbguard(pytester, "--dbguard-url", "sqlite", "--dbguard-report", path)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, path
        result.stderr.fnmatch_lines([f"ERROR: --dbguard-report = *{message}"])
    assert (victim / "important.conf").read_text() == ""
    assert (shared / "theirs.json").read_text() == ""
    assert sorted(p.name for p in victim.iterdir()) == ["important.conf"]
    # A link of this account's own there is followed, and a file of its own replaced.
    (shared / "mine").symlink_to(victim)
    (victim / "own.json").write_text("")
    result = run_dbguard(
        pytester, "--dbguard-url", "sqlite", "--dbguard-report", "shared/mine/own.json"
    )
    result.assert_outcomes(passed=1)
    assert b"pytest-dbguard-report/" in (victim / "own.json").read_bytes()
    # Another account's checkout outside any shared folder (bind-mounted into a container that
    # runs as root): its own links are followed, as the kernel would.
    home = Path(tempfile.mkdtemp(dir=pwd.getpwuid(os.getuid()).pw_dir))  # pytester moved HOME
    try:
        checkout = home / "checkout"
        (checkout / "build").mkdir(parents=True)
        (checkout / "reports").symlink_to("build")
        for made in (checkout, checkout / "build", checkout / "reports"):
            os.lchown(made, nobody, nobody)
        report = checkout / "reports" / "r.json"
        result = run_dbguard(pytester, "--dbguard-url", "sqlite", f"--dbguard-report={report}")
        result.assert_outcomes(passed=1)
        assert b"pytest-dbguard-report/" in (checkout / "build" / "r.json").read_bytes()
    finally:
        shutil.rmtree(home)
