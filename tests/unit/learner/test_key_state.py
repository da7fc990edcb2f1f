"""Per-key state: isolation between keys, the LRU bound, and a fresh start after eviction."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import pytest

from stream_lstm.errors import ConfigError
from stream_lstm.learner.key_state import KeyStateStore
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.messages.events import Event
from stream_lstm.messages.stream_rate import STREAM_RATE_FEATURE
from stream_lstm.offline.generator import temporal_stream


def frozen(**kwargs: object) -> LSTMLearner:
    """Weights and feature statistics that do not learn: only key state changes (and, with a
    ``stream_rate_half_life``, the stream rate, which holds what other keys' labels were). The
    average with the base rate is off: it is the stream's, like the weights, and learns from every
    key's labels and the network's predictions of them (test_base_rate.py)."""
    settings: dict[str, object] = {"stream_rate_half_life": 0, "base_rate_odds": 0, **kwargs}
    return LSTMLearner(
        hidden_size=8, tbptt_steps=4, learning_rate=0.0, adapt_scaler=False, device="cpu", **settings
    )


def predict_stream(learner: LSTMLearner, events: list[Event], batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        out.append(learner.predict_batch(batch))
        learner.learn_batch(batch)
    return np.concatenate(out)


def test_a_keys_predictions_do_not_depend_on_other_keys_events() -> None:
    mixed = list(temporal_stream(600, n_keys=6, seed=3))
    alone = [e for e in mixed if e.key == "k2"]
    mixed_predictions = predict_stream(frozen(), mixed, batch_size=16)
    in_mixed = mixed_predictions[[i for i, e in enumerate(mixed) if e.key == "k2"]]
    np.testing.assert_allclose(in_mixed, predict_stream(frozen(), alone, batch_size=16), atol=1e-6)
    # The other keys did get different predictions, so the check is not vacuous.
    assert np.ptp(mixed_predictions) > 1e-3


def test_other_keys_reach_a_keys_predictions_only_through_their_labels_in_the_stream_rate() -> None:
    mixed = list(temporal_stream(600, n_keys=6, seed=3))
    k2 = [i for i, e in enumerate(mixed) if e.key == "k2"]
    other_features = [
        e if e.key == "k2" else dataclasses.replace(e, features={n: -v for n, v in e.features.items()})
        for e in mixed
    ]
    other_labels = [
        e if e.key == "k2" or e.label is None else dataclasses.replace(e, label=1 - e.label) for e in mixed
    ]
    with_rate = frozen(stream_rate_half_life=14)
    predictions = predict_stream(with_rate, mixed, batch_size=16)[k2]
    assert STREAM_RATE_FEATURE in with_rate.feature_columns
    same = predict_stream(frozen(stream_rate_half_life=14), other_features, batch_size=16)[k2]
    np.testing.assert_allclose(same, predictions, atol=1e-6)
    flipped = predict_stream(frozen(stream_rate_half_life=14), other_labels, batch_size=16)[k2]
    # The first batch is predicted before the rate applies; after it, the labels show.
    np.testing.assert_allclose(flipped[:3], predictions[:3], atol=1e-6)
    assert np.abs(flipped - predictions).max() > 1e-3


def test_lru_bound_and_eviction_count() -> None:
    learner = frozen(max_keys=3)
    for key in ["a", "b", "c", "a", "d", "e"]:
        batch = [Event(key=key, features={"x": 1.0}, label=1)]
        learner.predict_batch(batch)
        learner.learn_batch(batch)
    assert len(learner.keys) == 3
    assert learner.keys.evictions == 2  # "d" evicted "b", "e" evicted "c"
    assert learner.keys.keys() == ["a", "d", "e"]


def test_an_evicted_key_restarts_from_zero_state() -> None:
    learner = frozen(max_keys=2)
    history = [Event(key="a", features={"x": float(i)}, label=i % 2) for i in range(5)]
    probe = [Event(key="a", features={"x": 0.5}, label=None)]
    fresh = frozen(max_keys=2).predict_batch(probe)[0]
    predict_stream(learner, history, batch_size=1)
    assert learner.predict_batch(probe)[0] != pytest.approx(fresh, abs=1e-6)  # history matters
    predict_stream(learner, [Event(key="b", label=0), Event(key="c", label=0)], batch_size=1)
    assert "a" not in learner.keys
    assert learner.predict_batch(probe)[0] == pytest.approx(fresh, abs=1e-7)


def test_a_batch_with_more_keys_than_max_keys_is_refused_clearly() -> None:
    learner = frozen(max_keys=2)
    with pytest.raises(ConfigError, match="max_keys"):
        learner.predict_batch([Event(key=k) for k in "abc"])


def test_a_batch_never_evicts_its_own_keys() -> None:
    learner = frozen(max_keys=2)
    predict_stream(learner, [Event(key="a", features={"x": 3.0}, label=1)] * 3, batch_size=1)
    # "a" is least recently used when the batch [b, a] arrives; b must evict nothing of the batch.
    predict_stream(learner, [Event(key="z", label=1)], batch_size=1)
    before = learner.predict_batch([Event(key="a", label=None)])[0]
    learner.predict_batch([Event(key="b", label=None), Event(key="a", label=None)])
    assert "a" in learner.keys and "b" in learner.keys and "z" not in learner.keys
    after = learner.predict_batch([Event(key="a", label=None)])[0]
    assert after == pytest.approx(before, abs=1e-7)


def test_the_store_tracks_and_evicts_exactly_like_an_lru_dictionary() -> None:
    # A reference LRU (an ordered dict, most recently used last) against the store, through random
    # batches of new and known keys, forgotten keys and a save and load: the same keys tracked,
    # in the same order, the same evictions, and each tracked key in a slot of its own.
    rng = np.random.default_rng(5)
    store = KeyStateStore(
        max_keys=50, hidden_size=2, window_steps=1, input_size=1, device="cpu", initial_capacity=4
    )
    reference: OrderedDict[str, None] = OrderedDict()
    evictions = 0
    for round_ in range(300):
        batch = list(dict.fromkeys(f"k{i}" for i in rng.integers(0, 120, size=rng.integers(1, 40))))
        slots = store.lookup(batch)
        for key in [k for k in batch if k in reference] + [k for k in batch if k not in reference]:
            if key in reference:
                reference.move_to_end(key)
            else:
                if len(reference) == 50:
                    reference.popitem(last=False)
                    evictions += 1
                reference[key] = None
        assert len(set(slots.tolist())) == len(batch)
        if round_ % 7 == 0:
            gone = [f"k{i}" for i in rng.integers(0, 120, size=5)]
            store.forget(gone)
            for key in gone:
                reference.pop(key, None)
        if round_ % 50 == 0:
            saved = store.state_dict()
            store = KeyStateStore(max_keys=50, hidden_size=2, window_steps=1, input_size=1, device="cpu")
            store.load_state_dict(saved)
        assert store.keys() == list(reference)
        assert store.evictions == evictions
    assert sorted(store.lookup(store.keys()).tolist()) == sorted(set(store.lookup(store.keys()).tolist()))
