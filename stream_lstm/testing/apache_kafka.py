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
import secrets
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from stream_lstm.kafka.broker_admin import BrokerError
from stream_lstm.kafka.broker_process import BrokerProcess
from stream_lstm.kafka.processes import free_ports
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


class ApacheKafkaBroker(BrokerProcess):
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

    kind = "Apache Kafka"

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
        port, self.sasl_ssl_port, self.ssl_port, self.controller_port = free_ports(4, host)
        super().__init__(host, port, self.folder / "broker.log", cluster_id=new_cluster_id())
        self.heap_mb = heap_mb
        self.users = {
            "SCRAM-SHA-512": SaslUser("SCRAM-SHA-512", "scram-user", secrets.token_urlsafe(12)),
            "PLAIN": SaslUser("PLAIN", "plain-user", secrets.token_urlsafe(12)),
        }
        self.certificates: TestCertificates = make_certificates(self.folder / "certificates", host)
        self._settings = {**TEST_BROKER_SETTINGS, **(settings or {})}
        self._formatted = False

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        """The ``SASL_SSL`` listener's ``host:port`` (SCRAM-SHA-512 and PLAIN users)."""
        return f"{self.host}:{self.sasl_ssl_port}"

    @property
    def ssl_bootstrap_servers(self) -> str:
        """The ``SSL`` listener's ``host:port``; it requires a client certificate."""
        return f"{self.host}:{self.ssl_port}"

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
            raise BrokerError(f"{self.kind} on {self.bootstrap_servers} is already running")
        classpath = broker_classpath()
        java = java_executable()
        config = self._write_config()
        log4j = self._write_log4j_config()
        if not self._formatted:
            self._format(java, classpath, config, log4j)
        command = [
            java,
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration={log4j.as_uri()}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(config),
        ]
        self._launch(command, timeout, shown=[java, "-cp", "CLASSPATH", "kafka.Kafka", str(config)])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker gracefully (SIGTERM), then SIGKILL after ``timeout`` seconds. Data is kept."""
        super().stop(timeout)

    def restart(self, timeout: float = 120.0) -> None:
        """Stop the broker gracefully and start it again on the same ports, with its data."""
        super().restart(timeout)

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

    def _format(self, java: str, classpath: str, config: Path, log4j: Path) -> None:
        scram = self.users["SCRAM-SHA-512"]
        command = [
            java,
            "-Xmx256m",
            f"-Dlog4j.configuration={log4j.as_uri()}",
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
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired as error:
            raise BrokerError("kafka-storage format did not finish within 120 s") from error
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()[-2000:]
            raise BrokerError(f"kafka-storage format failed with status {result.returncode}:\n{output}")
        self._formatted = True


def _escaped(value: str) -> str:
    """``value`` as a Java properties file reads it back: backslashes doubled."""
    return value.replace("\\", "\\\\")


def new_cluster_id() -> str:
    """A random cluster id as Kafka writes one (22 characters of URL-safe base64), never starting
    with ``-``: ``kafka-storage format`` would read that as an option (as Kafka's own ids avoid)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
