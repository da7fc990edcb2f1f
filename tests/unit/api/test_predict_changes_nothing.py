"""River's predictions leave the model exactly as it was: weights, key states (also the LRU order
and a full store's keys), feature layout and counters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stream_lstm import LSTMClassifier


def assert_same_state(before: Any, after: Any, where: str = "state") -> None:
    if isinstance(before, dict):
        assert before.keys() == after.keys(), where
        for name in before:
            assert_same_state(before[name], after[name], f"{where}.{name}")
    elif isinstance(before, list):
        assert len(before) == len(after), where
        for i, (a, b) in enumerate(zip(before, after, strict=True)):
            assert_same_state(a, b, f"{where}[{i}]")
    elif isinstance(before, np.ndarray):
        np.testing.assert_array_equal(before, after, err_msg=where)
    else:
        assert before == after, where


def test_predicting_changes_nothing() -> None:
    # A store full at two keys: a new key's prediction must not evict one.
    model = LSTMClassifier(
        hidden_size=4, tbptt_steps=3, max_keys=2, max_features=2, device="cpu", key_field="k"
    )
    for i in range(6):
        model.learn_one({"k": "ab"[i % 2], "x": float(i)}, i % 3 == 0)
    before = model.to_state()
    model.predict_proba_one({"k": "new", "x": 1.0, "unseen": 2.0})  # a new key and a new name
    model.predict_one({"k": "a", "x": 1.0, "other": 1.0, "third": 3.0})  # names past max_features
    X = pd.DataFrame([{"k": "b", "x": 1.0}, {"k": "a", "x": 2.0}, {"k": "c", "fresh": 1.0}, {"k": "b"}])
    model.predict_proba_many(X)
    model.predict_many(X)
    assert_same_state(before, model.to_state())
    assert model.keys.keys() == ["a", "b"]  # the LRU order too
