"""Saving and loading the whole evaluator: a split run equals an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_lstm.errors import CheckpointError
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.checkpoint import load_checkpoint, save_checkpoint

LSTM = {"hidden_size": 16, "tbptt_steps": 4, "device": "cpu"}


def fresh() -> PrequentialEvaluator:
    return PrequentialEvaluator(
        build_models(["lstm", "logreg", "no_change"], max_keys=8, lstm=LSTM), window=100, max_keys=8
    )


def feed(evaluator: PrequentialEvaluator, events: list, batch_size: int) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in evaluator.models}
    for start in range(0, len(events), batch_size):
        for name, p in evaluator.process(events[start : start + batch_size]).items():
            out[name].append(p)
    return out


@pytest.mark.parametrize("split", [96, 200])  # on batch boundaries, as the service splits
def test_save_and_load_midstream_gives_identical_predictions(tmp_path: Path, split: int) -> None:
    # More keys than max_keys, so eviction state must survive the round trip too.
    events = list(temporal_stream(400, n_keys=12, seed=9))
    whole = feed(fresh(), events, 8)

    first = fresh()
    part_one = feed(first, events[:split], 8)
    path = tmp_path / "state" / "checkpoint.bin"
    save_checkpoint(path, first)
    del first
    second = load_checkpoint(path)
    part_two = feed(second, events[split:], 8)

    for name in whole:
        np.testing.assert_array_equal(
            np.concatenate(whole[name]), np.concatenate(part_one[name] + part_two[name]), err_msg=name
        )
    reference = fresh()
    feed(reference, events, 8)
    assert second.report()["lstm"]["accuracy"] == reference.report()["lstm"]["accuracy"]
    assert second.models["lstm"].keys.evictions == reference.models["lstm"].keys.evictions > 0


def test_checkpoint_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    save_checkpoint(path, {"n": 1})
    save_checkpoint(path, {"n": 2})
    assert load_checkpoint(path) == {"n": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["c.bin"]


def test_damaged_or_foreign_checkpoints_raise_a_clear_error(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a stream-lstm checkpoint"):
        load_checkpoint(foreign)
    path = tmp_path / "c.bin"
    save_checkpoint(path, {"n": 1})
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.bin")
