"""Who may connect to the embedded server: a random per-run password, over TCP and the socket.

The server listens on loopback TCP, which every local account can reach, so TCP needs
scram-sha-256 with a password that only dbguard's processes know: random per cluster, given to
the superuser in single-user mode, in the server's own process before it first listens (so no
TCP client ever meets a server without it, and pytest's critical path pays nothing: this runs
while pytest collects), then handed on in the URLs (``plan.server_url``, ``DBGUARD_URL``, the
xdist origin). Never in a process's argv, which other users can read in /proc, nor in the
server process's environment; the server itself gets only a SCRAM verifier, on stdin.

The socket lives in the run folder, which is mode 0700 and owned by the server's user (and the
socket itself 0700), so only that account and root reach it. When root runs pytest that account
is ``postgres``, which the machine's own PostgreSQL runs as too (a superuser there runs programs
as ``postgres``: ``COPY ... TO PROGRAM``): so the socket takes ``peer`` authentication mapped to
the one account that runs pytest (the ``psql`` command that ``--dbguard-keep-failed`` prints
needs no password), and every other account is refused there too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Final

from pytest_dbguard.server.run_folder_files import open_regular

SUPERUSER: Final = "postgres"
HBA_NAME: Final = "pg_hba.conf"
IDENT_NAME: Final = "pg_ident.conf"
# The socket: only the account that runs pytest (see the module docstring and IDENT).
HBA: Final = """\
# Written by pytest-dbguard for one run; the data folder's own pg_hba.conf is not used.
local all all peer map=dbguard
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""
# The password is 32 random URL-safe characters (192 bits): key stretching cannot make that
# harder to guess, while every client pays the iterations at every connect. PostgreSQL's default
# 4096 made a loopback connect ~5 ms slower (7 -> 12 ms, psycopg); 16 costs nothing measurable.
SCRAM_ITERATIONS: Final = 16
_SERVER_VARIABLES: Final = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "LD_LIBRARY_PATH"})
# Single-user mode sets the password before the server first listens; an error stops it (exit 1).
# It starts in half the time with 1MB of shared buffers instead of the default 128MB.
SINGLE_USER_SETTINGS: Final = (
    *("-c", "exit_on_error=on", "-c", "fsync=off", "-c", "full_page_writes=off"),
    *("-c", "log_min_messages=warning", "-c", "log_checkpoints=off", "-c", "shared_buffers=1MB"),
)


def new_password() -> str:
    """A random password; URL-safe, so it needs no escaping in a URL or in SQL."""
    return secrets.token_urlsafe(24)


def scram_verifier(password: str, *, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    Sent instead of the password itself, so not even a failed statement in the server log shows it.
    """
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def password_statement(password: str) -> bytes:
    """The statement that gives the superuser ``password``, for single-user mode's stdin."""
    return f"ALTER ROLE {SUPERUSER} PASSWORD '{scram_verifier(password)}'\n".encode()


def hba_path(root: Path) -> Path:
    """The run folder's own pg_hba file (the cached initdb output keeps its trust file unused)."""
    return root / HBA_NAME


def ident_path(root: Path) -> Path:
    """The run folder's own pg_ident file: who the socket's ``peer`` map admits."""
    return root / IDENT_NAME


def write_hba(root: Path, owner: tuple[int, int] | None) -> None:
    """Write the run's pg_hba and pg_ident files, readable by the server's user only: the
    socket admits the account that runs pytest, as the superuser."""
    import pwd

    account = pwd.getpwuid(os.geteuid()).pw_name
    ident = f"# Written by pytest-dbguard: the account that runs pytest.\ndbguard {account} {SUPERUSER}\n"
    for path, text in ((hba_path(root), HBA), (ident_path(root), ident)):
        write_private(path, text)
        if owner is not None:
            os.chown(path, *owner, follow_symlinks=False)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new or existing file only this user may read (0600, no link followed)."""
    descriptor = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with open(descriptor, "w") as file:
        os.fchmod(descriptor, 0o600)
        file.write(text)


def server_environment(password: str) -> dict[str, str]:
    """The environment to start the server (and its initdb) with: only what they read from it,
    never one that carries the password.

    Not ours minus a few names: the server runs as the server's account, which reads its
    ``/proc/<pid>/environ`` (as do programs that superusers of the machine's own PostgreSQL run as
    it), and a CI job's environment holds tokens and ``PGPASSWORD``. ``PATH`` finds the start's
    own programs (``sh``, ``cp``), initdb takes the time zone from ``TZ`` (its locale is given:
    ``C``), ``LD_LIBRARY_PATH`` finds the libraries of binaries outside the system's."""
    return {
        name: value
        for name, value in os.environ.items()
        if (name in _SERVER_VARIABLES or name.startswith("LC_")) and password not in value
    }
