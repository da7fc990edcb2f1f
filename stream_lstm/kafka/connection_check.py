"""Why a Kafka connection fails, named within seconds: a library-neutral connection diagnosis.

Both client libraries retry a misconfiguration forever and say little more than "Unable to
bootstrap". :func:`diagnose_connection` instead goes through the steps of a connection itself,
on one socket per bootstrap server, each step before a deadline:

1. TCP connect: a host name that does not resolve, a refused port, a timeout;
2. TLS (``SSL``, ``SASL_SSL``): a handshake with the context the clients use
   (:mod:`~stream_lstm.kafka.connection_tls`): unknown CA, wrong host name, a plaintext port;
3. Kafka (:mod:`~stream_lstm.kafka.probe_wire`): ApiVersions, which a TLS port answers with an
   alert and a SASL listener answers before any login. With TLS 1.3 the broker's verdict on the
   client certificate arrives only here, so no connection is declared fine before a reply;
4. SASL (``SASL_*``): SaslHandshake (is the mechanism enabled, does the listener use SASL at
   all) and SaslAuthenticate (PLAIN, or SCRAM: :mod:`~stream_lstm.kafka.scram`).
   OAUTHBEARER's token is not checked here: only the transport and that the mechanism is enabled;
5. Metadata, which a SASL listener answers only after a login: a close means SASL was expected.

The result is ``None`` (the first server that works fully ends the diagnosis) or the most
specific :class:`ConnectionProblem` found: a ``code`` of :data:`CODES`, bounded as a metric label,
and a ``message`` that names the server, the cause and the setting to change, never a secret.
:func:`problem_log_line` and :func:`problem_health` format it for a log and for ``/healthz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stream_lstm.kafka.connection_probe import probe_server, server_name
from stream_lstm.kafka.security import KafkaSecurity

#: Every code a :class:`ConnectionProblem` can have (bounded: fit for a metric label).
CODES = (
    "bad_address",
    "dns",
    "unreachable",
    "timeout",
    "tls_settings",
    "tls_unknown_ca",
    "tls_hostname_mismatch",
    "tls_to_plaintext_port",
    "plaintext_to_tls_port",
    "client_certificate_required",
    "client_certificate_refused",
    "tls_other",
    "sasl_mechanism_not_enabled",
    "sasl_authentication_failed",
    "sasl_expected",
    "sasl_not_enabled",
    "unexpected",
)

#: Codes that say little about the settings: a server that fails with another code is the
#: better diagnosis (one broker down and one refusing the password: the password is the news).
_VAGUE = {"bad_address": 0, "dns": 0, "unreachable": 0, "timeout": 0, "unexpected": 1}


@dataclass(frozen=True)
class ConnectionProblem:
    """Why the service cannot use a Kafka connection.

    ``code``: one of :data:`CODES`; ``message``: one sentence naming the server, the cause and
    the setting to change, without any secret; ``server``: the ``host:port`` it concerns
    (empty when it concerns no one server).
    """

    code: str
    message: str
    server: str = ""

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown connection problem code {self.code!r}; one of {', '.join(CODES)}")


def diagnose_connection(
    bootstrap_servers: str, security: KafkaSecurity, *, timeout_s: float = 5.0
) -> ConnectionProblem | None:
    """``None`` if a bootstrap server works fully with ``security``, else the most specific problem.

    The servers (``HOST:PORT[,HOST:PORT]``) are tried in order, each within ``timeout_s``
    seconds; the first that works ends the diagnosis. With ``--sasl-mechanism OAUTHBEARER`` the
    token is not checked (only TLS, and that the listener enables the mechanism).
    """
    problems: list[ConnectionProblem] = []
    for text in [part.strip() for part in bootstrap_servers.split(",")]:
        address = parse_server(text)
        if isinstance(address, str):
            problems.append(ConnectionProblem("bad_address", address, text))
            continue
        host, port = address
        found = probe_server(host, port, security, timeout_s)
        if found is None:
            return None
        code, message = found
        problems.append(ConnectionProblem(code, message, server_name(host, port)))
    return max(problems, key=lambda problem: _VAGUE.get(problem.code, 2))


def parse_server(text: str) -> tuple[str, int] | str:
    """``(host, port)`` of ``HOST:PORT`` (``[IPv6]:PORT`` too), or a message saying what is wrong."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"--bootstrap-servers: {text!r} is not HOST:PORT (e.g. broker-1.example.com:9092)"
    return host, int(port)


def problem_log_line(problem: ConnectionProblem | None) -> str:
    """One line for a log: ``Kafka connection: ok`` or ``Kafka connection problem [code]: message``."""
    if problem is None:
        return "Kafka connection: ok"
    return f"Kafka connection problem [{problem.code}]: {problem.message}"


def problem_health(problem: ConnectionProblem | None) -> dict[str, Any]:
    """The ``kafka_connection`` field of a ``/healthz`` answer: ``{"ok": true}`` or the problem."""
    if problem is None:
        return {"ok": True}
    return {"ok": False, "code": problem.code, "server": problem.server, "message": problem.message}
