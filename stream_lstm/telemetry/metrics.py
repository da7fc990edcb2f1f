"""Prometheus metrics on an injectable registry (served by :mod:`stream_lstm.telemetry.server`).

Names follow Prometheus conventions: one prefix ``stream_lstm_``, base units, counters ending in
``_total``, and only bounded labels (model, metric scope, reason, output, topic, partition; never
a key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from stream_lstm import __version__
from stream_lstm.telemetry.server import MetricsServer

__all__ = ["MetricsServer", "Telemetry"]  # MetricsServer is re-exported: callers import it here

log = logging.getLogger(__name__)

SCORE_METRICS = ("accuracy", "log_loss", "roc_auc", "kappa_temporal")
STAGES = ("decode", "predict", "produce", "learn", "checkpoint")
SKIPPED_UPDATE_REASONS = ("non_finite_loss", "non_finite_gradient")
REJECTED_OUTPUTS = ("predictions", "dead_letters")


class Telemetry:
    """The service's metrics. Tests pass their own registry and read values back from it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "stream_lstm_events_total",
            "Input messages consumed, by outcome: processed (predicted and learned), dead_lettered, or "
            "skipped (even the dead letter was refused).",
            ["outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "stream_lstm_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.unlabelled = Counter(
            "stream_lstm_unlabelled_events_total",
            "Processed events without a label (predicted, not learned).",
            registry=r,
        )
        self.predictions = Counter(
            "stream_lstm_predictions_total",
            "Predictions written to the output topic, by model.",
            ["model"],
            registry=r,
        )
        self.scores = {
            metric: Gauge(
                f"stream_lstm_{metric}",
                f"Prequential {metric.replace('_', ' ')} per model; scope: rolling window or whole stream.",
                ["model", "scope"],
                registry=r,
            )
            for metric in SCORE_METRICS
        }
        self.broker_up = Gauge(
            "stream_lstm_broker_connected",
            "1 when the service can reach the Kafka broker, else 0.",
            registry=r,
        )
        self.checkpoints = Counter(
            "stream_lstm_checkpoints_total",
            "Checkpoints attempted, by result (written or failed).",
            ["result"],
            registry=r,
        )
        self.learned_events = Gauge(
            "stream_lstm_learned_events",
            "Events the current learner state has learned (restored from the checkpoint on restart).",
            registry=r,
        )
        self.info = Gauge(
            "stream_lstm_build_info",
            "Constant 1, labelled with the stream-lstm version.",
            ["version"],
            registry=r,
        )
        self.info.labels(version=__version__).set(1)
        self.learner_info = Info(
            "stream_lstm_learner", "The learner's device, models and hyperparameters.", registry=r
        )
        self.latency = Histogram(
            "stream_lstm_event_latency_seconds",
            "From an event's broker timestamp to its prediction being handed to the producer.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.stage = Histogram(
            "stream_lstm_batch_stage_seconds",
            "Time per micro-batch in each stage: decode, predict, produce, learn, checkpoint.",
            ["stage"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )
        self.training_loss = Gauge(
            "stream_lstm_training_loss", "The LSTM's training loss on its latest batch.", registry=r
        )
        self.gradient_norm = Gauge(
            "stream_lstm_gradient_norm",
            "The LSTM's gradient norm on its latest batch, before clipping.",
            registry=r,
        )
        self.model_step = Gauge("stream_lstm_model_step", "Optimizer steps the LSTM has taken.", registry=r)
        self.lag = Gauge(
            "stream_lstm_consumer_lag",
            "Messages left to read per owned partition (end offset minus position), refreshed periodically.",
            ["topic", "partition"],
            registry=r,
        )
        self.keys_tracked = Gauge("stream_lstm_keys_tracked", "Keys with an LSTM state now.", registry=r)
        self.keys_evicted = Counter(
            "stream_lstm_keys_evicted_total", "Keys whose state was dropped to respect max_keys.", registry=r
        )
        self.last_checkpoint = Gauge(
            "stream_lstm_last_checkpoint_timestamp_seconds",
            "Unix time of the last checkpoint written (0 before the first).",
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "stream_lstm_checkpoint_age_seconds",
            "Seconds since the last checkpoint was written (since start before the first).",
            registry=r,
        )
        started = time.time()
        self._last_checkpoint_at: float | None = None
        self.checkpoint_age.set_function(lambda: time.time() - (self._last_checkpoint_at or started))
        self.gpu_memory = Gauge(
            "stream_lstm_gpu_memory_bytes", "GPU memory the LSTM holds (0 on the CPU).", registry=r
        )
        self.skipped_updates = Counter(
            "stream_lstm_skipped_updates_total",
            "Optimizer steps the LSTM did not apply, by reason: non_finite_loss or non_finite_gradient.",
            ["reason"],
            registry=r,
        )
        self.features_dropped = Counter(
            "stream_lstm_features_dropped_total",
            "Feature values left out because the model already holds its maximum number of feature names.",
            ["model"],
            registry=r,
        )
        self.rejected_records = Counter(
            "stream_lstm_rejected_records_total",
            "Output records the producer or broker refused for good (too large, invalid), by output: "
            "predictions or dead_letters.",
            ["output"],
            registry=r,
        )
        self.skipped_records = Counter(
            "stream_lstm_skipped_records_total",
            "Input messages neither predicted nor dead-lettered because even their dead letter was "
            "refused, by reason.",
            ["reason"],
            registry=r,
        )
        for outcome in ("processed", "dead_lettered", "skipped"):
            self.events.labels(outcome=outcome)
        for result in ("written", "failed"):
            self.checkpoints.labels(result=result)
        for stage in STAGES:
            self.stage.labels(stage=stage)
        for reason in SKIPPED_UPDATE_REASONS:
            self.skipped_updates.labels(reason=reason)
        for output in REJECTED_OUTPUTS:
            self.rejected_records.labels(output=output)

    def checkpoint_written(self, at: float) -> None:
        """Count a written checkpoint and remember when (for its age)."""
        self._last_checkpoint_at = at
        self.last_checkpoint.set(at)
        self.checkpoints.labels(result="written").inc()

    def set_scores(self, report: Mapping[str, Mapping[str, Any]]) -> None:
        """Copy an evaluator report (whole-stream and rolling scores per model) into the gauges."""
        for model, scores in report.items():
            for metric in SCORE_METRICS:
                self.scores[metric].labels(model=model, scope="stream").set(scores[metric])
                self.scores[metric].labels(model=model, scope="rolling").set(scores["rolling"][metric])
