"""The README's examples are run as written: a recipe that does not work is a bug."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_dbguard.run.options import OPTIONS
from pytest_dbguard.run.setting_values import (
    ISOLATION_CHOICES,
    NAIVE_DATETIME_CHOICES,
    WORKER_ISOLATION_CHOICES,
)
from tests.helpers import (
    README,
    WORKERS,
    FreshVenv,
    as_shown,
    blocks,
    copy_project,
    plugin_args,
    run_dbguard,
)
from tests.pgserver import SUPERUSER_PASSWORD, TestServer

RecipeRun = Callable[..., pytest.RunResult]


@pytest.fixture
def recipe_venv() -> str:
    """The session fixture whose venv the wheel's runs use; a recipe that needs packages of its
    own parametrizes it (``fastapi_venv``)."""
    return "fresh_venv"


@pytest.fixture(params=["checkout", "wheel"])
def run_recipe(
    request: pytest.FixtureRequest, pytester: pytest.Pytester, recipe_venv: str
) -> RecipeRun:
    """Runs the recipe's project (in a temporary folder, outside the repository) two ways: with
    this checkout (``python -m pytest``), and with plain ``pytest`` from a fresh venv that has only
    the built wheel, as a user who pasted the recipe would."""
    if request.param == "checkout":

        def with_checkout(*args: str, timeout: float = 300) -> pytest.RunResult:
            return pytester.runpytest_subprocess(*args, timeout=timeout)

        return with_checkout
    venv: FreshVenv = request.getfixturevalue(recipe_venv)

    def with_wheel(*args: str, timeout: float = 300) -> pytest.RunResult:
        return venv.pytest(pytester.path, "-p", "no:cacheprovider", *args, timeout=timeout)

    return with_wheel


def test_the_two_commands_come_first() -> None:
    first = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines() if line.strip()]
    assert commands == ["./dev.sh examples", "./dev.sh test"]
    assert README.index(first.group(0)) < README.index("## ")
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "./dev.sh test" in ci


def test_quickstart(pytester: pytest.Pytester) -> None:
    (ini,) = blocks("Quickstart", "ini")
    (test,) = blocks("Quickstart", "python")
    copy_project(pytester, "quickstart")
    pytester.makefile(".ini", pytest=ini)
    pytester.makepyfile(
        test_users="from app.models import User\n\n"
        + test
        + "\n\n"
        + test.replace("def test_create_user", "def test_create_user_again")
    )
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=2)  # the second sees nothing of the first: rolled back
    (header,) = blocks("Quickstart", "")
    result.stdout.fnmatch_lines(as_shown(header))


def test_table_prefix_recipe(pytester: pytest.Pytester, run_recipe: RecipeRun) -> None:
    python, ini = (
        blocks("Table prefixes and settings read at import time", "python")[0],
        blocks("Table prefixes and settings read at import time", "ini")[0],
    )
    pytester.mkpydir("app")
    pytester.makepyfile(
        **{
            "app/settings": "import os\ntable_prefix = os.environ.get('DB_TABLE_PREFIX', 'storage_elem_01')\n",
            "app/models": "from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column\n"
            "from app import settings\n\nclass Base(DeclarativeBase):\n    pass\n\n"
            + textwrap.dedent(python).replace("# app/models.py\n", "")
            + "    id: Mapped[int] = mapped_column(primary_key=True)\n",
        }
    )
    pytester.makefile(".ini", pytest=ini)
    pytester.makeconftest(
        "from app.models import File  # a top-level import, as real conftests do\n"
    )
    pytester.makepyfile(
        test_files="""
        def test_prefixed(dbguard_session):
            from app.models import File
            assert File.__tablename__ == "test_storage_main_files"
            dbguard_session.add(File())
            dbguard_session.commit()
        """
    )
    run_recipe().assert_outcomes(passed=1)


GUARD_SUPPORT = """
import importlib
from datetime import datetime
import pytest
from sqlalchemy import DateTime, ForeignKey, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
import app.settings


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list["Book"]] = relationship()


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))


def render_author_list(session):
    authors = session.scalars(select(Author)).all()
    return [(author.name, len(author.books)) for author in authors]  # lazy loads: N+1


