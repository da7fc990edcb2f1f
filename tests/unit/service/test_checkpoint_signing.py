"""The checkpoint key from the settings to the store, and refused checkpoints in /metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from stream_lstm.errors import CheckpointRejected, ConfigError
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.kafka.interface import KafkaSettings, Message
from stream_lstm.messages.events import encode_event
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.service.stream_service import ServiceSettings, StreamService
from stream_lstm.state.directory_store import DirectoryStore, InstanceState
from stream_lstm.state.signing import is_signed
from stream_lstm.telemetry.metrics import Telemetry
from stream_lstm.testing import ScriptedKafka

KEY = "a-checkpoint-key-of-at-least-32-bytes"
TOPIC = "in"


def resolved(argv: list[str], environ: dict[str, str]) -> ServiceSettings:
    from stream_lstm.cli.main import build_parser
    from stream_lstm.cli.run import service_settings
    from stream_lstm.config.declared import RUN_SETTINGS
    from stream_lstm.config.setting import resolve_settings

    args = build_parser().parse_args(["run", *argv])
    return service_settings(resolve_settings(args, RUN_SETTINGS, environ=environ))


def test_the_key_comes_from_a_flag_a_file_or_the_environment_and_never_shows(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    for settings in (
        resolved(["--checkpoint-key", KEY], {}),
        resolved(["--checkpoint-key-file", str(key_file)], {}),
        resolved([], {"STREAM_LSTM_CHECKPOINT_KEY": KEY}),
        resolved([], {"STREAM_LSTM_CHECKPOINT_KEY_FILE": str(key_file)}),
    ):
        assert settings.checkpoint_key is not None and settings.checkpoint_key.reveal() == KEY
        assert KEY not in repr(settings) and KEY not in str(settings)
    assert resolved([], {}).checkpoint_key is None


def test_a_short_key_or_a_previous_key_alone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--checkpoint-key must be at least 32 bytes") as error:
        resolved(["--checkpoint-key", "too-short"], {})
    assert "too-short" not in str(error.value)
    with pytest.raises(ConfigError, match="--checkpoint-previous-key needs a --checkpoint-key"):
        resolved(["--checkpoint-previous-key", KEY], {})


def service(tmp_path: Path, kafka: ScriptedKafka, telemetry: Telemetry, key: str | None) -> StreamService:
    from stream_lstm.config.secret import Secret

    settings = ServiceSettings(
        kafka=KafkaSettings("scripted:9092", TOPIC, "out", "dead", "group"),
        checkpoint_dir=tmp_path / "checkpoints",
        checkpoint_key=None if key is None else Secret(key),
        batch_size=16,
        checkpoint_every=32,
        checkpoint_interval_s=10**9,
        instance_id="one",
    )
    return StreamService(
        settings,
        new_evaluator=lambda: PrequentialEvaluator(build_models(["logreg", "no_change"])),
        telemetry=telemetry,
        kafka_factory=kafka.connect,
    )


def messages() -> dict:
    events = temporal_stream(64, n_keys=4, seed=3)
    return {(TOPIC, 0): [Message(TOPIC, 0, i, b"k", encode_event(e), None) for i, e in enumerate(events)]}


def test_a_keyed_service_signs_its_checkpoints_and_counts_an_unsigned_one_it_refuses(tmp_path: Path) -> None:
    kafka = ScriptedKafka(messages())
    first = service(tmp_path, kafka, Telemetry(), KEY)
    kafka.when_done = first.stop
    first.run()
    assert is_signed((tmp_path / "checkpoints" / "instances" / "one.ckpt").read_bytes())
    assert is_signed((tmp_path / "checkpoints" / "partitions" / TOPIC / "0.ckpt").read_bytes())
    # An unsigned checkpoint of this instance, as anyone who can write to the directory could plant.
    DirectoryStore(tmp_path / "checkpoints").save_instance(
        InstanceState(evaluator=PrequentialEvaluator(build_models(["logreg", "no_change"])), instance="one")
    )
    telemetry = Telemetry()
    with pytest.raises(CheckpointRejected, match=r"one\.ckpt is not signed") as error:
        service(tmp_path, ScriptedKafka(messages()), telemetry, KEY)
    assert error.value.reason == "unsigned"
    exposition = generate_latest(telemetry.registry).decode()
    assert 'stream_lstm_checkpoints_rejected_total{reason="unsigned"} 1.0' in exposition
    assert 'stream_lstm_checkpoints_rejected_total{reason="bad_signature"} 0.0' in exposition
