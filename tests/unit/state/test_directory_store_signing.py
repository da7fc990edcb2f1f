"""The directory store with a checkpoint key: signed files round-trip, and a file it did not sign
is refused before it is decoded, and counted: fatal for this instance's own file and a
partition's, skipped for another instance's (docs/security.md)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from stream_lstm.errors import CheckpointRejected
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.messages.events import Event
from stream_lstm.state.directory_store import DirectoryStore, InstanceState, PartitionState
from stream_lstm.state.signing import MIN_KEY_BYTES, CheckpointSigner, is_signed

KEY = b"k" * MIN_KEY_BYTES


class Rejections(list):
    """An ``on_rejected`` that keeps what it is told."""

    def __call__(self, reason: str, name: str) -> None:
        self.append((reason, name))


def instance(name: str, events: int = 3) -> InstanceState:
    evaluator = PrequentialEvaluator(build_models(["no_change"]))
    evaluator.process([Event(key="k", label=1)] * events)
    return InstanceState(evaluator=evaluator, instance=name)


def signed_store(root: Path, key: bytes = KEY) -> tuple[DirectoryStore, Rejections]:
    rejections = Rejections()
    return DirectoryStore(root, signer=CheckpointSigner(key), on_rejected=rejections), rejections


def test_signed_checkpoints_round_trip(tmp_path: Path) -> None:
    store, rejections = signed_store(tmp_path)
    store.save_instance(instance("a", events=5))
    store.save_partition(PartitionState(topic="in", partition=1, offset=9, instance="a", epoch=4))
    assert is_signed((tmp_path / "instances" / "a.ckpt").read_bytes())
    assert is_signed((tmp_path / "partitions" / "in" / "1.ckpt").read_bytes())
    assert store.load_instance("a").evaluator.events == 5
    assert store.load_partition(("in", 1)).offset == 9
    assert rejections == []


def test_a_planted_unsigned_file_is_refused_never_decoded_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    DirectoryStore(tmp_path).save_instance(instance("a"))  # no key: unsigned, as an attacker could
    DirectoryStore(tmp_path).save_partition(PartitionState(topic="in", partition=0, offset=3))
    decoded: list[str] = []
    monkeypatch.setattr(
        "stream_lstm.state.directory_store.decode_checkpoint", lambda data, where: decoded.append(where)
    )
    store, rejections = signed_store(tmp_path)
    own_file_refused = r"a\.ckpt is not signed.*never started over silently"
    with pytest.raises(CheckpointRejected, match=own_file_refused) as error:
        store.load_instance("a")
    assert error.value.reason == "unsigned"
    with pytest.raises(CheckpointRejected, match=r"in/0\.ckpt is not signed"):
        store.load_partition(("in", 0))
    assert decoded == []
    assert rejections == [("unsigned", "instances/a"), ("unsigned", "partitions/in/0")]


def test_another_instances_refused_file_is_skipped_for_a_warm_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, rejections = signed_store(tmp_path)
    store.save_instance(instance("genuine", events=7))
    DirectoryStore(tmp_path).save_instance(instance("planted", events=1))  # unsigned, and newer
    with caplog.at_level(logging.WARNING):
        assert store.newest_other_instance("new").evaluator.events == 7
    assert "planted.ckpt is not signed" in caplog.text
    assert rejections == [("unsigned", "instances/planted")]


def test_a_file_signed_with_another_key_or_copied_under_another_name_is_refused(tmp_path: Path) -> None:
    other, _ = signed_store(tmp_path, b"o" * MIN_KEY_BYTES)
    other.save_instance(instance("a"))
    store, rejections = signed_store(tmp_path)
    with pytest.raises(CheckpointRejected, match="key this instance does not have"):
        store.load_instance("a")
    store.save_partition(PartitionState(topic="in", partition=1, offset=100, epoch=1))
    shutil.copy(tmp_path / "partitions" / "in" / "1.ckpt", tmp_path / "partitions" / "in" / "2.ckpt")
    with pytest.raises(CheckpointRejected, match="wrong signature"):
        store.load_partition(("in", 2))
    assert rejections == [("bad_signature", "instances/a"), ("bad_signature", "partitions/in/2")]


def test_without_a_key_signed_files_still_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    signed_store(tmp_path)[0].save_instance(instance("a", events=4))
    with caplog.at_level(logging.WARNING):
        assert DirectoryStore(tmp_path).load_instance("a").evaluator.events == 4
    assert "no checkpoint key is set: loaded without verifying it" in caplog.text