@pytest.fixture(autouse=True)
def some_authors(request):
    if "dbguard_session" in request.fixturenames:
        session = request.getfixturevalue("dbguard_session")
        session.add_all([Author(name=f"a{n}") for n in range(5)])
        session.flush()
"""
SETTINGS = """
try:
    import debug_toolbar  # noqa: F401
    INSTALLED_APPS = ["app", "debug_toolbar"]
except ImportError:
    INSTALLED_APPS = ["app"]
"""


def test_guard_recipes(pytester: pytest.Pytester, run_recipe: RecipeRun) -> None:
    """The naive datetime, dbguard_without and query count examples, as the README shows them."""
    naive, without, queries = blocks("Guards", "python")
    naive_shown, queries_shown = blocks("Guards", "")
    pytester.mkpydir("app")
    pytester.makepyfile(**{"app/settings": SETTINGS})
    pytester.mkpydir("debug_toolbar")  # the dev-only package, installed here as in a dev setup
    pytester.makepyfile(
        test_guards=GUARD_SUPPORT + "\n\n" + naive + "\n\n" + without + "\n\n" + queries,
        conftest="from test_guards import Base  # noqa: F401\n",
    )
    pytester.makeini("[pytest]\ndbguard_metadata = test_guards:Base\n")
    result = run_recipe("-p", "pytest_dbguard", "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(passed=2, failed=1, warnings=1)
    # The utcnow() count line is not checked: Python before 3.12 does not warn, and it is ignored here.
    naive_warning = as_shown(naive_shown.replace("tests/test_events.py", "test_guards.py"))[0]
    result.stdout.fnmatch_lines([*as_shown(queries_shown), naive_warning])


def test_install_line_names_real_extras() -> None:
    """The pip line is not run (it would fetch from PyPI); its extras must exist."""
    (install,) = blocks("Quickstart", "bash")
    named = set(re.findall(r"\[(\w+)\]", install))
    extras = set(importlib.metadata.metadata("pytest-dbguard").get_all("Provides-Extra") or [])
    assert named == {"postgres", "async", "xdist"}
    assert named <= extras


def test_reference_table_names_every_option() -> None:
    """Each row of the settings table is a real option, with its flag, variable, ini key and default."""
    rows = {}
    for line in README.split("## Reference", 1)[1].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        cells[:4] = [cell.strip("`") for cell in cells[:4]]
        if len(cells) == 5 and cells[2].startswith("dbguard_"):
            rows[cells[2]] = cells
    assert set(rows) == {option.ini for option in OPTIONS}
    choices = {
        "isolation": ISOLATION_CHOICES,
        "worker_isolation": WORKER_ISOLATION_CHOICES,
        "naive_datetime": NAIVE_DATETIME_CHOICES,
    }
    for option in OPTIONS:
        flag, env, _, default, what = rows[option.ini]
        assert flag.split()[0] == (option.flag if option.cli else "—"), option.name
        assert env == (option.env_var if option.env else "—"), option.name
        if option.default is not None:
            assert default == option.default, option.name
        named = re.findall(r"`(\w+)`", what)
        if named and option.name in choices:
            assert set(named) == set(choices[option.name]), option.name


def test_parallel_recipe_is_the_ci_command() -> None:
    """The xdist recipe's command is the one the CI test runs; its fallback names real values."""
    text = README.split("### Parallel runs (pytest-xdist)", 1)[1].split("###", 1)[0]
    (command,) = re.findall(r"`(pytest -p pytest_dbguard -n \d+)`", text)
    (ci,) = blocks("An external server, CI wait step and compose healthcheck", "bash")
    assert command in ci.splitlines()
    flag, value = re.findall(r"`(--dbguard-worker-isolation) (\w+)`", text)[0]
    assert flag in {option.flag for option in OPTIONS}
    assert {value, "auto"} <= set(WORKER_ISOLATION_CHOICES)


# The README's example credentials, given to a role on the test server so the recipes run as written.
APP_USER, APP_PASSWORD = "app", "secret"


