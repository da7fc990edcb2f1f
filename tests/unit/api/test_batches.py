"""River's mini-batch methods against the one-row path, where they should agree, and against the
service's event-batch path, which they are."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from stream_lstm import LSTMClassifier
from stream_lstm.api.rows import RowReader


def rows(count: int, seed: int = 0) -> list[tuple[dict[str, object], bool]]:
    rng = random.Random(seed)
    return [
        (
            {
                "device": rng.choice(["a", "b", "c"]),
                "t": float(i),
                "x": rng.gauss(0, 1),
                "y": rng.gauss(2, 3),
            },
            rng.random() < 0.5,
        )
        for i in range(count)
    ]


def trained(count: int = 40, **params: object) -> LSTMClassifier:
    model = LSTMClassifier(
        hidden_size=8, tbptt_steps=3, device="cpu", key_field="device", ts_field="t", **params
    )
    for x, y in rows(count):
        model.learn_one(x, y)
    return model


def key_arrays(model: LSTMClassifier) -> dict[str, np.ndarray]:
    """Each tracked key's state, by key (the slots a key sits in may differ between two models)."""
    exported = model.export_keys(sorted(model.tracked_keys()))
    order = np.argsort(exported["keys"])
    return {
        name: np.asarray(exported[name])[order]
        for name in ("h0", "c0", "window", "window_len", "prev_label", "last_ts")
    }


def test_predict_proba_many_is_predict_proba_one_per_row() -> None:
    model = trained()
    # Keys repeat, and "new" and None (the one stream) are not tracked yet.
    queries = [
        {**x, "device": device} for (x, _), device in zip(rows(12, seed=1), "aabcnewnew" + "  ", strict=True)
    ]
    queries[-1]["device"] = None
    many = model.predict_proba_many(pd.DataFrame(queries))
    assert list(many.columns) == [False, True]
    for i, x in enumerate(queries):
        one = model.predict_proba_one(x)
        assert many.iloc[i][True] == pytest.approx(one[True], abs=1e-6)
        assert many.iloc[i][False] == pytest.approx(one[False], abs=1e-6)
    assert model.predict_many(pd.DataFrame(queries)).tolist() == [model.predict_one(x) for x in queries]


def test_learn_many_is_the_services_event_batch() -> None:
    """``learn_many`` on a DataFrame is ``learn_batch`` on the same rows as events."""
    batch = rows(30, seed=2)
    X, y = pd.DataFrame([x for x, _ in batch]), pd.Series([label for _, label in batch])
    river_path, service_path = trained(), trained()
    river_path.learn_many(X, y)
    reader = RowReader("device", "t")
    service_path.learn_batch([reader.event(x, label) for x, label in batch])
    assert river_path.steps == service_path.steps
    for name, array in key_arrays(river_path).items():
        np.testing.assert_array_equal(array, key_arrays(service_path)[name], err_msg=name)
    after = rows(5, seed=3)
    for x, _ in after:
        assert river_path.predict_proba_one(x) == service_path.predict_proba_one(x)


def test_learn_many_moves_the_keys_as_learn_one_does_when_nothing_else_changes() -> None:
    """Without an optimizer step (learning rate 0) and with a fixed scaler, a batch leaves every
    key where the same rows learned one by one leave it, and predictions agree after."""
    frozen = {"learning_rate": 0.0, "adapt_scaler": False}
    batch = rows(25, seed=4)
    one_by_one, as_a_batch = trained(**frozen), trained(**frozen)
    for x, y in batch:
        one_by_one.learn_one(x, y)
    as_a_batch.learn_many(pd.DataFrame([x for x, _ in batch]), pd.Series([y for _, y in batch]))
    for name, array in key_arrays(one_by_one).items():
        np.testing.assert_allclose(array, key_arrays(as_a_batch)[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for x, _ in rows(6, seed=5):
        assert one_by_one.predict_proba_one(x)[True] == pytest.approx(
            as_a_batch.predict_proba_one(x)[True], abs=1e-5
        )


def test_a_row_without_a_label_moves_its_key_without_a_step() -> None:
    model = trained()
    steps, learned = model.steps, model.events_learned
    model.learn_one({"device": "a", "t": 99.0, "x": 1.0}, None)
    X = pd.DataFrame([{"device": "b", "t": 100.0, "x": 1.0}, {"device": "c", "t": 101.0, "x": 2.0}])
    model.learn_many(X, pd.Series([None, float("nan")]))
    assert (model.steps, model.events_learned) == (steps, learned)
    assert model.keys.last_ts[model.keys.lookup(["a", "b", "c"])].tolist() == [99.0, 100.0, 101.0]


def test_missing_cells_of_a_dataframe_are_absent_values() -> None:
    model = trained()
    X = pd.DataFrame([{"device": "a", "t": 50.0, "x": 1.0}, {"device": "a", "t": 51.0, "y": 2.0}])
    assert np.isnan(X.loc[1, "x"]) and np.isnan(X.loc[0, "y"])
    many = model.predict_proba_many(X)
    assert many.iloc[1][True] == pytest.approx(
        model.predict_proba_one({"device": "a", "t": 51.0, "y": 2.0})[True], abs=1e-6
    )


def test_y_must_match_x() -> None:
    model = trained(count=1)
    with pytest.raises(ValueError, match="X has 2 rows but y has 1 labels"):
        model.learn_many(pd.DataFrame([{"x": 1.0}, {"x": 2.0}]), pd.Series([True]))
