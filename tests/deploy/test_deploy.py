"""The deployment files: Prometheus config and alerts, the Grafana dashboard, the compose stack."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
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
    # A container that is gone leaves no up series behind (Docker's DNS drops its name).
    target_down = next(rule for rule in rules if rule["alert"] == "StreamLSTMTargetDown")
    assert 'absent(up{job="stream-lstm"})' in target_down["expr"]
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
                  "dead letters", "checkpoint age", "gpu memory", "who is winning now"):  # fmt: skip
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


def test_the_log_loss_panel_gives_no_change_an_axis_of_its_own() -> None:
    """no_change's log loss is in the tens (a certain miss costs ~34.5): on a shared axis it flattens
    the LSTM's and logreg's. Grafana gives a series its own axis when its label differs."""
    dashboard = json.loads(DASHBOARD.read_text())
    panel = next(panel for panel in dashboard["panels"] if "log loss" in panel["title"].lower())
    assert all("{{model}}" in target["legendFormat"] for target in panel["targets"])
    shared = panel["fieldConfig"]["defaults"].get("custom", {})
    override = next(
        override
        for override in panel["fieldConfig"]["overrides"]
        if re.match(override["matcher"]["options"], "no_change a:9100")
    )
    assert override["matcher"]["id"] == "byRegexp"
    assert not re.match(override["matcher"]["options"], "lstm a:9100")
    properties = {item["id"]: item["value"] for item in override["properties"]}
    assert properties["custom.axisPlacement"] == "right" != shared.get("axisPlacement", "auto")
    assert properties["custom.axisLabel"] != shared.get("axisLabel")


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


def kafka_listeners(environment: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """Each listener of the apache/kafka service: name -> (bound address, advertised address, protocol)."""

    def by_name(variable: str, separator: str) -> dict[str, str]:
        return dict(item.split(separator, 1) for item in environment[variable].split(","))

    bound = by_name("KAFKA_LISTENERS", "://")
    advertised = by_name("KAFKA_ADVERTISED_LISTENERS", "://")
    protocols = by_name("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", ":")
    return {name: (bound[name], advertised.get(name, ""), protocols[name]) for name in bound}


def dockerfile_final_stage() -> list[tuple[str, str]]:
    """The instructions of deploy/Dockerfile's last stage as (KEYWORD, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    instructions = [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line.strip() else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_the_image_runs_as_a_non_root_user_that_owns_the_checkpoint_volume() -> None:
    """Read from the Dockerfile: there is no Docker engine where the tests run, so the image is not built.

    The last stage switches to a numeric, non-root USER (Kubernetes' runAsNonRoot can check only a
    number) made by useradd, and hands it the checkpoint folder before declaring the VOLUME there
    (Docker discards changes to a volume's path after VOLUME; a new named volume takes the owner of
    the image's folder). The health check still runs, as that user, against the metrics port.
    """
    stage = dockerfile_final_stage()
    keywords = [keyword for keyword, _ in stage]
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, "the final stage sets no USER: the container would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]
    runs = " && ".join(args for keyword, args in stage if keyword == "RUN")
    useradd = re.search(r"useradd\b[^&;]*?--uid (\d+)[^&;]*?\s([a-z][-a-z0-9]*)\s*(?:&&|;|$)", runs)
    assert useradd and useradd.group(1) == uid, "USER is not the uid of a user the image creates"
    name = useradd.group(2)
    env = dict(re.findall(r"(STREAM_LSTM_[A-Z_]+)=(\S+)", " ".join(a for k, a in stage if k == "ENV")))
    checkpoints = env["STREAM_LSTM_CHECKPOINT_DIR"]
    volume = keywords.index("VOLUME")
    assert stage[volume][1].strip('[]" ') == checkpoints
    chown = re.search(rf"chown (?:-R )?({name}|{uid})(?::\S+)? {re.escape(checkpoints)}(?:\s|$)", runs)
    assert chown, f"the image does not hand {checkpoints} to {name}"
    owning_run = next(
        i for i, (keyword, args) in enumerate(stage) if keyword == "RUN" and chown.group(0).strip() in args
    )
    assert owning_run < volume < keywords.index("USER")
    healthcheck = next(args for keyword, args in stage if keyword == "HEALTHCHECK")
    assert f"127.0.0.1:{env['STREAM_LSTM_METRICS_PORT']}/healthz" in healthcheck
    assert keywords[-2:] == ["ENTRYPOINT", "CMD"]


