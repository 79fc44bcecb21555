"""Helpers shared by the plugin's own tests: running dbguard in pytester, marks, shared inner files,
the README's blocks and what they show."""

from __future__ import annotations

import functools
import gc
import importlib
import importlib.util
import itertools
import json
import os
import pkgutil
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dbguard.db.marks import MARK_PREFIX, make_mark, parse_mark

if TYPE_CHECKING:
    from tests.pgserver import TestServer

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
# The extras a user installs for the README's recipes (sync, async and -n).
WHEEL_EXTRAS = "postgres,async,xdist"
NOT_SOURCE = (".git", ".venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")

# Example projects the tests copy into their pytester folders (see projects/README.md).
PROJECTS = Path(__file__).parent / "projects"

# The logging sections every test project's alembic.ini carries after its [alembic] section.
ALEMBIC_LOGGING = """
[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic

[formatter_generic]
format = %(levelname)s %(message)s
"""


def recipe_extras(section: str) -> str:
    """The extras the pip line of the README recipe ``section`` installs, as it writes them
    (``pip install 'pytest-dbguard[postgres,xdist,django]'``)."""
    text = README.split(f"### {section}\n", 1)[1].split("\n#", 1)[0]
    found = re.search(r"pip install 'pytest-dbguard\[([a-z,]+)\]'", text)
    assert found, f"the README recipe {section!r} has no pip install 'pytest-dbguard[...]' line"
    return found[1]


def blocks(section: str, language: str) -> list[str]:
    """The fenced ``language`` blocks under the README heading ``section`` (up to the next heading)."""
    found: list[str] = []
    inside, fence = False, None
    current: list[str] = []
    for line in README.splitlines():
        if fence is None and line.startswith("#"):
            inside = line.lstrip("#").strip() == section
        elif line.startswith("```"):
            if fence is None:
                fence, current = line[3:].strip(), []
            else:
                if inside and fence == language:
                    found.append("\n".join(current) + "\n")
                fence = None
        elif fence is not None:
            current.append(line)
    assert found, f"README has no {language} block under {section!r}"
    return found


def as_shown(output: str) -> list[str]:
    """``fnmatch_lines`` patterns for an output block: numbers, run ids and ``...`` match anything."""
    patterns = []
    for line in output.splitlines():
        line = line.strip()
        if line and line != "...":
            line = re.sub(r"_dbg_[0-9a-f]+_", "_dbg_*_", line)
            line = re.sub(r"\d+(?:\.\d+)*", "*", line).replace("...", "*")
            patterns.append("*" + line)  # after the indentation or "E" of the report
    return patterns


class FreshVenv:
    """A venv made from nothing but the built wheel (and its dependencies from the index)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.bin = folder / "bin"

    def pytest(self, cwd: Path, *args: str, timeout: float = 300) -> pytest.RunResult:
        """Plain ``pytest`` (the console script) in ``cwd``, as a RunResult like pytester's."""
        result = self.run(cwd, str(self.bin / "pytest"), *args, timeout=timeout)
        return pytest.RunResult(
            result.returncode, result.stdout.splitlines(), result.stderr.splitlines(), 0.0
        )

    def run(
        self, cwd: Path, *command: str, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("DBGUARD_", "_DBGUARD_", "PYTHON"))
            and name not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run(
            list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )


def copy_project(pytester: pytest.Pytester, name: str) -> None:
    """Copy the example project ``tests/projects/<name>`` into the pytester folder."""
    pytester.copy_example(name)


# pytest-xdist's own options: an inner run given one of them starts workers (or distributes).
XDIST_OPTIONS = ("-n", "--numprocesses", "--maxprocesses", "-d", "--dist", "--tx")


def worker_rows(xdist_id: str = "xdist") -> list[Any]:
    """``parametrize`` rows of a test run serially and under two workers: the arguments its inner
    run adds, ``()`` or ``("-n", "2")``; the second row is marked ``needs_xdist``."""
    return [
        pytest.param((), id="serial"),
        pytest.param(("-n", "2"), id=xdist_id, marks=pytest.mark.needs_xdist),
    ]


WORKERS = worker_rows()


