"""Whether the service is healthy: connected to Kafka, checkpointing, not stopping (/healthz)."""

from __future__ import annotations

import logging
import time
from typing import Any

from stream_lstm.kafka.connection_check import problem_health
from stream_lstm.kafka.interface import KafkaClient
from stream_lstm.service.connection_watch import ConnectionWatch
from stream_lstm.telemetry.metrics import Telemetry

log = logging.getLogger(__name__)

#: How often the broker connection is probed while the loop runs, in seconds.
PROBE_INTERVAL_S = 1.0


class Health:
    """The broker connection as the loop last saw it, the last error, and a failing checkpoint.

    With a :class:`ConnectionWatch`, a lost connection is diagnosed (rate-limited, in the
    background), and the cause it names replaces the client's vaguer error in ``/healthz``.
    """

    def __init__(
        self, bootstrap_servers: str, telemetry: Telemetry, watch: ConnectionWatch | None = None
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.telemetry = telemetry
        self.watch = watch
        self.broker_connected = False
        self.last_error: str | None = None
        #: Why the last checkpoint could not be written; None once one is written again.
        self.checkpoint_error: str | None = None
        self._next_probe = 0.0

    def set_connected(self, connected: bool, error: str | None = None) -> None:
        """Record the broker connection; log a change."""
        if self.watch is not None:
            if connected:
                self.watch.clear()
            else:
                self.watch.check_soon()
        if connected != self.broker_connected:
            if connected:
                log.info("connected to Kafka at %s", self.bootstrap_servers)
            else:
                log.warning("Kafka unavailable: %s", error)
        self.broker_connected = connected
        self.last_error = None if connected else error
        self.telemetry.broker_up.set(1 if connected else 0)

    def probe(self, kafka: KafkaClient | None) -> None:
        """Ask the client whether it is connected, at most once per :data:`PROBE_INTERVAL_S`."""
        now = time.monotonic()
        if now < self._next_probe or kafka is None:
            return
        self._next_probe = now + PROBE_INTERVAL_S
        connected = kafka.connected()
        if connected != self.broker_connected:
            self.set_connected(connected, None if connected else "no connection to any broker")

    def report(
        self, *, stopping: bool, connected_client: bool, events_learned: int
    ) -> tuple[bool, dict[str, Any]]:
        """Ready when connected to Kafka, checkpointing and not stopping; details for /healthz."""
        ready = self.broker_connected and not stopping and connected_client and self.checkpoint_error is None
        connection = {} if self.watch is None else {"kafka_connection": problem_health(self.watch.problem)}
        diagnosed = self.watch.problem if self.watch is not None and not self.broker_connected else None
        return ready, {
            **connection,
            "broker_connected": self.broker_connected,
            "stopping": stopping,
            "last_error": diagnosed.message if diagnosed is not None else self.last_error,
            "checkpoint_error": self.checkpoint_error,
            "events_learned": events_learned,
        }
