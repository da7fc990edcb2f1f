"""The deployment files: Prometheus config and alerts, the Grafana dashboard, the compose stack."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream_lstm.config.declared import PRODUCE_SETTINGS, RUN_SETTINGS
from stream_lstm.telemetry.metrics import Telemetry
from tests.deploy.external_tools import required_tool

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "stream-lstm.json"
METRIC_NAME = re.compile(r"\bstream_lstm_[a-z0-9_]+")


def exported_metric_names() -> set[str]:
    """Every series name the service can export, histogram and counter suffixes included."""
    names: set[str] = set()
    for family in Telemetry(CollectorRegistry()).registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        if family.type == "info":
            names.add(family.name + "_info")
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_prometheus_config_and_rules_pass_promtool() -> None:
    promtool = required_tool("promtool")
    subprocess.run(
        [promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS, check=True, capture_output=True
    )
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_names_only_exported_metrics() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = (PROMETHEUS / "alerts_test.yml").read_text()
    expected = {
        "StreamLSTMTargetDown",
        "StreamLSTMConsumerLagGrowing",
        "StreamLSTMConsumptionStalled",
        "StreamLSTMDeadLetterRateHigh",
        "StreamLSTMCheckpointStale",
        "StreamLSTMWorseThanLogreg",
        "StreamLSTMCheckpointRejected",
    }
    assert {rule["alert"] for rule in rules} == expected
    for rule in rules:
        assert f"alertname: {rule['alert']}" in tests, rule["alert"]
        assert set(METRIC_NAME.findall(rule["expr"])) <= exported_metric_names(), rule["alert"]


def test_dashboard_queries_name_only_exported_metrics_and_parse(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "stream-lstm-overview"
    expressions = dashboard_expressions()
    used = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert used and used <= exported_metric_names(), used - exported_metric_names()
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("throughput", "lag", "latency", "accuracy", "log loss", "roc auc", "kappa", "training loss",
                  "dead letters", "checkpoint age", "gpu memory"):  # fmt: skip
        assert topic in titles, topic
    # promtool parses every query as a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(expressions)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [required_tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_the_dashboard_and_the_datasource() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "stream-lstm.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {uid}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['providers'][0]['options']['path']}/{DASHBOARD.name}"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]])
def test_compose_files_validate_offline(files: list[str]) -> None:
    args = [required_tool("docker-compose")]
    for name in files:
        args += ["-f", name]
    result = subprocess.run([*args, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_matches_the_service_flags_files_ports_and_topics() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    known = {setting.env for setting in RUN_SETTINGS}
    env = services["stream-lstm"]["environment"]
    assert set(env) <= known, set(env) - known
    assert set(services["producer"]["environment"]) <= {setting.env for setting in PRODUCE_SETTINGS}
    # Every file and folder the stack mounts or builds from exists.
    assert (ROOT / services["stream-lstm"]["build"]["dockerfile"]).is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    # Topics created are the ones the service and the producer use.
    created = dict(
        re.findall(r"(\S+?):(\d+)", services["topics"]["command"][0].split(";")[0].split(" in ")[1])
    )
    assert {
        env["STREAM_LSTM_INPUT_TOPIC"],
        env["STREAM_LSTM_OUTPUT_TOPIC"],
        env["STREAM_LSTM_DEAD_LETTER_TOPIC"],
    } == set(created)
    assert services["producer"]["environment"]["STREAM_LSTM_TOPIC"] == env["STREAM_LSTM_INPUT_TOPIC"]
    # Prometheus scrapes the port the service serves metrics on.
    prometheus = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "stream-lstm")
    assert str(job["dns_sd_configs"][0]["port"]) == env["STREAM_LSTM_METRICS_PORT"]
    assert job["dns_sd_configs"][0]["names"] == ["stream-lstm"]
    assert env["STREAM_LSTM_METRICS_PORT"] in services["stream-lstm"]["expose"]
    # Checkpoints live on a volume, so `docker compose restart stream-lstm` resumes.
    assert any(
        v.endswith(":" + env["STREAM_LSTM_CHECKPOINT_DIR"]) for v in services["stream-lstm"]["volumes"]
    )
    # `docker compose up --scale stream-lstm=2`: no fixed container name or host port to collide
    # on, and each replica names itself in the shared checkpoint store by its host name.
    assert "container_name" not in services["stream-lstm"] and "ports" not in services["stream-lstm"]
    assert "STREAM_LSTM_INSTANCE_ID" not in env
    # The GPU overlay reserves an NVIDIA GPU with the compose device syntax and selects CUDA.
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]["stream-lstm"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["STREAM_LSTM_DEVICE"] == "cuda"
