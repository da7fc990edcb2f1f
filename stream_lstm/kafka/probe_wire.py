"""The few Kafka requests a connection diagnosis sends, framed and parsed by hand, with bounds.

:mod:`stream_lstm.kafka.connection_check` talks to a broker without a client library (whose
loops retry a misconfiguration forever), so it frames its requests itself: ApiVersions, Metadata,
SaslHandshake and SaslAuthenticate, in old, non-flexible versions that every broker since Kafka
1.0 answers. A reply is read whole (a length-prefixed frame of at most :data:`MAX_FRAME` bytes)
before a deadline. Whatever comes back that is not the expected reply raises
:class:`MalformedResponse`, a close raises :class:`ConnectionClosed` (both keep the first bytes
seen, so that a TLS alert can be recognised), the deadline raises :class:`TimeoutError`: random
bytes never raise anything else (a property test checks it).
"""

from __future__ import annotations

import socket
import struct
import time

from stream_lstm.errors import StreamLSTMError

API_VERSIONS = 18
METADATA = 3
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36

#: The largest reply read: ApiVersions and an empty Metadata reply take a few kilobytes.
MAX_FRAME = 1 << 20
CLIENT_ID = "stream-lstm-connection-check"
#: Bytes of a reply kept for a message or to recognise TLS (a record header is 5 bytes).
HEAD_BYTES = 16


class WireError(StreamLSTMError):
    """A broker's reply was not a Kafka reply; ``head`` holds its first bytes."""

    def __init__(self, message: str, head: bytes = b"") -> None:
        super().__init__(message)
        self.head = head[:HEAD_BYTES]


class MalformedResponse(WireError):
    """Bytes came back that are not the reply asked for (truncated, too long, wrong id, ...)."""


class ConnectionClosed(WireError):
    """The broker closed the connection before a whole reply came; ``head``: what did come."""


def looks_like_tls(head: bytes) -> bool:
    """Whether bytes start with a TLS record header (alert or handshake, version 3.x)."""
    return len(head) >= 2 and head[0] in (0x15, 0x16) and head[1] == 0x03


# ---------------------------------------------------------------------------- requests


def string(text: str | None) -> bytes:
    """A nullable int16-length string."""
    if text is None:
        return struct.pack(">h", -1)
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def byte_string(data: bytes) -> bytes:
    """An int32-length byte string."""
    return struct.pack(">i", len(data)) + data


def frame(api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    """A request with header v1 (api key, version, correlation id, client id), length-prefixed."""
    header = struct.pack(">hhi", api_key, version, correlation_id) + string(CLIENT_ID)
    return struct.pack(">i", len(header) + len(body)) + header + body


def metadata_body(version: int) -> bytes:
    """A Metadata request (v0 to v8) for no topics: it needs no topic and no ACL to answer."""
    body = struct.pack(">i", 0)  # an empty topic array (null would mean all topics in v1+)
    if version >= 4:
        body += b"\x00"  # allow_auto_topic_creation
    if version >= 8:
        body += b"\x00\x00"  # include cluster / topic authorized operations
    return body


# ---------------------------------------------------------------------------- replies


def read_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    """``size`` bytes from ``sock`` before ``deadline`` (``time.monotonic``), or raise."""
    data = bytearray()
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply before the deadline")
        sock.settimeout(remaining)
        chunk = sock.recv(min(size - len(data), 65536))
        if not chunk:
            raise ConnectionClosed(f"closed after {len(data)} of {size} bytes", bytes(data))
        data += chunk
    return bytes(data)


def read_frame(sock: socket.socket, deadline: float) -> bytes:
    """One length-prefixed reply of at most :data:`MAX_FRAME` bytes."""
    prefix = read_exactly(sock, 4, deadline)
    (size,) = struct.unpack(">i", prefix)
    if size < 4 or size > MAX_FRAME:
        raise MalformedResponse(f"announced a reply of {size} bytes", prefix)
    try:
        return read_exactly(sock, size, deadline)
    except ConnectionClosed as closed:
        raise ConnectionClosed(str(closed), prefix + closed.head) from None


def exchange(
    sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes, deadline: float
) -> Reader:
    """Send one request, read its reply, check the correlation id; a reader past the header."""
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    sock.sendall(frame(api_key, version, correlation_id, body))
    reader = Reader(read_frame(sock, deadline))
    answered = reader.int32()
    if answered != correlation_id:
        raise MalformedResponse(
            f"answered correlation id {answered}, not {correlation_id}", reader.data[:HEAD_BYTES]
        )
    return reader


class Reader:
    """Reads Kafka's primitive types from a reply; :class:`MalformedResponse` past its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def _take(self, size: int) -> bytes:
        if size < 0 or self.position + size > len(self.data):
            raise MalformedResponse(
                f"a reply of {len(self.data)} bytes ends before byte {self.position + max(size, 0)}",
                self.data,
            )
        chunk = self.data[self.position : self.position + size]
        self.position += size
        return chunk

    def int16(self) -> int:
        return struct.unpack(">h", self._take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self._take(4))[0]

    def string(self) -> str | None:
        size = self.int16()
        if size == -1:
            return None
        try:
            return self._take(size).decode()
        except UnicodeDecodeError:
            raise MalformedResponse("a string of the reply is not UTF-8", self.data) from None

    def byte_string(self) -> bytes | None:
        size = self.int32()
        return None if size == -1 else self._take(size)

    def count(self, item_size: int) -> int:
        """An array's length, checked against what is left (each item takes ``item_size``+ bytes)."""
        size = self.int32()
        if size < -1 or size * item_size > len(self.data) - self.position:
            raise MalformedResponse(f"an array of {size} items does not fit the reply", self.data)
        return max(size, 0)


def parse_api_versions(reader: Reader) -> tuple[int, dict[int, tuple[int, int]]]:
    """An ApiVersions v0 reply: error code and api key -> (min version, max version)."""
    error = reader.int16()
    versions = {}
    for _ in range(reader.count(6)):
        key, low, high = reader.int16(), reader.int16(), reader.int16()
        versions[key] = (low, high)
    return error, versions


def parse_sasl_handshake(reader: Reader) -> tuple[int, list[str]]:
    """A SaslHandshake v1 reply: error code and the mechanisms the listener has enabled."""
    error = reader.int16()
    mechanisms = [reader.string() or "" for _ in range(reader.count(2))]
    return error, mechanisms


def parse_sasl_authenticate(reader: Reader) -> tuple[int, str | None, bytes]:
    """A SaslAuthenticate v0/v1 reply: error code, error message and the server's bytes."""
    error = reader.int16()
    message = reader.string()
    token = reader.byte_string()
    return error, message, token or b""


def choose_version(versions: dict[int, tuple[int, int]], api_key: int, wanted: tuple[int, ...]) -> int | None:
    """The first of ``wanted`` (versions this module can frame) that the broker supports."""
    if api_key not in versions:
        return None
    low, high = versions[api_key]
    return next((version for version in wanted if low <= version <= high), None)
