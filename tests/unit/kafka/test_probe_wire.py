"""The diagnosis's Kafka framing: requests as Kafka reads them, and replies of any bytes parsed
without raising anything but the module's own errors (a property test)."""

from __future__ import annotations

import contextlib
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_lstm.kafka import probe_wire as wire


class ScriptedSocket:
    """Stands for a socket: ``recv`` hands out ``data`` in chunks of ``chunk``, then ``b""``."""

    def __init__(self, data: bytes, chunk: int = 7) -> None:
        self.data, self.chunk, self.sent = data, chunk, b""

    def settimeout(self, timeout: float) -> None:
        assert timeout > 0

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, size: int) -> bytes:
        chunk, self.data = self.data[: min(size, self.chunk)], self.data[min(size, self.chunk) :]
        return chunk


PARSERS = [wire.parse_api_versions, wire.parse_sasl_handshake, wire.parse_sasl_authenticate]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), parser=st.sampled_from(PARSERS))
def test_a_parser_raises_only_malformed_response_on_random_bytes(data: bytes, parser) -> None:
    with contextlib.suppress(wire.MalformedResponse):
        parser(wire.Reader(data))


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=60).map(lambda tail: struct.pack(">ii", len(tail) + 4, 1) + tail),
    ),
    parser=st.sampled_from(PARSERS),
)
def test_an_exchange_with_random_replies_raises_only_wire_errors(data: bytes, parser) -> None:
    sock = ScriptedSocket(data)
    try:
        parser(wire.exchange(sock, wire.API_VERSIONS, 0, 1, b"", time.monotonic() + 5))  # type: ignore[arg-type]
    except wire.WireError as error:
        assert len(error.head) <= wire.HEAD_BYTES


def test_a_request_is_framed_with_header_v1() -> None:
    framed = wire.frame(wire.SASL_HANDSHAKE, 1, 7, wire.string("PLAIN"))
    (size,) = struct.unpack(">i", framed[:4])
    assert size == len(framed) - 4
    assert struct.unpack(">hhih", framed[4:14]) == (17, 1, 7, len(wire.CLIENT_ID))
    assert framed[14 + len(wire.CLIENT_ID) :] == b"\x00\x05PLAIN"


def test_metadata_bodies_ask_for_no_topics() -> None:
    assert wire.metadata_body(0) == wire.metadata_body(3) == b"\0\0\0\0"
    assert wire.metadata_body(4) == b"\0\0\0\0\0"
    assert wire.metadata_body(8) == b"\0" * 7


def test_replies_are_parsed() -> None:
    body = struct.pack(">hi", 0, 2) + struct.pack(">hhh", 3, 0, 12) + struct.pack(">hhh", 36, 0, 2)
    error, versions = wire.parse_api_versions(wire.Reader(body))
    assert (error, versions) == (0, {3: (0, 12), 36: (0, 2)})
    assert wire.choose_version(versions, 36, (1, 0)) == 1
    assert wire.choose_version(versions, 3, tuple(range(9))) == 0
    assert wire.choose_version(versions, 17, (1,)) is None
    reply = struct.pack(">hh", 58, 3) + b"bad" + struct.pack(">i", -1)
    assert wire.parse_sasl_authenticate(wire.Reader(reply)) == (58, "bad", b"")


def test_a_huge_announced_reply_is_refused_before_it_is_read() -> None:
    sock = ScriptedSocket(struct.pack(">i", wire.MAX_FRAME + 1) + b"x" * 100)
    with pytest.raises(wire.MalformedResponse, match="announced a reply of"):
        wire.read_frame(sock, time.monotonic() + 5)  # type: ignore[arg-type]
    assert len(sock.data) == 100  # nothing past the length was read


def test_a_close_keeps_what_came_before_it() -> None:
    alert = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
    with pytest.raises(wire.MalformedResponse) as raised:
        wire.read_frame(ScriptedSocket(alert), time.monotonic() + 5)  # type: ignore[arg-type]
    assert wire.looks_like_tls(raised.value.head)
    with pytest.raises(wire.ConnectionClosed) as closed:
        wire.read_frame(ScriptedSocket(struct.pack(">i", 10) + b"abc"), time.monotonic() + 5)  # type: ignore[arg-type]
    assert closed.value.head == struct.pack(">i", 10) + b"abc"


def test_a_passed_deadline_is_a_timeout() -> None:
    with pytest.raises(TimeoutError):
        wire.read_frame(ScriptedSocket(b"\0\0\0\x10"), time.monotonic() - 1)  # type: ignore[arg-type]
