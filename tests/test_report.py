"""--dbguard-report PATH: a versioned JSON report of the run, per test and per run, merged across
xdist workers, written only by the process that owns the run, never with a value or a password.

Whole runs in subprocesses on real PostgreSQL (the embedded server, or ``pg_server``, an
external password-protected one); the assertions read the JSON file the run wrote.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pytest_dbguard.guards.statement_timing import normalise
from tests.django_project import write_project as write_django_project
from tests.helpers import README, blocks, copy_project, run_dbguard, run_dbguard_inprocess
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

INI = """
    [pytest]
    dbguard_metadata = models:Base
    xfail_strict = false
"""
# Values no report may hold: a bound parameter, literals written into the SQL text.
SECRET_PARAMETER = "Param-Value-Q7zX"
SECRET_LITERAL = "Literal-Value-K3wY"
SECRET_NUMBER = "918273645"
SECRETS = (SECRET_PARAMETER, SECRET_LITERAL, SECRET_NUMBER, SUPERUSER_PASSWORD)

SYNC_TESTS = f"""
    import os

    import pytest
    from sqlalchemy import create_engine, func, select, text

    from models import Note


    def test_writes(dbguard_session):
        dbguard_session.add(Note(body="{SECRET_PARAMETER}"))
        dbguard_session.commit()
        assert dbguard_session.scalar(select(func.count()).select_from(Note)) == 1
        dbguard_session.execute(
            text("SELECT pg_sleep(0.03), '{SECRET_LITERAL}', {SECRET_NUMBER}")
        )


    def test_fails(dbguard_connection):
        dbguard_connection.execute(text("SELECT count(*) FROM notes"))
        assert False, "the failure"


    @pytest.fixture
    def broken():
        raise RuntimeError("setup fails")


    def test_setup_error(broken):
        pass


    @pytest.mark.skip(reason="not today")
    def test_skipped():
        pass


    @pytest.mark.xfail(reason="known")
    def test_xfails(dbguard_connection):
        dbguard_connection.execute(text("SELECT 1"))
        assert False


    def test_no_database():
        pass


    @pytest.mark.dbguard(isolation="truncate")
    def test_truncate(dbguard_engine):
        with dbguard_engine.begin() as connection:
            connection.execute(text("INSERT INTO notes (body) VALUES (:b)"), {{"b": "t"}})


    @pytest.mark.dbguard(isolation="none")
    def test_none(dbguard_connection):
        dbguard_connection.execute(text("SELECT 2"))


    def test_leaks():
        engine = create_engine(os.environ["DBGUARD_URL"])
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO notes (body) VALUES ('left')"))
        engine.dispose()


    def test_after_the_leak(dbguard_connection):
        dbguard_connection.execute(text("DELETE FROM notes"))
