"""The LSTM's category inputs: hashed bucket counts after the other inputs, and everything that
carries them (narrowed columns, checkpoints, key transfer, the learner process)."""

from __future__ import annotations

import dataclasses
import pickle
import random

import numpy as np
import pytest
import torch

from stream_lstm.errors import CheckpointRejected, ConfigError
from stream_lstm.learner.encoding import EXTRA_INPUTS
from stream_lstm.learner.legacy_state import learner_from_pickled_state
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.process import LearnerProcess
from stream_lstm.messages.categories import DEFAULT_CATEGORY_BUCKETS, category_probes
from stream_lstm.messages.events import Event
from stream_lstm.offline.generator import temporal_stream
from tests.old_checkpoints import old_learner_state
from tests.unit.learner.test_lstm_reference import all_columns, learn_side_by_side

# Without trend inputs: the layout here is the one before them (buckets last).
SMALL = {"hidden_size": 8, "tbptt_steps": 4, "device": "cpu", "trend_scales": 0}
COLOURS = ("red", "blue", "yellow", "purple", "orange")


def with_categories(events: list[Event], seed: int, *, every: int = 1) -> list[Event]:
    """``events`` with a colour (and, on some, a size) on every ``every``-th one."""
    rng = random.Random(seed)
    out = []
    for i, event in enumerate(events):
        categories = {}
        if i % every == 0:
            categories["colour"] = rng.choice(COLOURS)
            if rng.random() < 0.3:
                categories["size"] = rng.choice(("S", "M", "L"))
        out.append(dataclasses.replace(event, categories=categories))
    return out


def encoded(learner: LSTMLearner, events: list[Event]) -> np.ndarray:
    """The input vectors the learner builds for ``events`` (no state changes)."""
    pending = learner._forward(events)
    return pending.batch.inputs


def test_the_buckets_are_validated_and_come_after_the_other_inputs() -> None:
    assert LSTMLearner(**SMALL).category_buckets == DEFAULT_CATEGORY_BUCKETS
    for bad in (-1, 1.5, True, "4"):
        with pytest.raises(ConfigError, match="category_buckets must be a non-negative integer"):
            LSTMLearner(**SMALL, category_buckets=bad)  # type: ignore[arg-type]
    learner = LSTMLearner(**SMALL, max_features=4, category_buckets=8)
    assert learner.input_size == 4 + EXTRA_INPUTS + 8
    assert learner.hyperparameters()["category_buckets"] == 8
    assert LSTMLearner(**learner.hyperparameters()).input_size == learner.input_size
    assert LSTMLearner(**SMALL, max_features=4, category_buckets=0).input_size == 4 + EXTRA_INPUTS


def test_each_category_counts_one_in_its_bucket_unscaled_and_clipped() -> None:
    learner = LSTMLearner(**SMALL, max_features=4, category_buckets=8, input_clip=3.0)
    first = 4 + EXTRA_INPUTS
    many = {f"c{i}": "v" for i in range(40)}  # 40 categories in 8 buckets: some bucket gets more than 3
    events = [
        Event(features={"x": 5.0}, categories={"colour": "red"}),
        Event(features={"x": 7.0}),
        Event(categories={"colour": "red", "size": "L"}),
        Event(categories=many),
    ]
    inputs = encoded(learner, events)
    expected = np.zeros((4, 8), dtype=np.float32)
    for row, event in enumerate(events):
        for name, value in event.categories.items():
            for bucket in category_probes(name, value, 8):
                expected[row, bucket] += 1.0
    np.testing.assert_array_equal(inputs[:, first:], np.minimum(expected, 3.0))
    assert expected[3].max() > 3.0  # the clip was needed
    # The features and the other inputs are those of a learner without buckets.
    without = LSTMLearner(**SMALL, max_features=4, category_buckets=0, input_clip=3.0)
    np.testing.assert_array_equal(inputs[:, :first], encoded(without, events))


def test_without_categories_a_learner_predicts_exactly_as_one_without_buckets() -> None:
    """The buckets' weights are drawn after all the others and their inputs stay 0: a stream
    without categories learns the same with any number of buckets, as before they existed."""
    events = list(temporal_stream(600, n_keys=20, seed=4))
    with_buckets, without = LSTMLearner(**SMALL), LSTMLearner(**SMALL, category_buckets=0)
    shared = without.network.lstm.weight_ih_l0.detach()
    torch.testing.assert_close(with_buckets.network.lstm.weight_ih_l0.detach()[:, : shared.shape[1]], shared)
    for start in range(0, len(events), 50):
        batch = events[start : start + 50]
        np.testing.assert_array_equal(with_buckets.predict_batch(batch), without.predict_batch(batch))
        with_buckets.learn_batch(batch)
        without.learn_batch(batch)
    assert not with_buckets._category_inputs_used