@pytest.fixture
def app_database(pg_server: TestServer) -> Iterator[TestServer]:
    """Function: role ``app`` (password ``secret``, CREATEDB) owning database ``app``; dropped after."""
    pg_server.sql(f"CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD '{APP_PASSWORD}'")
    pg_server.sql(f"CREATE DATABASE app OWNER {APP_USER}")
    yield pg_server
    pg_server.sql("DROP DATABASE IF EXISTS app WITH (FORCE)")
    for name in pg_server.databases():  # a failed run's leftovers must not block DROP ROLE
        if name.startswith("app_dbg_"):
            pg_server.sql(f"DROP DATABASE {name} WITH (FORCE)")
    pg_server.sql(f"DROP ROLE {APP_USER}")


@pytest.fixture
def venv_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``dbguard`` and ``pytest`` commands of this interpreter come first on PATH."""
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])


WORKER_RECORD = """

@pytest.mark.parametrize("n", range(8))
def test_worker_database(n, dbguard_session):
    name = dbguard_session.execute(text("SELECT current_database()")).scalar()
    assert name == os.environ["DBGUARD_DB"]
    assert os.environ["DATABASE_URL"] == os.environ["DBGUARD_URL"]
    with open(f"seen-{os.environ['DBGUARD_WORKER']}.txt", "a") as seen:
        seen.write(name + "\\n")
"""


@pytest.mark.needs_xdist
@pytest.mark.usefixtures("venv_on_path")
def test_ci_wait_step_runs_the_parallel_suite(
    pytester: pytest.Pytester, app_database: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI block as a shell script, on the quickstart project: wait, then ``-n 4``."""
    (script,) = blocks("An external server, CI wait step and compose healthcheck", "bash")
    assert script.count("@db:5432/") == 1
    script = script.replace("@db:5432/", f"@127.0.0.1:{app_database.port}/")
    copy_project(pytester, "quickstart")
    pytester.makefile(".ini", pytest=blocks("Quickstart", "ini")[0])
    pytester.makepyfile(
        test_users="import os\nimport pytest\nfrom sqlalchemy import text\nfrom app.models import User\n\n"
        + blocks("Quickstart", "python")[0]
        + WORKER_RECORD
    )
    pytester.makefile(".sh", ci=script)
    # Users have plugin autoload; the sealed suite names xdist instead, outside the commands.
    monkeypatch.setenv("PYTEST_ADDOPTS", " ".join(plugin_args("-n", "4")))
    result = pytester.run("bash", "-e", "ci.sh", timeout=300)
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "ready: postgresql+psycopg://app:***@127.0.0.1:*/app answered SELECT 1 (PostgreSQL *) after 1 attempt, * ms",
            "*created: 4/4 workers*",
        ]
    )
    result.assert_outcomes(passed=9)
    assert f":{APP_PASSWORD}@" not in result.stdout.str() + result.stderr.str()

    seen = {
        path.stem.removeprefix("seen-"): set(path.read_text().split())
        for path in pytester.path.glob("seen-*.txt")
    }
    assert set(seen) == {"gw0", "gw1", "gw2", "gw3"}
    runs = set()
    for worker, names in seen.items():
        (name,) = names  # one database per worker, the same for all its tests
        match = re.fullmatch(rf"app_dbg_(\w+)_{worker}", name)
        assert match, name
        runs.add(match.group(1))
    assert len(runs) == 1
    assert not [name for name in app_database.databases() if name.startswith("app_dbg_")]
    tables = app_database.sql(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace", database="app"
    )
    assert tables.stdout.strip() == "0"  # dbguard never writes to "app"


