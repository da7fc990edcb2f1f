"""The service's settings: everything the loop needs besides the models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_lstm.config.secret import Secret
from stream_lstm.kafka.interface import KafkaSettings
from stream_lstm.messages.events import DEFAULT_LIMITS, InputLimits
from stream_lstm.messages.mapping import DEFAULT_MAPPING, MessageMapping
from stream_lstm.state.directory_store import default_instance_id


@dataclass(frozen=True)
class ServiceSettings:
    """Everything the loop needs besides the models."""

    kafka: KafkaSettings
    checkpoint_dir: Path
    #: Keep the checkpoint store in this compacted Kafka topic instead of ``checkpoint_dir``.
    checkpoint_topic: str | None = None
    #: Sign checkpoints with this key and refuse those it did not sign (``--checkpoint-key``);
    #: the previous key is accepted too, during a rotation. Shown as ``***``.
    checkpoint_key: Secret | None = None
    checkpoint_previous_key: Secret | None = None
    batch_size: int = 64
    checkpoint_every: int = 10_000
    checkpoint_interval_s: float = 5.0
    poll_timeout_s: float = 0.2
    flush_timeout_s: float = 10.0
    #: What a message may hold (sizes, magnitudes); the rest goes to the dead-letter topic.
    limits: InputLimits = DEFAULT_LIMITS
    #: Where the key, time, label and features are in a message (``--key``, ``--features-field``, ...).
    mapping: MessageMapping = DEFAULT_MAPPING
    scores_interval_s: float = 1.0
    instance_id: str = field(default_factory=default_instance_id)
    #: Checkpoint (which waits for the broker to acknowledge every record) once the records
    #: produced since the last one reach this many bytes: what waits in the producer, or for the
    #: transaction, stays bounded however many large dead letters a flood of bad input makes.
    max_unflushed_bytes: int = 64 * 2**20
    #: Run the LSTM in a child process (:mod:`stream_lstm.learner.process`), using another CPU.
    learner_process: bool = False
    #: CPU threads torch may use in that process.
    torch_threads: int = 1
    #: The learner settings (``models``, ``window``, ``max_keys``, the LSTM's hyperparameters) a
    #: resumed checkpoint must agree with, or whose changeable ones are applied to it
    #: (:mod:`stream_lstm.evaluation.resume_settings`); ``None``: resumed as saved, unchecked.
    learner_settings: Mapping[str, Any] | None = None
