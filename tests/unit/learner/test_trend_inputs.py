"""The LSTM's trend inputs: their columns and setting, and their averages carried by checkpoints,
key transfers and old states (which have none)."""

from __future__ import annotations

import numpy as np
import pytest

from stream_lstm.errors import CheckpointRejected, ConfigError
from stream_lstm.learner.encoding import EXTRA_INPUTS
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.messages.events import Event
from stream_lstm.offline.generator import temporal_stream

SMALL = {"hidden_size": 8, "tbptt_steps": 4, "device": "cpu", "max_features": 4, "category_buckets": 2}


def learned(events: list[Event], learner: LSTMLearner, batch_size: int = 40) -> LSTMLearner:
    for start in range(0, len(events), batch_size):
        learner.predict_batch(events[start : start + batch_size])
        learner.learn_batch(events[start : start + batch_size])
    return learner


def test_the_trend_columns_come_last_one_block_per_scale() -> None:
    learner = LSTMLearner(**SMALL, trend_scales=2)
    assert learner.input_size == 4 + EXTRA_INPUTS + 2 + 2 * 4
    assert learner.hyperparameters()["trend_scales"] == 2
    assert LSTMLearner(**SMALL, trend_scales=0).input_size == 4 + EXTRA_INPUTS + 2
    for bad in (-1, 6, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="trend_scales"):
            LSTMLearner(**SMALL, trend_scales=bad)  # type: ignore[arg-type]
    events = [Event(key="a", features={"x": 2.0}), Event(key="a", features={"x": 2.0}), Event(key="a")]
    unscaled = LSTMLearner(**SMALL, trend_scales=2, adapt_scaler=False)
    inputs = unscaled._forward(events).batch.inputs
    first = 4 + EXTRA_INPUTS + 2
    # x is column 0: its distance from the key's averages (0, then 2 * rate), none when missing.
    rates = 1 - 0.5 ** (1 / np.array([4.0, 16.0]))
    np.testing.assert_allclose(
        inputs[:, [first, first + 4]], [[2.0, 2.0], 2 - 2 * rates, [0.0, 0.0]], rtol=1e-6
    )
    assert not inputs[:, first + 1 : first + 4].any() and not inputs[:, first + 5 :].any()


def test_without_trend_scales_a_learner_predicts_exactly_as_before_them() -> None:
    """The trend columns' weights are drawn after all the others: a learner with trend inputs
    whose trend inputs were all 0 would start from the weights of one without them."""
    with_trend, without = LSTMLearner(**SMALL), LSTMLearner(**SMALL, trend_scales=0)
    shared = without.network.lstm.weight_ih_l0.detach()
    np.testing.assert_array_equal(
        with_trend.network.lstm.weight_ih_l0.detach()[:, : shared.shape[1]].numpy(), shared.numpy()
    )


def test_the_averages_survive_a_checkpoint_and_a_key_transfer() -> None:
    events = list(temporal_stream(600, n_keys=6, seed=8))
    learner = learned(events[:400], LSTMLearner(**SMALL))
    assert np.abs(learner.keys.trend).sum() > 0
    copy = LSTMLearner.from_state(learner.to_state(), "learner")
    moved = LSTMLearner.from_state(learner.to_state(), "learner")
    keys = list(moved.tracked_keys())
    moved.forget_keys(keys)
    moved.import_keys(learner.export_keys(keys))
    for start in range(400, 600, 40):
        batch = events[start : start + 40]
        expected = learner.predict_batch(batch)
        np.testing.assert_array_equal(copy.predict_batch(batch), expected)
        np.testing.assert_array_equal(moved.predict_batch(batch), expected)
        for each in (learner, copy, moved):
            each.learn_batch(batch)


def test_old_states_without_averages_load_and_damaged_averages_are_refused() -> None:
    events = list(temporal_stream(200, n_keys=3, seed=2))
    learner = learned(events, LSTMLearner(**SMALL))
    exported = learner.export_keys(list(learner.tracked_keys()))
    del exported["trend"]  # exported before trend inputs: the averages start again from 0
    fresh = LSTMLearner(**SMALL)
    fresh.import_keys(exported)
    assert set(fresh.tracked_keys()) == set(learner.tracked_keys()) and not fresh.keys.trend.any()
    old = learned(events, LSTMLearner(**SMALL, trend_scales=0)).to_state()
    del old["hyperparameters"]["trend_scales"], old["keys"]["trend"]
    loaded = LSTMLearner.from_state(old, "learner")
    assert loaded.trend_scales == 0 and loaded.input_size == 4 + EXTRA_INPUTS + 2
    damaged = learner.to_state()
    damaged["keys"]["trend"][0, 0, 0] = np.nan
    with pytest.raises(CheckpointRejected, match="trend"):
        LSTMLearner.from_state(damaged, "learner")
    wrong = learner.to_state()
    wrong["keys"]["trend"] = wrong["keys"]["trend"][:, :1]
    with pytest.raises(CheckpointRejected, match="trend"):
        LSTMLearner.from_state(wrong, "learner")
    # Averages of clipped inputs cannot leave the clip: beyond it a checkpoint is refused, and
    # imported key states are held to it.
    beyond = learner.to_state()
    beyond["keys"]["trend"][0, 0, 0] = 3e38
    with pytest.raises(CheckpointRejected, match="beyond the input clip"):
        LSTMLearner.from_state(beyond, "learner")
    exported = learner.export_keys(list(learner.tracked_keys()))
    exported["trend"][:] = -3e38
    fresh = LSTMLearner(**SMALL)
    fresh.import_keys(exported)
    assert fresh.keys.trend.min() == -fresh.input_clip
