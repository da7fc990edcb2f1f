"""How a client hands its producer side to a sender, so that a client class stays about consuming.

Each client is a consumer plus a sender (:class:`~stream_lstm.kafka.confluent_sender.ConfluentSender`,
:class:`~stream_lstm.kafka.kafka_python_sender.KafkaPythonSender`) that owns the producer, the
records held for the next transaction and the search for the records a broker refused.
:class:`SendingClient` gives a client the producer's part of
:class:`~stream_lstm.kafka.interface.KafkaClient` by passing each call on to its :attr:`sender`.
"""

from __future__ import annotations

from typing import Any, Protocol

from stream_lstm.kafka.interface import Source


class Sender(Protocol):
    """The producer side of a client (see :class:`~stream_lstm.kafka.interface.KafkaClient`)."""

    #: The library's producer in use now (:meth:`reset` replaces it).
    producer: Any

    def produce(self, topic: str, key: bytes | None, value: bytes, *, source: Source | None = None) -> None:
        """Queue a record (exactly-once: hold it for the transaction)."""
        ...

    def flush(self, timeout_s: float) -> None:
        """Wait for every acknowledgement."""
        ...

    def reset(self) -> None:
        """Replace the producer, dropping unacknowledged records."""
        ...

    def abort(self) -> None:
        """Exactly-once: drop held records and abort an open transaction."""
        ...


class SendingClient:
    """The producer's methods of :class:`~stream_lstm.kafka.interface.KafkaClient`, passed to
    :attr:`sender`."""

    #: Set by the client's ``__init__``.
    sender: Sender

    @property
    def producer(self) -> Any:
        """The library's producer in use now (:meth:`reset_producer` replaces it)."""
        return self.sender.producer

    def produce(self, topic: str, key: bytes | None, value: bytes, *, source: Source | None = None) -> None:
        """Queue a record; :meth:`flush` waits until the broker has acknowledged it (exactly-once:
        hold it for the next ``commit``). See the sender's ``produce`` for what is refused here."""
        self.sender.produce(topic, key, value, source=source)

    def flush(self, timeout_s: float) -> None:
        """Wait until the broker has acknowledged every record sent since the last flush."""
        self.sender.flush(timeout_s)

    def reset_producer(self) -> None:
        """Replace the producer (after a failure it may be stuck); unacknowledged records are dropped."""
        self.sender.reset()

    def abort(self) -> None:
        """Exactly-once mode: drop the held records and abort a transaction left open by a failure."""
        self.sender.abort()