@pytest.mark.parametrize("every", [1, 5])
def test_the_lstm_on_the_used_columns_learns_like_the_lstm_on_all_with_categories(every: int) -> None:
    """Once a category comes, the narrowed LSTM takes every bucket column: it must learn as the
    LSTM on all columns does, including batches whose own events have no category but whose
    stored windows do."""
    events = with_categories(list(temporal_stream(900, n_keys=30, seed=6)), seed=1, every=every)
    events = [dataclasses.replace(e, categories={}) if i < 200 else e for i, e in enumerate(events)]
    narrow = LSTMLearner(**SMALL)
    full = all_columns(LSTMLearner(**SMALL))
    widths = []
    input_columns = narrow._input_columns

    def recording(used: np.ndarray) -> torch.Tensor | None:
        columns = input_columns(used)
        widths.append(narrow.input_size if columns is None else columns.numel())
        return columns

    narrow._input_columns = recording  # type: ignore[method-assign]
    learn_side_by_side(narrow, full, events, 40, atol=1e-6)
    # Before the first category and after it (and the stream rate, from the second batch on).
    assert widths[0] == 6 and widths[-1] == 7 + DEFAULT_CATEGORY_BUCKETS


def test_the_buckets_in_stored_windows_survive_a_checkpoint_and_a_key_transfer() -> None:
    """A learner read back, or one that imports key states, whose windows hold bucket values runs
    the LSTM on the bucket columns from the first batch on, even one without categories."""
    events = with_categories(list(temporal_stream(400, n_keys=10, seed=2)), seed=3)
    learner = LSTMLearner(**SMALL)
    for start in range(0, 400, 40):
        learner.predict_batch(events[start : start + 40])
        learner.learn_batch(events[start : start + 40])
    plain = [dataclasses.replace(e, categories={}) for e in temporal_stream(80, n_keys=10, seed=9)]
    exported = learner.export_keys(sorted(learner.tracked_keys()))

    def importer() -> LSTMLearner:
        fresh = LSTMLearner(**SMALL)
        fresh.import_keys(exported)
        return fresh

    reloaded = LSTMLearner.from_state(learner.to_state(), "learner")
    assert reloaded._category_inputs_used and importer()._category_inputs_used
    for narrow, full in (
        (reloaded, all_columns(LSTMLearner.from_state(learner.to_state(), "learner"))),
        (importer(), all_columns(importer())),
    ):
        np.testing.assert_allclose(narrow.predict_batch(plain), full.predict_batch(plain), rtol=0, atol=1e-6)


def test_key_states_move_only_between_learners_with_the_same_buckets() -> None:
    events = with_categories(list(temporal_stream(100, n_keys=5, seed=2)), seed=3)
    learner = LSTMLearner(**SMALL)
    learner.predict_batch(events)
    learner.learn_batch(events)
    exported = learner.export_keys(sorted(learner.tracked_keys()))
    with pytest.raises(ConfigError, match="category_buckets"):
        LSTMLearner(**SMALL, category_buckets=4).import_keys(exported)
    # A feature layout naming a column past the importer's features is refused, not taken.
    wider = {**exported, "feature_columns": {"x": learner.max_features + 1}}
    with pytest.raises(ConfigError, match="columns past this learner's"):
        LSTMLearner(**SMALL).import_keys(wider)


def test_a_checkpoint_written_before_categories_loads_as_a_learner_without_buckets() -> None:
    events = list(temporal_stream(200, n_keys=8, seed=1))
    # As before categories (and before the stream rate and the average with the base rate).
    learner = LSTMLearner(**SMALL, category_buckets=0, stream_rate_half_life=0, base_rate_odds=0)
    learner.predict_batch(events)
    learner.learn_batch(events)
    state, pickled, damaged = learner.to_state(), old_learner_state(learner), learner.to_state()
    # What the data format, and the old pickle format (convert-checkpoint), held before.
    del state["hyperparameters"]["category_buckets"], pickled["hyperparameters"]["category_buckets"]
    coloured = with_categories(list(temporal_stream(60, n_keys=8, seed=5)), seed=2)
    expected = learner.predict_batch(coloured)
    for old in (LSTMLearner.from_state(state, "learner"), learner_from_pickled_state(pickled)):
        assert old.category_buckets == 0 and old.hyperparameters()["category_buckets"] == 0
        np.testing.assert_array_equal(old.predict_batch(coloured), expected)
    # A state of this version must name its buckets correctly: another number is refused.
    damaged["hyperparameters"]["category_buckets"] = 4  # with the weights of 0 buckets
    with pytest.raises(CheckpointRejected, match="weight_ih_l0"):
        LSTMLearner.from_state(damaged, "learner")


def test_the_learner_process_carries_categories_as_the_learner_here_does() -> None:
    events = with_categories(list(temporal_stream(240, n_keys=6, seed=5)), seed=4)
    batches = [events[start : start + 40] for start in range(0, 240, 40)]
    here = LSTMLearner(**SMALL, seed=3)
    process = LearnerProcess(LSTMLearner(**SMALL, seed=3), torch_threads=torch.get_num_threads())
    try:
        for batch in batches:
            expected = here.predict_batch(batch)
            here.learn_batch(batch)
            np.testing.assert_array_equal(process.predict_batch(batch), expected)
            process.learn_batch(batch)
        copy = pickle.loads(pickle.dumps(process))
    finally:
        process.close()
    assert copy._category_inputs_used
    for name, value in here.network.state_dict().items():
        assert torch.equal(copy.network.state_dict()[name], value), name
