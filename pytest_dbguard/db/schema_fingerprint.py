"""The fingerprint of a schema source: a short hash of what a kept template (``--dbguard-reuse``)
was built from, so that it is rebuilt when that changes. For ``dbguard_metadata``, the DDL it
creates and the DDL event listeners attached to it (their code and the values they close over,
without memory addresses); for ``dbguard_alembic_ini``, the ini file and every migration file."""

from __future__ import annotations

import enum
import functools
import hashlib
import re
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pytest_dbguard import compat

if TYPE_CHECKING:
    from sqlalchemy import MetaData


def fingerprint_metadata(metadata: MetaData, dialect_name: str) -> str:
    """A short hash of the DDL the metadata creates: a reused template is rebuilt when it changes."""
    from sqlalchemy import create_mock_engine
    from sqlalchemy.schema import CreateIndex, CreateTable
    from sqlalchemy.types import SchemaType

    # A mock engine gives the dialect without connecting anywhere.
    dialect = create_mock_engine(f"{dialect_name}://", executor=lambda *_: None).dialect
    digest = hashlib.sha1()
    # By name, not metadata.sorted_tables: that one warns (SAWarning, an error under
    # filterwarnings = error) when foreign keys form a cycle, which create_all itself handles.
    for table in sorted(metadata.tables.values(), key=lambda table: table.fullname):
        digest.update(str(CreateTable(table).compile(dialect=dialect)).encode())
        for index in sorted(table.indexes, key=lambda index: str(index.name)):
            digest.update(str(CreateIndex(index).compile(dialect=dialect)).encode())
        digest.update(_ddl_listeners(table, dialect).encode())
        # A named type (a PostgreSQL ENUM): its values are in CREATE TYPE, which SQLAlchemy
        # runs from a listener of its own; the table's DDL shows only the name.
        for column in table.columns:
            if isinstance(column.type, SchemaType) and getattr(column.type, "name", None):
                digest.update(_value_text(column.type).encode())
    digest.update(_ddl_listeners(metadata, dialect).encode())
    return digest.hexdigest()[:6]


def _ddl_listeners(target: Any, dialect: Any) -> str:
    """What the ``before_create`` and ``after_create`` listeners of a MetaData or Table do, as
    text that is the same in every process (each xdist worker names the template by it). They
    are part of what create_all builds: extensions, schemas, functions, seed rows. Sorted, since
    the order of registration may follow a set's (a loop over the metadata's schemas)."""
    return "\n".join(
        sorted(
            f"{event_name} {_listener_or_kind(listener, dialect)}"
            for event_name in ("before_create", "after_create")
            for listener in getattr(target.dispatch, event_name)
        )
    )


def _listener_or_kind(listener: Any, dialect: Any) -> str:
    """:func:`_listener_text`, or the listener's kind where reading it failed (a ``repr`` that
    raises, a container that holds itself): the fingerprint never stops a run."""
    try:
        return _listener_text(listener, dialect)
    except Exception:
        return f"{type(listener).__module__}.{type(listener).__qualname__}"


def _listener_text(listener: Any, dialect: Any, depth: int = 0) -> str:
    """A ``DDL``'s statement (and the dialects of its ``execute_if``), another DDL element
    compiled (``CreateSchema``, a library's ``CreateView``), a function's code, with what a
    ``functools.partial`` binds and what a wrapper closes over (``event.listen(..., once=True)``
    wraps the function)."""
    from sqlalchemy.sql.ddl import ExecutableDDLElement

    if isinstance(listener, ExecutableDDLElement):
        statement = getattr(listener, "statement", None)
        if not isinstance(statement, str):
            try:
                statement = str(listener.compile(dialect=dialect))
            except Exception:  # not compiled without a table to aim at: its kind, at least
                statement = type(listener).__qualname__
        return f"{statement} {_value_text(compat.ddl_dialects(listener))}"
    if isinstance(listener, functools.partial):
        inner = _listener_text(listener.func, dialect, depth + 1)
        return f"partial({inner}, {_value_text(listener.args)}, {_value_text(listener.keywords)})"
    name = getattr(listener, "__qualname__", type(listener).__qualname__)
    text = f"{getattr(listener, '__module__', '')}.{name}"
    owner = getattr(listener, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType):
        text += " " + _value_text(owner)  # a bound method: its object, by kind
    code = getattr(listener, "__code__", None)
    if code is None:
        return text
    text += " " + _code_text(code)
    if depth < 3:
        for cell in getattr(listener, "__closure__", None) or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # a cell not filled yet
                continue
            if callable(contents):
                text += " " + _listener_text(contents, dialect, depth + 1)
    return text


def _code_text(code: Any) -> str:
    """A function's compiled body: its bytecode, the names it uses and its constants (nested
    functions' too). Bytecode is the interpreter's: each Python version names its own template."""
    constants = ",".join(
        _code_text(value) if hasattr(value, "co_code") else _value_text(value)
        for value in code.co_consts
    )
    return f"{code.co_code.hex()}|{','.join(code.co_names)}|{constants}"


def _value_text(value: Any, depth: int = 0) -> str:
    """A value as text that is the same in every process: literals as written, containers item
    by item (a set's items sorted: their order follows the string hash, which differs from
    process to process), SQLAlchemy's types by their ``repr`` (``ENUM('a', 'b', name='mood')``);
    any other object by its kind alone, since its ``repr`` may carry an id or an address."""
    from sqlalchemy.types import TypeEngine

    if depth > 8:
        return "..."
    if value is None or isinstance(value, (str, bytes, int, float, complex, enum.Enum)):
        return repr(value)
    if isinstance(value, (set, frozenset)):
        return "{" + ",".join(sorted(_value_text(item, depth + 1) for item in value)) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_value_text(item, depth + 1) for item in value) + ")"
    if isinstance(value, dict):
        items = sorted(
            f"{_value_text(key, depth + 1)}:{_value_text(item, depth + 1)}"
            for key, item in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, TypeEngine):  # a type of the project's own may show an object in it
        return _ADDRESS.sub("", repr(value))
    return f"{type(value).__module__}.{type(value).__qualname__}"


# " at 0x7f3a…" in a default repr: where the object happens to live in this process.
_ADDRESS: Final = re.compile(r" at 0x[0-9a-fA-F]+")


def fingerprint_alembic(ini: Path, settings: Sequence[str] = ()) -> str:
    """A short hash of alembic.ini, env.py, every migration file and the settings they may read."""
    from pytest_dbguard.db.alembic_ini import script_folder, version_folders

    digest = hashlib.sha1(ini.read_bytes())
    digest.update("\n".join(settings).encode())
    named = script_folder(ini)
    script_dirs = [named] if named else [ini.parent / "alembic", ini.parent / "migrations"]
    script_dirs += [folder for folder in version_folders(ini) if folder not in script_dirs]
    for folder in script_dirs:
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else []:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:6]
