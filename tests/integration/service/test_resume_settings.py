"""`stream-lstm run` restarted with other learner settings: refused, or applied, never ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_lstm.config.declared import DEFAULT_MODELS
from stream_lstm.offline.generator import temporal_stream
from tests.integration.conftest import Broker, checkpoint_of
from tests.integration.service_harness import TopicReader, produce, wait_for

pytestmark = pytest.mark.slow


def test_a_restart_with_other_sizes_is_refused_and_a_new_step_size_is_applied(
    broker: Broker, topics: dict[str, str], service_factory, tmp_path: Path
) -> None:
    produce(broker.bootstrap_servers, topics["input"], list(temporal_stream(200, n_keys=4, seed=7)))
    first = service_factory().start()  # the harness's --hidden-size 16, the default models
    reader = TopicReader(broker.bootstrap_servers, topics["output"])
    reader.read_until(lambda r: len(r) >= 200, 90, "200 predictions")
    assert first.terminate() < 10
    checkpoint = tmp_path / "checkpoints" / "instances"
    written = {path.name: path.read_bytes() for path in checkpoint.iterdir() if path.suffix == ".ckpt"}

    refused = service_factory("--hidden-size", "8", "--models", "logreg,no_change").start()
    assert refused.process is not None
    wait_for(lambda: refused.process.poll() is not None, 60, refused.quoting_log("the service to stop"))
    assert refused.process.returncode == 2
    log = refused.log()
    assert "hidden_size: checkpoint 16, now 8" in log
    assert f"models: checkpoint {','.join(DEFAULT_MODELS)}, now logreg,no_change" in log
    assert {
        path.name: path.read_bytes() for path in checkpoint.iterdir() if path.suffix == ".ckpt"
    } == written

    applied = service_factory("--learning-rate", "0.1").start()
    applied.wait_ready()
    assert 'learning_rate="0.1"' in applied.metrics() and 'hidden_size="16"' in applied.metrics()
    assert "learning_rate was 0.01 in the checkpoint, now 0.1" in applied.log()
    # The next checkpoint (written once there is something new to save) holds the new value.
    produce(broker.bootstrap_servers, topics["input"], list(temporal_stream(20, n_keys=4, seed=8)))
    reader.read_until(lambda r: len(r) >= 220, 60, "the predictions of the new events")
    assert applied.terminate() < 10
    assert checkpoint_of(tmp_path).evaluator.learner_settings()["learning_rate"] == 0.1
