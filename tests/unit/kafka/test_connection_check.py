"""The connection diagnosis against scripted servers: protocol edge cases, bounds, and no secrets.

Each server here misbehaves in one way (closes at once, answers garbage, announces a huge reply,
never answers, echoes a password); the diagnosis must name it, within a bound, and never say a
secret. The real broker's cases are in ``tests/integration/kafka/test_connection_check.py``.
"""

from __future__ import annotations

import ast
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from stream_lstm.config.secret import Secret
from stream_lstm.kafka import connection_probe as probe
from stream_lstm.kafka import connection_tls as tls
from stream_lstm.kafka.connection_check import (
    CODES,
    ConnectionProblem,
    diagnose_connection,
    parse_server,
    problem_health,
    problem_log_line,
)
from stream_lstm.kafka.connection_probe import login_tokens
from stream_lstm.kafka.scram import ScramError
from stream_lstm.kafka.security import KafkaSecurity
from stream_lstm.testing.certificates import make_certificates
from tests.unit.kafka.fake_server import (
    FakeServer,
    Handler,
    api_versions_body,
    kafka_until,
    read_request,
    reply,
    wait_for_close,
)

PASSWORD = "pa55-Wörd-7f3c1e"
KEY_PASSWORD = "k3y-pa55-91ab0d"
TOKEN = "t0ken-5e2d77"
#: A bound far above what each diagnosis takes, below what a hang would take.
BOUND = 5.0
#: The timeout given to the diagnoses of servers that never answer.
SHORT = 0.5

SASL_PLAIN = KafkaSecurity(
    "SASL_PLAINTEXT",
    sasl_mechanism="PLAIN",
    sasl_username="alice",
    sasl_password=Secret(PASSWORD),
    options=(("sasl.oauthbearer.client.secret", Secret(TOKEN)),),
)


def diagnosed(servers: str, security: KafkaSecurity, timeout_s: float = 2.0) -> ConnectionProblem:
    """The problem diagnosed, checked to come back within :data:`BOUND` seconds and carry no secret."""
    started = time.monotonic()
    problem = diagnose_connection(servers, security, timeout_s=timeout_s)
    elapsed = time.monotonic() - started
    assert elapsed < BOUND, f"took {elapsed:.1f} s"
    assert problem is not None
    for secret in (PASSWORD, KEY_PASSWORD, TOKEN):
        assert secret not in problem.message
        assert secret not in problem_log_line(problem)
        assert secret not in str(problem_health(problem))
    return problem


def closes_at_once(connection: socket.socket) -> None:
    pass


def answers(data: bytes) -> Handler:
    def handle(connection: socket.socket) -> None:
        connection.recv(65536)
        connection.sendall(data)
        wait_for_close(connection)

    return handle


def never_answers(connection: socket.socket) -> None:
    wait_for_close(connection)


def with_body(body: bytes) -> Callable[[bytes], bytes]:
    return lambda _request: body


def sasl_authenticate_reply(error: int, message: str | None) -> bytes:
    text = (
        struct.pack(">h", -1)
        if message is None
        else struct.pack(">h", len(message.encode())) + message.encode()
    )
    return struct.pack(">h", error) + text + struct.pack(">i", 0)


HANDSHAKE_OK = struct.pack(">hi", 0, 1) + struct.pack(">h", 5) + b"PLAIN"


# ---------------------------------------------------------------------------- misbehaving servers


