"""The /metrics and /healthz endpoints stay bounded under idle, slow and too many connections.

Real sockets on 127.0.0.1; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stream_lstm.telemetry.metrics import MetricsServer, Telemetry
from tests.waiting import wait_for


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def closed_by_server(sock: socket.socket, deadline: float) -> bytes:
    """Read until the server closes the connection; fail if it is still open at ``deadline``."""
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the server kept the connection open (received {received!r})")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionError:
            return received
        if not chunk:
            return received
        received += chunk


@pytest.fixture
def serve() -> Iterator[Callable[..., MetricsServer]]:
    servers: list[MetricsServer] = []

    def start(
        health: Callable[[], tuple[bool, dict[str, Any]]] | None = None, **kwargs: Any
    ) -> MetricsServer:
        telemetry = Telemetry(CollectorRegistry())
        server = MetricsServer(
            telemetry.registry, health or (lambda: (True, {})), host="127.0.0.1", port=0, **kwargs
        )
        server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def test_a_flood_of_idle_connections_holds_no_threads_and_health_still_answers(serve) -> None:
    # A long timeout: nothing here may depend on the idle connections timing out.
    server = serve(timeout=60.0, max_connections=32)
    base = f"http://127.0.0.1:{server.port}"
    baseline = threading.active_count()
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        # The server accepts in order, so by the time /healthz is answered it has taken all 300.
        status, body = get(f"{base}/healthz")
        assert status == 200, body
        assert threading.active_count() <= baseline + 4, "a thread per idle connection"
        assert server.open_connections <= 32
        assert get(f"{base}/metrics")[0] == 200
    finally:
        for sock in idle:
            sock.close()
    # Once the flood is over the server holds nothing and serves as before.
    wait_for(
        lambda: server.open_connections == 0,
        10,
        "the server to let go of the closed connections",
        interval=0.01,
    )
    assert get(f"{base}/healthz")[0] == 200
    status, body = get(f"{base}/metrics")
    assert status == 200 and b"stream_lstm_events_total" in body
    wait_for(lambda: threading.active_count() <= baseline, 10, "the request threads to end", interval=0.01)


def test_an_idle_connection_is_closed_within_the_timeout(serve) -> None:
    server = serve(timeout=1.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as idle:
        started = time.monotonic()
        closed_by_server(idle, deadline=started + 4.0)
        assert time.monotonic() - started < 3.0
    wait_for(
        lambda: server.open_connections == 0, 5, "the server to forget the idle connection", interval=0.01
    )
    assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200


def test_a_client_sending_its_headers_a_byte_at_a_time_is_cut_off(serve) -> None:
    server = serve(timeout=1.0)
    # Far longer than the timeout at ten bytes a second, and never ending its headers: a timeout
    # per read (each byte arrives well within one) would never cut it off; only a deadline does.
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
        started = time.monotonic()
        deadline = started + 6.0
        sent = 0
        cut = False
        while not cut:
            assert time.monotonic() < deadline and sent < len(request), "the slow client was never cut off"
            try:
                slow.send(request[sent : sent + 1])
            except OSError:
                cut = True
                break
            sent += 1
            # The pause between bytes doubles as the check: readable means an answer or EOF.
            readable, _, _ = select.select([slow], [], [], 0.1)
            if readable:
                closed_by_server(slow, deadline)
                cut = True
        assert time.monotonic() - started < 3.5
        assert sent < len(request)


def test_a_request_head_that_never_ends_is_refused_before_it_grows_large(serve) -> None:
    server = serve(timeout=30.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as greedy:
        greedy.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer = b""
        try:
            for _ in range(64):  # up to 64 KiB of one endless header
                greedy.sendall(b"X-Big: " + b"b" * 1016 + b"\r\n")
        except OSError:
            pass  # refused and closed while we were still sending
        answer = closed_by_server(greedy, deadline=time.monotonic() + 5)
    assert answer == b"" or answer.startswith(b"HTTP/1.0 431"), answer
    assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200


def test_a_connection_over_the_cap_is_answered_503_at_once_then_the_server_recovers(serve) -> None:
    release = threading.Event()
    entered: list[int] = []  # one entry per request that reached the health callback

    def slow_health() -> tuple[bool, dict[str, Any]]:
        entered.append(1)
        release.wait(20)  # holds its connection (and its slot) until the test lets go
        return True, {}

    server = serve(slow_health, timeout=30.0, max_connections=2)
    base = f"http://127.0.0.1:{server.port}"
    results: list[int] = []
    waiting = [
        threading.Thread(target=lambda: results.append(get(f"{base}/healthz", timeout=25)[0]), daemon=True)
        for _ in range(2)
    ]
    try:
        for thread in waiting:
            thread.start()
        # Both must be answering, not merely connected: a connection still sending its request
        # is the one a newcomer displaces, and the newcomer would then wait in the handler too.
        wait_for(lambda: len(entered) == 2, 10, "both slow requests to be in the handler", interval=0.01)
        # The slow handlers hold on for 20 s; an answer inside 10 s is the refusal, not a queue.
        status, body = get(f"{base}/healthz", timeout=10)
        assert status == 503 and b"too many connections" in body
        assert not release.is_set() and len(entered) == 2, "the newcomer must not reach the handler"
    finally:
        release.set()
        for thread in waiting:
            thread.join(30)
    assert results == [200, 200]
    wait_for(lambda: server.open_connections == 0, 10, "the slots to be released", interval=0.01)
    assert get(f"{base}/healthz")[0] == 200


def test_the_limits_are_checked() -> None:
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="timeout"):
        MetricsServer(registry, lambda: (True, {}), host="127.0.0.1", port=0, timeout=0)
    with pytest.raises(ValueError, match="max_connections"):
        MetricsServer(registry, lambda: (True, {}), host="127.0.0.1", port=0, max_connections=0)