"""


def _project(pytester: pytest.Pytester, **tests: str) -> None:
    copy_project(pytester, "notes")
    pytester.makeini(textwrap.dedent(INI))
    pytester.makepyfile(**{name: textwrap.dedent(text) for name, text in tests.items()})


def _read(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    assert report["schema"] == "pytest-dbguard-report/1"
    assert report["version"] == 1
    return report


def _by_test(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {test["nodeid"].split("::")[-1]: test for test in report["tests"]}


def _assert_no_secret(path: Path) -> None:
    text = path.read_text()
    for secret in SECRETS:
        assert secret not in text


def test_serial_run_on_an_external_server(pytester: pytest.Pytester, pg_server: TestServer) -> None:
    _project(pytester, test_notes=SYNC_TESTS)
    result = run_dbguard(
        pytester, "--dbguard-url", pg_server.url(), "--dbguard-report", "r.json", inprocess=True
    )
    result.assert_outcomes(passed=6, failed=1, skipped=1, xfailed=1, errors=1, warnings=1)
    path = pytester.path / "r.json"
    report = _read(path)
    _assert_no_secret(path)
    assert report["server"] == {
        "kind": "external",
        "host": "127.0.0.1",
        "port": pg_server.port,
        "driver": "psycopg",
        "version": report["server"]["version"],
    }
    assert report["server"]["version"].startswith("15")
    assert report["isolation"] == "rollback"
    assert report["exit_status"] == 1
    assert report["missing_workers"] == []
    assert report["timings"]["server_start_ms"] is None  # not started by this run
    [process] = report["timings"]["processes"]
    assert process["process"] == "main" and process["layout"] == "database"
    assert process["database"].startswith("postgres_dbg_") and process["ready_attempts"] >= 1
    assert process["ready_ms"] > 0 and process["clone_ms"] > 0 and process["template_ms"] > 0

    tests = _by_test(report)
    assert sorted(tests) == sorted(
        [
            "test_writes",
            "test_fails",
            "test_setup_error",
            "test_skipped",
            "test_xfails",
            "test_no_database",
            "test_truncate",
            "test_none",
            "test_leaks",
            "test_after_the_leak",
        ]
    )
    outcomes = {name: test["outcome"] for name, test in tests.items()}
    assert outcomes == {
        "test_writes": "passed",
        "test_fails": "failed",
        "test_setup_error": "error",
        "test_skipped": "skipped",
        "test_xfails": "xfailed",
        "test_no_database": "passed",
        "test_truncate": "passed",
        "test_none": "passed",
        "test_leaks": "passed",
        "test_after_the_leak": "passed",
    }
    assert {
        name: test["isolation"] for name, test in tests.items() if test["isolation"] != "rollback"
    } == {
        "test_truncate": "truncate",
        "test_none": "none",
    }
    writes = tests["test_writes"]
    # the ORM's INSERT, the count and the sleep; savepoints are bookkeeping, not counted
    assert writes["statements"] == 3
    assert writes["database_ms"] >= 30.0
    assert writes["slowest"][0]["sql"] == "SELECT pg_sleep(?), ?, ?"
    assert writes["slowest"][0]["ms"] >= 30.0
    assert [entry["ms"] for entry in writes["slowest"]] == sorted(
        (entry["ms"] for entry in writes["slowest"]), reverse=True
    )
    assert {entry["sql"] for entry in writes["slowest"]} >= {
        "INSERT INTO notes (body) VALUES (?::VARCHAR) RETURNING notes.id"
    }
    assert tests["test_no_database"]["statements"] == 0
    assert tests["test_no_database"]["slowest"] == []
    assert tests["test_fails"]["statements"] == 1
    # the leak check looks after rollback tests only
    assert tests["test_leaks"]["leaked_tables"] == ["notes"]
    assert tests["test_writes"]["leaked_tables"] == []
    assert tests["test_truncate"]["leaked_tables"] is None
    assert tests["test_none"]["leaked_tables"] is None
    assert report["totals"] == {
        "tests": 10,
        "statements": sum(test["statements"] for test in report["tests"]),
        "database_ms": report["totals"]["database_ms"],
    }
    slowest = report["slowest_statements"]
    assert slowest[0] == {
        "sql": "SELECT pg_sleep(?), ?, ?",
        "ms": writes["slowest"][0]["ms"],
        "test": "test_notes.py::test_writes",
    }
    # without -v, no section
    result.stdout.no_fnmatch_line("*dbguard: slowest tests by database time*")


def test_verbose_run_shows_the_slowest_tests(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    _project(
        pytester,
        test_slow="""
            from sqlalchemy import text

            def test_slow(dbguard_connection):
                dbguard_connection.execute(text("SELECT pg_sleep(0.05)"))

            def test_quick(dbguard_connection):
                dbguard_connection.execute(text("SELECT 1"))
                dbguard_connection.execute(text("SELECT 2"))
        """,
    )
    result = run_dbguard(pytester, *on_server, "--dbguard-report", "r.json", "-v", inprocess=True)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= dbguard: slowest tests by database time =*",
            "* ms      1 statement  test_slow.py::test_slow",
            "* ms      2 statements  test_slow.py::test_quick",
            f"dbguard: 2 tests ran 3 statements in * ms of database time; report written to "
            f"{pytester.path / 'r.json'}",
        ]
    )
    # The README's example has exactly the fields of a real report, and its table names each.
    [example] = blocks("Run report", "json")
    assert _shape(json.loads(example)) == _shape(_read(pytester.path / "r.json"))
    table = README.split("### Run report", 1)[1].split("\n### ", 1)[0]
    undocumented = [
        field
        for field in _fields(_read(pytester.path / "r.json"))
        if not re.search(rf"`[^`\n]*\b{field}\b[^`\n]*`", table)
    ]
    assert undocumented == []


def _shape(value: object) -> object:
    """The keys of ``value`` at every level (a list of objects: its first one's); other values,
    ``null`` and lists of names alike, are leaves."""
    if isinstance(value, dict):
        return {key: _shape(inner) for key, inner in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [_shape(value[0])]
    return None


def _fields(value: object) -> set[str]:
    """Every key of ``value``, at any level."""
    if isinstance(value, dict):
        return set(value) | {field for inner in value.values() for field in _fields(inner)}
    if isinstance(value, list):
        return {field for inner in value for field in _fields(inner)}
    return set()


ASYNC_TESTS = f"""
    import pytest
    from sqlalchemy import func, select, text

    from models import Note


    @pytest.mark.asyncio
    async def test_async_writes(dbguard_async_session):
        dbguard_async_session.add(Note(body="{SECRET_PARAMETER}"))
        await dbguard_async_session.commit()
        await dbguard_async_session.execute(
            text("SELECT pg_sleep(0.02), '{SECRET_LITERAL}', {SECRET_NUMBER}")
        )
        assert await dbguard_async_session.scalar(select(func.count()).select_from(Note)) == 1
"""


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_async_statements_are_timed_through_the_same_listener(
    pytester: pytest.Pytester, pg_server: TestServer, driver: str
) -> None:
    _project(pytester, test_async_notes=ASYNC_TESTS)
    result = pytester.runpytest_subprocess(
        "-p",
        "asyncio",
        "-p",
        "pytest_dbguard",
        "--dbguard-url",
        pg_server.url(driver=driver),
        "--dbguard-report",
        "r.json",
        timeout=300,
    )
    result.assert_outcomes(passed=1)
    path = pytester.path / "r.json"
    _assert_no_secret(path)
    [test] = _read(path)["tests"]
    assert test["statements"] == 3
    assert test["database_ms"] >= 20.0
    sqls = [entry["sql"] for entry in test["slowest"]]
    assert sqls[0] == "SELECT pg_sleep(?), ?, ?"
    assert any(sql.startswith("INSERT INTO notes (body) VALUES (?") for sql in sqls)


@pytest.mark.needs_xdist
def test_xdist_workers_parts_are_merged_by_the_controller(pytester: pytest.Pytester) -> None:
    _project(
        pytester,
        test_many="""
            import pytest
            from sqlalchemy import text

            @pytest.mark.parametrize("n", range(20))
            def test_many(n, dbguard_connection):
                dbguard_connection.execute(text("INSERT INTO notes (body) VALUES (:b)"), {"b": str(n)})
                assert dbguard_connection.execute(text("SELECT count(*) FROM notes")).scalar() == 1
        """,
    )
    (pytester.path / "out").mkdir()
    result = run_dbguard(
        pytester,
        "-n",
        "2",
        "--dbguard-report",
        "out/r.json",
        inprocess=True,
    )
    result.assert_outcomes(passed=20)
    assert [path.name for path in (pytester.path / "out").iterdir()] == ["r.json"]  # no temp left
    report = _read(pytester.path / "out" / "r.json")
    assert sorted(test["nodeid"] for test in report["tests"]) == sorted(
        f"test_many.py::test_many[{n}]" for n in range(20)
    )
    assert {test["worker"] for test in report["tests"]} == {"gw0", "gw1"}
    assert all(test["statements"] == 2 for test in report["tests"])
    assert report["missing_workers"] == []
    assert report["totals"]["tests"] == 20 and report["totals"]["statements"] == 40
    assert report["server"]["kind"] == "embedded"
    assert report["timings"]["server_start_ms"] > 0
    processes = {entry["process"]: entry for entry in report["timings"]["processes"]}
    assert sorted(processes) == ["controller", "gw0", "gw1"]
    assert processes["controller"]["ready_ms"] > 0 and processes["controller"]["database"] is None
    for worker in ("gw0", "gw1"):
        entry = processes[worker]
        assert entry["database"].endswith(f"_{worker}") and entry["clone_ms"] > 0
        assert "_tpl" in entry["template"] and entry["ready_ms"] > 0
    assert sorted(processes[worker]["template_built"] for worker in ("gw0", "gw1")) == [
        False,
        True,
    ]  # one worker built the template, the other cloned it
    assert len(report["slowest_statements"]) == 20
    assert {entry["test"] for entry in report["slowest_statements"]} <= {
        test["nodeid"] for test in report["tests"]
    }


@pytest.mark.needs_xdist
def test_a_crashed_worker_is_named_and_the_others_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_crash="""
            import os
            from pathlib import Path

            def test_crash(dbguard_url):
                crashed = Path(__file__).with_name("crashed-once")
                if not crashed.exists():  # the worker that runs it next goes on
                    crashed.write_text("")
                    os._exit(1)
        """,
        test_fine="""
            import pytest

            @pytest.mark.parametrize("n", range(6))
            def test_fine(n, dbguard_url):
                pass
        """,
    )
    result = run_dbguard(
        pytester,
        "-n",
        "2",
        "--dist",
        "loadfile",
        "--dbguard-report",
        "r.json",
        inprocess=True,
    )
    result.assert_outcomes(passed=7, failed=1)  # the crash, then the test again on a new worker
    [crashed] = set(re.findall(r"worker '(gw\d)' crashed while running", result.stdout.str()))
    report = _read(pytester.path / "r.json")
    assert report["missing_workers"] == [crashed]
    assert sorted(test["nodeid"] for test in report["tests"]) == [
        "test_crash.py::test_crash",
        *(f"test_fine.py::test_fine[{n}]" for n in range(6)),
    ]
    assert crashed not in {test["worker"] for test in report["tests"]}
    assert crashed not in {process["process"] for process in report["timings"]["processes"]}


@pytest.mark.parametrize("where", ["cli", "env", "ini"])
def test_cli_environment_and_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The ini path is relative to the ini file's folder; the others to where pytest starts."""
    pytester.makepyfile(test_one="def test_one(dbguard_url):\n    pass\n")
    ini = "[pytest]\n" + ("dbguard_report = reports/run.json\n" if where == "ini" else "")
    pytester.makeini(ini)
    (pytester.path / "reports").mkdir()
    (pytester.path / "sub").mkdir()
    (pytester.path / "sub" / "reports").mkdir()
    args = ["--dbguard-url", "sqlite", "--rootdir", str(pytester.path), str(pytester.path)]
    if where == "cli":
        args += ["--dbguard-report", "reports/run.json"]
    if where == "env":
        monkeypatch.setenv("DBGUARD_REPORT", "reports/run.json")
    monkeypatch.chdir(pytester.path / "sub")  # the inner run starts here
    result = run_dbguard(pytester, *args, inprocess=True)
    result.assert_outcomes(passed=1)
    expected = pytester.path / ("reports" if where == "ini" else "sub/reports") / "run.json"
    other = pytester.path / ("sub/reports" if where == "ini" else "reports") / "run.json"
    assert not other.exists()
    report = _read(expected)
    assert report["server"]["kind"] == "sqlite"
    assert [test["nodeid"] for test in report["tests"]] == ["test_one.py::test_one"]


LISTENERS_TEST = """
    from sqlalchemy import create_engine


    def test_listeners(dbguard_url):
        engine = create_engine("sqlite://")
        print("after_cursor_execute listeners:", len(list(engine.dispatch.after_cursor_execute)))
"""


@pytest.mark.parametrize("report", [False, True], ids=["off", "on"])
def test_without_the_option_nothing_is_written_or_listened_to(
    pytester: pytest.Pytester, on_server: list[str], report: bool
) -> None:
    pytester.makepyfile(test_listeners=textwrap.dedent(LISTENERS_TEST))
    pytester.makeini("[pytest]\n")
    args = ["--dbguard-report", "r.json"] if report else []
    result = run_dbguard(pytester, *on_server, "-s", *args, inprocess=True)
    result.assert_outcomes(passed=1)
    reports = [
        path.relative_to(pytester.path)
        for path in pytester.path.rglob("*")
        if path.is_file() and b"pytest-dbguard-report/" in path.read_bytes()
    ]
    assert reports == ([Path("r.json")] if report else [])
    result.stdout.fnmatch_lines([f"*after_cursor_execute listeners: {1 if report else 0}"])


def test_a_previous_report_is_replaced(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_one(dbguard_url):\n    pass\n")
    pytester.makeini("[pytest]\n")
    path = pytester.path / "r.json"
    run_dbguard(pytester, "--dbguard-url", "sqlite", "--dbguard-report", "r.json", inprocess=True)
    first = _read(path)["run"]
    pytester.makepyfile(test_two="def test_two(dbguard_url):\n    pass\n")
    run_dbguard(
        pytester, "--dbguard-url", "sqlite", "--dbguard-report", "r.json", inprocess=True
    ).assert_outcomes(passed=2)
    second = _read(path)
    assert second["run"] != first and second["totals"]["tests"] == 2
    assert [p.name for p in pytester.path.iterdir() if p.name.startswith(".r.json.")] == []


BAD_PATHS = {
    "no folder": ("missing/r.json", "the folder * does not exist. Create it first*"),
    "parent is a file": ("afile/r.json", "*afile is not a folder.*"),
    "a folder": ("afolder", "*is a folder; the report is written as a regular file there.*"),
    "the root": ("/", "*is a folder; the report is written as a regular file there.*"),
    "a symlink": ("alink.json", "*is a symlink; the report is written as a regular file there.*"),
    "not a report": ("notes.txt", "*is an existing file that is not a dbguard run report*"),
    "not writable": ("/sys/r.json", "*dbguard cannot create a file in /sys (Permission denied)*"),
}


@pytest.mark.parametrize("case", list(BAD_PATHS))
def test_a_bad_path_fails_before_the_run_starts(pytester: pytest.Pytester, case: str) -> None:
    path, message = BAD_PATHS[case]
    pytester.makepyfile(test_one="def test_one(dbguard_url):\n    pass\n")
    (pytester.path / "afile").write_text("a file")
    (pytester.path / "afolder").mkdir()
    (pytester.path / "notes.txt").write_text("the user's own notes")
    (pytester.path / "target.json").write_text("the link's target")
    (pytester.path / "alink.json").symlink_to(pytester.path / "target.json")
    before = {p.name: p.read_text() for p in pytester.path.iterdir() if p.is_file()}
    result = run_dbguard_inprocess(pytester, "--dbguard-report", path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: --dbguard-report = '*{path.split('/')[-1]}'*{message}",
        ]
    )
    result.stderr.fnmatch_lines(
        ["*Point --dbguard-report (or DBGUARD_REPORT, ini dbguard_report)*"]
    )
    result.stdout.no_fnmatch_line("*collected*")  # it stopped before collection
    after = {p.name: p.read_text() for p in pytester.path.iterdir() if p.is_file()}
    assert after == before  # nothing changed, the symlink and its target included
    assert (pytester.path / "alink.json").is_symlink()


def test_an_empty_flag_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = run_dbguard_inprocess(pytester, "--dbguard-report", "")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --dbguard-report is empty. Give the report's path*"])


DJANGO_TESTS = """
import datetime

import pytest
from django.test import TestCase, TransactionTestCase

from shop.models import Order


@pytest.mark.django_db
def test_orm(django_assert_num_queries):
    with django_assert_num_queries(1):
        Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc), note="%s")
    assert Order.objects.filter(note="%s").count() == 1


def test_transactional(transactional_db):
    Order.objects.create(placed=datetime.datetime.now(datetime.timezone.utc))
    assert Order.objects.count() == 1


class TestCaseOrders(TestCase):
    def test_in_a_testcase(self):
        assert not Order.objects.exists()


class TransactionTestCaseOrders(TransactionTestCase):
    def test_in_a_transaction_testcase(self):
        assert not Order.objects.exists()
"""


def test_django_statements_are_timed(pytester: pytest.Pytester, on_server: list[str]) -> None:
    write_django_project(pytester)
    pytester.makepyfile(test_shop=DJANGO_TESTS % (SECRET_PARAMETER, SECRET_PARAMETER))
    result = run_dbguard(
        pytester, *on_server, "--dbguard-report", "r.json", plugins=("pytest_django.plugin",)
    )
    result.assert_outcomes(passed=4)
    path = pytester.path / "r.json"
    _assert_no_secret(path)
    tests = _by_test(_read(path))
    assert tests["test_orm"]["isolation"] == "django"
    assert tests["test_transactional"]["isolation"] == "django-transactional"
    assert tests["test_in_a_testcase"]["isolation"] == "django"  # unittest classes too
    assert tests["test_in_a_transaction_testcase"]["isolation"] == "django-transactional"
    orm = tests["test_orm"]
    # the INSERT and the count, and pytest-django's SET CONSTRAINTS around the test's transaction
    assert orm["statements"] == 4
    assert sorted(entry["sql"].split(" ")[0] for entry in orm["slowest"]) == [
        "INSERT",
        "SELECT",
        "SET",
        "SET",
    ]
    assert tests["test_transactional"]["statements"] > orm["statements"]  # and the flush after it
    assert all("?" in entry["sql"] for entry in orm["slowest"] if "shop_order" in entry["sql"])


@pytest.mark.needs_xdist
def test_the_controllers_django_template_build_is_in_its_entry(
    pytester: pytest.Pytester, on_server: list[str]
) -> None:
    """Under xdist the controller migrates the template (unless a worker got there first): its
    entry says which, how long, and whether it built it; it had none of the three."""
    write_django_project(pytester)
    pytester.makepyfile(test_shop=DJANGO_TESTS % (SECRET_PARAMETER, SECRET_PARAMETER))
    args = ("-n", "2", "--dbguard-report", "r.json")
    result = run_dbguard(pytester, *on_server, *args, plugins=("pytest_django.plugin",))
    result.assert_outcomes(passed=4)
    processes = {
        entry["process"]: entry for entry in _read(pytester.path / "r.json")["timings"]["processes"]
    }
    controller = processes["controller"]
    assert "_tpl" in controller["template"] and controller["template_ms"] > 0
    assert controller["database"] is None
    assert {entry["template"] for entry in processes.values()} == {controller["template"]}
    built = [name for name, entry in processes.items() if entry["template_built"]]
    assert len(built) == 1, processes  # one process migrated, the others found it


@pytest.mark.parametrize(
    ("sql", "shape"),
    [
        ("SELECT * FROM t1 WHERE a = 'it''s' AND b = 42", "SELECT * FROM t1 WHERE a = ? AND b = ?"),
        (
            "UPDATE t SET a = %(a)s, b = %s, c = $1, d = :d",
            "UPDATE t SET a = ?, b = ?, c = ?, d = ?",
        ),
        ("SELECT E'a\\'b', $$x$$ || $q$y $$ z$q$, 1.5e3 - .5", "SELECT ?, ? || ?, ? - ?"),
        (
            'SELECT "weird\'name", a::text, arr[1:2] FROM "t2"',
            'SELECT "weird\'name", a::text, arr[?:?] FROM "t2"',
        ),
        ("SELECT 1 -- a comment 'x'\n, /* 99 */ 2", "SELECT ? , ?"),
        ("SELECT 'never closed 123", "SELECT ?"),
        ("SELECT\n\t1  ,\n  2", "SELECT ? , ?"),
        (
            "SELECT a FROM t WHERE b LIKE 'x%%' AND c %% 7 = 0",
            "SELECT a FROM t WHERE b LIKE ? AND c % ? = ?",
        ),
        (
            "SELECT * FROM t WHERE id IN (%(id_1)s::INTEGER, %(id_2)s::INTEGER, %(id_3)s::INTEGER)",
            "SELECT * FROM t WHERE id IN (?::INTEGER, …)",
        ),
        (
            "INSERT INTO t (a, b) VALUES ('x', 1), ('y', 2), ('z', 3)",
            "INSERT INTO t (a, b) VALUES (?, ?), …",
        ),
        (
            "SELECT f(?, ?), g(?)(x), ?, ? WHERE a in (?, ?)",
            "SELECT f(?, ?), g(?)(x), ?, ? WHERE a in (?, …)",
        ),
        (
            "SELECT ARRAY[1, 2, 3], (?, ?), x = ANY(ARRAY[?, ?])",
            "SELECT ARRAY[?, …], (?, ?), x = ANY(ARRAY[?, …])",
        ),
    ],
)
def test_normalised_statements_keep_the_shape_and_no_value(sql: str, shape: str) -> None:
    assert normalise(sql) == shape


def test_an_existing_report_outside_the_project_needs_the_one_word_flag(
    pytester: pytest.Pytester, tmp_path: Path, pg_server: TestServer
) -> None:
    """pytest takes the second word of ``--dbguard-report PATH`` for a test path when it looks for
    the rootdir and ini file; an existing file outside the project would hide the ini file."""
    _project(
        pytester,
        test_notes="""
            from sqlalchemy import text

            def test_schema_was_built(dbguard_connection):
                dbguard_connection.execute(text("SELECT count(*) FROM notes"))
        """,
    )
    outside = tmp_path / "ci" / "r.json"
    outside.parent.mkdir()
    outside.write_text("")  # a CI step made it, or an earlier run wrote it
    url = ["--dbguard-url", pg_server.url()]  # not about the embedded server: the shared one
    split = run_dbguard(pytester, *url, "--dbguard-report", str(outside), inprocess=True)
    assert split.ret == pytest.ExitCode.USAGE_ERROR
    split.stderr.fnmatch_lines(
        [
            f"ERROR: --dbguard-report {outside}: written as two words, a path that exists "
            f"outside the folder pytest started in * instead of this project's "
            f"{pytester.path / 'tox.ini'}. Write it as one word, "
            f"--dbguard-report={outside}, or set DBGUARD_REPORT or ini dbguard_report instead."
        ]
    )
    one_word = run_dbguard(pytester, *url, f"--dbguard-report={outside}", inprocess=True)
    one_word.assert_outcomes(passed=1)  # the ini file's schema was found and built
    assert _read(outside)["tests"][0]["outcome"] == "passed"
    # Beside the ini file: no harm; also once it exists.
    inside = run_dbguard(pytester, *url, "--dbguard-report", "r.json", inprocess=True)
    inside.assert_outcomes(passed=1)
    inside = run_dbguard(pytester, *url, "--dbguard-report", "r.json", inprocess=True)
    inside.assert_outcomes(passed=1)