def uses_xdist(args: Iterable[str]) -> bool:
    """Whether an inner run's arguments use pytest-xdist (``-n 2``, ``--dist``, ``--tx``)."""
    return any(arg.split("=", 1)[0] in XDIST_OPTIONS or arg.startswith("-n") for arg in args)


def plugin_args(*args: str, plugins: Iterable[str] = ()) -> list[str]:
    """The ``-p`` arguments of a sealed inner run (plugin autoload is off) given ``args``: the
    named ``plugins``, and pytest-xdist's only when ``args`` use it and name it nowhere yet.

    A serial run names no xdist, so it works where pytest-xdist is not installed (tox's
    noxdist env); a test whose run uses xdist carries the ``needs_xdist`` marker. xdist is
    named by its entry point, ``-p xdist``: where autoload is on (a fresh venv's plain
    ``pytest``) that is a no-op, where ``-p xdist.plugin`` would register it a second time.
    """
    named = [*plugins]
    given = [value for option, value in itertools.pairwise(args) if option == "-p"]
    if uses_xdist(args) and not any(name.split(".")[0] == "xdist" for name in [*named, *given]):
        if importlib.util.find_spec("xdist") is None:
            pytest.fail(
                f"an inner run with {' '.join(args)} needs pytest-xdist, which is not installed "
                "here: mark the test (or its row) needs_xdist, so that -m 'not needs_xdist' "
                "deselects it",
                pytrace=False,
            )
        named.append("xdist")
    return [arg for name in named for arg in ("-p", name)]


def run_dbguard(
    pytester: pytest.Pytester,
    *args: str,
    plugins: tuple[str, ...] = (),
    inprocess: bool = False,
) -> pytest.RunResult:
    """Run pytest with dbguard activated by ``-p`` and the named extra plugins (and xdist when
    ``args`` use it, see ``plugin_args``): in a subprocess, or with ``inprocess=True`` in this
    process (see ``run_inprocess`` for which runs may)."""
    extra = plugin_args(*args, plugins=plugins)
    if inprocess:
        return run_inprocess(pytester, "-p", "pytest_dbguard", *extra, *args)
    return pytester.runpytest_subprocess("-p", "pytest_dbguard", *extra, *args, timeout=300)


# What a new interpreter ignores by default (the warnings module's "Default Warning Filter").
INTERPRETER_IGNORES: tuple[type[Warning], ...] = (
    DeprecationWarning,
    PendingDeprecationWarning,
    ImportWarning,
    ResourceWarning,
)


def run_inprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """``pytester.runpytest_inprocess`` with what a run may leave behind in this process undone.

    A new interpreter costs about 0.7 s of CPU (start-up and imports) per inner run; a run that
    needs nothing of a process of its own saves that here. Under ``-n`` that is the controller's
    interpreter: its workers are processes all the same (a -n 2 run costs two interpreters, not
    three). Runs stay subprocesses when they end by a signal or rely on the process exit, need a
    fresh import order (environment set before a model module is imported, in the controller
    too), test plugin autoloading, read a subprocess's own stdout, or use pytest-asyncio or
    Django (event-loop policy, settings).

    dbguard restores ``os.environ`` itself at the end of a run; this puts back the whole
    environment and the SIGTERM handler anyway, so that a run that stops half-way cannot leak
    into the next test. Modules first imported inside the run are taken out of ``sys.modules``
    again by pytester: ``tests/conftest.py`` imports dbguard and the drivers first
    (``import_whole_package``).
    """
    import_whole_package()
    environ = dict(os.environ)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with warnings.catch_warnings():
            # The inner run starts from a new interpreter's filters, not from this suite's
            # "error"; dbguard's own modules are imported already, so pytest cannot rewrite
            # their asserts, which it says once per plugin module.
            warnings.resetwarnings()
            for category in INTERPRETER_IGNORES:
                warnings.simplefilter("ignore", category)
            result = pytester.runpytest_inprocess(
                "-W", "ignore::pytest.PytestAssertRewriteWarning", *args
            )
            # What the run leaves behind (the Popen of a kept cluster's server, say) goes here,
            # under a new interpreter's filters, as at a subprocess's exit; not later under the
            # suite's "error". pytester's hook recorder would hold the run's config until teardown.
            calls = getattr(getattr(result, "reprec", None), "calls", None)
            if isinstance(calls, list):
                calls.clear()
            gc.collect()
            return result
    finally:
        os.environ.clear()
        os.environ.update(environ)
        signal.signal(signal.SIGTERM, sigterm)