def mini_yaml(text: str) -> dict[str, Any]:
    """Block mappings by indentation, with scalar or JSON-style list values: enough for the README."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for line in text.splitlines():
        content = line.split(" #", 1)[0].rstrip()  # the README's comments follow a space
        if not content.strip() or content.lstrip().startswith("#"):
            continue
        indent = len(content) - len(content.lstrip())
        key, _, value = content.strip().partition(":")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        value = value.strip()
        if not value:
            parent[key] = {}
            stack.append((indent, parent[key]))
        else:
            parent[key] = json.loads(value) if value.startswith("[") else value
    return root


@pytest.mark.usefixtures("venv_on_path")
def test_compose_healthcheck(pytester: pytest.Pytester, app_database: TestServer) -> None:
    """The healthcheck's command, run as compose runs it, against a server on localhost."""
    (compose,) = blocks("An external server, CI wait step and compose healthcheck", "yaml")
    (ci,) = blocks("An external server, CI wait step and compose healthcheck", "bash")
    parsed = mini_yaml(compose)
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        pass
    else:
        assert yaml.safe_load(compose) == parsed
    services = parsed["services"]
    assert services["tests"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    url = services["tests"]["environment"]["DBGUARD_URL"]
    assert f"export DBGUARD_URL={url} " in ci  # the same server and test command as the CI step
    assert services["tests"]["command"] in ci.splitlines()
    environment = services["db"]["environment"]
    assert (environment["POSTGRES_USER"], environment["POSTGRES_PASSWORD"]) == (
        APP_USER,
        APP_PASSWORD,
    )

    kind, *command = services["db"]["healthcheck"]["test"]
    assert kind == "CMD"
    local = f"@localhost:{app_database.port}/"
    assert command[2].count("@localhost/") == 1
    command[2] = command[2].replace("@localhost/", local)
    healthy = pytester.run(*command, timeout=60)
    assert healthy.ret == 0, healthy.stderr.str()
    healthy.stdout.fnmatch_lines(["ready: *answered SELECT 1 (PostgreSQL *) after 1 attempt*"])

    # A wrong password is not something waiting fixes: unhealthy at once, saying why.
    command[2] = command[2].replace(f":{APP_PASSWORD}@", ":wrong@")
    unhealthy = pytester.run(*command, timeout=60)
    assert unhealthy.ret == 1
    unhealthy.stderr.fnmatch_lines(
        ["*failed step: authentication*Stopped after 1 attempt*waiting does not fix this*"]
    )
    assert ":wrong@" not in unhealthy.stderr.str()


ASYNC_MODELS = """
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
"""
ASYNC_HEAD = """
import os
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from models import Item

settings = SimpleNamespace(database_url=os.environ["DBGUARD_ASYNC_URL"])
APP_ENGINE = create_async_engine(os.environ["DBGUARD_ASYNC_URL"])  # made at import, as apps do
"""
ASYNC_CHECKS = """

@pytest.mark.asyncio
@pytest.mark.parametrize("n", range(2))
async def test_app_engine_after_lifespan(n, dbguard_async_session):
    async with lifespan(app=None):
        async with APP_ENGINE.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    assert await dbguard_async_session.scalar(select(func.count()).select_from(Item)) == 0


@pytest.mark.asyncio(loop_scope="function")
async def test_on_a_narrower_loop(dbguard_async_session):
    pass
"""


def test_async_recipe_and_startup_wait(
    pytester: pytest.Pytester, run_recipe: RecipeRun, pg_server: TestServer
) -> None:
    """The async example, then an application engine and the lifespan wait on the same loop."""
    (test,) = blocks("Async", "python")
    (lifespan,) = blocks("An external server, CI wait step and compose healthcheck", "python")
    pytester.makepyfile(models=ASYNC_MODELS)
    pytester.makeini("[pytest]\ndbguard_metadata = models:Base\n")
    pytester.makepyfile(test_items=ASYNC_HEAD + "\n\n" + test + "\n\n" + lifespan + ASYNC_CHECKS)
    result = run_recipe(
        "-p", "asyncio", "-p", "pytest_dbguard", "--dbguard-url", pg_server.url(), timeout=300
    )
    # The checks after the example see no row: it was rolled back. The narrower loop is refused.
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "dbguard: asyncio loop scope session for fixtures and tests*",
            "*ERROR at setup of test_on_a_narrower_loop*",
            "E   *test_on_a_narrower_loop uses *dbguard_async_session, made on the session-scoped "
            "event loop, but the test runs on a function-scoped loop*Fix: *",
        ]
    )
    result.stdout.no_fnmatch_line("*attached to a different loop*")
    assert SUPERUSER_PASSWORD not in result.stdout.str()