def test_the_image_builds_the_package_with_its_readme_and_license() -> None:
    """`pip install .` in the image reads the files pyproject.toml names: a missing license file
    would give a wheel without its license."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    copied = {name for line in text.splitlines() if line.startswith("COPY ") for name in line.split()[1:-1]}
    assert {"pyproject.toml", project["readme"], *project["license-files"]} <= copied, copied


@pytest.mark.parametrize(
    "files",
    [
        ["docker-compose.yml"],
        ["docker-compose.yml", "docker-compose.gpu.yml"],
        ["docker-compose.yml", "docker-compose.sasl.yml"],
    ],
)
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
    # Clients on the host reach Kafka on a listener that advertises localhost, published to
    # 127.0.0.1 only; the containers keep theirs.
    kafka = services["kafka"]
    listeners = kafka_listeners(kafka["environment"])
    assert listeners["PLAINTEXT"][1] == env["STREAM_LSTM_BOOTSTRAP_SERVERS"] == "kafka:9092"
    bound, advertised, protocol = listeners["HOST"]
    host, port = advertised.split(":")
    assert host == "localhost" and protocol == "PLAINTEXT" and bound == f":{port}"
    assert kafka["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert kafka["environment"]["KAFKA_INTER_BROKER_LISTENER_NAME"] == "PLAINTEXT"
    # The GPU overlay reserves an NVIDIA GPU with the compose device syntax and selects CUDA.
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]["stream-lstm"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["STREAM_LSTM_DEVICE"] == "cuda"


@pytest.mark.parametrize("doc", ["README.md", "docs/service.md"])
def test_the_docs_show_how_to_produce_and_consume_from_the_host(doc: str) -> None:
    """The compose stack's docs name the host listener in a produce line and show a console consumer."""
    kafka = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["kafka"]
    host_address = kafka_listeners(kafka["environment"])["HOST"][1]
    text = re.sub(r"\\\n\s*", "", (ROOT / doc).read_text())  # shell lines joined
    produce = re.search(rf"stream-lstm produce --bootstrap-servers {host_address} --topic (\S+)", text)
    assert produce, f"{doc} has no produce line for {host_address}"
    assert produce.group(1) == "events"
    consumer = re.search(r"docker compose exec kafka \S+/kafka-console-consumer\.sh .*--topic (\S+)", text)
    assert consumer and consumer.group(1) == "predictions", f"{doc} has no console-consumer line"


def test_the_sasl_overlay_connects_the_stack_with_settings_the_service_has() -> None:
    """docker-compose.sasl.yml: the broker's SASL_SSL listener, and clients that use it with a secret file."""
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    overlay = yaml.safe_load((ROOT / "docker-compose.sasl.yml").read_text())
    services = overlay["services"]
    kafka = services["kafka"]["environment"]
    listeners = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert protocols["SASL_SSL"] == "SASL_SSL" and protocols[kafka["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert "SCRAM-SHA-512" in kafka["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    # The base stack's own tools (health check, topics) still reach the PLAINTEXT listener.
    assert listeners["PLAINTEXT"] == base["topics"]["command"][0].split("--bootstrap-server ")[1].split()[0]
    assert "localhost:9092" in base["kafka"]["healthcheck"]["test"][1]
    # The secrets the overlay mounts are the files make-secrets.sh writes.
    script = (ROOT / "deploy" / "sasl" / "make-secrets.sh").read_text()
    secret_files = {name: Path(spec["file"]).name for name, spec in overlay["secrets"].items()}
    broker_files = [kafka[key] for key in kafka if key.endswith(("_FILENAME", "_CREDENTIALS"))]
    broker_files.append(kafka["KAFKA_OPTS"].rsplit("/", 1)[1])
    for name in [*secret_files.values(), *broker_files]:
        assert re.search(rf"^#\s+{re.escape(name)}\s", script, re.MULTILINE), name
    assert "./deploy/sasl/secrets:/etc/kafka/secrets:ro" in services["kafka"]["volumes"]
    assert "deploy/sasl/secrets/" in (ROOT / ".gitignore").read_text().splitlines()
    # stream-lstm and the producer log in on the SASL_SSL listener with settings they have.
    for service, settings in (("stream-lstm", RUN_SETTINGS), ("producer", PRODUCE_SETTINGS)):
        env = services[service]["environment"]
        known = {s.env for s in settings} | {s.env + "_FILE" for s in settings if s.secret}
        assert set(env) <= known, set(env) - known
        assert env["STREAM_LSTM_BOOTSTRAP_SERVERS"] == listeners["SASL_SSL"]
        assert env["STREAM_LSTM_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["STREAM_LSTM_SASL_MECHANISM"] in kafka["KAFKA_SASL_ENABLED_MECHANISMS"]
        assert "STREAM_LSTM_SASL_PASSWORD" not in env, "the password comes from a secret file"
        mounted = {f"/run/secrets/{name}" for name in services[service]["secrets"]}
        assert {env["STREAM_LSTM_SASL_PASSWORD_FILE"], env["STREAM_LSTM_SSL_CA_FILE"]} <= mounted
        assert services[service]["depends_on"]["kafka-users"]["condition"] == "service_completed_successfully"
    username = services["stream-lstm"]["environment"]["STREAM_LSTM_SASL_USERNAME"]
    assert f"--entity-name {username}" in services["kafka-users"]["command"][0]
    assert "prometheus" not in services and "grafana" not in services
    # The host listener keeps its address (the base stack publishes its port) and takes SASL_SSL
    # logins with the certificate, which names localhost too.
    base_listeners = kafka_listeners(base["kafka"]["environment"])
    overlay_listeners = kafka_listeners({**base["kafka"]["environment"], **kafka})
    assert overlay_listeners["HOST"] == (*base_listeners["HOST"][:2], "SASL_SSL")
    assert "DNS:localhost" in script
    assert "ports" not in services["kafka"]
