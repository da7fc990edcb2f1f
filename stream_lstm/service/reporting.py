"""The live comparison and the learner's training, as Prometheus metrics, once per interval.

Scores of every model, the trained model's loss, gradient norm, steps, key counts and device
memory, what the guards left out, and consumer lag. Counters grow from the models' cumulative
counts; after a rollback (which reloads the models' saved counts) :meth:`Reporter.reset` takes
the reloaded counts as the new base, so no counter goes back.
"""

from __future__ import annotations

import logging
import time

from stream_lstm import __version__
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.kafka.interface import KafkaClient
from stream_lstm.models.protocols import trained_model
from stream_lstm.service.settings import ServiceSettings
from stream_lstm.telemetry.metrics import Telemetry

log = logging.getLogger(__name__)

#: Consumer lag needs a request to the broker: refresh it this often, in seconds.
LAG_REFRESH_S = 5.0


class Reporter:
    """Publishes scores, training statistics, guard counts and lag to :class:`Telemetry`."""

    def __init__(
        self, settings: ServiceSettings, telemetry: Telemetry, evaluator: PrequentialEvaluator
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self._last_scores = 0.0
        self._next_lag_refresh = 0.0
        self.reset(evaluator)

    def reset(self, evaluator: PrequentialEvaluator) -> None:
        """Count from ``evaluator``'s cumulative counts on (at start, and after a rollback)."""
        self._evictions_seen = _evictions(evaluator)
        self._guards_seen = _guard_counts(evaluator)

    def publish(self, evaluator: PrequentialEvaluator, kafka: KafkaClient | None) -> None:
        """Scores and learner statistics every ``scores_interval_s``; lag every :data:`LAG_REFRESH_S`."""
        now = time.monotonic()
        telemetry = self.telemetry
        if now - self._last_scores >= self.settings.scores_interval_s:
            self._last_scores = now
            telemetry.set_scores(evaluator.report())
            if evaluator.mixture is not None:
                telemetry.set_mixture_weights(evaluator.mixture.weights_by_expert())
            telemetry.learned_events.set(evaluator.events)
            self._publish_learner_stats(evaluator)
            self._publish_guard_stats(evaluator)
        if now >= self._next_lag_refresh and kafka is not None:
            self._next_lag_refresh = now + LAG_REFRESH_S
            try:
                lag = kafka.lag()
            except Exception as error:  # lag is for dashboards: never let it stop the stream
                log.debug("consumer lag unavailable: %s", error)
            else:
                for (topic, partition), value in lag.items():
                    telemetry.lag.labels(topic=topic, partition=str(partition)).set(value)

    def _publish_learner_stats(self, evaluator: PrequentialEvaluator) -> None:
        """Training loss, gradient norm, the network's weight against the base rate, key counts and
        device memory of the trained model, if any."""
        trained = trained_model(evaluator.models)
        if trained is None:
            return
        telemetry = self.telemetry
        stats = trained.training_stats()  # reads two device values: once a second, not per batch
        telemetry.training_loss.set(stats["loss"])
        telemetry.gradient_norm.set(stats["grad_norm"])
        telemetry.network_weight.set(stats["network_weight"])
        telemetry.model_step.set(trained.steps)
        keys = trained.key_stats()
        telemetry.keys_tracked.set(keys["tracked"])
        evictions = keys["evicted"]
        if evictions > self._evictions_seen:
            telemetry.keys_evicted.inc(evictions - self._evictions_seen)
        self._evictions_seen = evictions
        telemetry.gpu_memory.set(trained.device_memory_bytes())

    def _publish_guard_stats(self, evaluator: PrequentialEvaluator) -> None:
        """Skipped optimizer steps and dropped feature values, as counters (from cumulative counts)."""
        telemetry = self.telemetry
        for model, stats in evaluator.guard_stats().items():
            for name, value in stats.items():
                seen = self._guards_seen.get((model, name), 0)
                self._guards_seen[(model, name)] = value
                added = max(value - seen, 0)  # a reload (a rollback) goes back to the saved counts
                if not added:
                    continue
                if name == "features_dropped":
                    telemetry.features_dropped.labels(model=model).inc(added)
                elif name.startswith("skipped_"):
                    telemetry.skipped_updates.labels(reason=name.removeprefix("skipped_")).inc(added)


def learner_info(settings: ServiceSettings, evaluator: PrequentialEvaluator) -> dict[str, str]:
    """Device, models and hyperparameters, for the info metric."""
    info = {
        "version": __version__,
        "instance_id": settings.instance_id,
        "models": ",".join(evaluator.models),
    }
    trained = trained_model(evaluator.models)
    if trained is not None:
        info["device"] = str(trained.torch_device)
        info.update(
            {name: str(value) for name, value in trained.hyperparameters().items() if name != "device"}
        )
    else:
        info["device"] = "none"
    info["batch_size"] = str(settings.batch_size)
    info["window"] = str(evaluator.window)
    return info


def _guard_counts(evaluator: PrequentialEvaluator) -> dict[tuple[str, str], int]:
    return {
        (model, name): value
        for model, stats in evaluator.guard_stats().items()
        for name, value in stats.items()
    }


def _evictions(evaluator: PrequentialEvaluator) -> int:
    trained = trained_model(evaluator.models)
    return trained.key_stats()["evicted"] if trained is not None else 0