FAULT_NEIGHBOURS = """
import pytest
from sqlalchemy import text

@pytest.mark.parametrize("n", range(4))
def test_busy(dbguard_connection, n):
    assert dbguard_connection.execute(text("SELECT 1")).scalar() == 1
"""


@pytest.mark.parametrize("backend", ["embedded", "external"])
@pytest.mark.parametrize("workers", ["serial", pytest.param("n2", marks=pytest.mark.needs_xdist)])
def test_faults_recipe(
    pytester: pytest.Pytester,
    run_recipe: RecipeRun,
    pg_server: TestServer,
    backend: str,
    workers: str,
) -> None:
    """The example as written (imports included), true in a suite of many tests: earlier tests
    leave pooled connections through the proxy, and cut() ends those too."""
    (test,) = blocks("Faults: prove that your app recovers", "python")
    copies = "\n\n".join(
        test.replace("def test_survives", f"def test_{n}_survives") for n in range(3)
    )
    pytester.makepyfile(test_a_busy=FAULT_NEIGHBOURS, test_faults=copies)
    args = ["--dbguard-url", pg_server.url()] if backend == "external" else []
    args += ["-n", "2"] if workers == "n2" else []
    result = run_recipe("-p", "pytest_dbguard", *plugin_args(*args), *args, timeout=300)
    result.assert_outcomes(passed=7)
    assert SUPERUSER_PASSWORD not in result.stdout.str()


MIGRATED_TESTS = """
import os

import pytest
from sqlalchemy import create_engine, text

from app.models import User

ENGINE = create_engine(os.environ["DATABASE_URL"])  # the application's own engine


def insert_and_commit(name):
    with ENGINE.begin() as connection:  # its own connection, committed for real
        statement = text("INSERT INTO users (name) VALUES (:name) RETURNING id")
        return connection.execute(statement, {"name": name}).scalar()


def names(postgresql):
    return [row[0] for row in postgresql.execute("SELECT name FROM users ORDER BY id")]


def test_session_keeps_its_name(session):
    session.add(User(name="ada"))
    session.commit()
    assert session.query(User).count() == 1


def test_postgresql_keeps_its_name(postgresql):
    with postgresql.cursor() as cursor:
        cursor.execute("INSERT INTO users (name) VALUES ('ada')")
    assert names(postgresql) == ["ada"]


TRUNCATED_IDS = []


@pytest.mark.dbguard(isolation="truncate")
def test_postgresql_commits(postgresql):
    assert names(postgresql) == []
    row = postgresql.execute("INSERT INTO users (name) VALUES ('bob') RETURNING id").fetchone()
    TRUNCATED_IDS.append(row[0])
    postgresql.commit()


@pytest.mark.dbguard(isolation="truncate")
def test_app_commits_on_its_own_connection(postgresql):
    assert names(postgresql) == []
    # The last truncate test's row went, and its step of the sequence with it.
    assert insert_and_commit("cy") == TRUNCATED_IDS[0]


@pytest.mark.dbguard(isolation="none")
def test_opted_out():
    insert_and_commit("kept")


def test_only_the_opted_out_row_is_left(postgresql):
    assert names(postgresql) == ["kept"]
"""


def test_isolation_and_migrating_recipes(
    pytester: pytest.Pytester, run_recipe: RecipeRun, pg_server: TestServer
) -> None:
    """The migration conftest as written, under each isolation the README describes."""
    (conftest,) = blocks("Migrating", "python")
    copy_project(pytester, "quickstart")
    pytester.makeini(
        "[pytest]\ndbguard_metadata = app.models:Base\ndbguard_env =\n    DATABASE_URL={url}\n"
    )
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_migrated=MIGRATED_TESTS)
    result = run_recipe("-p", "pytest_dbguard", "--dbguard-url", pg_server.url(), "-v", timeout=300)
    result.assert_outcomes(passed=6)
    assert SUPERUSER_PASSWORD not in result.stdout.str()


