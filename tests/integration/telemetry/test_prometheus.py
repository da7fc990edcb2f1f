"""A real Prometheus scrapes the service on the embedded broker; its answers match what was sent."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from stream_lstm.config.declared import DEFAULT_MODELS
from stream_lstm.kafka.broker import free_port
from stream_lstm.offline.generator import temporal_stream
from tests.deploy.external_tools import required_tool
from tests.integration.conftest import Broker
from tests.integration.service_harness import ServiceProcess, produce, produce_raw, wait_for

pytestmark = pytest.mark.slow


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["data"]["result"]
    except OSError:
        return []


def scalar(port: int, expr: str) -> float | None:
    result = query(port, expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_consistent_metrics(
    broker: Broker, group_id: str, tmp_path: Path, kafka_client: str
) -> None:
    prometheus = required_tool("prometheus")
    suffix = uuid.uuid4().hex[:10]
    topics = {"input": f"in-{suffix}", "output": f"out-{suffix}", "dead": f"dead-{suffix}"}
    broker.create_topics(list(topics.values()))
    good, bad = 400, 7
    produce(broker.bootstrap_servers, topics["input"], temporal_stream(good, n_keys=5, seed=4))
    produce_raw(broker.bootstrap_servers, topics["input"], [(b"k", b"not json")] * bad)
    service = ServiceProcess(
        broker.bootstrap_servers,
        topics,
        group_id,
        tmp_path,
        "--checkpoint-interval",
        "1",
        "--kafka-client",
        kafka_client,
    ).start()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    target = f"127.0.0.1:{service.metrics_port}"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: stream-lstm\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
    )  # fmt: skip
    try:
        wait_for(lambda: scalar(port, 'up{job="stream-lstm"}') == 1, 60, "Prometheus to scrape the service")
        wait_for(
            lambda: scalar(port, "sum(stream_lstm_events_total)") == good + bad,
            90,
            service.quoting_log(f"Prometheus to see all {good + bad} events"),
        )
        assert scalar(port, 'stream_lstm_events_total{outcome="processed"}') == good
        assert scalar(port, 'stream_lstm_events_total{outcome="dead_lettered"}') == bad
        assert scalar(port, 'stream_lstm_dead_letters_total{reason="not_json"}') == bad
        assert scalar(port, 'stream_lstm_predictions_total{model="lstm"}') == good
        assert scalar(port, "stream_lstm_event_latency_seconds_count") == good
        assert scalar(port, "stream_lstm_broker_connected") == 1
        wait_for(lambda: scalar(port, "stream_lstm_learned_events") == good, 30, "learned events")
        wait_for(
            lambda: (scalar(port, 'stream_lstm_checkpoints_total{result="written"}') or 0) >= 1,
            30,
            "a checkpoint",
        )
        models = {r["metric"]["model"] for r in query(port, 'stream_lstm_accuracy{scope="rolling"}')}
        assert models == set(DEFAULT_MODELS)
        stages = {r["metric"]["stage"] for r in query(port, "stream_lstm_batch_stage_seconds_count > 0")}
        assert {"decode", "predict", "produce", "learn", "checkpoint"} <= stages
        info = query(port, "stream_lstm_learner_info")
        assert info and info[0]["metric"]["device"] == "cpu" and info[0]["metric"]["hidden_size"] == "16"
        wait_for(lambda: query(port, "stream_lstm_consumer_lag"), 30, "consumer lag per partition")
        assert scalar(port, "stream_lstm_keys_tracked") == 5
        assert service.terminate() < 10
    finally:
        server.terminate()
        server.wait(timeout=10)
        service.cleanup()