@pytest.mark.parametrize(
    ("handler", "code", "words"),
    [
        (closes_at_once, "unexpected", "closed the connection during ApiVersions"),
        (answers(b"HTTP/1.1 400 Bad Request\r\n\r\n"), "unexpected", "did not answer as a Kafka broker"),
        (answers(struct.pack(">i", 0x7FFFFFFF)), "unexpected", "announced a reply of 2147483647 bytes"),
        (answers(struct.pack(">i", -5)), "unexpected", "announced a reply of -5 bytes"),
        (answers(struct.pack(">ii", 8, 999) + b"\0" * 4), "unexpected", "correlation id 999"),
        (answers(struct.pack(">ii", 6, 1) + b"\0\0"), "unexpected", "ends before byte"),
        (answers(bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])), "plaintext_to_tls_port", "speaks TLS"),
    ],
    ids=["closes", "http", "huge-length", "negative-length", "wrong-id", "truncated", "tls-alert"],
)
def test_a_server_that_is_not_kafka_is_named_quickly(handler: Handler, code: str, words: str) -> None:
    with FakeServer(handler) as fake:
        problem = diagnosed(fake.server, SASL_PLAIN)
    assert problem.code == code
    assert words in problem.message
    assert problem.server == fake.server and fake.server in problem.message


@pytest.mark.parametrize(
    "handler",
    [never_answers, answers(struct.pack(">i", 1000) + b"\0" * 10)],
    ids=["silent", "half-a-reply"],
)
def test_a_server_that_stops_answering_is_a_timeout_within_the_timeout(handler: Handler) -> None:
    with FakeServer(handler) as fake:
        started = time.monotonic()
        problem = diagnosed(fake.server, KafkaSecurity(), timeout_s=SHORT)
        elapsed = time.monotonic() - started
    assert problem.code == "timeout"
    assert f"within {SHORT:g} s" in problem.message and "ApiVersions" in problem.message
    assert elapsed < SHORT + 1.0


def test_tls_to_a_server_that_closes_at_the_client_hello_is_tls_other() -> None:
    with FakeServer(closes_at_once) as fake:
        problem = diagnosed(fake.server, KafkaSecurity("SSL"))
    assert problem.code == "tls_other"
    assert "did not complete a TLS handshake" in problem.message


def test_a_tls_server_that_never_shakes_hands_is_a_timeout_within_the_timeout() -> None:
    with FakeServer(never_answers) as fake:
        started = time.monotonic()
        problem = diagnosed(fake.server, KafkaSecurity("SSL"), timeout_s=SHORT)
        elapsed = time.monotonic() - started
    assert problem.code == "timeout" and "the TLS handshake" in problem.message
    assert elapsed < SHORT + 1.0


def test_tls_to_a_kafka_plaintext_port_is_named() -> None:
    with FakeServer(kafka_until({18: with_body(api_versions_body())})) as fake:
        problem = diagnosed(fake.server, KafkaSecurity("SSL"))
    assert problem.code == "tls_to_plaintext_port"
    assert "PLAINTEXT listener" in problem.message


# ---------------------------------------------------------------------------- Kafka-level answers


def test_a_close_at_metadata_means_sasl_is_expected() -> None:
    with FakeServer(kafka_until({18: with_body(api_versions_body())})) as fake:
        problem = diagnosed(fake.server, KafkaSecurity())
    assert problem.code == "sasl_expected"
    assert "--security-protocol SASL_PLAINTEXT" in problem.message


def test_a_close_at_sasl_handshake_means_the_listener_has_no_sasl() -> None:
    with FakeServer(kafka_until({18: with_body(api_versions_body())})) as fake:
        problem = diagnosed(fake.server, SASL_PLAIN)
    assert problem.code == "sasl_not_enabled"


def test_a_password_the_broker_echoes_is_masked() -> None:
    answers_ = {
        18: with_body(api_versions_body()),
        17: with_body(HANDSHAKE_OK),
        36: with_body(sasl_authenticate_reply(1, f"no user alice with password {PASSWORD}")),
    }
    with FakeServer(kafka_until(answers_)) as fake:
        problem = diagnosed(fake.server, SASL_PLAIN)
    assert problem.code == "unexpected"
    assert "password ***" in problem.message


