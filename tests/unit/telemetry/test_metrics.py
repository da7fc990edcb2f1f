"""The metrics registry and the /metrics and /healthz endpoints, over real HTTP."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from stream_lstm.cli.main import main
from stream_lstm.telemetry.metrics import METRICS, MetricsServer, Telemetry


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_metrics_and_health_endpoints() -> None:
    telemetry = Telemetry(CollectorRegistry())
    telemetry.events.labels(outcome="processed").inc(5)
    telemetry.dead_letters.labels(reason="not_json").inc()
    telemetry.set_scores(
        {"lstm": {"accuracy": 0.9, "log_loss": 0.3, "roc_auc": 0.95, "kappa_temporal": 0.4,
                  "rolling": {"accuracy": 0.8, "log_loss": 0.4, "roc_auc": 0.9, "kappa_temporal": 0.2}}}
    )  # fmt: skip
    health = {"ready": True}
    server = MetricsServer(
        telemetry.registry,
        lambda: (health["ready"], {"broker_connected": health["ready"]}),
        host="127.0.0.1",
        port=0,
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = get(f"{base}/metrics")
        text = body.decode()
        assert status == 200
        assert 'stream_lstm_events_total{outcome="processed"} 5.0' in text
        assert 'stream_lstm_dead_letters_total{reason="not_json"} 1.0' in text
        assert 'stream_lstm_accuracy{model="lstm",scope="rolling"} 0.8' in text
        assert 'stream_lstm_kappa_temporal{model="lstm",scope="stream"} 0.4' in text
        status, body = get(f"{base}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        health["ready"] = False
        status, body = get(f"{base}/healthz")
        assert status == 503 and json.loads(body) == {"status": "not_ready", "broker_connected": False}
        assert get(f"{base}/nope")[0] == 404
    finally:
        server.stop()
    assert telemetry.registry.get_sample_value("stream_lstm_events_total", {"outcome": "processed"}) == 5


def test_run_reports_a_busy_metrics_port_clearly(tmp_path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        flags = [
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(port),
            "--checkpoint-dir",
            str(tmp_path),
        ]
        status = main(["run", *flags, "--models", "no_change"])
    assert status == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in capsys.readouterr().err


def test_run_rejects_bad_flags_with_usage(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--metrics-port", "http"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: stream-lstm run" in err and "--metrics-port" in err


def test_every_metric_is_named_by_the_conventions() -> None:
    for family in Telemetry(CollectorRegistry()).registry.collect():
        assert family.name.startswith("stream_lstm_") and family.documentation, family.name
        if family.type == "counter":  # prometheus_client names the family without the suffix
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name


def test_the_counters_of_refused_work_count_by_bounded_labels() -> None:
    telemetry = Telemetry(CollectorRegistry())
    value = telemetry.registry.get_sample_value
    # Label values known in advance are exported at 0, so rate() and alerts see them from the start.
    for reason in ("non_finite_loss", "non_finite_gradient"):
        assert value("stream_lstm_skipped_updates_total", {"reason": reason}) == 0
    for output in ("predictions", "dead_letters"):
        assert value("stream_lstm_rejected_records_total", {"output": output}) == 0
    telemetry.skipped_updates.labels(reason="non_finite_gradient").inc()
    telemetry.features_dropped.labels(model="lstm").inc(3)
    telemetry.rejected_records.labels(output="dead_letters").inc(2)
    telemetry.skipped_records.labels(reason="dead_letter_rejected").inc()
    assert value("stream_lstm_skipped_updates_total", {"reason": "non_finite_gradient"}) == 1
    assert value("stream_lstm_features_dropped_total", {"model": "lstm"}) == 3
    assert value("stream_lstm_rejected_records_total", {"output": "dead_letters"}) == 2
    assert value("stream_lstm_skipped_records_total", {"reason": "dead_letter_rejected"}) == 1


def test_every_declared_metric_is_a_typed_attribute_of_telemetry() -> None:
    telemetry = Telemetry(CollectorRegistry())
    attributes = {declaration.attribute for declaration in METRICS}
    assert attributes == set(Telemetry.__annotations__)
    assert set(telemetry.scores) == {d.key for d in METRICS if d.attribute == "scores"}
    registered = {family.name for family in telemetry.registry.collect()}
    assert len(registered) == len(METRICS)


def test_the_mixture_weights_are_a_gauge_per_model() -> None:
    telemetry = Telemetry(CollectorRegistry())
    telemetry.set_mixture_weights({"lstm": 0.7, "logreg": 0.2, "base_rate": 0.1})
    weights = {
        sample.labels["model"]: sample.value
        for family in telemetry.registry.collect()
        if family.name == "stream_lstm_mixture_weight"
        for sample in family.samples
    }
    assert weights == {"lstm": 0.7, "logreg": 0.2, "base_rate": 0.1}
