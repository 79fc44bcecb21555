"""One proxied connection of the fault proxy: its two sockets and the threads that pump between.

Blocking ``recv``/``sendall`` per direction with ``TCP_NODELAY`` (see ``proxy.py`` for why); a
connection made while latency is on takes a reader and a timed writer per direction instead.
"""

from __future__ import annotations

import collections
import contextlib
import math
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Final

from pytest_dbguard.exceptions import FaultError

_CHUNK: Final = 65536  # under glibc's mmap threshold, so each recv buffer is a cheap allocation
_CONNECT_TIMEOUT: Final = 10.0
_CUT_GRACE: Final = 0.25  # then a pump stuck in sendall to a client that reads nothing is forced
JOIN_TIMEOUT: Final = 10.0
# SO_LINGER on with a zero timeout: close() sends RST at once instead of FIN, "no goodbye".
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
_TCP_CLOSE_WAIT: Final = 8  # tcpi_state, first byte of Linux's TCP_INFO

_BAD_AMOUNT: Final = "{what} must be a finite number >= 0, got {value!r}."

_Queue = collections.deque[tuple[float, bytes | None]]  # (when it may leave, chunk or end)


def nodelay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off: it holds back small protocol messages for up to 40 ms."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def _hung_up(sock: socket.socket) -> bool:
    """Whether the peer has sent its FIN; Linux says so before the pump has read up to it."""
    if not hasattr(socket, "TCP_INFO"):
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE_WAIT
    except OSError:
        return False


def check_amount(what: str, value: float) -> float:
    """``value`` as a float; FaultError unless it is a finite number >= 0."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise FaultError(_BAD_AMOUNT.format(what=what, value=value))
    return float(value)


class Pipe:
    """One proxied connection: the client socket, its upstream socket and the threads between."""

    def __init__(
        self, name: str, client: socket.socket, upstream: tuple[str, int], delay: float
    ) -> None:
        self._name = name
        self._client = client
        self._upstream: socket.socket | None = None
        self._address = upstream
        self._delay = delay
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # wakes delayed writers: data or abort
        self._threads: list[threading.Thread] = []
        self._running = 0
        self.aborted = False
        self.closed = False
        self.hung_up = False  # the client ended its side: closing, no longer a live connection
        self.server_end_relayed = False  # the server ended its side, and the client was told

    def start(self) -> None:
        with self._lock:
            self._spawn("open", self._open)

    def _spawn(self, role: str, target: Callable[..., None], *args: object) -> None:
        # Called with self._lock held, so that abort() sees the final list of threads.
        thread = threading.Thread(
            target=self._run, args=(target, *args), name=f"{self._name}-{role}", daemon=True
        )
        self._running += 1
        self._threads.append(thread)
        thread.start()

    def _run(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._running -= 1
                if not self._running:
                    # Only the last thread closes: closing under a blocked recv could let the
                    # descriptor be reused by a new connection while the old call still runs.
                    self.closed = True
                    self._client.close()
                    if self._upstream is not None:
                        self._upstream.close()

    def _open(self) -> None:
        if self.aborted:
            return
        try:
            upstream = socket.create_connection(self._address, timeout=_CONNECT_TIMEOUT)
        except OSError:
            self.abort()  # the server is unreachable: the client sees its connection reset
            return
        upstream.settimeout(None)
        nodelay(upstream)
        client, delayed = self._client, bool(self._delay)
        to_server: _Queue = collections.deque()
        to_client: _Queue = collections.deque()
        with self._lock:
            self._upstream = upstream
            if self.aborted:
                with contextlib.suppress(OSError):
                    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                return
            if delayed:
                self._spawn("deliver-up", self._deliver, to_server, upstream)
                self._spawn("collect-down", self._collect, upstream, to_client)
                self._spawn("deliver-down", self._deliver, to_client, client)
            else:
                self._spawn("down", self._forward, upstream, client)
        if delayed:
            self._collect(client, to_server)
        else:
            self._forward(client, upstream)

    def _forward(self, src: socket.socket, dst: socket.socket) -> None:
        """The fast path: relay each chunk as soon as it arrives."""
        recv, send = src.recv, dst.sendall
        try:
            while data := recv(_CHUNK):
                send(data)
        except OSError:
            self.abort()  # a reset on one side resets the other: nothing stays half alive
            return
        self._half_close(src, dst)

    def _collect(self, src: socket.socket, queue: _Queue) -> None:
        """The latency path, reading side: stamp each chunk with the time it may leave."""
        recv = src.recv
        try:
            while data := recv(_CHUNK):
                with self._ready:
                    queue.append((time.monotonic() + self._delay, data))
                    self._ready.notify_all()
        except OSError:
            self.abort()
            return
        with self._ready:
            queue.append((time.monotonic() + self._delay, None))  # the end is late too
            self._ready.notify_all()
            self.hung_up |= src is self._client

    def _deliver(self, queue: _Queue, dst: socket.socket) -> None:
        """The latency path, writing side: send each chunk once its time has come."""
        while True:
            with self._ready:
                while not queue and not self.aborted:
                    self._ready.wait()
                if self.aborted:
                    return
                due, data = queue.popleft()
                while (left := due - time.monotonic()) > 0 and self._delay and not self.aborted:
                    self._ready.wait(left)
                if self.aborted:
                    return
            if data is None:
                self._half_close(None, dst)
                return
            try:
                dst.sendall(data)
            except OSError:
                self.abort()
                return

    def undelay(self) -> None:
        """Deliver at once from now on, including what is already waiting (``reset()``)."""
        with self._ready:
            self._delay = 0.0
            self._ready.notify_all()

    def _half_close(self, src: socket.socket | None, dst: socket.socket) -> None:
        # An orderly end on one side is passed on as FIN; the other direction runs on.
        with self._lock:
            self.hung_up |= src is self._client
            self.server_end_relayed |= dst is self._client
            if not self.aborted and not self.closed:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

    @property
    def upstream_port(self) -> int | None:
        """The local port of the connection to the server (the server's ``client_port``)."""
        with self._lock:
            if self._upstream is None or self.closed:
                return None
            with contextlib.suppress(OSError):
                return int(self._upstream.getsockname()[1])
            return None

    @property
    def server_end_passed_on(self) -> bool:
        """Whether the client has been told that the server ended the connection (or is gone)."""
        with self._lock:
            return self.server_end_relayed or self.closed or self.aborted

    @property
    def live(self) -> bool:
        """Open, and the client has not hung up: a connection a cut would break."""
        with self._lock:
            return not (self.closed or self.aborted or self.hung_up or _hung_up(self._client))

    def abort(self) -> bool:
        """Reset both sides; True when the client had not hung up yet (a live connection cut)."""
        with self._lock:
            if self.aborted or self.closed:
                return False
            live = not (self.hung_up or _hung_up(self._client))
            self.aborted = True
            for sock in (self._client, self._upstream):
                if sock is None:
                    continue
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                # SHUT_RD wakes a blocked recv and sends nothing: the RST comes with close().
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)
            self._ready.notify_all()
        return live

    def join(self) -> None:
        """Wait for every thread of this connection; force out one stuck in ``sendall``."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(_CUT_GRACE)
        if any(thread.is_alive() for thread in threads):
            with self._lock:
                for sock in (self._client, self._upstream):
                    if sock is not None and not self.closed:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
            for thread in threads:
                thread.join(JOIN_TIMEOUT)

    def finished(self) -> bool:
        return self.closed and not any(thread.is_alive() for thread in self._threads)
