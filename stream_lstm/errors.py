"""The exception hierarchy: one root, one small class per area."""


class StreamLSTMError(Exception):
    """Root of every error raised on purpose by stream-lstm."""


class EventError(StreamLSTMError, ValueError):
    """An event (a CSV row or a message) is malformed; ``reason`` says how."""


class ConfigError(StreamLSTMError, ValueError):
    """A setting or hyperparameter has a value that cannot work."""


class CheckpointError(StreamLSTMError):
    """A checkpoint could not be written or read back."""
