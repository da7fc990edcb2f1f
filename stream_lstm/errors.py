"""The exception hierarchy: one root, one small class per area, every one exported from here.

The errors that several areas share are declared here; those of one area (Kafka I/O, the
embedded broker, the learner process) are declared in that area's module and exported here too
(:data:`AREA_ERRORS`), so ``from stream_lstm.errors import ...`` reaches every error.
"""


class StreamLSTMError(Exception):
    """Root of every error raised on purpose by stream-lstm."""


class EventError(StreamLSTMError, ValueError):
    """An event (a CSV row or a message) is malformed.

    ``code`` is one of a small fixed set (``not_json``, ``bad_label``, ...), fit for a metric
    label; the message says exactly what was wrong.
    """

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


class ConfigError(StreamLSTMError, ValueError):
    """A setting or hyperparameter has a value that cannot work."""


class CheckpointError(StreamLSTMError):
    """A checkpoint could not be written or read back."""


class StaleCheckpointError(CheckpointError):
    """A partition's checkpoint was not written: a later owner of the partition wrote one already.

    The writer lost the partition without noticing yet (it was frozen, say, while the group gave
    the partition to another instance), so its state of that partition is older than the store's.
    """


class CheckpointRejected(CheckpointError):
    """A stored checkpoint (file, or record of the checkpoint topic) was refused and not loaded.

    ``reason`` is one of :data:`REJECTED_REASONS`, fit for the label of
    ``stream_lstm_checkpoints_rejected_total``; the message says what was wrong and where.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


#: Why a checkpoint was refused: not a checkpoint at all; the old pickle format (which could run
#: code, so it is never loaded: convert a trusted one explicitly); a format version this version
#: does not read; damaged (truncated, inconsistent, non-finite); unsigned or wrongly signed while
#: a signing key is set.
REJECTED_REASONS = (
    "not_a_checkpoint",
    "old_format",
    "unknown_version",
    "damaged",
    "unsigned",
    "bad_signature",
)


class EvaluationError(StreamLSTMError):
    """An offline evaluation could not finish (e.g. its second process failed)."""


#: The errors declared in their own area's module, exported from here too. They are imported
#: when first asked for, so that this module, which every area imports, imports none of them.
AREA_ERRORS = {
    "KafkaIOError": "stream_lstm.kafka.interface",
    "DeliveryPending": "stream_lstm.kafka.interface",
    "DeliveryFailed": "stream_lstm.kafka.interface",
    "RecordsRejected": "stream_lstm.kafka.interface",
    "BrokerError": "stream_lstm.kafka.broker_admin",
    "LearnerProcessError": "stream_lstm.learner.process",
    "TlsSettingsError": "stream_lstm.kafka.connection_tls",
    "WireError": "stream_lstm.kafka.probe_wire",
    "MalformedResponse": "stream_lstm.kafka.probe_wire",
    "ConnectionClosed": "stream_lstm.kafka.probe_wire",
    "ScramError": "stream_lstm.kafka.scram",
    "StoreLogError": "stream_lstm.state.store_log",
    "KafkaJarsUnavailable": "stream_lstm.testing.kafka_jars",
    "KafkaJarsError": "stream_lstm.testing.kafka_jars",
}


def short_repr(value: object, limit: int = 40) -> str:
    """A short ``repr`` of ``value`` for an error message: never the whole of a hostile input.

    >>> short_repr("x" * 100, 10)
    "'xxxxxx..."
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


__all__ = [
    "short_repr",
    "CheckpointError",
    "CheckpointRejected",
    "StaleCheckpointError",
    "ConfigError",
    "EvaluationError",
    "EventError",
    "StreamLSTMError",
    *AREA_ERRORS,
]


def __getattr__(name: str) -> type[StreamLSTMError]:
    """``from stream_lstm.errors import KafkaIOError`` (and the other area errors) works too."""
    module = AREA_ERRORS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
