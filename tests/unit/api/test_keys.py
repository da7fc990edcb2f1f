"""Per-key state through river's interface: two interleaved keys that follow different rules."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from stream_lstm import LSTMClassifier

TRAIN_ROWS, TEST_ROWS = 3200, 300


def interleaved_stream(rows: int, seed: int = 0) -> list[tuple[dict[str, object], bool]]:
    """Rows of devices ``a`` and ``b`` in random order, without features. Device ``a`` repeats its
    own previous label, ``b`` flips it, each nine times in ten. The previous row of the stream is
    the other device's half the time, and nothing in a row says which device it is, so only a
    state per key can follow either rule."""
    rng = random.Random(seed)
    previous = {"a": False, "b": False}
    stream = []
    for _ in range(rows):
        device = rng.choice("ab")
        label = previous[device] if device == "a" else not previous[device]
        if rng.random() < 0.1:
            label = not label
        stream.append(({"device": device}, label))
        previous[device] = label
    return stream


def test_accuracy(model: LSTMClassifier, stream: list[tuple[dict[str, object], bool]]) -> float:
    """Train on the head of the stream in micro-batches, then test-then-train on its tail."""
    head, tail = stream[:TRAIN_ROWS], stream[TRAIN_ROWS:]
    for start in range(0, len(head), 8):
        batch = head[start : start + 8]
        model.learn_many(pd.DataFrame([x for x, _ in batch]), pd.Series([y for _, y in batch]))
    hits = 0
    for x, y in tail:
        hits += model.predict_one(x) == y
        model.learn_one(x, y)
    return hits / len(tail)


test_accuracy.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.mark.slow
def test_a_state_per_key_follows_each_keys_rule() -> None:
    stream = interleaved_stream(TRAIN_ROWS + TEST_ROWS)
    settings = {"hidden_size": 16, "tbptt_steps": 3, "learning_rate": 0.02, "device": "cpu"}
    keyed = test_accuracy(LSTMClassifier(key_field="device", **settings), stream)
    one_stream = test_accuracy(LSTMClassifier(**settings), [({**x, "device": None}, y) for x, y in stream])
    tail = stream[TRAIN_ROWS:]
    majority = max(sum(y for _, y in tail), sum(not y for _, y in tail)) / len(tail)
    # One stream sees the right previous label half the time, and cannot tell which rule applies.
    assert keyed > max(one_stream, majority) + 0.1, (keyed, one_stream, majority)


def test_the_key_field_is_not_a_feature_and_keys_are_kept_apart() -> None:
    model = LSTMClassifier(hidden_size=4, tbptt_steps=2, device="cpu", key_field="device", ts_field="t")
    model.learn_one({"device": "a", "t": 1.0, "x": 1.0}, True)
    model.learn_one({"device": 7, "t": 2.0, "x": 2.0}, False)  # an integer key: its decimal text
    assert set(model.tracked_keys()) == {"a", "7"}
    assert set(model.feature_columns) == {"x"}
    assert model.keys.last_ts[model.keys.lookup(["a"])[0]] == 1.0
