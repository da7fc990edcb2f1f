"""Apache Kafka's broker jars from Maven Central: the classpath that runs a KRaft broker.

``deploy/apache-kafka/pom.xml`` names the broker (``org.apache.kafka:kafka_2.13``) of the same
version as the ``apache/kafka`` image of ``docker-compose.yml``. Maven fetches the jars into its
local repository once; the classpath it reports is cached in the git-ignored
``.cache/apache-kafka/`` of the checkout, under a name that carries a hash of the pom, so a change
of version asks Maven again.

:func:`broker_classpath` raises :class:`KafkaJarsUnavailable` (a reason a test can skip on) when
Java or Maven is missing, and :class:`KafkaJarsError` when Maven fails, quoting its output.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from stream_lstm.errors import StreamLSTMError

#: The checkout that holds this package (an editable install) and its Maven project.
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
POM_PATH = REPOSITORY_ROOT / "deploy" / "apache-kafka" / "pom.xml"
CACHE_DIR = REPOSITORY_ROOT / ".cache" / "apache-kafka"

#: Seconds Maven may take to fetch the jars on a first run (about 60 MB).
MAVEN_TIMEOUT = 600.0


class KafkaJarsUnavailable(StreamLSTMError):
    """Java or Maven is not installed, so Apache Kafka's broker cannot run here."""


class KafkaJarsError(StreamLSTMError):
    """Maven could not resolve the broker's jars (the message quotes its output)."""


def kafka_version(pom_path: Path = POM_PATH) -> str:
    """The Apache Kafka version the pom names (its ``kafka.version`` property)."""
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom_path.read_text())
    if match is None:
        raise KafkaJarsError(f"{pom_path} has no <kafka.version> property")
    return match.group(1)


def java_executable() -> str:
    """The ``java`` to run the broker with (``$JAVA_HOME/bin/java`` first), or raise."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise KafkaJarsUnavailable("java is not installed (.ci/run installs it with apt-get)")
    return found


def broker_classpath(pom_path: Path = POM_PATH, cache_dir: Path = CACHE_DIR) -> str:
    """The classpath of Apache Kafka's broker, resolved by Maven once and then read from the cache.

    A cached classpath is used only while every jar on it is still in Maven's local repository.
    Processes that ask at once (the test workers of ``make test``) take turns, so that one Maven
    fills the local repository while the others wait and then read the cache: two Mavens
    downloading into one repository can leave a jar half written.
    """
    java_executable()
    if not pom_path.is_file():
        raise KafkaJarsUnavailable(f"{pom_path} is missing: Apache Kafka runs from a checkout of stream-lstm")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / "resolve.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _resolved_classpath(pom_path, cache_dir)


def _resolved_classpath(pom_path: Path, cache_dir: Path) -> str:
    digest = hashlib.sha256(pom_path.read_bytes()).hexdigest()[:16]
    cached = cache_dir / f"classpath-{digest}.txt"
    if cached.is_file():
        classpath = cached.read_text().strip()
        if classpath and all(Path(jar).is_file() for jar in classpath.split(os.pathsep)):
            return classpath
    maven = shutil.which("mvn")
    if maven is None:
        raise KafkaJarsUnavailable("Maven (mvn) is not installed (.ci/run installs it with apt-get)")
    partial = cached.with_suffix(f".{os.getpid()}.partial")
    command = [
        maven,
        "--batch-mode",
        "--quiet",
        "--file",
        str(pom_path),
        "dependency:build-classpath",
        f"-Dmdep.outputFile={partial}",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=MAVEN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as error:
        raise KafkaJarsError(f"{' '.join(command)} did not finish within {MAVEN_TIMEOUT:g} s") from error
    if result.returncode != 0 or not partial.is_file():
        output = (result.stdout + result.stderr).strip()[-2000:]
        raise KafkaJarsError(f"{' '.join(command)} failed with status {result.returncode}:\n{output}")
    partial.replace(cached)  # atomic, so a concurrent reader sees a whole file or none
    return cached.read_text().strip()