def test_a_plain_login_sends_user_and_password_and_error_58_is_a_refused_login() -> None:
    seen: list[bytes] = []

    def refuse(body: bytes) -> bytes:
        seen.append(body)
        return sasl_authenticate_reply(58, "Authentication failed: Invalid username or password")

    answers_ = {18: with_body(api_versions_body()), 17: with_body(HANDSHAKE_OK), 36: refuse}
    with FakeServer(kafka_until(answers_)) as fake:
        problem = diagnosed(fake.server, SASL_PLAIN)
    assert problem.code == "sasl_authentication_failed"
    assert "'alice'" in problem.message and "--sasl-password" in problem.message
    assert seen == [
        struct.pack(">i", len(b"\0alice\0" + PASSWORD.encode())) + b"\0alice\0" + PASSWORD.encode()
    ]


def test_the_enabled_mechanisms_are_named_when_the_chosen_one_is_not() -> None:
    handshake = (
        struct.pack(">hi", 33, 2) + struct.pack(">h", 5) + b"PLAIN" + struct.pack(">h", 7) + b"GSSAPI!"
    )
    answers_ = {18: with_body(api_versions_body()), 17: with_body(handshake)}
    security = KafkaSecurity(
        "SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256", sasl_username="bob", sasl_password=Secret(PASSWORD)
    )
    with FakeServer(kafka_until(answers_)) as fake:
        problem = diagnosed(fake.server, security)
    assert problem.code == "sasl_mechanism_not_enabled"
    assert "SCRAM-SHA-256" in problem.message and "PLAIN, GSSAPI!" in problem.message


def test_oauthbearer_is_checked_up_to_the_enabled_mechanism_only() -> None:
    seen: list[int] = []

    def handshake(body: bytes) -> bytes:
        seen.append(17)
        return struct.pack(">hi", 0, 1) + struct.pack(">h", 11) + b"OAUTHBEARER"

    answers_ = {18: with_body(api_versions_body()), 17: handshake}
    with FakeServer(kafka_until(answers_)) as fake:
        security = KafkaSecurity("SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER")
        assert diagnose_connection(fake.server, security, timeout_s=2) is None
    assert seen == [17]  # no SaslAuthenticate: the token is not checked here


def test_a_working_server_ends_the_diagnosis() -> None:
    answers_ = {18: with_body(api_versions_body()), 3: with_body(b"\0" * 8)}
    with FakeServer(kafka_until(answers_)) as fake:
        assert diagnose_connection(f"127.0.0.1:1,{fake.server}", KafkaSecurity(), timeout_s=2) is None


# ---------------------------------------------------------------------------- addresses, settings, ranking


def test_the_most_specific_problem_of_several_servers_wins(unused_port: int) -> None:
    with FakeServer(kafka_until({18: with_body(api_versions_body())})) as fake:
        problem = diagnosed(f"127.0.0.1:{unused_port},{fake.server},nonsense", KafkaSecurity())
    assert problem.code == "sasl_expected"
    only_down = diagnosed(f"127.0.0.1:{unused_port}", KafkaSecurity())
    assert only_down.code == "unreachable" and "Connection refused" in only_down.message


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago, and nothing here binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("broker-1:9092", ("broker-1", 9092)),
        ("[::1]:9093", ("::1", 9093)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
        ("broker-1", None),
        (":9092", None),
        ("broker:0", None),
        ("broker:65536", None),
        ("broker:x", None),
        ("", None),
    ],
)
def test_bootstrap_servers_are_host_and_port(text: str, parsed: tuple[str, int] | None) -> None:
    result = parse_server(text)
    if parsed is None:
        assert isinstance(result, str) and "is not HOST:PORT" in result
    else:
        assert result == parsed


def test_a_bad_address_or_a_missing_host_is_named_without_a_connection() -> None:
    assert diagnosed("broker-without-port", KafkaSecurity()).code == "bad_address"
    assert diagnosed("", KafkaSecurity()).code == "bad_address"
    problem = diagnosed("no-such-host.invalid:9092", KafkaSecurity())
    assert problem.code == "dns" and "no-such-host.invalid:9092" in problem.message


