"""``demo`` on a cluster of the user's: the service child gets the connection settings from a file
only this user may read, and reads back exactly what was given."""

from __future__ import annotations

import argparse
import stat

from stream_lstm.cli.demo import Cluster
from stream_lstm.config.declared import DEMO_SETTINGS, RUN_SETTINGS
from stream_lstm.config.setting import add_settings, resolve_settings


def resolve(argv: list[str], settings=DEMO_SETTINGS) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_settings(parser, settings)
    return resolve_settings(parser.parse_args(argv), settings, environ={})


def test_the_connection_settings_file_is_private_and_reads_back_as_given(tmp_path) -> None:
    given = resolve(
        [
            "--bootstrap-servers", "kafka:9094", "--kafka-client", "confluent",
            "--security-protocol", "SASL_SSL", "--ssl-ca-file", "/ca \"quoted\".pem",
            "--ssl-check-hostname", "false", "--sasl-mechanism", "PLAIN", "--sasl-username", "api-key",
            "--sasl-password", 'pa"ss\\word\n', "--kafka-option", "client.id=demo",
            "--kafka-option", "sasl.oauthbearer.client.secret=s3cret-value",
        ]
    )  # fmt: skip
    cluster = Cluster.from_settings(given)
    assert 'pa"ss' not in repr(cluster) and "s3cret" not in repr(cluster)
    path = cluster.write_settings(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    child = resolve(["--config", str(path)], RUN_SETTINGS)
    for name in ("kafka_client", "security_protocol", "ssl_ca_file", "ssl_check_hostname", "sasl_username"):
        assert child[name] == given[name], name
    assert child["sasl_password"].reveal() == 'pa"ss\\word\n'
    options = {name: value for name, value in child["kafka_option"]}
    assert (
        options["client.id"] == "demo"
        and options["sasl.oauthbearer.client.secret"].reveal() == "s3cret-value"
    )
