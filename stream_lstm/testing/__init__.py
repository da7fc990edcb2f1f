"""Test helpers for code that talks to Kafka or to a checkpoint store, without a broker or a disk.

* :class:`~stream_lstm.testing.scripted_kafka.ScriptedKafka`: a
  :class:`~stream_lstm.kafka.interface.KafkaClient` that serves fixed partitions of messages,
  plays rebalances and failures at the polls a test names, and, like a real producer, holds
  every produced record until a flush (or an exactly-once commit) delivers it: a record that is
  never flushed is never delivered.
* :class:`~stream_lstm.testing.memory_store.MemoryStore`: a
  :class:`~stream_lstm.state.store.CheckpointStore` in memory that keeps every version it was
  given, encoded as a checkpoint is, and can refuse writes.

Both are part of the package so that each part of the service (and a user's own extension) can
be tested on its own; the service's unit tests (``tests/unit/service``) use them, the tests
against a real broker (``tests/integration``) check the same service end to end.

Those tests run on Apache Kafka too: :mod:`stream_lstm.testing.apache_kafka` runs a single-node
KRaft broker from the jars Maven fetches (:mod:`stream_lstm.testing.kafka_jars`), with secured
listeners whose throwaway certificates :mod:`stream_lstm.testing.certificates` makes. They are
imported by name, not from here: they need Java, Maven and the ``cryptography`` package.
"""

from stream_lstm.testing.memory_store import MemoryStore
from stream_lstm.testing.scripted_kafka import ScriptedKafka, messages_of

__all__ = ["MemoryStore", "ScriptedKafka", "messages_of"]
