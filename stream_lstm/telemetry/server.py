"""The /metrics and /healthz endpoints: one thread waits on every connection, none can hold it.

Idle, slow or too many connections cost a socket each, never a thread, and cannot keep a scraper
or a probe from an answer (see :class:`MetricsServer`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stream_lstm.config.secret import redact

log = logging.getLogger(__name__)


#: The longest request head (request line and headers) a client may send. A scrape or a probe
#: needs a few hundred bytes; a longer head is refused (431) rather than buffered.
MAX_REQUEST_HEAD_BYTES = 16 * 1024
#: How long a refused connection is read from (and what it sends discarded) before it is closed:
#: closing a socket with unread input makes the kernel send a reset, which can destroy the
#: answer before the client has read it.
_LINGER_S = 1.0
_LISTEN_BACKLOG = 128
_ACCEPTS_PER_ROUND = 64  # so that a storm of new connections cannot starve reads of the others


def _canned(status: int, reason: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_TOO_MANY = _canned(503, "Service Unavailable", b"too many connections; try again\n")
_TOO_SLOW = _canned(408, "Request Timeout", b"the request did not arrive in time\n")
_TOO_LARGE = _canned(431, "Request Header Fields Too Large", b"the request head is too large\n")


class _Waiting:
    """A connection whose request head is still arriving (only the selector thread touches it)."""

    __slots__ = ("address", "deadline", "head")

    def __init__(self, address: Any, deadline: float) -> None:
        self.address = address
        self.deadline = deadline
        self.head = bytearray()


class _DeadlineWriter:
    """The handler's ``wfile``: every write must be done ``timeout`` seconds after the first began.

    The clock starts at the first write, not when the request arrived, so a slow health callback
    does not eat into the time a client has to take the answer.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._deadline: float | None = None

    def write(self, data: bytes) -> int:
        if self._deadline is None:
            self._deadline = time.monotonic() + self._timeout
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client did not take the answer in time")
        self._sock.settimeout(remaining)
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        return


