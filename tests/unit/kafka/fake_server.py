"""A loopback TCP server that plays a scripted (mis)behaving broker, for the connection diagnosis.

:class:`FakeServer` runs ``handler(connection)`` in a thread for every connection it accepts;
the helpers below read Kafka requests and write replies, so that a handler can play a broker that
closes at once, answers garbage, announces a huge reply, never answers, or answers like Kafka up
to some step. Every blocking call has a timeout, and the server stops when its ``with`` ends.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

#: How long a handler waits on its client before it gives up (far past any diagnosis's timeout).
HANDLER_TIMEOUT = 10.0

#: Kafka's ``socket.request.max.bytes``: a bigger request closes the connection.
MAX_REQUEST = 100 * 1024 * 1024

Handler = Callable[[socket.socket], None]


class FakeServer:
    """A server on ``127.0.0.1`` and a free port (:attr:`server`) running ``handler`` per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.server = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(HANDLER_TIMEOUT)
            with contextlib.suppress(OSError):
                self.handler(connection)


def read_request(connection: socket.socket) -> tuple[int, int, bytes] | None:
    """The next request's api key, correlation id and body (after the client id); ``None`` at a close."""
    prefix = _read(connection, 4)
    if prefix is None or not 0 < struct.unpack(">i", prefix)[0] <= MAX_REQUEST:
        return None  # as Kafka does: it closes a connection whose request is too big (a TLS hello)
    data = _read(connection, struct.unpack(">i", prefix)[0])
    if data is None:
        return None
    api_key, _version, correlation_id, client_id_size = struct.unpack(">hhih", data[:10])
    return api_key, correlation_id, data[10 + max(client_id_size, 0) :]


def reply(connection: socket.socket, correlation_id: int, body: bytes) -> None:
    """A length-prefixed reply with response header v0 (the correlation id)."""
    payload = struct.pack(">i", correlation_id) + body
    connection.sendall(struct.pack(">i", len(payload)) + payload)


def wait_for_close(connection: socket.socket) -> None:
    """Read and drop everything until the client closes (or :data:`HANDLER_TIMEOUT` passes)."""
    while connection.recv(65536):
        pass


def api_versions_body() -> bytes:
    """An ApiVersions v0 reply offering Metadata 0-12, SaslHandshake 0-1, SaslAuthenticate 0-2."""
    apis = [(3, 0, 12), (17, 0, 1), (18, 0, 3), (36, 0, 2)]
    return struct.pack(">hi", 0, len(apis)) + b"".join(struct.pack(">hhh", *api) for api in apis)


def kafka_until(answers: dict[int, Callable[[bytes], bytes | None]]) -> Handler:
    """A broker that answers each request with ``answers[api_key](body)``; it closes the connection
    at an api key it has no answer for, or where the answer is ``None``."""

    def handle(connection: socket.socket) -> None:
        while (request := read_request(connection)) is not None:
            api_key, correlation_id, body = request
            answer = answers.get(api_key, lambda _: None)(body)
            if answer is None:
                return
            reply(connection, correlation_id, answer)

    return handle


def _read(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
