"""Prometheus metrics on an injectable registry (served by :mod:`stream_lstm.telemetry.server`).

Every metric is declared once, as data, in :data:`METRICS`: its name, type, labels (with the values
they take) and help. :class:`Telemetry` creates them from these declarations, and the reference
(docs/reference/metrics.md) is rendered from the same ones, so the documentation cannot drift.

Names follow Prometheus conventions: one prefix ``stream_lstm_``, base units, counters ending in
``_total``, and only bounded labels (model, metric scope, reason, output, topic, partition; never
a key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from stream_lstm import __version__
from stream_lstm.errors import REJECTED_REASONS
from stream_lstm.messages.records import DEAD_LETTER_REASONS
from stream_lstm.telemetry.server import MetricsServer

# MetricsServer is re-exported: callers import it here.
__all__ = ["METRICS", "Label", "MetricDeclaration", "MetricsServer", "Telemetry"]

log = logging.getLogger(__name__)

SCORE_METRICS = ("accuracy", "log_loss", "roc_auc", "kappa_temporal")
STAGES = ("decode", "predict", "produce", "learn", "checkpoint")
SKIPPED_UPDATE_REASONS = ("non_finite_loss", "non_finite_gradient")
REJECTED_OUTPUTS = ("predictions", "dead_letters")

Metric = Counter | Gauge | Histogram | Info


@dataclass(frozen=True)
class Label:
    """A label of a metric: the values it takes, or what they are when they are not a fixed list.

    ``exported_at_zero``: a series per value exists from the start, so that ``rate()`` and the
    alerts see it before the first increment.
    """

    name: str
    values: tuple[str, ...] = ()
    meaning: str = ""
    exported_at_zero: bool = False


@dataclass(frozen=True)
class MetricDeclaration:
    """One metric: the :class:`Telemetry` attribute that holds it, and what Prometheus is told.

    ``key``: the metric is ``telemetry.<attribute>[key]`` (the score gauges, one per score).
    """

    attribute: str
    name: str
    kind: type[Metric]
    help: str
    labels: tuple[Label, ...] = ()
    buckets: tuple[float, ...] | None = None
    key: str | None = None

    def create(self, registry: CollectorRegistry) -> Metric:
        """The metric, registered, with a series at 0 for each value exported at zero."""
        options: dict[str, Any] = {"registry": registry}
        if self.labels:
            options["labelnames"] = [label.name for label in self.labels]
        if self.buckets is not None:
            options["buckets"] = self.buckets
        metric = self.kind(self.name, self.help, **options)
        for label in self.labels:
            if label.exported_at_zero:
                for value in label.values:
                    metric.labels(**{label.name: value})
        return metric


_MODEL = Label("model", meaning="a model of `--models`")

#: Every metric, in the order they are registered (and so served).
METRICS: tuple[MetricDeclaration, ...] = (
    MetricDeclaration(
        "events",
        "stream_lstm_events_total",
        Counter,
        "Input messages consumed, by outcome: processed (predicted and learned), dead_lettered, or "
        "skipped (even the dead letter was refused).",
        (Label("outcome", ("processed", "dead_lettered", "skipped"), exported_at_zero=True),),
    ),
    MetricDeclaration(
        "dead_letters",
        "stream_lstm_dead_letters_total",
        Counter,
        "Messages sent to the dead-letter topic, by reason.",
        (Label("reason", DEAD_LETTER_REASONS),),
    ),
    MetricDeclaration(
        "unlabelled",
        "stream_lstm_unlabelled_events_total",
        Counter,
        "Processed events without a label (predicted, not learned).",
    ),
    MetricDeclaration(
        "predictions",
        "stream_lstm_predictions_total",
        Counter,
        "Predictions written to the output topic, by model.",
        (_MODEL,),
    ),
    *(
        MetricDeclaration(
            "scores",
            f"stream_lstm_{metric}",
            Gauge,
            f"Prequential {metric.replace('_', ' ')} per model; scope: rolling window or whole stream.",
            (_MODEL, Label("scope", ("rolling", "stream"))),
            key=metric,
        )
        for metric in SCORE_METRICS
    ),
    MetricDeclaration(
        "mixture_weights",
        "stream_lstm_mixture_weight",
        Gauge,
        "The weight of each model in the mixture (model mix), by its past log loss with fixed share; "
        "the weights sum to 1, and the largest is the model winning now.",
        (
            Label(
                "model",
                meaning="a model the mixture mixes, or `base_rate` (its own: the rate of positives)",
            ),
        ),
    ),
    MetricDeclaration(
        "broker_up",
        "stream_lstm_broker_connected",
        Gauge,
        "1 when the service can reach the Kafka broker, else 0.",
    ),
    MetricDeclaration(
        "checkpoints",
        "stream_lstm_checkpoints_total",
        Counter,
        "Checkpoints attempted, by result (written or failed).",
        (Label("result", ("written", "failed"), exported_at_zero=True),),
    ),
    MetricDeclaration(
        "checkpoints_rejected",
        "stream_lstm_checkpoints_rejected_total",
        Counter,
        "Stored checkpoints (files, or records of the checkpoint topic) refused and not loaded, by "
        "reason: not_a_checkpoint, old_format, unknown_version, damaged, or, with a checkpoint key, "
        "unsigned or bad_signature.",
        (Label("reason", REJECTED_REASONS, exported_at_zero=True),),
    ),
    MetricDeclaration(
        "learned_events",
        "stream_lstm_learned_events",
        Gauge,
        "Events the current learner state has learned (restored from the checkpoint on restart).",
    ),
    MetricDeclaration(
        "info",
        "stream_lstm_build_info",
        Gauge,
        "Constant 1, labelled with the stream-lstm version.",
        (Label("version", meaning="the stream-lstm version"),),
    ),
    MetricDeclaration(
        "learner_info", "stream_lstm_learner", Info, "The learner's device, models and hyperparameters."
    ),
    MetricDeclaration(
        "latency",
        "stream_lstm_event_latency_seconds",
        Histogram,
        "From an event's broker timestamp to its prediction being handed to the producer.",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    ),
    MetricDeclaration(
        "stage",
        "stream_lstm_batch_stage_seconds",
        Histogram,
        "Time per micro-batch in each stage: decode, predict, produce, learn, checkpoint.",
        (Label("stage", STAGES, exported_at_zero=True),),
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    ),
    MetricDeclaration(
        "training_loss", "stream_lstm_training_loss", Gauge, "The LSTM's training loss on its latest batch."
    ),
    MetricDeclaration(
        "gradient_norm",
        "stream_lstm_gradient_norm",
        Gauge,
        "The LSTM's gradient norm on its latest batch, before clipping.",
    ),
    MetricDeclaration(
        "network_weight",
        "stream_lstm_network_weight",
        Gauge,
        "The weight of the LSTM's network against the base rate in its predictions (1: the network's"
        " own probabilities; lower on a stream where it does not beat the rate of positive labels).",
    ),
    MetricDeclaration("model_step", "stream_lstm_model_step", Gauge, "Optimizer steps the LSTM has taken."),
    MetricDeclaration(
        "lag",
        "stream_lstm_consumer_lag",
        Gauge,
        "Messages left to read per owned partition (end offset minus position), refreshed periodically.",
        (
            Label("topic", meaning="the input topic"),
            Label("partition", meaning="an owned partition's number"),
        ),
    ),
    MetricDeclaration("keys_tracked", "stream_lstm_keys_tracked", Gauge, "Keys with an LSTM state now."),
    MetricDeclaration(
        "keys_evicted",
        "stream_lstm_keys_evicted_total",
        Counter,
        "Keys whose state was dropped to respect max_keys.",
    ),
    MetricDeclaration(
        "last_checkpoint",
        "stream_lstm_last_checkpoint_timestamp_seconds",
        Gauge,
        "Unix time of the last checkpoint written (0 before the first).",
    ),
    MetricDeclaration(
        "checkpoint_age",
        "stream_lstm_checkpoint_age_seconds",
        Gauge,
        "Seconds since the last checkpoint was written (since start before the first).",
    ),
    MetricDeclaration(
        "gpu_memory", "stream_lstm_gpu_memory_bytes", Gauge, "GPU memory the LSTM holds (0 on the CPU)."
    ),
    MetricDeclaration(
        "skipped_updates",
        "stream_lstm_skipped_updates_total",
        Counter,
        "Optimizer steps the LSTM did not apply, by reason: non_finite_loss or non_finite_gradient.",
        (Label("reason", SKIPPED_UPDATE_REASONS, exported_at_zero=True),),
    ),
    MetricDeclaration(
        "features_dropped",
        "stream_lstm_features_dropped_total",
        Counter,
        "Feature values left out because the model already holds its maximum number of feature names.",
        (_MODEL,),
    ),
    MetricDeclaration(
        "rejected_records",
        "stream_lstm_rejected_records_total",
        Counter,
        "Output records the producer or broker refused for good (too large, invalid), by output: "
        "predictions or dead_letters.",
        (Label("output", REJECTED_OUTPUTS, exported_at_zero=True),),
    ),
    MetricDeclaration(
        "skipped_records",
        "stream_lstm_skipped_records_total",
        Counter,
        "Input messages neither predicted nor dead-lettered because even their dead letter was "
        "refused, by reason.",
        (Label("reason", ("dead_letter_rejected",)),),
    ),
)


class Telemetry:
    """The service's metrics, one attribute per declaration of :data:`METRICS`.

    Tests pass their own registry and read values back from it.
    """

    events: Counter
    dead_letters: Counter
    unlabelled: Counter
    predictions: Counter
    scores: dict[str, Gauge]
    mixture_weights: Gauge
    broker_up: Gauge
    checkpoints: Counter
    checkpoints_rejected: Counter
    learned_events: Gauge
    info: Gauge
    learner_info: Info
    latency: Histogram
    stage: Histogram
    training_loss: Gauge
    gradient_norm: Gauge
    network_weight: Gauge
    model_step: Gauge
    lag: Gauge
    keys_tracked: Gauge
    keys_evicted: Counter
    last_checkpoint: Gauge
    checkpoint_age: Gauge
    gpu_memory: Gauge
    skipped_updates: Counter
    features_dropped: Counter
    rejected_records: Counter
    skipped_records: Counter

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.scores = {}
        for declaration in METRICS:
            metric = declaration.create(self.registry)
            if declaration.key is None:
                setattr(self, declaration.attribute, metric)
            else:
                getattr(self, declaration.attribute)[declaration.key] = metric
        self.info.labels(version=__version__).set(1)
        started = time.time()
        self._last_checkpoint_at: float | None = None
        self.checkpoint_age.set_function(lambda: time.time() - (self._last_checkpoint_at or started))

    def checkpoint_written(self, at: float) -> None:
        """Count a written checkpoint and remember when (for its age)."""
        self._last_checkpoint_at = at
        self.last_checkpoint.set(at)
        self.checkpoints.labels(result="written").inc()

    def checkpoint_rejected(self, reason: str, name: str) -> None:
        """Count a checkpoint the store refused (``name``: which one; the store logged why)."""
        self.checkpoints_rejected.labels(reason=reason).inc()

    def set_scores(self, report: Mapping[str, Mapping[str, Any]]) -> None:
        """Copy an evaluator report (whole-stream and rolling scores per model) into the gauges."""
        for model, scores in report.items():
            for metric in SCORE_METRICS:
                self.scores[metric].labels(model=model, scope="stream").set(scores[metric])
                self.scores[metric].labels(model=model, scope="rolling").set(scores["rolling"][metric])

    def set_mixture_weights(self, weights: Mapping[str, float]) -> None:
        """The mixture's current weight of each model."""
        for model, weight in weights.items():
            self.mixture_weights.labels(model=model).set(weight)
