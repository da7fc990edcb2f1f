"""A command that needs a broker checks first that it can reach one, and says so in one line if not.

Both client libraries retry an unreachable cluster for half a minute or forever before they give
up with a traceback; ``produce`` and ``demo --bootstrap-servers`` instead run the connection
diagnosis of :mod:`stream_lstm.kafka.connection_check` (TCP, TLS, the Kafka protocol, SASL)
before they open a client, and stop within seconds with "cannot reach Kafka at HOST:PORT: REASON".
(``run`` does not stop: a service may start before its broker; it logs the same line instead.)
"""

from __future__ import annotations

from stream_lstm.errors import ConfigError
from stream_lstm.kafka.connection_check import diagnose_connection
from stream_lstm.kafka.security import KafkaSecurity
from stream_lstm.service.connection_watch import cannot_reach_message

#: How long the check waits for each bootstrap server.
CHECK_TIMEOUT_S = 3.0


def require_kafka(
    bootstrap_servers: str, security: KafkaSecurity, *, timeout_s: float = CHECK_TIMEOUT_S
) -> None:
    """Return if a bootstrap server works fully with ``security``; else raise a :class:`ConfigError`
    whose message names the server and the cause (the command line prints it and exits 2)."""
    problem = diagnose_connection(bootstrap_servers, security, timeout_s=timeout_s)
    if problem is not None:
        raise ConfigError(cannot_reach_message(problem, bootstrap_servers))