# An application with its own engine and scoped_session, and a service that commits on it.
SCOPED_APP = """
import os

from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker

engine = create_engine(os.environ["DATABASE_URL"])
Session = scoped_session(sessionmaker(bind=engine))


class Base(DeclarativeBase):
    pass


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


def create_tag(name):
    tag = Tag(name=name)
    Session.add(tag)
    Session.commit()
    return tag
"""
SCOPED_TESTS = """
import pytest
from sqlalchemy import func, select

from app.database import Session, Tag, create_tag


@pytest.mark.parametrize("n", range(4))
def test_the_service_commits(n, app_session):
    create_tag("python")  # unique: a row left by an earlier test would fail it
    assert app_session.scalar(select(func.count()).select_from(Tag)) == 1


def test_a_failed_commit_rolls_back_to_the_last_one():
    create_tag("sql")
    with pytest.raises(Exception, match="duplicate key"):
        create_tag("sql")
    Session.rollback()
    assert Session.scalar(select(func.count()).select_from(Tag)) == 1
"""


@pytest.mark.parametrize("args", WORKERS)
def test_application_session_recipe(
    pytester: pytest.Pytester, run_recipe: RecipeRun, pg_server: TestServer, args: tuple[str, ...]
) -> None:
    """The conftest as written binds an application's scoped_session to the test's connection:
    its services' commits stay in the test (no LeakWarning, which filterwarnings turns into an
    error), serially and under xdist."""
    result = _run_app_session_recipe(
        pytester,
        run_recipe,
        ["--dbguard-url", pg_server.url(), *args],
        "The application's own session (scoped_session, factory_boy)",
        {"app/database.py": SCOPED_APP},
        SCOPED_TESTS,
    )
    result.assert_outcomes(passed=5)


def _run_app_session_recipe(
    pytester: pytest.Pytester,
    run_recipe: RecipeRun,
    run_args: list[str],
    section: str,
    app_files: dict[str, str],
    tests: str,
    warnings_as_errors: str = "error",
) -> pytest.RunResult:
    """Runs a recipe of "The application's own session": its conftest as written, an application
    whose engine takes DATABASE_URL from dbguard_env (``app_files``, packages made), and tests;
    a LeakWarning (an error here) would mean the application's commits escaped the test."""
    (conftest,) = blocks(section, "python")
    for relative, text in app_files.items():
        for package in reversed(Path(relative).parents[:-1]):  # app, then app/api
            if not (pytester.path / package / "__init__.py").exists():
                pytester.mkpydir(str(package))
        (pytester.path / relative).write_text(text)
    pytester.makeini(
        "[pytest]\ndbguard_metadata = app.database:Base\n"
        f"filterwarnings = {warnings_as_errors}\ndbguard_env =\n    DATABASE_URL={{url}}\n"
    )
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_app=tests)
    result = run_recipe("-p", "pytest_dbguard", *plugin_args(*run_args), *run_args)
    assert "LeakWarning" not in result.stdout.str()
    return result


FASTAPI_DEPS = """
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from app.database import engine


def get_db():
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]
"""
FASTAPI_MAIN = """
from fastapi import FastAPI
from sqlalchemy import func, select

from app.api.deps import SessionDep
from app.database import Tag

app = FastAPI()


@app.post("/tags/{name}")
def create_tag(name: str, session: SessionDep):
    session.add(Tag(name=name))
    session.commit()
    return {"tags": session.scalar(select(func.count()).select_from(Tag))}
"""
FASTAPI_TESTS = """
import pytest


@pytest.mark.parametrize("n", range(4))
def test_the_endpoint_commits(n, client):
    response = client.post("/tags/python")  # unique: a row left by an earlier test would fail
    assert response.status_code == 200, response.text
    assert response.json() == {"tags": 1}
"""


@pytest.mark.parametrize("recipe_venv", ["fastapi_venv"])
@pytest.mark.parametrize("args", WORKERS)
def test_fastapi_dependency_recipe(
    pytester: pytest.Pytester, run_recipe: RecipeRun, pg_server: TestServer, args: tuple[str, ...]
) -> None:
    """The conftest as written gives a sync FastAPI app's endpoints the test's session: their
    commits stay in the test (no LeakWarning, an error here), serially and under xdist."""
    result = _run_app_session_recipe(
        pytester,
        run_recipe,
        ["--dbguard-url", pg_server.url(), *args],
        "A FastAPI dependency (`Depends(get_db)`)",
        {
            "app/database.py": SCOPED_APP,  # its engine, Base and Tag
            "app/api/deps.py": FASTAPI_DEPS,
            "app/main.py": FASTAPI_MAIN,
        },
        FASTAPI_TESTS,
        # Only dbguard's: starlette's TestClient warns about the httpx it runs on in new releases.
        warnings_as_errors="error::pytest_dbguard.LeakWarning",
    )
    result.assert_outcomes(passed=4)


