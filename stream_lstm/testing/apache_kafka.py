"""Apache Kafka itself for tests and benchmarks: a single-node KRaft broker, no Docker.

:class:`ApacheKafkaBroker` runs ``kafka.Kafka`` of the version ``deploy/apache-kafka/pom.xml``
names (the one of ``docker-compose.yml``'s image), from the jars Maven fetched
(:mod:`stream_lstm.testing.kafka_jars`). One process is both the KRaft controller and the broker.
Its storage is formatted in a folder of the caller's and kept across :meth:`~ApacheKafkaBroker.
restart` (graceful or after :meth:`~ApacheKafkaBroker.kill`), so a test can show what survives a
broker's restart, which the embedded Tansu broker (memory only) cannot.

It listens on free loopback ports, chosen once so that they stay the same across restarts:

* ``PLAINTEXT`` (:attr:`~ApacheKafkaBroker.bootstrap_servers`);
* ``SASL_SSL`` with the users of :attr:`~ApacheKafkaBroker.users`: one for ``SCRAM-SHA-512``
  (created in the metadata when the storage is formatted) and one for ``PLAIN``;
* ``SSL`` that requires a client certificate signed by the test CA (mTLS);

with certificates from :mod:`stream_lstm.testing.certificates`, made in the folder at
construction. Passwords are random per broker: nothing secret is committed.

Like the embedded broker, it runs in a process group of its own, dies with the Python process that
started it (a parent-death signal on Linux, a finaliser elsewhere), and is ready when a Kafka
``DescribeCluster`` answers with its own cluster id.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import subprocess
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from stream_lstm.kafka import broker_admin
from stream_lstm.kafka.broker_admin import BrokerError
from stream_lstm.kafka.broker_log import BrokerLog
from stream_lstm.kafka.processes import (
    die_with_parent,
    free_port,
    kill_process_group,
    popen_from_lasting_thread,
)
from stream_lstm.testing.certificates import TestCertificates, make_certificates
from stream_lstm.testing.kafka_jars import broker_classpath, java_executable

#: Broker settings for a fast single node: internal topics of one replica and few partitions,
#: no delay before a group's first rebalance, and a log cleaner that looks for work every second.
TEST_BROKER_SETTINGS: dict[str, str] = {
    "num.partitions": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "group.initial.rebalance.delay.ms": "0",
    "log.cleaner.backoff.ms": "1000",
    "log.segment.delete.delay.ms": "1000",
    "auto.create.topics.enable": "false",
}


@dataclass(frozen=True)
class SaslUser:
    """A user of the ``SASL_SSL`` listener: mechanism, name and password."""

    mechanism: str
    username: str
    password: str


class ApacheKafkaBroker:
    """A single-node KRaft broker (controller and broker in one JVM) on loopback ports.

    Parameters
    ----------
    folder
        Holds the storage (``data/``), the configuration, the certificates and the log
        (``broker.log``); created if missing.
    host
        The loopback address to listen on and to advertise.
    settings
        Broker settings over :data:`TEST_BROKER_SETTINGS` (``log.cleaner.backoff.ms``, say).
    heap_mb
        The JVM's maximum heap.
    """

    def __init__(
        self,
        folder: Path,
        host: str = "127.0.0.1",
        *,
        settings: dict[str, str] | None = None,
        heap_mb: int = 768,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = free_port(host)
        self.sasl_ssl_port = free_port(host)
        self.ssl_port = free_port(host)
        self.controller_port = free_port(host)
        self.heap_mb = heap_mb
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.users = {
            "SCRAM-SHA-512": SaslUser("SCRAM-SHA-512", "scram-user", secrets.token_urlsafe(12)),
            "PLAIN": SaslUser("PLAIN", "plain-user", secrets.token_urlsafe(12)),
        }
        self.certificates: TestCertificates = make_certificates(self.folder / "certificates", host)
        self._settings = {**TEST_BROKER_SETTINGS, **(settings or {})}
        self._log = BrokerLog(self.folder / "broker.log")
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._formatted = False

    # ------------------------------------------------------------------ properties

    @property
    def bootstrap_servers(self) -> str:
        """The ``PLAINTEXT`` listener's ``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        """The ``SASL_SSL`` listener's ``host:port`` (SCRAM-SHA-512 and PLAIN users)."""
        return f"{self.host}:{self.sasl_ssl_port}"

    @property
    def ssl_bootstrap_servers(self) -> str:
        """The ``SSL`` listener's ``host:port``; it requires a client certificate."""
        return f"{self.host}:{self.ssl_port}"

    @property
    def log_path(self) -> Path | None:
        return self._log.path

    @property
    def running(self) -> bool:
        return self._process is not None and self._poll() is None

    @property
    def returncode(self) -> int | None:
        return self._poll()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 120.0) -> None:
        """Format the storage (first start only), launch the broker and wait until it answers.

        Raises
        ------
        KafkaJarsUnavailable
            Java or Maven is missing.
        BrokerError
            The storage cannot be formatted, or the broker exits or does not answer with its
            cluster id within ``timeout`` seconds (the message quotes its log). It is stopped then.
        """
        if self.running:
            raise BrokerError(f"the broker on {self.bootstrap_servers} is already running")
        deadline = time.monotonic() + timeout
        classpath = broker_classpath()
        java = java_executable()
        config = self._write_config()
        if not self._formatted:
            self._format(java, classpath, config)
        command = [
            java,
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration={self._write_log4j_config().as_uri()}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(config),
        ]
        output: IO[bytes] | int = self._log.open([*command[:2], "...", "kafka.Kafka", str(config)])
        try:
            self._process = popen_from_lasting_thread(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        except OSError as error:
            self._log.close()
            raise BrokerError(f"cannot run {java}: {error}") from error
        self._finalizer = weakref.finalize(self, kill_process_group, self._process.pid)
        try:
            self._wait_until_ready(deadline, timeout)
        except BaseException:
            self.stop(timeout=5.0)
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker gracefully (SIGTERM), then SIGKILL after ``timeout`` seconds. Data is kept."""
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
        """SIGKILL the broker at once, as a crash would. Data written to disk is kept."""
        process = self._process
        if process is not None and self._poll() is None:
            kill_process_group(process.pid)
            process.wait()
        self._reap()

    def restart(self, timeout: float = 120.0) -> None:
        """Stop the broker gracefully and start it again on the same ports, with its data."""
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
        return f"ApacheKafkaBroker({self.bootstrap_servers}, {'running' if self.running else 'stopped'})"

    # ------------------------------------------------------------------ topics

    def create_topics(
        self,
        names: list[str],
        partitions: int = 1,
        timeout: float = 30.0,
        *,
        configs: dict[str, str] | None = None,
    ) -> dict[str, int]:
        """Create the topics that are missing (with ``configs``) and wait until each has a leader."""
        wanted = list(dict.fromkeys(names))
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

    def _write_config(self) -> Path:
        certificates = self.certificates
        plain = self.users["PLAIN"]
        listeners = {
            "PLAINTEXT": self.port,
            "SASL_SSL": self.sasl_ssl_port,
            "SSL": self.ssl_port,
        }
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join(
                [f"{name}://{self.host}:{port}" for name, port in listeners.items()]
                + [f"CONTROLLER://{self.host}:{self.controller_port}"]
            ),
            "advertised.listeners": ",".join(
                f"{name}://{self.host}:{port}" for name, port in listeners.items()
            ),
            "listener.security.protocol.map": ",".join(
                [f"{name}:{name}" for name in listeners] + ["CONTROLLER:PLAINTEXT"]
            ),
            "log.dirs": str(self.folder / "data"),
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(certificates.broker_keystore),
            "ssl.keystore.password": certificates.broker_keystore_password,
            "ssl.key.password": certificates.broker_keystore_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(certificates.ca),
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "listener.name.sasl_ssl.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'user_{plain.username}="{plain.password}";'
            ),
            **self._settings,
        }
        path = self.folder / "server.properties"
        path.write_text("".join(f"{key}={_escaped(value)}\n" for key, value in settings.items()))
        path.chmod(0o600)
        return path

    def _write_log4j_config(self) -> Path:
        path = self.folder / "log4j.properties"
        path.write_text(
            "log4j.rootLogger=WARN, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.server.KafkaRaftServer=INFO\n"
            "log4j.logger.kafka.log.LogCleaner=INFO\n"
        )
        return path

    def _format(self, java: str, classpath: str, config: Path) -> None:
        scram = self.users["SCRAM-SHA-512"]
        command = [
            java,
            "-Xmx256m",
            f"-Dlog4j.configuration={self._write_log4j_config().as_uri()}",
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self.cluster_id,
            "--config",
            str(config),
            "--add-scram",
            f"SCRAM-SHA-512=[name={scram.username},password={scram.password}]",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()[-2000:]
            raise BrokerError(f"kafka-storage format failed with status {result.returncode}:\n{output}")
        self._formatted = True

    def _wait_until_ready(self, deadline: float, timeout: float) -> None:
        assert self._process is not None
        while True:
            self._raise_if_exited()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"Apache Kafka on {self.bootstrap_servers} did not answer within {timeout:g} s"
                    f"{self._log.excerpt()}"
                )
            if broker_admin.accepts_connections(self.host, self.port, min(0.5, remaining)):
                cluster_id = broker_admin.probe_cluster_id(self.bootstrap_servers, min(2.0, remaining))
                if cluster_id == self.cluster_id:
                    return
                if cluster_id is not None:
                    raise BrokerError(
                        f"another Kafka broker (cluster id {cluster_id!r}) answers on "
                        f"{self.bootstrap_servers}"
                    )
            with contextlib.suppress(subprocess.TimeoutExpired):  # returns at once if it dies
                self._process.wait(timeout=min(0.2, max(deadline - time.monotonic(), 0.0)))

    def _raise_if_exited(self, when: str = "before it was ready") -> None:
        if self._process is None:
            raise BrokerError(f"the broker on {self.bootstrap_servers} was never started")
        code = self._poll()
        if code is not None:
            raise BrokerError(
                f"Apache Kafka for {self.bootstrap_servers} exited with status {code} {when}"
                f"{self._log.excerpt()}"
            )

    def _poll(self) -> int | None:
        if self._process is None:
            return None
        code = self._process.poll()
        if code is not None and self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        return code

    def _reap(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._log.close()


def _escaped(value: str) -> str:
    """``value`` as a Java properties file reads it back: backslashes doubled."""
    return value.replace("\\", "\\\\")
