"""Where the service resumes: the learner from the store, each partition from its checkpoint.

At start and at every rollback the learner comes from this instance's last checkpoint, else
(a warm start) from the newest other instance's weights with fresh scores, else it is new.
Each assigned partition continues from its checkpoint (offset, counts, key states), and the
consumer is sought there; a seek the broker refuses is retried after the next poll. With
exactly-once, the group's committed offset is read too, to find events that a crashed run
published after its last checkpoint (they are replayed: learned, not published again).

A partition without a checkpoint starts at the group's committed offset, else where
``--start-from`` says: ``earliest`` learns its whole history (with exactly-once, from its
beginning even when the group committed some of it: what was published is replayed), ``latest``
only what is written from then on. A rollback before its first checkpoint goes back to where
this run started reading it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.evaluation.resume_settings import resume_with_settings
from stream_lstm.kafka.interface import KafkaClient, Partition
from stream_lstm.learner.placement import learners_fall_back_to, learners_on_cpu
from stream_lstm.learner.process import LearnerProcess
from stream_lstm.models.protocols import TrainedModel, models_that
from stream_lstm.service.ledger import Ledger, PartitionProgress
from stream_lstm.service.settings import ServiceSettings
from stream_lstm.state.directory_store import CheckpointStore

log = logging.getLogger(__name__)


class Recovery:
    """Loads the learner and the partitions' checkpoints, and seeks the consumer to match them."""

    def __init__(
        self,
        store: CheckpointStore,
        settings: ServiceSettings,
        ledger: Ledger,
        new_evaluator: Callable[[], PrequentialEvaluator],
    ) -> None:
        self.store = store
        self.settings = settings
        self.ledger = ledger
        self.new_evaluator = new_evaluator
        #: The child process the trained model runs in, with ``learner_process``.
        self.learner_process: LearnerProcess | None = None

    # ------------------------------------------------------------------ the learner

    def load_placed_evaluator(self, *, latest: bool = True) -> PrequentialEvaluator:
        """:meth:`load_evaluator`, then :meth:`place_learner`. A learner bound for the learner
        process is built here on the CPU: on a GPU host this process would otherwise open a CUDA
        context of its own only to pass the weights on. A checkpoint's learner whose device this
        host lacks is restored on the service's ``--device``."""
        current = self.settings.learner_settings
        with (
            learners_on_cpu(self.settings.learner_process),
            learners_fall_back_to(current.get("device") if current is not None else None),
        ):
            evaluator = self.load_evaluator(latest=latest)
        return self.place_learner(evaluator)

    def load_evaluator(self, *, latest: bool = True) -> PrequentialEvaluator:
        """This instance's last weights; else warm-start from another instance's; else fresh.

        ``latest=False`` (a rollback) lets the store answer from what it already holds.
        """
        instance_id = self.settings.instance_id
        own = self.store.load_instance(instance_id, latest=latest)
        if own is not None:
            log.info(
                "instance %s resumes its learner from %s (%d events learned)",
                instance_id,
                self.store.describe(),
                own.evaluator.events,
            )
            return self._with_current_settings(own.evaluator, f"the checkpoint of instance {instance_id}")
        other = self.store.newest_other_instance(instance_id, latest=latest)
        if other is not None:
            log.info(
                "instance %s starts from the weights of instance %s (%d events learned) in %s",
                instance_id,
                other.instance,
                other.evaluator.events,
                self.store.describe(),
            )
            # The same rules as for its own checkpoint: it goes on with that instance's weights.
            evaluator = self._with_current_settings(
                other.evaluator, f"the checkpoint of instance {other.instance}, to warm-start from,"
            )
            evaluator.reset_scores()
            return evaluator
        if self.store.root is not None and (self.store.root / "state.ckpt").exists():
            log.warning(
                "%s holds a checkpoint of stream-lstm 0.1's single-file format, which this version "
                "does not read: starting a fresh learner",
                self.store.root / "state.ckpt",
            )
        log.info(
            "no checkpoint in %s: instance %s starts a fresh learner", self.store.describe(), instance_id
        )
        return self.new_evaluator()

    def _with_current_settings(self, evaluator: PrequentialEvaluator, source: str) -> PrequentialEvaluator:
        """``evaluator`` once its settings are found to agree with the service's, the changeable
        ones applied (:mod:`stream_lstm.evaluation.resume_settings`); ConfigError otherwise."""
        current = self.settings.learner_settings
        if current is None:
            return evaluator
        return resume_with_settings(evaluator, current, f"{source} in {self.store.describe()}")

    def place_learner(self, evaluator: PrequentialEvaluator) -> PrequentialEvaluator:
        """Move the evaluator's trained model into the learner process, if the settings ask for one."""
        trained = models_that(evaluator.models, TrainedModel)
        if not self.settings.learner_process or not trained:
            return evaluator
        name, learner = next(iter(trained.items()))
        if self.learner_process is None:
            self.learner_process = LearnerProcess(learner, torch_threads=self.settings.torch_threads)
            log.info("the LSTM runs in process %s", self.learner_process.pid)
        else:
            self.learner_process.load(learner)
        evaluator.models[name] = self.learner_process
        return evaluator

    def close_learner_process(self) -> None:
        if self.learner_process is not None:
            self.learner_process.close()
            self.learner_process = None

    # ------------------------------------------------------------------ partitions

    def restore_partition(
        self, partition: Partition, evaluator: PrequentialEvaluator, *, latest: bool = True
    ) -> str | None:
        """Take ``partition``'s checkpoint from the store: its offset, counts and key states.

        Returns why it cannot be continued (damaged, or written with other model sizes), which
        must stop the service: going on would overwrite it with state that lost its keys.
        ``latest=True`` is a takeover (an assignment): the partition's ownership epoch becomes
        later than the checkpoint's. A rollback (``latest=False``) keeps the epoch it holds, so
        that an owner that lost the partition stays stale whatever it reloads.
        """
        try:
            saved = self.store.load_partition(partition, latest=latest)
            if saved is None:
                return None
            evaluator.import_keys(saved.key_state)
        except Exception as error:
            return (
                f"cannot continue partition {partition[0]}:{partition[1]} from its checkpoint: {error}. "
                "Fix the cause (e.g. instances with different model settings), or move that "
                "checkpoint aside to start the partition's keys afresh."
            )
        self.ledger.restored(
            partition,
            PartitionProgress(
                offset=saved.offset,
                events=saved.events,
                dead_letters=saved.dead_letters,
                keys=set(saved.keys),
            ),
        )
        if latest:  # taking the partition over, not rolling back: keep the epoch of a rollback
            self.ledger.continue_epoch(partition, saved.epoch)
        log.info(
            "partition %s:%d: continuing at offset %d with %d keys (checkpoint of instance %s)",
            *partition,
            saved.offset,
            len(saved.keys),
            saved.instance or "?",
        )
        return None

    def seek_pending(self, kafka: KafkaClient) -> None:
        """Rewind the partitions a rollback left ahead of the learner; retried until it works."""
        ledger = self.ledger
        for partition in ledger.waiting_for_seek():
            try:
                if partition in ledger.progress:
                    self.seek_to_resume_point(kafka, partition)
                else:
                    self._seek_without_checkpoint(kafka, partition)
            except Exception as error:  # the broker may still be away: try again next step
                log.warning("cannot rewind %s yet: %s", partition, error)
                continue
            ledger.rewound(partition)

    def seek_to_resume_point(self, kafka: KafkaClient, partition: Partition) -> None:
        """Seek to the checkpoint's offset; without one, the group's committed offset applies."""
        progress = self.ledger.progress.get(partition)
        exactly_once = self.settings.kafka.exactly_once
        if progress is not None:
            kafka.seek(partition, progress.offset)
        elif exactly_once and self.settings.kafka.start_from == "earliest":
            # The learner has never seen this partition, but a crashed run may have committed
            # some of it: learn it from the start; the replay keeps it from being re-published.
            kafka.seek_to_beginning(partition)
        # Else no seek: the client starts at the committed offset, or at the end without one.
        if exactly_once:
            self.ledger.check_committed(partition)

    def _seek_without_checkpoint(self, kafka: KafkaClient, partition: Partition) -> None:
        exactly_once = self.settings.kafka.exactly_once
        latest = self.settings.kafka.start_from == "latest"
        first_read = self.ledger.first_read.get(partition)
        if latest and first_read is not None:
            # "The end" has moved since this run started there: go back to where it started.
            kafka.seek(partition, first_read)
        elif exactly_once and not latest:
            kafka.seek_to_beginning(partition)
        else:
            kafka.seek_to_committed(partition)  # without a committed offset: as --start-from says
        if exactly_once:
            self.ledger.check_committed(partition)

    def check_committed_offsets(self, kafka: KafkaClient) -> None:
        """Exactly-once: find events a crashed run published and committed after its checkpoint.

        Runs in the main thread after a poll (it blocks on the broker, which kafka-python forbids
        in rebalance callbacks) and before that poll's messages are processed.
        """
        ledger = self.ledger
        while (partition := ledger.next_unchecked()) is not None:
            ledger.committed_read(partition, kafka.committed(partition))
