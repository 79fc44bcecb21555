"""What /proc says of processes (alive, their group, children, command, start time), and waiting
for them to end. Works without pytest; Linux only, as the embedded server's run folders are.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, parent, process group,
    …), which may itself hold spaces and parens; None where it cannot be read."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by another process) counts as gone."""
    fields = _stat_fields(pid)
    if fields is not None:
        return fields[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(group: int) -> bool:
    """Whether a process of process group ``group`` still runs (zombies do not)."""
    return bool(group_members(group))


def group_members(group: int) -> list[int]:
    """The running processes of process group ``group`` (zombies are not)."""
    found = []
    with contextlib.suppress(OSError), os.scandir("/proc") as entries:
        for entry in entries:
            fields = _stat_fields(entry.name) if entry.name.isdigit() else None
            if fields is not None and fields[0] != "Z" and fields[2] == str(group):
                found.append(int(entry.name))
    return found


def children_in_group(parent: int, group: int) -> list[int]:
    """The running children of ``parent`` in process group ``group`` (xdist workers, but not the
    embedded server, which has a session of its own)."""
    found = []
    with contextlib.suppress(OSError), os.scandir("/proc") as entries:
        for entry in entries:
            fields = _stat_fields(entry.name) if entry.name.isdigit() else None
            if fields is not None and fields[0] != "Z" and fields[1:3] == [str(parent), str(group)]:
                found.append(int(entry.name))
    return found


def command_name(pid: int) -> str | None:
    """The command ``pid`` runs now (``/proc/<pid>/comm``), or None."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return None


def process_started_at(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), from /proc; None where that cannot be read."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    try:
        ticks = int(fields[19])  # field 22 of the whole line
        with open("/proc/stat") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def wait_group_gone(group: int, timeout: float) -> None:
    """Wait up to ``timeout`` seconds until no process of process group ``group`` runs."""
    deadline = time.monotonic() + timeout
    while group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.005)


def wait_gone(pid: int, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``pid`` (our child ``process``, if given) to end; then SIGKILL."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not process_alive(pid):
            return
        time.sleep(0.005)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