class _Handler(BaseHTTPRequestHandler):
    """Answers one request whose head the selector thread has already read in full."""

    server: MetricsServer  # type: ignore[assignment]  # what it needs from the server is below

    def __init__(self, sock: socket.socket, address: Any, server: MetricsServer, head: bytes) -> None:
        self._head = head
        super().__init__(sock, address, server)  # type: ignore[arg-type]  # runs setup, handle, finish

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._head)  # type: ignore[assignment]
        self.wfile = _DeadlineWriter(self.request, self.server.timeout)  # type: ignore[assignment]

    def finish(self) -> None:  # nothing is buffered; the caller closes the socket
        return

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        elif path == "/healthz":
            ready, details = self.server.health()
            # A library's error text in a detail may echo a setting's value: mask every secret.
            body = redact(json.dumps({"status": "ok" if ready else "not_ready", **details})).encode()
            self._send(200 if ready else 503, "application/json", body)
        else:
            self._send(404, "text/plain", b"not found: try /metrics or /healthz\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        return


class MetricsServer:
    """Serves ``/metrics`` from a registry and ``/healthz`` from a health callback, in a thread.

    ``health()`` returns ``(ready, details)``; ``/healthz`` answers 200 when ready, else 503,
    with the details as JSON.

    No client can wedge the endpoints or make the server hold a thread per connection:

    - One selector thread accepts connections and reads their request heads. A connection gets a
      thread only once its whole head (at most :data:`MAX_REQUEST_HEAD_BYTES`) has arrived, so a
      client that sends nothing, or its headers a byte at a time, costs a socket and a small
      buffer, and is answered 408 and dropped ``timeout`` seconds after it connected.
    - At most ``max_connections`` connections are open at once, waiting for their request or
      being answered. A connection over the cap makes the server drop the one that has waited
      longest without completing its request, so idle connections cannot lock a scraper out;
      when every slot is busy answering, the new connection is answered 503 at once.
    - One request per connection (HTTP/1.0), its answer written within ``timeout`` seconds.

    Parameters
    ----------
    registry
        What ``/metrics`` exports.
    health
        The callback behind ``/healthz``; it may be replaced later through :attr:`health`.
    host, port
        Where to listen; port 0 picks a free port (see :attr:`port`).
    timeout
        Seconds a client has to send its request head, counted from its connection, and again
        to take the answer.
    max_connections
        Connections open at once; also the most threads answering requests at once.

    Raises
    ------
    ValueError
        If ``timeout`` is not positive or ``max_connections`` is below 1.
    OSError
        If the address cannot be bound (a busy port, say).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        *,
        host: str = "0.0.0.0",
        port: int = 9100,
        timeout: float = 5.0,
        max_connections: int = 32,
    ) -> None:
        if not timeout > 0:  # NaN too
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        self.registry = registry
        self.health = health
        self.timeout = float(timeout)
        self.max_connections = int(max_connections)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=_LISTEN_BACKLOG)
        try:
            self._wake_reader, self._wake_writer = socket.socketpair()
        except OSError:
            self._listener.close()
            raise
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            sock.setblocking(False)
        self._lock = threading.Lock()
        self._answering = 0  # connections handed to a handler thread; changed under _lock
        # Both oldest first, so the front holds the next deadline; only the selector thread
        # changes them.
        self._waiting: OrderedDict[socket.socket, _Waiting] = OrderedDict()
        self._closing: OrderedDict[socket.socket, float] = OrderedDict()  # refused, draining
        self._selector = selectors.DefaultSelector()
        self._accept_failing = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return int(self._listener.getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Connections held now: waiting for their request, or being answered (a snapshot)."""
        return len(self._waiting) + self._answering

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and free the port; requests being answered finish on their own."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        elif self._thread.ident is None:  # never started: the selector thread cannot close it
            self._selector.close()
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            sock.close()

    # ------------------------------------------------------------------ the selector thread

    def _serve(self) -> None:
        selector = self._selector
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_reader, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(self._next_timeout()):
                    sock = key.fileobj
                    try:
                        if sock is self._listener:
                            self._accept()
                        elif sock is self._wake_reader:
                            with contextlib.suppress(OSError):
                                self._wake_reader.recv(64)
                        elif sock in self._waiting:
                            self._read(sock)  # type: ignore[arg-type]
                        elif sock in self._closing:
                            self._drain(sock)  # type: ignore[arg-type]
                    except Exception:  # one connection's trouble must not end the endpoints
                        log.exception("metrics endpoint: error on a connection")
                        if sock is not self._listener and sock is not self._wake_reader:
                            self._forget(sock)  # type: ignore[arg-type]
                self._expire(time.monotonic())
        finally:
            for sock in [*self._waiting, *self._closing]:
                self._forget(sock)
            selector.close()

    def _next_timeout(self) -> float | None:
        # Both are oldest first, so their first entries hold the next deadlines.
        deadlines = [state.deadline for state in itertools.islice(self._waiting.values(), 1)]
        deadlines += itertools.islice(self._closing.values(), 1)
        if not deadlines:
            return None
        return max(min(deadlines) - time.monotonic(), 0.0)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_ROUND):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of file descriptors, say: back off rather than spin
                if not self._accept_failing:  # once per spell, not ten times a second
                    log.warning("metrics endpoint cannot accept a connection: %s", error)
                self._accept_failing = True
                self._stopping.wait(0.1)
                return
            self._accept_failing = False
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
            if len(self._waiting) + self._answering >= self.max_connections:
                if not self._waiting:
                    self._refuse(sock, _TOO_MANY)  # every slot is answering a request
                    continue
                # The connection that has waited longest without a whole request gives way.
                self._refuse(next(iter(self._waiting)), _TOO_MANY)
            self._waiting[sock] = _Waiting(address, time.monotonic() + self.timeout)

    def _read(self, sock: socket.socket) -> None:
        state = self._waiting[sock]
        try:
            chunk = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._forget(sock)
            return
        if not chunk:
            self._forget(sock)  # the client gave up
            return
        state.head += chunk
        if len(state.head) > MAX_REQUEST_HEAD_BYTES:
            self._refuse(sock, _TOO_LARGE)
        elif b"\n\r\n" in state.head or b"\n\n" in state.head:  # an empty line ends the head
            self._dispatch(sock, state)

    def _dispatch(self, sock: socket.socket, state: _Waiting) -> None:
        """Hand a connection with a whole request head to a thread of its own."""
        del self._waiting[sock]
        self._selector.unregister(sock)
        with self._lock:
            self._answering += 1
        thread = threading.Thread(
            target=self._answer,
            args=(sock, state.address, bytes(state.head)),
            name="metrics-http-request",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the client may try again
            with self._lock:
                self._answering -= 1
            sock.close()

    def _answer(self, sock: socket.socket, address: Any, head: bytes) -> None:
        try:
            sock.setblocking(True)
            _Handler(sock, address, self, head)
        except OSError as error:  # a client that went away or did not read: its loss alone
            log.debug("metrics endpoint: answering %s failed: %s", address, error)
        except Exception:  # a bug behind /metrics or /healthz, say in the health callback
            log.exception("metrics endpoint: error answering %s", address)
        finally:
            sock.close()
            with self._lock:
                self._answering -= 1

    def _refuse(self, sock: socket.socket, answer: bytes) -> None:
        """Answer with a canned error without blocking, then drain the connection a moment."""
        self._waiting.pop(sock, None)
        with contextlib.suppress(OSError):
            sock.send(answer)  # non-blocking: a client that does not read loses the answer, not us
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        if len(self._closing) >= self.max_connections:
            oldest, _ = self._closing.popitem(last=False)
            self._forget(oldest)
        self._closing[sock] = time.monotonic() + _LINGER_S

    def _drain(self, sock: socket.socket) -> None:
        try:
            chunk = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._forget(sock)

    def _expire(self, now: float) -> None:
        while self._waiting:
            sock, state = next(iter(self._waiting.items()))
            if state.deadline > now:
                break
            self._refuse(sock, _TOO_SLOW)
        while self._closing:
            sock, deadline = next(iter(self._closing.items()))
            if deadline > now:
                break
            self._forget(sock)

    def _forget(self, sock: socket.socket) -> None:
        """Close a connection the selector thread holds, wherever it is."""
        self._waiting.pop(sock, None)
        self._closing.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        sock.close()
