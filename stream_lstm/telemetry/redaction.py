"""Keep secrets out of every log line, the libraries' own included.

The settings keep passwords and keys as :class:`~stream_lstm.config.secret.Secret`, which never
prints itself; but the client libraries get the values themselves and may log them:
kafka-python logs the repr of its SASL request at DEBUG, and librdkafka's warnings echo a value
given to the wrong property. :class:`RedactingFilter`, on every handler of the root logger, masks
every known secret (:func:`~stream_lstm.config.secret.redact`) in each record's text and
traceback before any handler writes it.
"""

from __future__ import annotations

import logging

from stream_lstm.config.secret import redact


class RedactingFilter(logging.Filter):
    """A handler filter that masks known secrets in a record's message and traceback."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redact_logs(logger: logging.Logger | None = None) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (the root logger by default)."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())


def configure_logging(level: str = "WARNING") -> None:
    """Log to stderr at ``level``, secrets masked: for the commands that talk to Kafka."""
    import sys

    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    redact_logs()
