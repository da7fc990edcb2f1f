"""The exception hierarchy: one root, one small class per area."""


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


class EvaluationError(StreamLSTMError):
    """An offline evaluation could not finish (e.g. its second process failed)."""
