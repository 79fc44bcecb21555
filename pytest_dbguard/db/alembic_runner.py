"""Run ``alembic upgrade head`` for the template: in this process, or in a fresh one.

An env.py that takes dbguard's connection (``config.attributes["connection"]``) runs in this
process, on that connection. One that builds its own engine from the project's settings may
have read them at import time (a pydantic ``Settings()`` imported by a conftest), when they still
named the worker's database; it runs in a new Python process whose environment names the
template (``DBGUARD_URL``, the ``dbguard_env`` variables), so its settings are read afresh there.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pytest_dbguard.db.alembic_ini import alembic_config, env_py, pyproject_beside
from pytest_dbguard.exceptions import SchemaError, brief, masked

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import MetaData
    from sqlalchemy.engine import Connection

    from pytest_dbguard.db.urls import DatabaseURL

NOT_INSTALLED: Final = (
    "dbguard_alembic_ini is set but alembic is not installed: pip install alembic"
)
URL_VARIABLE: Final = "_DBGUARD_ALEMBIC_URL"  # the URL crosses in the environment, never in argv
# The child: alembic's own command API, with sqlalchemy.url set to the template, as in-process.
CHILD: Final = (
    "import os, sys\n"
    "from alembic import command\n"
    "from alembic.config import Config\n"
    "try:\n"
    "    config = Config(sys.argv[1], toml_file=sys.argv[2]) if sys.argv[2:] else Config(sys.argv[1])\n"
    "except TypeError:  # alembic before 1.16 reads no pyproject.toml\n"
    "    config = Config(sys.argv[1])\n"
    f"config.set_main_option('sqlalchemy.url', os.environ.pop({URL_VARIABLE!r}).replace('%', '%%'))\n"
    "command.upgrade(config, 'head')\n"
)
COMPARE_FAILED: Final = (
    "The schema drift check runs {env_py} to compare the migrated database with "
    "dbguard_metadata (as `alembic check` does), and it failed: {error}{where}. Fix env.py, or "
    "set dbguard_check_schema = off."
)
OUTPUT_LINES: Final = 40
FAILED: Final = (
    "`alembic upgrade head` ({source}) failed while building the template {database!r}{where}, "
    "exit status {status}. It ran in a separate Python process because {env_py} does not use "
    "config.attributes['connection'] (its settings are read afresh there, naming the template). "
    "Its output{tail}:\n{output}\n{named}{hint}Fix that migration or env.py, or the "
    "dbguard_env line that gives its settings their URL (ini dbguard_alembic_ini); no test ran."
)
# SQLAlchemy's answer to a postgres:// URL ({pg_url}, libpq's short form), and what to give it.
_SHORT_SCHEME: Final = r"Can't load plugin: sqlalchemy\.dialects:postgres\s*$"
_SHORT_SCHEME_HINT: Final = (
    "SQLAlchemy was given a postgres:// URL ({pg_url} is libpq's short form, for Django's URL "
    "readers) and takes postgresql+DRIVER:// only: give env.py's settings {url} instead.\n"
)
# As text: re compiles it on first use (a failed build), not in every run's import.
_FRAME: Final = r'File "(?P<file>[^"]+)", line (?P<line>\d+)'


def upgrade_here(connection: Connection, ini: Path, url: str) -> None:
    """``alembic upgrade head`` on ``connection``, shared with env.py via ``config.attributes``."""
    try:
        from alembic import command
    except ImportError as error:
        raise SchemaError(NOT_INSTALLED) from error
    with _running_env(ini, connection, url) as config:
        command.upgrade(config, "head")


@contextlib.contextmanager
def _running_env(ini: Path, connection: Connection, url: str) -> Iterator[Config]:
    """alembic's Config for env.py to run on ``connection`` (``url`` as ``sqlalchemy.url``),
    in the folder of alembic.ini, with the loggers put back afterwards."""
    config = alembic_config(ini)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    previous = os.getcwd()
    os.chdir(ini.parent)  # script_location in alembic.ini is relative to it
    try:
        with logging_kept():
            yield config
    finally:
        os.chdir(previous)


def compare_in_env_py(
    connection: Connection, ini: Path, url: DatabaseURL, metadata: MetaData
) -> list[Any] | None:
    """alembic's autogenerate comparison of ``connection``'s database (at ``url``) with
    ``metadata``, run from env.py as ``alembic check`` runs it: env.py configures the context on
    the connection it is given, with its own ``include_object``, ``include_name`` and comparison
    options, and the migration function compares instead of migrating (``dont_mutate``: no
    version table is made). None when env.py compared nothing on that connection (it configured
    one of its own, or ran no migrations): the caller compares without env.py."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    found: list[Any] = []
    compared = False

    def compare(_heads: Any, context: Any) -> list[Any]:
        nonlocal compared
        if context.connection is connection:  # not a connection of env.py's own
            context.opts.setdefault("compare_type", True)
            found.extend(compare_metadata(context, metadata))
            compared = True
        return []  # no migration step to run

    try:
        with _running_env(ini, connection, url.render(hide_password=False)) as config:
            script = ScriptDirectory.from_config(config)
            with EnvironmentContext(config, script, fn=compare, dont_mutate=True):
                script.run_env()
    except Exception as error:
        env = env_py(ini)
        where = failing_file("".join(traceback.format_tb(error.__traceback__)), env.parent)
        raise SchemaError(
            COMPARE_FAILED.format(
                env_py=env,
                error=brief(error, url.password),
                where=f" ({where.strip()})" if where else "",
            )
        ) from error
    return found if compared else None


