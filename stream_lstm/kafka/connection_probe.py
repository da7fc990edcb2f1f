"""One bootstrap server, connected to step by step until a step fails: the core of the diagnosis.

:func:`probe_server` is what :func:`~stream_lstm.kafka.connection_check.diagnose_connection`
runs for each server (its module doc lists the steps). It returns ``None`` when the server works
fully, else a ``(code, message)`` pair. Every socket operation has the same deadline; every
failure is caught and classified by the step it happened in (:attr:`_Probe.stage`), so nothing
but a pair or ``None`` comes back, within about ``timeout_s`` seconds (a plaintext or TLS
counter-probe, which confirms a protocol mix-up, shares that deadline).
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import time
from collections.abc import Generator

from stream_lstm.config.secret import MASK, Secret
from stream_lstm.kafka import probe_wire as wire
from stream_lstm.kafka.connection_tls import (
    TlsSettingsError,
    alert_problem,
    certificate_problem,
    not_tls,
    reason_of,
    tls_context,
    unverified_context,
)
from stream_lstm.kafka.scram import ScramError, ScramLogin
from stream_lstm.kafka.security import KafkaSecurity

log = logging.getLogger(__name__)

#: Kafka error codes the diagnosis names.
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58

#: Metadata versions :func:`~stream_lstm.kafka.probe_wire.metadata_body` frames (oldest first).
METADATA_VERSIONS = tuple(range(9))

Problem = tuple[str, str]

#: What a broker's close looks like, in plaintext and in TLS.
_CLOSED = (wire.ConnectionClosed, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)


class _Found(Exception):
    """A step found the problem (carried in ``args[0]``); ends the probe."""


def probe_server(host: str, port: int, security: KafkaSecurity, timeout_s: float) -> Problem | None:
    """``None`` when ``host:port`` works fully with ``security`` within ``timeout_s``, else a problem."""
    return _Probe(host, port, security, timeout_s).run()


def server_name(host: str, port: int) -> str:
    """``host:port`` as a bootstrap server is written (``[host]:port`` for an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Probe:
    def __init__(self, host: str, port: int, security: KafkaSecurity, timeout_s: float) -> None:
        self.host, self.port, self.security, self.timeout_s = host, port, security, timeout_s
        self.server = server_name(host, port)
        self.deadline = time.monotonic() + timeout_s
        self.stage = "the TCP connection"
        self.ids = itertools.count(1)

    def run(self) -> Problem | None:
        try:
            context = tls_context(self.security) if self.security.uses_tls else None
        except TlsSettingsError as error:
            return "tls_settings", str(error)
        try:
            with self._connect() as raw:
                if context is None:
                    return self._kafka(raw)
                self.stage = "the TLS handshake"
                raw.settimeout(self._remaining())
                with context.wrap_socket(raw, server_hostname=self.host) as tls:  # shakes hands
                    return self._kafka(tls)
        except _Found as found:
            return found.args[0]
        except (socket.gaierror, UnicodeError) as error:
            reason = error.strerror if isinstance(error, socket.gaierror) else "not a valid host name"
            return "dns", f"the host name of {self.server} does not resolve: {reason} (--bootstrap-servers)"
        except (TimeoutError, wire.WireError, OSError) as error:
            return self._classify(error)

    # ------------------------------------------------------------------ steps

    def _connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=self._remaining())

    def _remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        return remaining

    def _request(self, sock: socket.socket, api_key: int, version: int, body: bytes) -> wire.Reader:
        self._remaining()
        return wire.exchange(sock, api_key, version, next(self.ids), body, self.deadline)

    def _kafka(self, sock: socket.socket) -> Problem | None:
        self.stage = "ApiVersions"
        error, versions = wire.parse_api_versions(self._request(sock, wire.API_VERSIONS, 0, b""))
        if error:
            return "unexpected", f"{self.server} answered ApiVersions with Kafka error {error}"
        if self.security.uses_sasl:
            self._sasl(sock, versions)
            if self.security.sasl_mechanism == "OAUTHBEARER":
                log.info("%s: OAUTHBEARER is enabled; the token itself is not checked here", self.server)
                return None
        self.stage = "Metadata"
        version = wire.choose_version(versions, wire.METADATA, METADATA_VERSIONS)
        if version is None:
            return "unexpected", f"{self.server} supports no Metadata version between 0 and 8"
        self._request(sock, wire.METADATA, version, wire.metadata_body(version))
        return None

    def _sasl(self, sock: socket.socket, versions: dict[int, tuple[int, int]]) -> None:
        mechanism = self.security.sasl_mechanism or ""
        self.stage = "SaslHandshake"
        if wire.choose_version(versions, wire.SASL_HANDSHAKE, (1,)) is None:
            raise _Found(self._not_sasl())
        reply = self._request(sock, wire.SASL_HANDSHAKE, 1, wire.string(mechanism))
        error, enabled = wire.parse_sasl_handshake(reply)
        if error == UNSUPPORTED_SASL_MECHANISM:
            raise _Found(
                (
                    "sasl_mechanism_not_enabled",
                    f"{self.server} does not enable the SASL mechanism {mechanism}; it enables "
                    f"{', '.join(enabled) or 'none'} (--sasl-mechanism)",
                )
            )
        if error == ILLEGAL_SASL_STATE:
            raise _Found(self._not_sasl())
        if error:
            raise _Found(("unexpected", f"{self.server} answered SaslHandshake with Kafka error {error}"))
        if mechanism == "OAUTHBEARER":
            return
        self.stage = "SaslAuthenticate"
        version = wire.choose_version(versions, wire.SASL_AUTHENTICATE, (1, 0))
        if version is None:
            raise _Found(("unexpected", f"{self.server} supports neither SaslAuthenticate v0 nor v1"))
        tokens = login_tokens(mechanism, self.security.sasl_username or "", self._password())
        try:
            token = next(tokens)
            while True:
                reply = self._request(sock, wire.SASL_AUTHENTICATE, version, wire.byte_string(token))
                error, message, server_token = wire.parse_sasl_authenticate(reply)
                if error == SASL_AUTHENTICATION_FAILED:
                    raise _Found(self._login_refused())
                if error:
                    raise _Found(
                        (
                            "unexpected",
                            f"{self.server} answered SaslAuthenticate with Kafka error {error}: "
                            f"{self._said(message)}",
                        )
                    )
                token = tokens.send(server_token)
        except StopIteration:
            return
        except ScramError as error:
            raise _Found(
                (
                    "unexpected",
                    f"{self.server} sent a {mechanism} reply that does not check: {self._said(error)}",
                )
            ) from None

    def _password(self) -> str:
        return self.security.sasl_password.reveal() if self.security.sasl_password else ""

    # ------------------------------------------------------------------ classification

    def _classify(self, error: OSError | wire.WireError) -> Problem:
        """What an error of the step :attr:`stage` means."""
        if isinstance(error, TimeoutError):
            return (
                "timeout",
                f"{self.server} did not answer {self.stage} within {self.timeout_s:g} s: a firewall, "
                "a wrong port or an overloaded broker? (--bootstrap-servers)",
            )
        if self.stage == "the TCP connection":
            return (
                "unreachable",
                f"nothing accepts connections on {self.server}: {self._said(error.strerror or error)} "
                "(is the broker up, and is --bootstrap-servers right?)",
            )
        if isinstance(error, ssl.SSLCertVerificationError):
            return certificate_problem(self.server, self.host, self.security, error)
        if isinstance(error, ssl.SSLError) and (problem := alert_problem(self.server, self.security, error)):
            return problem
        closed = isinstance(error, _CLOSED)
        if self.stage == "the TLS handshake" and not_tls(error):
            if self._answers_plaintext():
                return (
                    "tls_to_plaintext_port",
                    f"{self.server} does not speak TLS: it looks like a PLAINTEXT listener "
                    "(--security-protocol PLAINTEXT or SASL_PLAINTEXT?)",
                )
            return (
                "tls_other",
                f"{self.server} did not complete a TLS handshake: {self._said(reason_of(error))}",
            )
        if isinstance(error, ssl.SSLError):
            return (
                "tls_other",
                f"TLS with {self.server} failed during {self.stage}: {self._said(reason_of(error))}",
            )
        if self.stage == "ApiVersions" and not self.security.uses_tls:
            head = error.head if isinstance(error, wire.WireError) else b""
            if wire.looks_like_tls(head) or (closed and self._answers_tls()):
                tls = "SASL_SSL" if self.security.uses_sasl else "SSL"
                return (
                    "plaintext_to_tls_port",
                    f"{self.server} speaks TLS: it looks like an SSL or SASL_SSL listener "
                    f"(--security-protocol {tls}?)",
                )
        if self.stage == "Metadata" and closed and not self.security.uses_sasl:
            sasl = "SASL_SSL" if self.security.uses_tls else "SASL_PLAINTEXT"
            return (
                "sasl_expected",
                f"{self.server} expects a SASL login: it closed the connection at a request made "
                f"without one (--security-protocol {sasl} with --sasl-mechanism)",
            )
        if self.stage == "SaslHandshake" and closed:
            return self._not_sasl()
        what = "closed the connection" if closed else "did not answer as a Kafka broker does"
        return (
            "unexpected",
            f"{self.server} {what} during {self.stage}: {self._said(error)} (is it a Kafka broker?)",
        )

    def _said(self, text: object) -> str:
        """Text from outside (a broker's message, an exception) with any secret masked."""
        return masked(str(text), self.security)

    def _not_sasl(self) -> Problem:
        plain = "SSL" if self.security.uses_tls else "PLAINTEXT"
        return (
            "sasl_not_enabled",
            f"{self.server} does not use SASL on this listener (--security-protocol {plain}, "
            "without --sasl-*?)",
        )

    def _login_refused(self) -> Problem:
        return (
            "sasl_authentication_failed",
            f"broker {self.server} refused the SASL {self.security.sasl_mechanism} login of user "
            f"'{self.security.sasl_username}': wrong user name or password (--sasl-username / "
            "--sasl-password)",
        )

    def _answers_plaintext(self) -> bool:
        """Whether the port answers ApiVersions in plaintext (before the deadline)."""
        try:
            with self._connect() as sock:
                wire.parse_api_versions(self._request(sock, wire.API_VERSIONS, 0, b""))
                return True
        except (OSError, wire.WireError):
            return False

    def _answers_tls(self) -> bool:
        """Whether the port completes a TLS handshake with a client that accepts any certificate."""
        try:
            with self._connect() as raw, unverified_context().wrap_socket(raw):
                return True  # the handshake is done on wrapping, within the socket's timeout
        except (OSError, ValueError):
            return False


def login_tokens(mechanism: str, username: str, password: str) -> Generator[bytes, bytes, None]:
    """The client's SASL messages: each ``send`` of the server's reply gives the next one.

    PLAIN is one message (RFC 4616); SCRAM is two (:class:`~stream_lstm.kafka.scram.ScramLogin`,
    which raises :class:`~stream_lstm.kafka.scram.ScramError` on a server message that does not
    check).
    """
    if mechanism == "PLAIN":
        yield f"\0{username}\0{password}".encode()
        return
    scram = ScramLogin(mechanism, username, password)
    reply = yield scram.first_message()
    reply = yield scram.final_message(reply)
    scram.check_final(reply)


def masked(text: str, security: KafkaSecurity) -> str:
    """``text`` with every secret of ``security`` shown as ``***`` (a broker's words could echo one)."""
    secrets = [security.ssl_key_password, security.sasl_password]
    secrets += [value for _, value in security.options if isinstance(value, Secret)]
    for secret in secrets:
        if secret is not None and secret.reveal():
            text = text.replace(secret.reveal(), MASK)
    return text
