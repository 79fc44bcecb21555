"""``DbguardError`` and ``ConfigError``: the two exceptions that reading the settings may raise.

Apart from :mod:`pytest_dbguard.exceptions`, which re-exports them beside the other sixteen,
because every command imports the settings path, ``pytest --help`` included, and defining a
class costs about 0.16M instructions: the others are defined by the runs that may raise them
(``benchmarks/ci_path.py``, c).
"""

from __future__ import annotations


class DbguardError(Exception):
    """Base class of all pytest-dbguard errors."""

    # What went wrong in one line, where the message is long: where and what failed, for a note
    # that quotes it (the xdist controller's early template build).
    cause_line: str | None = None


class ConfigError(DbguardError):
    """A setting has a bad value; the message names the setting, its source and the fix."""