@pytest.mark.needs_xdist
def test_django_recipe(pytester: pytest.Pytester) -> None:
    """The Django recipe's ini and tests, on a small real project (with the settings modules the
    recipe names), under -n 2; the header is the one shown."""
    from tests.django_project import write_project

    write_project(pytester)
    (ini,) = blocks("Django (pytest-django)", "ini")
    (tests,) = blocks("Django (pytest-django)", "python")
    header = blocks("Django (pytest-django)", "")[0].splitlines()[0]
    pytester.makefile(".ini", pytest=ini)
    (pytester.path / "tox.ini").unlink()  # write_project's ini: the recipe's replaces it
    pytester.makepyfile(manage="")  # pytest-django puts the folder of manage.py on sys.path
    pytester.mkpydir("debug_toolbar")
    pytester.mkpydir("config")
    settings = pytester.mkpydir("config/settings")
    (settings / "test.py").write_text("from djproj.settings import *  # noqa: F403\n")
    (settings / "production.py").write_text(
        "from djproj.settings import *  # noqa: F403\n\n"
        "try:\n    import debug_toolbar  # noqa: F401\nexcept ImportError:\n    pass\n"
        "else:\n    INSTALLED_APPS = [*INSTALLED_APPS, 'debug_toolbar']\n"
    )
    pytester.makepyfile(test_recipe=tests)
    result = pytester.runpytest_subprocess(
        *plugin_args("-n", "2", plugins=["pytest_django.plugin"]), "-n", "2", timeout=300
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(as_shown(header))


FLASK_APP = """
    import os

    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


    class Base(DeclarativeBase):
        pass


    db = SQLAlchemy(model_class=Base)


    class User(db.Model):
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]


    def create_app():
        app = Flask(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
        db.init_app(app)

        @app.post("/users/<name>")
        def add(name):
            db.session.add(User(name=name))
            db.session.commit()
            return {"count": db.session.query(User).count()}

        @app.post("/undone/<name>")
        def undone(name):
            db.session.add(User(name=name))
            db.session.flush()
            db.session.rollback()
            return {"count": db.session.query(User).count()}

        return app
"""
FLASK_TESTS = """
    import pytest

    from app import User, db


    @pytest.mark.parametrize("n", range(3))
    def test_a_view_commits(app, n):
        client = app.test_client()
        assert client.post("/users/ada").json == {"count": 1}
        assert client.post("/undone/zed").json == {"count": 1}  # the rollback keeps ada
        assert client.post("/users/bob").json == {"count": 2}


    @pytest.mark.parametrize("n", range(3))
    def test_the_session_commits(app, n):
        assert db.session.query(User).count() == 0
        db.session.add(User(name="cy"))
        db.session.commit()
        assert db.session.query(User).count() == 1
"""


@pytest.mark.parametrize("workers", ["serial", pytest.param("n2", marks=pytest.mark.needs_xdist)])
def test_flask_sqlalchemy_recipe(
    pytester: pytest.Pytester, pg_server: TestServer, workers: str
) -> None:
    """The recipe's conftest as written: views and tests use db.session, each test starts empty,
    and nothing reaches the database beyond the test's transaction."""
    (conftest,) = blocks("Flask-SQLAlchemy", "python")
    pytester.makepyfile(app=FLASK_APP, test_flask=FLASK_TESTS)
    pytester.makeconftest(conftest)
    pytester.makeini("[pytest]\ndbguard_metadata = app:db\ndbguard_env =\n    DATABASE_URL={url}\n")
    args = ["-n", "2"] if workers == "n2" else []
    result = run_dbguard(pytester, "--dbguard-url", pg_server.url(), "-p", "no:randomly", *args)
    result.assert_outcomes(passed=6)