def test_tls_files_that_cannot_be_loaded_name_the_setting_but_no_password(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    problem = diagnosed("127.0.0.1:1", KafkaSecurity("SSL", ssl_ca_file=missing))
    assert problem.code == "tls_settings" and f"--ssl-ca-file {missing}" in problem.message
    security = KafkaSecurity(
        "SSL", ssl_cert_file=missing, ssl_key_file=missing, ssl_key_password=Secret(KEY_PASSWORD)
    )
    problem = diagnosed("127.0.0.1:1", security)
    assert problem.code == "tls_settings" and "--ssl-key-password" in problem.message


def test_a_problem_has_a_known_code_and_formats_for_a_log_and_healthz() -> None:
    with pytest.raises(ValueError, match="unknown connection problem code"):
        ConnectionProblem("wrong_password", "...")
    assert len(set(CODES)) == len(CODES)
    problem = ConnectionProblem("dns", "the host name of b:1 does not resolve", "b:1")
    assert (
        problem_log_line(problem) == "Kafka connection problem [dns]: the host name of b:1 does not resolve"
    )
    assert problem_health(problem) == {
        "ok": False,
        "code": "dns",
        "server": "b:1",
        "message": "the host name of b:1 does not resolve",
    }
    assert problem_log_line(None) == "Kafka connection: ok"
    assert problem_health(None) == {"ok": True}


def test_login_tokens_of_plain_and_the_first_of_scram() -> None:
    assert list(login_tokens("PLAIN", "alice", "pw")) == [b"\0alice\0pw"]
    scram = login_tokens("SCRAM-SHA-512", "alice", "pw")
    assert next(scram).startswith(b"n,,n=alice,r=")
    with pytest.raises(ScramError, match="nonce"):
        scram.send(b"r=not-the-client-nonce,s=c2FsdA==,i=4096")


def test_a_request_is_answered_by_the_fake_server() -> None:
    """The fake server itself reads requests as the diagnosis frames them."""
    seen: list[int] = []

    def handle(connection: socket.socket) -> None:
        request = read_request(connection)
        assert request is not None
        seen.append(request[0])
        reply(connection, request[1], api_versions_body())
        wait_for_close(connection)

    with FakeServer(handle) as fake:
        diagnosed(fake.server, KafkaSecurity(), timeout_s=SHORT)
    assert seen == [18]


def test_every_code_the_probe_can_return_is_a_known_code() -> None:
    """Also the codes of paths no test here reaches: each ``(code, message)`` pair in the source."""
    found = set()
    for module in (probe, tls):
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if (
                isinstance(node, ast.Tuple)
                and len(node.elts) == 2
                and isinstance(node.elts[0], ast.Constant)
                and isinstance(node.elts[0].value, str)
                and isinstance(node.elts[1], ast.JoinedStr | ast.Constant)
            ):
                found.add(node.elts[0].value)
    assert found and found <= set(CODES), found - set(CODES)
    assert {"tls_other", "client_certificate_refused", "sasl_expected"} <= found


def test_an_encrypted_client_key_is_loaded_with_its_password_and_a_wrong_one_is_named(
    tmp_path: Path, unused_port: int
) -> None:
    certificates = make_certificates(tmp_path / "certificates")
    key = serialization.load_pem_private_key(certificates.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "client-key-encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )

    def security(password: str) -> KafkaSecurity:
        return KafkaSecurity(
            "SSL",
            ssl_ca_file=str(certificates.ca),
            ssl_cert_file=str(certificates.client_certificate),
            ssl_key_file=str(encrypted),
            ssl_key_password=Secret(password),
        )

    wrong = diagnosed(f"127.0.0.1:{unused_port}", security(PASSWORD))
    assert wrong.code == "tls_settings" and "--ssl-key-password" in wrong.message
    assert diagnosed(f"127.0.0.1:{unused_port}", security(KEY_PASSWORD)).code == "unreachable"
