"""The models by name: what ``--models`` accepts and how each is built from the settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stream_lstm.errors import ConfigError
from stream_lstm.models.baselines import LogisticRegressionBaseline
from stream_lstm.models.lag_logreg import LagLogisticRegression
from stream_lstm.models.no_change import NoChangeBaseline
from stream_lstm.models.protocols import OnlineClassifier
from stream_lstm.models.state_data import damaged

MODEL_NAMES = ("lstm", "logreg", "logreg_lags", "no_change")
#: The models whose weights are trained by backpropagation: what a checkpoint is kept for.
TRAINED = ("lstm",)

#: The LSTM's keyword arguments that the logistic regressions take too (the same meaning).
SHARED_WITH_LOGREG = ("max_features", "input_clip", "category_buckets")
#: The LSTM's keyword arguments that ``logreg_lags`` takes too: those, the trend inputs and the
#: stream rate.
SHARED_WITH_LAGS = (*SHARED_WITH_LOGREG, "trend_scales", "stream_rate_half_life")


def build_models(
    names: Sequence[str], *, max_keys: int = 100_000, lstm: Mapping[str, Any] | None = None
) -> dict[str, OnlineClassifier]:
    """Create the named models; ``lstm`` holds keyword arguments for the LSTM
    (:class:`~stream_lstm.api.classifier.LSTMClassifier`, the object of the Python API too).

    The logistic regressions get the LSTM's ``max_features``, ``input_clip`` and
    ``category_buckets`` (from ``lstm``, else the LSTM's defaults), so that they see the same
    features, clipped alike, and the same category buckets; ``logreg_lags`` gets its
    ``trend_scales`` and ``stream_rate_half_life`` too, and keeps at most ``max_keys`` keys, as the
    LSTM. The stream rate, a feature that the LSTM and ``logreg_lags`` add themselves, takes one
    of their ``max_features`` places and not one of ``logreg``'s, which does not get it: with
    ``max_features`` names or more in a keyed stream, ``logreg`` keeps one name more.

    The LSTM gets the service's ``extra_step_events`` unless ``lstm`` gives one: the river API's
    default (0, for learning a row at a time) is not the service's.
    """
    unknown = [name for name in names if name not in MODEL_NAMES]
    if unknown or not names:
        raise ConfigError(
            f"unknown model(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODEL_NAMES)}"
        )
    models: dict[str, OnlineClassifier] = {}
    shared = {key: value for key, value in (lstm or {}).items() if key in SHARED_WITH_LOGREG}
    shared_with_lags = {key: value for key, value in (lstm or {}).items() if key in SHARED_WITH_LAGS}
    for name in names:
        if name == "lstm":
            from stream_lstm.api.classifier import LSTMClassifier  # torch is imported only when needed

            # Not at module level: the learner package imports this one (tests/unit/test_architecture.py).
            from stream_lstm.learner.limits import DEFAULT_EXTRA_STEP_EVENTS

            arguments = {"extra_step_events": DEFAULT_EXTRA_STEP_EVENTS, **dict(lstm or {})}
            models[name] = LSTMClassifier(max_keys=max_keys, **arguments)
        elif name == "logreg":
            models[name] = LogisticRegressionBaseline(**shared)
        elif name == "logreg_lags":
            models[name] = LagLogisticRegression(max_keys=max_keys, **shared_with_lags)
        else:
            models[name] = NoChangeBaseline(max_keys=max_keys)
    return models


def model_from_state(tree: Any, where: str) -> OnlineClassifier:
    """The model of a ``to_state()``, by the ``kind`` it names (one of :data:`MODEL_NAMES`).

    :class:`~stream_lstm.errors.CheckpointRejected` if ``tree`` is not such a state.
    """
    kind = tree.get("kind") if isinstance(tree, dict) else None
    if kind not in MODEL_NAMES:
        raise damaged(f"{where}.kind", f"expected one of {', '.join(MODEL_NAMES)}")
    if kind == "lstm":
        from stream_lstm.api.classifier import LSTMClassifier  # torch is imported only when needed

        return LSTMClassifier.from_state(tree, where)
    if kind == "logreg":
        return LogisticRegressionBaseline.from_state(tree, where)
    if kind == "logreg_lags":
        return LagLogisticRegression.from_state(tree, where)
    return NoChangeBaseline.from_state(tree, where)
