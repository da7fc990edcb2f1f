"""The batch stage: decode a poll, predict, publish, score and learn it; the one owner of the batch in flight.

With the LSTM in a process of its own, a full batch is sent to it and left *in flight* while the
service finishes the batch before it and polls the next one: the LSTM predicts and learns it
meanwhile. Whatever needs the service's state to match the learner's (a checkpoint, a
rebalance, a stop) settles the batch in flight first (:meth:`BatchStage.settle`); a rollback
drops it (:meth:`BatchStage.drop`). No other part of the service holds a batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from stream_lstm.errors import EventError
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.kafka.interface import Message, Partition
from stream_lstm.messages.decoding import decode_event
from stream_lstm.messages.events import Event
from stream_lstm.models.protocols import trained_model
from stream_lstm.service.ledger import Ledger
from stream_lstm.service.publisher import Publisher
from stream_lstm.service.settings import ServiceSettings
from stream_lstm.telemetry.metrics import Telemetry

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """A decoded batch between :meth:`BatchStage.begin` and :meth:`BatchStage.finish`."""

    events: list[Event]
    sources: list[Message]
    replayed: list[bool]
    handled: list[Message]  # every message of the batch from an owned partition, dead or not
    dead: dict[Partition, int]  # dead letters per partition
    in_flight: bool = False  # its LSTM predictions were sent to the learner process


class BatchStage:
    """Takes each poll through the data path, leaving at most one batch in flight."""

    def __init__(
        self, settings: ServiceSettings, telemetry: Telemetry, ledger: Ledger, publisher: Publisher
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.ledger = ledger
        self.publisher = publisher
        self._in_flight: Batch | None = None

    @property
    def in_flight(self) -> Batch | None:
        """The batch whose LSTM predictions are on their way, if any."""
        return self._in_flight

    def process(self, messages: Sequence[Message], evaluator: PrequentialEvaluator) -> None:
        """Decode ``messages``, and finish them or leave them in flight."""
        batch = self.begin(messages, evaluator) if messages else None
        self.settle(evaluator)
        if batch is None:
            return
        # Only under load (a full poll) is a batch left in flight: at a low rate the next poll
        # may be a while, and the batch's predictions would wait for it.
        if (
            batch.in_flight
            and len(messages) >= self.settings.batch_size
            and not self.settings.kafka.exactly_once
        ):
            self._in_flight = batch
        else:
            self.finish(batch, evaluator)

    def settle(self, evaluator: PrequentialEvaluator) -> None:
        """Finish the batch in flight, if there is one."""
        if self._in_flight is not None:
            batch, self._in_flight = self._in_flight, None
            self.finish(batch, evaluator)

    def drop(self) -> None:
        """Forget the batch in flight: a rollback reads its events again."""
        self._in_flight = None

    def begin(self, messages: Sequence[Message], evaluator: PrequentialEvaluator) -> Batch:
        """Decode the batch, dead-letter what is malformed, and send it to a learner process."""
        started = time.perf_counter()
        limits = self.settings.limits
        mapping = self.settings.mapping
        publisher = self.publisher
        refused_outputs = publisher.refused
        ledger = self.ledger
        owned = ledger.owned
        events: list[Event] = []
        sources: list[Message] = []
        replayed: list[bool] = []
        dead: dict[Partition, int] = {}  # applied to the ledger only once the batch is learned
        handled: list[Message] = []
        for message in messages:
            partition = (message.topic, message.partition)
            if partition not in owned:
                continue  # a late record of a partition given away: its new owner reads it
            handled.append(message)
            replay = ledger.is_replay(partition, message.offset)
            refused = refused_outputs.of((*partition, message.offset))
            try:
                event = decode_event(message.value, message.key, limits=limits, mapping=mapping)
            except EventError as error:
                dead[partition] = dead.get(partition, 0) + 1
                if not replay:
                    publisher.dead_letter(message, error.code, str(error), refused)
                continue
            except Exception as error:  # a decoder bug must not stop the stream either
                log.debug("decoding %s:%d@%d", *partition, message.offset, exc_info=True)
                dead[partition] = dead.get(partition, 0) + 1
                if not replay:
                    publisher.dead_letter(message, "invalid", f"cannot decode: {error!r}", refused)
                continue
            if refused is not None and "prediction" in refused:
                # Its prediction was refused for good the first time: learn the event again, but
                # publish a dead letter in its place.
                if not replay:
                    publisher.dead_letter(message, "output_rejected", refused["prediction"], refused)
                replay = True
            events.append(event)
            sources.append(message)
            replayed.append(replay)
        batch = Batch(events, sources, replayed, handled, dead)
        if events:
            batch.in_flight = evaluator.send_ahead(events)
        self.telemetry.stage.labels(stage="decode").observe(time.perf_counter() - started)
        return batch

    def finish(self, batch: Batch, evaluator: PrequentialEvaluator) -> None:
        """Predict (the other models), publish, score and learn the batch; record it in the ledger."""
        events, sources, replayed = batch.events, batch.sources, batch.replayed
        if events:
            self._predict_publish_learn(events, sources, replayed, evaluator)
        self.ledger.record(batch.handled, list(zip(sources, events, strict=True)), batch.dead)

    def _predict_publish_learn(
        self,
        events: list[Event],
        sources: list[Message],
        replayed: list[bool],
        evaluator: PrequentialEvaluator,
    ) -> None:
        telemetry = self.telemetry
        stage = telemetry.stage
        decoded = time.perf_counter()
        predictions = evaluator.predict(events)
        predicted = time.perf_counter()
        stage.labels(stage="predict").observe(predicted - decoded)
        trained = trained_model(evaluator.models)
        step = int(trained.steps) if trained is not None else evaluator.events
        refused = 0
        names = list(predictions)
        columns = [predictions[name].tolist() for name in names]
        publish = self.publisher.prediction
        for i, (event, message) in enumerate(zip(events, sources, strict=True)):
            if replayed[i]:
                continue
            probabilities = {name: column[i] for name, column in zip(names, columns, strict=True)}
            if not publish(event, message, probabilities, step):
                refused += 1
        produced = time.perf_counter()
        stage.labels(stage="produce").observe(produced - predicted)
        now = time.time()
        for message, replay in zip(sources, replayed, strict=True):
            if message.timestamp_ms is not None and message.timestamp_ms >= 0 and not replay:
                telemetry.latency.observe(max(now - message.timestamp_ms / 1000.0, 0.0))
        published = len(events) - sum(replayed) - refused
        for name in names:
            telemetry.predictions.labels(model=name).inc(published)
        evaluator.learn(events, predictions)
        stage.labels(stage="learn").observe(time.perf_counter() - produced)
        telemetry.events.labels(outcome="processed").inc(len(events))
        unlabelled = sum(1 for event in events if event.label is None)
        if unlabelled:
            telemetry.unlabelled.inc(unlabelled)
