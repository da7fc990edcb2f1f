"""The service, ``evaluate`` and the Python API hold one object: what builds and restores the
LSTM gives an :class:`LSTMClassifier`, which is the service's learner with river's methods."""

from __future__ import annotations

import copy
import inspect
import pickle
import subprocess
import sys

from river import base

import stream_lstm
from stream_lstm import LSTMClassifier
from stream_lstm.learner.limits import DEFAULT_EXTRA_STEP_EVENTS
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.messages.events import Event
from stream_lstm.models.build import build_models, model_from_state
from stream_lstm.models.protocols import TrainedModel
from stream_lstm.state.codec import decode_tree, encode_tree


def test_the_service_and_evaluate_build_and_restore_the_classifier() -> None:
    lstm = build_models(["lstm", "no_change"], lstm={"hidden_size": 4, "device": "cpu"})["lstm"]
    assert isinstance(lstm, LSTMClassifier) and isinstance(lstm, TrainedModel)
    batch = [Event(key="a", features={"x": 1.0}, label=1), Event(key="b", label=0)]
    lstm.predict_batch(batch)
    lstm.learn_batch(batch)
    _, tree = decode_tree(encode_tree(lstm.to_state(), "lstm"), "bytes", ("lstm",))
    restored = model_from_state(tree, "checkpoint")
    assert isinstance(restored, LSTMClassifier)
    assert restored.predict_proba_one({"x": 1.0}) == lstm.predict_proba_one({"x": 1.0})


def test_it_is_a_river_mini_batch_classifier_and_the_learner() -> None:
    assert issubclass(LSTMClassifier, base.MiniBatchClassifier) and issubclass(LSTMClassifier, LSTMLearner)


#: Defaults the river API chooses differently from the service, each for a reason its docstring gives.
OWN_DEFAULTS = {"extra_step_events": 0}


def test_it_takes_every_hyperparameter_of_the_learner_with_the_same_default() -> None:
    learner = inspect.signature(LSTMLearner.__init__).parameters
    classifier = inspect.signature(LSTMClassifier.__init__).parameters
    for name, parameter in learner.items():
        assert classifier[name].default == OWN_DEFAULTS.get(name, parameter.default), name
    for name in OWN_DEFAULTS:
        assert f"``{name}`` is {OWN_DEFAULTS[name]} here" in (LSTMClassifier.__doc__ or "")
    model = LSTMClassifier(hidden_size=4, device="cpu")
    assert model.hyperparameters() == {name: getattr(model, name) for name in learner if name != "self"}


def test_the_service_builds_its_lstm_with_its_own_defaults_not_the_river_apis() -> None:
    built = build_models(["lstm"], lstm={"hidden_size": 4, "device": "cpu"})["lstm"]
    assert isinstance(built, LSTMClassifier)
    assert (
        built.extra_step_events == DEFAULT_EXTRA_STEP_EVENTS != LSTMClassifier(device="cpu").extra_step_events
    )
    chosen = build_models(["lstm"], lstm={"hidden_size": 4, "device": "cpu", "extra_step_events": 7})["lstm"]
    assert chosen.extra_step_events == 7  # type: ignore[attr-defined]


def test_copies_keep_the_learned_state_and_the_fields() -> None:
    model = LSTMClassifier(hidden_size=4, tbptt_steps=2, device="cpu", key_field="k", ts_field="t")
    model.learn_one({"k": "a", "t": 1.0, "x": 1.0}, True)
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert (copied.key_field, copied.ts_field) == ("k", "t")
        assert copied.predict_proba_one({"k": "a", "t": 2.0, "x": 0.0}) == model.predict_proba_one(
            {"k": "a", "t": 2.0, "x": 0.0}
        )
    fresh = model.clone()
    assert (fresh.key_field, fresh.events_learned, len(fresh.tracked_keys())) == ("k", 0, 0)


def test_importing_the_package_leaves_torch_unloaded() -> None:
    check = (
        "import sys, stream_lstm; assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'LSTMClassifier' in dir(stream_lstm) and 'LSTMClassifier' in stream_lstm.__all__;"
        "stream_lstm.LSTMClassifier; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", check], check=True)
    assert stream_lstm.LSTMClassifier is LSTMClassifier
