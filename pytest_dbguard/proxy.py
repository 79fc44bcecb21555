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

import collections
import contextlib
import itertools
import math
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

from pytest_dbguard.exceptions import FaultError

_CHUNK: Final = 65536  # under glibc's mmap threshold, so each recv buffer is a cheap allocation
_BACKLOG: Final = 128
_CONNECT_TIMEOUT: Final = 10.0
_CUT_GRACE: Final = 0.25  # then a pump stuck in sendall to a client that reads nothing is forced
_JOIN_TIMEOUT: Final = 10.0
# SO_LINGER on with a zero timeout: close() sends RST at once instead of FIN, "no goodbye".
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
_TCP_CLOSE_WAIT: Final = 8  # tcpi_state, first byte of Linux's TCP_INFO

_BIND_FAILED: Final = (
    "dbguard's fault proxy could not listen on {host}:{port}: {error}. "
    "Pick a free port, or listen_port=0 to let the system choose one."
)
_NOT_BOUND: Final = "the fault proxy is not listening: call bind() or start() first."
_BAD_AMOUNT: Final = "{what} must be a finite number >= 0, got {value!r}."

_Queue = collections.deque[tuple[float, bytes | None]]  # (when it may leave, chunk or end)


def _nodelay(sock: socket.socket) -> None:
    # Without it Nagle's algorithm holds back small protocol messages for up to 40 ms.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reset(sock: socket.socket) -> None:
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


def _check_amount(what: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise FaultError(_BAD_AMOUNT.format(what=what, value=value))
    return float(value)


class _Pipe:
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
        _nodelay(upstream)
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
            if not self.aborted and not self.closed:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

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
                thread.join(_JOIN_TIMEOUT)

    def finished(self) -> bool:
        return self.closed and not any(thread.is_alive() for thread in self._threads)


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
        self._pipes: set[_Pipe] = set()
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
            acceptor.join(_JOIN_TIMEOUT)
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
        seconds = _check_amount("refuse(seconds)", seconds)
        with self._lock:
            self._refuse_until = time.monotonic() + seconds

    def latency(self, ms: float) -> None:
        """Delay every chunk, each way, by ``ms`` on connections made from now until ``reset()``."""
        delay = _check_amount("latency(ms)", ms) / 1000.0
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
                    _reset(client)
                    continue
                _nodelay(client)
                pipe = _Pipe(
                    f"dbguard-proxy-{next(self._counter)}", client, self._upstream, self._delay
                )
                self._pipes.difference_update([old for old in self._pipes if old.finished()])
                self._pipes.add(pipe)
                # Started under the lock, so cut() and stop() never see a pipe without its thread.
                pipe.start()
