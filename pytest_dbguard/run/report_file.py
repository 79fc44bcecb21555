"""Where the run report (``--dbguard-report PATH``) is written: the path checked before the run
starts, and the file written atomically at its end.

The folder may lie in a shared one (``/tmp``): it is opened one component at a time, links
resolved here too, and below a folder any account may write to a link that another account
made is refused, not followed (the kernel's ``fs.protected_symlinks``, which would stop some,
is off in many containers). The report is written to a new temporary
file in that open folder (``O_EXCL``, ``O_NOFOLLOW``) and renamed over ``PATH``, which must be
absent, or a file of this account that is empty or holds a dbguard report: never a link, a
folder or another account's file. Works without pytest.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from pytest_dbguard.exceptions import ConfigError

FIX: Final = (
    "Point --dbguard-report (or DBGUARD_REPORT, ini dbguard_report) at a file in an existing, "
    "writable folder, e.g. --dbguard-report dbguard-report.json."
)
NO_FOLDER: Final = (
    "{source} = {path!r}: the folder {folder} does not exist. Create it first, or: {fix}"
)
NOT_A_FOLDER: Final = "{source} = {path!r}: {folder} is not a folder. {fix}"
NOT_WRITABLE: Final = (
    "{source} = {path!r}: dbguard cannot create a file in {folder} ({error}). {fix}"
)
NOT_A_FILE: Final = (
    "{source} = {path!r} is {what}; the report is written as a regular file there. {fix}"
)
NOT_A_REPORT: Final = (
    "{source} = {path!r} is an existing file that is not a dbguard run report; dbguard does not "
    "overwrite files it did not write. Remove it yourself, or: {fix}"
)
FOREIGN_LINK: Final = (
    "{source} = {path!r}: {link} is a link that another account (uid {uid}) made below a folder "
    "any account may write to; dbguard follows no such link to write a file. Write the report "
    "somewhere of your own, or: {fix}"
)
LINK_LOOP: Final = (
    "{source} = {path!r}: {link} leads through too many links, or changed while dbguard read "
    "it. {fix}"
)
REPORT_HEADER: Final = b'"schema": "pytest-dbguard-report/'
# O_PATH: a folder this account may enter but not list (0711) is passed through as the kernel
# would pass; creating, renaming and removing inside it work on such a descriptor.
_FOLDER_FLAGS: Final = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_MAX_LINKS: Final = 40  # as the kernel's own limit for one path


class _Refused(Exception):
    """The path cannot take the report: ``message`` is one of the texts above (for the check
    before the run), ``brief`` what is wrong in a few words (for the write at its end)."""

    def __init__(self, message: str, brief: str, **values: object) -> None:
        super().__init__(brief)
        self.message, self.brief, self.values = message, brief, values


def check_path(path: Path, source: str) -> None:
    """Fail before the run unless a report can be written at ``path``: its folder exists, is
    reached through no other account's link, and takes a new file (tried for real: root passes
    every permission check but a read-only one), and ``path`` is nothing dbguard would destroy
    (a folder, a symlink, another account's file, a file that is not a report)."""
    try:
        with _open_folder(path.parent) as folder:
            _check_target(folder, path.name)
            try:
                probe, descriptor = _new_file(folder, path.name, ".probe")
            except OSError as error:
                raise _not_writable(path.parent, error) from None
            os.close(descriptor)
            os.unlink(probe, dir_fd=folder)  # the probe dbguard just made
    except _Refused as refused:
        raise ConfigError(
            refused.message.format(source=source, path=str(path), fix=FIX, **refused.values)
        ) from None


def write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: readers see the old file or the whole new one.
    OSError when it cannot (the message names what is wrong)."""
    try:
        with _open_folder(path.parent) as folder:
            _check_target(folder, path.name)
            temporary, descriptor = _new_file(folder, path.name, ".tmp")
            try:
                with open(descriptor, "w", encoding="utf-8") as out:
                    out.write(text)
                os.replace(temporary, path.name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=folder)  # dbguard's own temporary file
                raise
    except _Refused as refused:
        raise OSError(refused.brief) from None


def is_report(content: bytes) -> bool:
    """Whether a file's first bytes are empty or a dbguard run report's: one a run may replace."""
    return not content.strip() or REPORT_HEADER in content


@contextlib.contextmanager
def _open_folder(folder: Path) -> Iterator[int]:
    """The folder open, reached one component at a time from ``/``, links resolved here the same
    way (never by the kernel, which would follow a link inside a link's target unchecked). Below
    a folder any account may write to (``/tmp``), a link is followed only when this account or
    root made it; elsewhere (a checkout of another account's, bind-mounted into a container that
    runs as root) as the kernel would."""
    descriptor = os.open("/", _FOLDER_FLAGS)
    try:
        parts = collections.deque(folder.absolute().parts[1:])
        walked, links, shared = Path("/"), 0, _shared(descriptor)
        while parts:
            name = parts.popleft()
            if name in ("", "."):
                continue
            shown = walked / name
            found = _lstat(descriptor, name, shown, folder)
            if stat.S_ISLNK(found.st_mode):
                if shared and found.st_uid not in (os.geteuid(), 0):
                    brief = f"{shown} is a link that another account made below a shared folder"
                    raise _Refused(FOREIGN_LINK, brief, link=shown, uid=found.st_uid)
                links += 1
                if links > _MAX_LINKS:
                    raise _Refused(LINK_LOOP, f"{shown}: too many links", link=shown)
                target = os.readlink(name, dir_fd=descriptor)
                again = _lstat(descriptor, name, shown, folder)
                if (again.st_ino, again.st_uid) != (found.st_ino, found.st_uid):
                    raise _Refused(LINK_LOOP, f"{shown} changed while read", link=shown)
                parts.extendleft(reversed(Path(target).parts))
                if target.startswith("/"):
                    parts.popleft()  # the root itself: start again from there
                    descriptor = _swap(descriptor, os.open("/", _FOLDER_FLAGS))
                    walked, shared = Path("/"), _shared(descriptor)
                continue
            descriptor = _swap(descriptor, _enter(descriptor, name, shown, folder))
            walked = shown if name != ".." else walked.parent
            shared = shared or _shared(descriptor)
        yield descriptor
    finally:
        os.close(descriptor)


def _shared(descriptor: int) -> bool:
    """Whether any account may write to the open folder (``/tmp``, ``/dev/shm``)."""
    return bool(os.fstat(descriptor).st_mode & stat.S_IWOTH)


def _swap(old: int, new: int) -> int:
    os.close(old)
    return new


def _lstat(parent: int, name: str, shown: Path, folder: Path) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        raise _Refused(NO_FOLDER, f"{folder} does not exist", folder=folder) from None
    except NotADirectoryError:
        raise _Refused(
            NOT_A_FOLDER, f"{shown.parent} is not a folder", folder=shown.parent
        ) from None
    except OSError as error:  # a folder on the way this account may not search
        raise _not_writable(shown.parent, error) from None


def _enter(parent: int, name: str, shown: Path, folder: Path) -> int:
    """``name`` in the folder ``parent``, opened as a folder (``O_NOFOLLOW``: nor a link swapped
    in since it was looked at)."""
    try:
        return os.open(name, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except NotADirectoryError:
        raise _Refused(NOT_A_FOLDER, f"{shown} is not a folder", folder=shown) from None
    except FileNotFoundError:
        raise _Refused(NO_FOLDER, f"{folder} does not exist", folder=folder) from None
    except OSError as error:
        raise _not_writable(folder, error) from None


def _not_writable(folder: Path, error: OSError) -> _Refused:
    reason = error.strerror or type(error).__name__
    return _Refused(NOT_WRITABLE, reason, folder=folder, error=reason)


def _check_target(folder: int, name: str) -> None:
    """``name`` in ``folder`` is absent, or a file of this account a run may replace."""
    if name in ("", ".", ".."):  # the path names a folder (``/``)
        raise _Refused(NOT_A_FILE, "it is a folder", what="a folder")
    try:
        found = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return
    what = (
        "a symlink"
        if stat.S_ISLNK(found.st_mode)
        else "a folder"
        if stat.S_ISDIR(found.st_mode)
        else "not a regular file"
        if not stat.S_ISREG(found.st_mode)
        else f"a file of another account (uid {found.st_uid})"
        if found.st_uid != os.geteuid()
        else None
    )
    if what is not None:
        raise _Refused(NOT_A_FILE, f"it is {what}", what=what)
    descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    with open(descriptor, "rb") as existing:
        if not is_report(existing.read(200)):
            raise _Refused(NOT_A_REPORT, "it is a file that is not a dbguard run report")


def _new_file(folder: int, name: str, suffix: str) -> tuple[str, int]:
    """A new empty file of this account in ``folder``, mode as an ordinary open() makes it (the
    umask applies): its name, open for writing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        candidate = f".{name}.{secrets.token_hex(4)}{suffix}"
        try:
            return candidate, os.open(candidate, flags, 0o666, dir_fd=folder)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} after 100 tries")
