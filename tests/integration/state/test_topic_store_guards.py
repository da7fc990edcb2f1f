"""The topic store on the real brokers: a non-finite state is never sent, and a record holding
one is never loaded (it is skipped with a warning)."""

from __future__ import annotations

import logging
import math
import re
import uuid

import pytest
import torch

from stream_lstm.errors import CheckpointError
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.messages.events import Event
from stream_lstm.state.directory_store import InstanceState
from stream_lstm.state.topic_store import KafkaTopicStore
from tests.integration.conftest import Broker


def test_a_poisoned_instance_is_not_sent_and_a_poisoned_record_is_not_loaded(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"ckpt-{uuid.uuid4().hex[:12]}"
    writer = KafkaTopicStore(broker.bootstrap_servers, topic)
    reader = KafkaTopicStore(broker.bootstrap_servers, topic)
    try:
        evaluator = PrequentialEvaluator(build_models(["lstm"], lstm={"hidden_size": 4, "device": "cpu"}))
        evaluator.process([Event(key="k", features={"x": 1.0}, label=1)] * 4)
        writer.save_instance(InstanceState(evaluator=evaluator, instance="a"))
        with torch.no_grad():
            evaluator.models["lstm"].network.head.weight[0, 0] = math.nan
        end = writer._log.end_offset()
        with pytest.raises(CheckpointError, match=r"instances/a in Kafka topic .* not written.*head\.weight"):
            writer.save_instance(InstanceState(evaluator=evaluator, instance="a"))
        assert writer._log.end_offset() == end  # nothing sent
        assert not torch.isnan(reader.load_instance("a").evaluator.models["lstm"].network.head.weight).any()
        # Sent by going around the check (as an older version could have): another store refuses it.
        with monkeypatch.context() as patch:
            patch.setattr("stream_lstm.state.topic_store.check_finite", lambda *args, **kwargs: None)
            writer.save_instance(InstanceState(evaluator=evaluator, instance="a"))
        with caplog.at_level(logging.WARNING, logger="stream_lstm.state.topic_screen"):
            assert reader.load_instance("a") is None  # skipped; its writer replaced the version before
        assert re.search(r"instances/a in Kafka topic .* refused.*head\.weight", caplog.text)
        assert reader.newest_other_instance("b") is None  # a warm start skips it
    finally:
        writer.close()
        reader.close()
