"""Helpers shared by the plugin's own tests: the README's blocks and what they show."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()

APP_MODELS = """
    import os
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    table_prefix = os.environ.get("DB_TABLE_PREFIX", "storage_elem_01")

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
"""


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