def dbguard_cli(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The ``dbguard`` command line in a subprocess (``python -m pytest_dbguard``); ``env``
    replaces the environment when given."""
    return subprocess.run(
        [sys.executable, "-m", "pytest_dbguard", *args],
        cwd=cwd,
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
    )


def default_sigint() -> None:
    """A ``preexec_fn`` for a pytest that a test interrupts with SIGINT: Ctrl-C's default action.

    A shell without job control starts background commands with SIGINT ignored, and an ignored
    signal stays ignored across exec: a suite launched that way (``./dev.sh test &``) would hand
    its inner runs a SIGINT they never see.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stopped_once(result: pytest.RunResult, message: str) -> str:
    """``result`` is a run that stopped as a usage error before any test passed, printing
    ``message`` exactly once (under xdist too); its output, stdout and stderr."""
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    assert output.count(message) == 1, output
    assert " passed" not in output
    return output


def run_dbguard_inprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest with dbguard in this process: for runs that stop while pytest configures
    (settings errors), where a subprocess's start-up would be most of the cost."""
    return run_dbguard(pytester, *args, inprocess=True)


# Imported once before any test, beside dbguard itself (see import_whole_package).
INNER_RUN_MODULES = (
    "sqlalchemy",
    "sqlalchemy.orm",
    "sqlalchemy.dialects.postgresql.psycopg",
    "sqlalchemy.dialects.sqlite.pysqlite",
    "psycopg",
    # Extension modules (asyncpg's, greenlet's) cannot be loaded twice in one process: an
    # in-process run that imported them first and lost them to pytester's sys.modules reset
    # crashed the xdist worker at the next run that used them.
    "psycopg2",
    "sqlalchemy.dialects.postgresql.psycopg2",
    "asyncpg",
    "greenlet",
    "sqlalchemy.ext.asyncio",
    "sqlalchemy.dialects.postgresql.asyncpg",
)
# What an in-process run with -n loads for its controller, where pytest-xdist is installed (tox's
# noxdist env has none): one execnet, whose default group ends its gateways at exit.
INNER_XDIST_MODULES = ("execnet", "xdist.dsession", "xdist.workermanage", "xdist.scheduler")


@functools.cache
def import_whole_package() -> None:
    """Import every dbguard module, once, before any test runs (``tests/conftest.py``).

    The ``pytester`` fixture takes out of ``sys.modules`` what was imported while its test ran.
    A dbguard module first imported inside such a test (lazily, by an in-process run or a helper)
    would come back as a second copy later, beside the modules that still hold the first: two
    stash keys for one run, two classes for one exception.
    """
    import pytest_dbguard

    for module in pkgutil.walk_packages(pytest_dbguard.__path__, "pytest_dbguard."):
        if not module.name.endswith(".__main__"):  # that one runs the command line
            importlib.import_module(module.name)
    # The same for what in-process runs (``run_inprocess``) load lazily: a second SQLAlchemy
    # dialect or psycopg beside the first would be another set of classes and registries.
    for name in INNER_RUN_MODULES:
        importlib.import_module(name)
    if importlib.util.find_spec("xdist") is not None:
        for name in INNER_XDIST_MODULES:
            importlib.import_module(name)


def mark_text(run: str, worker: str, *, age: float = 0.0, pid: int | None = None) -> str:
    """A mark exactly as dbguard writes it, dated ``age`` seconds ago, from ``pid`` (else us)."""
    payload = json.loads(make_mark(run, worker)[len(MARK_PREFIX) :])
    payload["created"] -= age
    if pid is not None:
        payload["pid"] = pid
    comment = MARK_PREFIX + json.dumps(payload, separators=(",", ":"))
    assert parse_mark(comment) is not None
    return comment


ALEMBIC_SCRIPT_MAKO = (
    '"""${message}"""\nrevision = ${repr(up_revision)}\ndown_revision = ${repr(down_revision)}\n'
)

# An env.py that takes dbguard's connection (alembic's documented config.attributes): dbguard
# runs it in pytest's own process.
ENV_PY_TAKES_CONNECTION = """
from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
"""
# An env.py that builds its own engine from the app's DATABASE_URL and never looks at dbguard's
# connection: dbguard runs it in a process of its own, or (schema mode) it commits on its own.
ENV_PY_OWN_ENGINE = """
import os
from alembic import context
from sqlalchemy import create_engine

engine = create_engine(os.environ["DATABASE_URL"])
with engine.begin() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""


def write_alembic_project(
    folder: Path, *, alembic_ini: str, env_py: str, revisions: Mapping[str, str]
) -> None:
    """alembic.ini, migrations/env.py, its script template and the revisions, in ``folder``."""
    (folder / "alembic.ini").write_text(alembic_ini)
    versions = folder / "migrations" / "versions"
    versions.mkdir(parents=True)
    (folder / "migrations" / "env.py").write_text(env_py)
    (folder / "migrations" / "script.py.mako").write_text(ALEMBIC_SCRIPT_MAKO)
    for name, text in revisions.items():
        (versions / name).write_text(text)


def kept_by(server: TestServer, result: pytest.RunResult) -> set[str]:
    """The kept databases on the server that the run of ``result`` made (its run id is in the
    header's database names; the shared server holds other tests' databases)."""
    [run] = set(re.findall(r"postgres_dbg_([0-9a-f]+)_", result.stdout.str()))
    return {
        name
        for name in server.databases()
        if name.startswith(f"postgres_dbg_{run}_") and "_failed_" in name
    }


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_once_ready(
    project: Path,
    workers: tuple[str, ...],
    args: list[str],
    ready: list[str],
    *,
    group: bool,
    signum: int = signal.SIGTERM,
) -> tuple[int, str]:
    """Run ``pytest -p pytest_dbguard`` in ``project`` (a process group of its own, as a CI job
    and a terminal have); once every file of ``ready`` exists there, send ``signum`` to it (or
    to its whole group, as Ctrl-C in a terminal does). Returns its exit code and output."""
    command = [sys.executable, "-m", "pytest", "-p", "pytest_dbguard", *plugin_args(*workers)]
    run = subprocess.Popen(
        [*command, *workers, *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # what it wrote survives a SIGKILL
        # A process started in the background by a non-interactive shell (nohup tox &) ignores
        # SIGINT, and passes that on: Python then installs no KeyboardInterrupt handler, and the
        # run would never see the Ctrl-C this sends. A terminal's foreground job has the default.
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 90
        while not all((project / name).exists() for name in ready):
            assert run.poll() is None and time.monotonic() < deadline, f"{ready} never appeared"
            time.sleep(0.05)
        if group:
            os.killpg(run.pid, signum)
        else:
            run.send_signal(signum)
        try:
            output = run.communicate(timeout=90)[0]
        except subprocess.TimeoutExpired:  # a hang: show how far the run got, and where
            # pytest's faulthandler prints every thread's stack of each process on SIGABRT.
            os.killpg(run.pid, signal.SIGABRT)
            try:
                output = run.communicate(timeout=15)[0]
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                output = run.communicate(timeout=30)[0]
            raise AssertionError(
                f"the run did not end within 90 s of the signal:\n{output}"
            ) from None
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(30)
    return run.returncode, output


# A project whose tables live in schemas of their own (indico: users.users, events.events), one
# of them referencing a table in public.
SCHEMAS_MODELS = """
    from sqlalchemy import DDL, Column, ForeignKey, Integer, MetaData, String, Table, event

    metadata = MetaData()
    event.listen(metadata, "before_create", DDL("CREATE SCHEMA IF NOT EXISTS people"))
    groups = Table("groups", metadata, Column("id", Integer, primary_key=True), Column("name", String))
    members = Table(
        "members",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("group_id", ForeignKey("groups.id")),
        schema="people",
    )
"""


# The head of an inner test module whose tests commit through an application engine of their
# own (not dbguard's fixtures), on the run's test database.
APP_ENGINE_TESTS_HEAD = """
    import os

    import pytest
    from sqlalchemy import create_engine, text

    ENGINE = create_engine(os.environ["DBGUARD_URL"])
"""
