"""The test suite's Apache Kafka broker is the version the docker-compose stack runs."""

from __future__ import annotations

import re

import yaml

from stream_lstm.testing.kafka_jars import POM_PATH, REPOSITORY_ROOT, kafka_version


def test_the_pom_and_the_compose_images_name_one_kafka_version() -> None:
    compose = yaml.safe_load((REPOSITORY_ROOT / "docker-compose.yml").read_text())
    images = {service: spec["image"] for service, spec in compose["services"].items() if "image" in spec}
    kafka_tags = {
        service: image.split(":", 1)[1]
        for service, image in images.items()
        if image.startswith("apache/kafka:")
    }
    assert kafka_tags, "docker-compose.yml runs no apache/kafka image"
    assert set(kafka_tags.values()) == {kafka_version()}, (
        f"{POM_PATH.relative_to(REPOSITORY_ROOT)} names Kafka {kafka_version()}, "
        f"docker-compose.yml {kafka_tags}"
    )


def test_the_version_is_read_from_the_kafka_version_property(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pom = tmp_path / "pom.xml"
    pom.write_text("<project><properties>\n  <kafka.version> 9.8.7 </kafka.version>\n</properties></project>")
    assert kafka_version(pom) == "9.8.7"
    assert re.fullmatch(r"\d+\.\d+\.\d+", kafka_version())