@contextlib.contextmanager
def logging_kept() -> Iterator[None]:
    """Put this process's loggers back as they were after env.py's ``fileConfig``.

    The env.py that ``alembic init`` writes calls ``logging.config.fileConfig(alembic.ini)``,
    which disables every logger that exists and is not named in the ini (the project's own,
    created when pytest imported its modules) and sets the root logger's level and handlers:
    the tests' ``caplog`` then sees nothing the project logs. It also closes every handler, and a
    file handler opened for writing (pytest's ``--log-file``) stays closed: it is reopened to
    append, so the log file goes on receiving the run's records.
    """
    import logging

    loggers = [logging.getLogger()] + [
        logger
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    ]
    saved = [
        (logger, logger.disabled, logger.level, list(logger.handlers), logger.propagate)
        for logger in loggers
    ]
    open_files = [
        handler
        for _, _, _, handlers, _ in saved
        for handler in handlers
        if isinstance(handler, logging.FileHandler) and handler.stream is not None
    ]
    try:
        yield
    finally:
        for logger, disabled, level, handlers, propagate in saved:
            logger.disabled, logger.propagate = disabled, propagate
            logger.setLevel(level)
            logger.handlers[:] = handlers
        for handler in open_files:
            if handler.stream is None:  # closed by fileConfig
                handler.setStream(
                    open(  # noqa: SIM115 (the handler owns it, as its own stream)
                        handler.baseFilename, "a", encoding=handler.encoding, errors=handler.errors
                    )
                )


def upgrade_in_subprocess(ini: Path, url: DatabaseURL, source: str) -> None:
    """``alembic upgrade head`` in a new Python process whose environment names the template."""
    environ = dict(os.environ)  # the caller has pointed DBGUARD_URL and dbguard_env at the template
    environ[URL_VARIABLE] = url.render(hide_password=False)
    # The child imports what this process can (the rootdir, pythonpath = ...), first.
    paths = [entry for entry in sys.path if entry and os.path.isdir(entry)]
    if environ.get("PYTHONPATH"):
        paths.append(environ["PYTHONPATH"])
    environ["PYTHONPATH"] = os.pathsep.join(paths)
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(ini), *map(str, filter(None, [pyproject_beside(ini)]))],
        cwd=ini.parent,
        env=environ,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        check=False,
    )
    if completed.returncode == 0:
        return
    output = completed.stdout
    short_scheme = re.search(_SHORT_SCHEME, output, re.MULTILINE) is not None
    output = _masked_all(output, url.passwords())
    if "No module named 'alembic'" in output:
        raise SchemaError(NOT_INSTALLED)
    lines = _without_library_frames(output, env_py(ini).parent)
    tail = f" (last {OUTPUT_LINES} of {len(lines)} lines)" if len(lines) > OUTPUT_LINES else ""
    raise SchemaError(
        FAILED.format(
            source=source,
            database=url.database,
            where=failing_file(output, env_py(ini).parent),
            status=completed.returncode,
            env_py=env_py(ini),
            tail=tail,
            output="\n".join("    " + line for line in lines[-OUTPUT_LINES:]),
            named=_naming_the_template(environ, url),
            hint=_SHORT_SCHEME_HINT if short_scheme else "",
        )
    )


def _naming_the_template(environ: Mapping[str, str], url: DatabaseURL) -> str:
    """The child's variables that name the template (``DBGUARD_URL``, the ``dbguard_env`` lines
    with ``{url}``, ``{pg_url}``, ``{db}``...), password hidden: what its settings were given."""
    named = [
        f"{name}={_password_hidden(value, url.passwords())}"
        for name, value in sorted(environ.items())
        if name != URL_VARIABLE and url.database and url.database in value
    ]
    return f"Its environment named the template in: {', '.join(named)}.\n" if named else ""


def _password_hidden(value: str, passwords: Sequence[str]) -> str:
    """One variable's value with the passwords hidden: a URL's password fields, in its user info
    and query string (not the other places where the same text appears: a password ``postgres``
    would blank out the scheme and the database name), else every occurrence, plain or
    URL-encoded (a conninfo string)."""
    from pytest_dbguard.db.urls import hide_password_of

    return hide_password_of(value) if "://" in value else _masked_all(value, passwords)


def _masked_all(text: str, passwords: Sequence[str]) -> str:
    """``text`` with each of the URL's passwords (user info, query string) shown as ``***``."""
    for password in passwords:
        text = masked(text, password)
    return text


def _without_library_frames(output: str, script_dir: Path) -> list[str]:
    """The output's lines, keeping only the traceback frames of the migrations folder (the rest
    are alembic's and SQLAlchemy's own, the same for every failure)."""
    folder = str(script_dir.resolve())
    kept: list[str] = []
    in_frame = keep_frame = False
    for line in output.rstrip().splitlines():
        frame = re.search(_FRAME, line) if line.startswith("  File ") else None
        if frame is not None:
            in_frame, keep_frame = True, os.path.realpath(frame["file"]).startswith(folder)
        elif in_frame and line.startswith("    "):
            pass  # the frame's code line (and its ^^^ marks)
        else:
            in_frame = False
        if not in_frame or keep_frame:
            kept.append(line)
    return kept


def failing_file(traceback_text: str, script_dir: Path) -> str:
    """`` at file:line``: the last traceback frame in the migrations folder (a migration or env.py)."""
    folder = str(script_dir.resolve())
    frames = [
        match
        for match in re.finditer(_FRAME, traceback_text)
        if os.path.realpath(match["file"]).startswith(folder)
    ]
    if not frames:
        return ""
    return f" at {os.path.normpath(frames[-1]['file'])}:{frames[-1]['line']}"
