"""A loopback TCP proxy between the tests and PostgreSQL that injects real network faults.

``FaultProxy`` works without pytest. ``bind()`` is cheap (one listening socket, no thread), so the
port can go into the test URL at early configuration; ``start()`` begins forwarding later, and a
client that connects in between waits in the kernel's backlog.

Design, chosen by measurement (``benchmarks/proxy_overhead.py``): each connection gets one thread
per direction doing blocking ``recv``/``sendall`` with ``TCP_NODELAY`` on both sockets: per hop one
wake-up and two system calls. On a ``SELECT 1`` round trip (psycopg, 2 vCPUs) that added 11-29 us,
against 25-38 us for ``os.splice`` threads, 26-32 us for a selectors loop and 58-100 us for an
asyncio protocol pair. Connections made while ``latency()`` is on take a slower path: a reader and
a timed writer per direction, so every chunk is late by the same amount and throughput is kept.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import selectors
import socket
import threading
import time
from collections.abc import Collection
from types import TracebackType
from typing import TYPE_CHECKING, Final

from pytest_dbguard.db.urls import NO_ENVIRONMENT_DRIVERS
from pytest_dbguard.exceptions import FaultError
from pytest_dbguard.faults.proxy_pipe import JOIN_TIMEOUT, Pipe, check_amount, nodelay, reset

if TYPE_CHECKING:
    from pytest_dbguard.db.urls import DatabaseURL

_BACKLOG: Final = 128
_BIND_FAILED: Final = (
    "dbguard's fault proxy could not listen on {host}:{port}: {error}. "
    "Pick a free port, or listen_port=0 to let the system choose one."
)
_NOT_BOUND: Final = "the fault proxy is not listening: call bind() or start() first."
NOT_PROXIED: Final = (
    "the run's URL {reason}, and the fault proxy, a loopback TCP port, forwards to one TCP "
    "address only (in front of a socket, every local account could connect through it as you, "
    "by peer authentication). For refuse(), latency() and cut(), point the URL at one server's "
    "TCP address (host and port); terminate() works on any URL."
)


def not_proxied(url: DatabaseURL) -> str | None:
    """Why the proxy cannot stand in front of ``url``'s server, or None: the server is reached by
    a Unix socket (a host that starts with ``/`` or ``@``, in the URL, its ``host`` query
    parameter or, for a driver that reads it, ``PGHOST``; no host at all: the driver's default
    socket folder; pg8000's ``unix_sock``), or the URL names several servers."""
    if url.driver in NO_ENVIRONMENT_DRIVERS:
        sock = dict(url.query).get("unix_sock")
        return f"reaches the server by its Unix socket ({sock})" if sock else None
    hosts = [value for key, value in url.query if key == "host"]
    if len(hosts) > 1 or "," in (hosts[0] if hosts else url.host or ""):
        return f"names several servers ({', '.join(hosts) or url.host})"
    host = _host(url)
    if not host:
        return "reaches the server by the driver's default Unix socket (it names no host)"
    if host.startswith(("/", "@")):
        return f"reaches the server by its Unix socket ({host})"
    return None


def upstream_of(url: DatabaseURL) -> tuple[str, int]:
    """Where the proxy forwards to (``not_proxied`` said it can): the server as the driver finds
    it (``_host``; ``host:port`` too), the query string's ``port`` first, then the URL's, then
    ``PGPORT`` (for drivers that read it), then localhost:5432."""
    host, port_text = _host(url) or "127.0.0.1", dict(url.query).get("port")
    if host.count(":") == 1 and host.rsplit(":", 1)[1].isdigit():  # host:port, one server
        host, port_text = host.rsplit(":", 1)
    port = int(port_text) if port_text and port_text.isdigit() else url.port
    environ_port = os.environ.get("PGPORT") or ""
    if port is None and url.driver not in NO_ENVIRONMENT_DRIVERS and environ_port.isdigit():
        port = int(environ_port)
    return host, port or 5432


def _host(url: DatabaseURL) -> str:
    """The host the driver connects to: the query string's ``hostaddr`` (a TCP address, whatever
    ``host`` says) or ``host``, then the URL's, then ``PGHOST`` for a driver that reads it; ""
    for none (libpq's default socket)."""
    query = dict(url.query)
    environ = url.driver not in NO_ENVIRONMENT_DRIVERS
    return (
        query.get("hostaddr")
        or query.get("host")
        or url.host
        or (os.environ.get("PGHOST") if environ else None)
        or ""
    )


def through(url: DatabaseURL, port: int) -> DatabaseURL:
    """``url`` routed through the proxy on ``port``: without the query string's server, which
    the driver would take over the URL's own host and port."""
    return url.without_query("host", "hostaddr", "port").replace(host="127.0.0.1", port=port)


class FaultProxy:
    """A loopback TCP proxy to ``upstream_host:upstream_port`` that can refuse, delay and cut."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._waker: tuple[socket.socket, socket.socket] | None = None
        self._acceptor: threading.Thread | None = None
        self._pipes: set[Pipe] = set()
        self._counter = itertools.count(1)
        self._refuse_until = 0.0
        self._delay = 0.0

    def __repr__(self) -> str:
        where = (
            f"{self._listen_host}:{self._listener.getsockname()[1]}"
            if self._listener
            else "unbound"
        )
        return f"<FaultProxy {where} -> {self._upstream[0]}:{self._upstream[1]}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def bind(self) -> int:
        """Listen on the proxy's address without forwarding yet; returns the port. Idempotent."""
        with self._lock:
            if self._listener is None:
                family = socket.AF_INET6 if ":" in self._listen_host else socket.AF_INET
                try:
                    self._listener = socket.create_server(
                        (self._listen_host, self._listen_port), family=family, backlog=_BACKLOG
                    )
                except OSError as error:
                    raise FaultError(
                        _BIND_FAILED.format(
                            host=self._listen_host, port=self._listen_port, error=error
                        )
                    ) from error
            return int(self._listener.getsockname()[1])

    def start(self) -> None:
        """Begin forwarding (binding first if needed); clients waiting in the backlog go through."""
        self.bind()
        with self._lock:
            if self._acceptor is not None or self._listener is None:
                return
            self._waker = socket.socketpair()
            self._acceptor = threading.Thread(
                target=self._serve,
                args=(self._listener, self._waker[0]),
                name="dbguard-proxy-accept",
                daemon=True,
            )
            self._acceptor.start()

    def stop(self) -> None:
        """Close the listener, reset every connection, join all threads; ``start()`` may follow."""
        with self._lock:
            listener, waker, acceptor = self._listener, self._waker, self._acceptor
            self._listener = self._waker = self._acceptor = None
        if waker is not None:
            with contextlib.suppress(OSError):
                waker[1].send(b"\0")
        if acceptor is not None:
            acceptor.join(JOIN_TIMEOUT)
        if listener is not None:
            listener.close()  # clients still in the backlog are reset by the kernel
        if waker is not None:
            waker[0].close()
            waker[1].close()
        self.cut()
        with self._lock:
            self._pipes.clear()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what it is --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port; FaultError before ``bind()`` or after ``stop()``."""
        listener = self._listener
        if listener is None:
            raise FaultError(_NOT_BOUND)
        return int(listener.getsockname()[1])

    @property
    def listen_host(self) -> str:
        """The address clients connect to."""
        return self._listen_host

    @property
    def upstream(self) -> tuple[str, int]:
        """Where new connections are forwarded to."""
        return self._upstream

    @property
    def connections(self) -> int:
        """How many proxied connections are open now."""
        with self._lock:
            return sum(1 for pipe in self._pipes if pipe.live)

    def retarget(self, host: str, port: int) -> None:
        """Forward new connections to ``host:port`` (a restarted server); open ones stay put."""
        with self._lock:
            self._upstream = (host, port)

    # -- faults ------------------------------------------------------------------------------

    def refuse(self, seconds: float) -> None:
        """For ``seconds`` from now, reset every new connection at once; open ones continue."""
        seconds = check_amount("refuse(seconds)", seconds)
        with self._lock:
            self._refuse_until = time.monotonic() + seconds

    def latency(self, ms: float) -> None:
        """Delay every chunk, each way, by ``ms`` on connections made from now until ``reset()``."""
        delay = check_amount("latency(ms)", ms) / 1000.0
        with self._lock:
            self._delay = delay

    def cut(self) -> int:
        """Reset every open connection on both sides, with no goodbye; returns how many."""
        with self._lock:
            pipes = list(self._pipes)
        count = sum(pipe.abort() for pipe in pipes)
        for pipe in pipes:
            pipe.join()
        with self._lock:
            self._pipes.difference_update(pipe for pipe in pipes if pipe.finished())
        return count

    def pass_on_server_ends(self, ports: Collection[int], timeout: float) -> bool:
        """Wait until the connections whose server side used ``ports`` (``client_port`` in
        ``pg_stat_activity``) have passed the server's end on to their clients; False on timeout.

        The pump threads relay a terminated backend's last message and FIN a moment after the
        backend is gone, and a client that looks in between still sees a live connection.
        """
        wanted = set(ports)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = [
                    pipe
                    for pipe in self._pipes
                    if pipe.upstream_port in wanted and not pipe.server_end_passed_on
                ]
            if not pending:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)

    def reset(self) -> None:
        """Undo every fault: end the refusal window, no latency on new or open connections."""
        with self._lock:
            self._refuse_until = 0.0
            self._delay = 0.0
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.undelay()

    # -- the accept thread -------------------------------------------------------------------

    def _serve(self, listener: socket.socket, wake: socket.socket) -> None:
        listener.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                events = selector.select()
                if any(key.fileobj is wake for key, _ in events):
                    return
                self._accept(listener)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionError:
                continue  # gone before we took it
            except OSError:
                time.sleep(0.05)  # out of descriptors or similar: do not spin
                return
            client.setblocking(True)
            with self._lock:
                if time.monotonic() < self._refuse_until:
                    reset(client)
                    continue
                nodelay(client)
                pipe = Pipe(
                    f"dbguard-proxy-{next(self._counter)}", client, self._upstream, self._delay
                )
                self._pipes.difference_update([old for old in self._pipes if old.finished()])
                self._pipes.add(pipe)
                # Started under the lock, so cut() and stop() never see a pipe without its thread.
                pipe.start()
