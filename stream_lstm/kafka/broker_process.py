"""A local broker's process, whatever the broker: started, waited for, stopped, killed.

:class:`BrokerProcess` is what the embedded Tansu broker (:class:`~stream_lstm.kafka.broker.
EmbeddedBroker`) and the tests' Apache Kafka (:class:`~stream_lstm.testing.apache_kafka.
ApacheKafkaBroker`) have in common: one process in a group of its own that dies with the Python
process that started it (:mod:`stream_lstm.kafka.processes`), its output appended to a log that
errors quote (:mod:`stream_lstm.kafka.broker_log`), readiness meaning that a Kafka request is
answered with the broker's own cluster id, and topics created and waited for
(:mod:`stream_lstm.kafka.broker_admin`). A subclass builds the command and says how the broker is
named in messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from stream_lstm.errors import ConfigError
from stream_lstm.kafka import broker_admin
from stream_lstm.kafka.broker_admin import BrokerError
from stream_lstm.kafka.broker_log import BrokerLog
from stream_lstm.kafka.processes import die_with_parent, kill_process_group, popen_from_lasting_thread


class BrokerProcess:
    """One broker process listening on ``host:port``; subclasses say how to start it.

    Parameters
    ----------
    host, port
        The listener clients bootstrap from (:attr:`bootstrap_servers`).
    log_path
        File that receives the process's stdout and stderr (appended to, so every start's output
        is kept); without it the output is discarded and errors cannot quote it.
    cluster_id
        The id the broker reports, by which :meth:`_launch` tells it from another broker that
        answers on the same port.
    """

    #: How error messages name the broker.
    kind = "the broker"

    def __init__(self, host: str, port: int, log_path: Path | None, cluster_id: str) -> None:
        if not 0 < port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {port}")
        self.host = host
        self.port = port
        self.cluster_id = cluster_id
        self._log = BrokerLog(Path(log_path) if log_path is not None else None)
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
        """Exit status of the last broker process: ``None`` while it runs or before a start."""
        return self._poll()

    @property
    def pid(self) -> int | None:
        """Process id of the broker (also its process group id), or ``None`` before a start."""
        return self._process.pid if self._process is not None else None

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 30.0) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
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
        """Stop the broker and start it again on the same port."""
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
        return f"{type(self).__name__}({self.bootstrap_servers}, {state})"

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
            raise BrokerError(f"{self.kind} on {self.bootstrap_servers} is not running")
        return broker_admin.create_topics(
            self.bootstrap_servers,
            wanted,
            partitions,
            timeout,
            raise_if_exited=lambda: self._raise_if_exited(when="while topics were being created"),
            configs=configs,
        )

    # ------------------------------------------------------------------ for subclasses

    def _launch(
        self,
        command: list[str],
        timeout: float,
        *,
        env: dict[str, str] | None = None,
        shown: list[str] | None = None,
    ) -> None:
        """Run ``command`` as the broker and return once it answers with :attr:`cluster_id`.

        The log names the command as ``shown`` (default: ``command``), to leave out a classpath.

        Raises :class:`BrokerError` if it is already running, cannot be run, exits before it is
        ready (quoting its log), another broker answers on the port, or ``timeout`` passes; the
        process is stopped in every case.
        """
        if self.running:
            raise BrokerError(f"{self.kind} on {self.bootstrap_servers} is already running")
        deadline = time.monotonic() + timeout
        output: IO[bytes] | int = self._log.open(shown or command)
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
            raise BrokerError(f"cannot run {self.kind} ({command[0]}): {error}") from error
        self._finalizer = weakref.finalize(self, kill_process_group, self._process.pid)
        try:
            self._wait_until_ready(deadline, timeout)
        except BaseException:
            self.stop(timeout=5.0)
            raise

    def _wait_until_ready(self, deadline: float, timeout: float) -> None:
        """Block until the broker answers a Kafka request with our cluster id, or raise."""
        assert self._process is not None
        # A healthy broker answers soon after it listens, so the first Kafka probes get a short
        # budget: a port held by something silent then costs little before our process is seen
        # to have exited. The budget doubles up to 2 s for a slow machine.
        probe_budget = 0.1
        while True:
            self._raise_if_exited()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"{self.kind} on {self.bootstrap_servers} did not answer Kafka requests within "
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
            raise BrokerError(f"{self.kind} on {self.bootstrap_servers} was never started")
        code = self._poll()
        if code is not None:
            raise BrokerError(
                f"{self.kind} process for {self.bootstrap_servers} exited with status {code} "
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
