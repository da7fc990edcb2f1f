"""``stream-lstm run``: the service, from the settings to a running :class:`StreamService`.

The handler wires the pieces together: logging, the metrics server (up before the checkpoint
store is opened, so that a probe sees a starting service), the service itself and the signals
that stop it after the batch in hand.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from stream_lstm import __version__
from stream_lstm.cli.arguments import SubParsers, add_config_argument
from stream_lstm.config.declared import RUN_SETTINGS, check_keys_cover_batch, lstm_arguments, message_mapping
from stream_lstm.config.setting import add_settings
from stream_lstm.errors import ConfigError

if TYPE_CHECKING:
    from stream_lstm.config.secret import Secret
    from stream_lstm.service.stream_service import ServiceSettings


def add_command(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``run`` with its settings."""
    run = commands.add_parser(
        "run",
        help="run the service: consume events from Kafka, predict, learn, checkpoint",
        description=(
            "Consume events from the input topic, write one prediction per event to the output "
            "topic (malformed messages to the dead-letter topic), keep learning, checkpoint the "
            "learner with the offsets, and serve /metrics and /healthz. SIGINT or SIGTERM stops it "
            "after the batch in hand, with a final checkpoint."
        ),
    )
    add_config_argument(run)
    add_settings(run, RUN_SETTINGS)
    run.set_defaults(handler=run_command, settings=RUN_SETTINGS)


def use_learner_process(setting: bool | str) -> bool:
    """Whether ``run`` gives the LSTM a process of its own (``--learner-process``).

    ``auto`` does where a second CPU is there to run it: on one CPU the two processes would
    only take turns, and pay for the pipe between them.
    """
    from stream_lstm.learner.cpu_threads import usable_cpus

    if setting == "auto":
        return usable_cpus() > 1
    return bool(setting)


def checked_key(settings: dict[str, Any], name: str) -> Secret | None:
    """The checkpoint key setting ``name``, refused (:class:`ConfigError`) when too short to be
    a key; its value is never shown."""
    from stream_lstm.state.signing import check_key

    key = settings[name]
    if key is not None:
        check_key(key.reveal(), "--" + name.replace("_", "-"))
    if name == "checkpoint_previous_key" and key is not None and settings["checkpoint_key"] is None:
        raise ConfigError("--checkpoint-previous-key needs a --checkpoint-key to sign with")
    return key


def service_settings(settings: dict[str, Any]) -> ServiceSettings:
    """The service's settings (Kafka, checkpoints, input limits) out of the resolved settings."""
    from pathlib import Path

    from stream_lstm.evaluation.resume_settings import current_learner_settings
    from stream_lstm.kafka.interface import KafkaSettings
    from stream_lstm.kafka.security import security_from_settings
    from stream_lstm.messages.events import InputLimits
    from stream_lstm.service.stream_service import ServiceSettings
    from stream_lstm.state.directory_store import check_instance_id, default_instance_id

    instance_id = check_instance_id(settings["instance_id"] or default_instance_id())
    kafka = KafkaSettings(
        bootstrap_servers=settings["bootstrap_servers"],
        input_topic=settings["input_topic"],
        output_topic=settings["output_topic"],
        dead_letter_topic=settings["dead_letter_topic"],
        group_id=settings["group_id"],
        exactly_once=settings["exactly_once"],
        transactional_id=settings["transactional_id"] or f"stream-lstm-{settings['group_id']}-{instance_id}",
        session_timeout_ms=settings["session_timeout_ms"],
        heartbeat_interval_ms=settings["heartbeat_interval_ms"],
        max_poll_interval_ms=settings["max_poll_interval_ms"],
        fetch_max_wait_ms=settings["fetch_max_wait_ms"],
        start_from=settings["start_from"],
        client=settings["kafka_client"],
        security=security_from_settings(settings),
    )
    return ServiceSettings(
        kafka=kafka,
        checkpoint_dir=Path(settings["checkpoint_dir"]),
        checkpoint_topic=settings["checkpoint_topic"] or None,
        checkpoint_key=checked_key(settings, "checkpoint_key"),
        checkpoint_previous_key=checked_key(settings, "checkpoint_previous_key"),
        batch_size=settings["batch_size"],
        checkpoint_every=settings["checkpoint_every"],
        checkpoint_interval_s=settings["checkpoint_interval"],
        limits=InputLimits(
            max_message_bytes=settings["max_message_bytes"],
            max_key_bytes=settings["max_key_bytes"],
            max_name_bytes=settings["max_name_bytes"],
            max_features=settings["max_message_features"],
            max_abs_value=settings["max_abs_value"],
        ),
        mapping=message_mapping(settings),
        instance_id=instance_id,
        learner_process=use_learner_process(settings["learner_process"]),
        torch_threads=settings["torch_threads"],
        learner_settings=current_learner_settings(settings, lstm_arguments(settings)),
    )


def run_command(args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser) -> int:
    """Run the service until SIGINT or SIGTERM, then stop it with a final checkpoint."""
    import signal
    import threading

    from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_evaluator
    from stream_lstm.kafka.connection_check import problem_health
    from stream_lstm.service.connection_watch import ConnectionWatch
    from stream_lstm.service.stream_service import StreamService
    from stream_lstm.telemetry.metrics import MetricsServer, Telemetry
    from stream_lstm.telemetry.redaction import configure_logging

    configure_logging(settings["log_level"])
    if settings["log_level"].upper() != "DEBUG":
        from stream_lstm.telemetry.log_repeats import quiet_repeats

        quiet_repeats(["kafka"])  # kafka-python's reconnect errors: once a minute per kind
    check_keys_cover_batch(settings)
    if "lstm" in settings["models"]:
        from stream_lstm.learner.cpu_threads import set_cpu_threads

        set_cpu_threads(settings["torch_threads"])

    def new_evaluator() -> PrequentialEvaluator:
        return build_evaluator(
            settings["models"],
            window=settings["window"],
            max_keys=settings["max_keys"],
            lstm=lstm_arguments(settings),
        )

    settings_of_service = service_settings(settings)
    store_name = (
        f"checkpoint topic {settings['checkpoint_topic']}"
        if settings["checkpoint_topic"]
        else f"checkpoint directory {settings['checkpoint_dir']}"
    )

    kafka = settings_of_service.kafka
    watch = ConnectionWatch(kafka.bootstrap_servers, kafka.security)

    def starting() -> tuple[bool, dict[str, Any]]:
        # Connecting, opening the store and loading the checkpoints may take a while (a checkpoint
        # topic waits for its broker): /healthz and /metrics answer meanwhile, so a probe sees a
        # starting service rather than none, and why it cannot connect.
        if watch.problem is not None:
            return False, {
                "starting": f"connecting to Kafka at {kafka.bootstrap_servers}",
                "last_error": watch.problem.message,
                "kafka_connection": problem_health(watch.problem),
            }
        return False, {"starting": f"opening the {store_name} and loading this instance's checkpoint"}

    telemetry = Telemetry()
    try:
        server = MetricsServer(
            telemetry.registry, starting, host=settings["metrics_host"], port=settings["metrics_port"]
        )
    except OSError as error:
        raise ConfigError(
            f"cannot serve metrics on {settings['metrics_host']}:{settings['metrics_port']}: {error.strerror}"
        ) from None
    server.start()
    print(
        f"stream-lstm {__version__}: {settings['input_topic']} -> {settings['output_topic']} "
        f"(dead letters: {settings['dead_letter_topic']}) on {settings['bootstrap_servers']} "
        f"({kafka.security.describe()}), group {settings['group_id']}; "
        f"metrics at http://127.0.0.1:{server.port}/metrics, health at http://127.0.0.1:{server.port}/healthz",
        file=sys.stderr,
        flush=True,
    )
    stop_requested = threading.Event()
    running: list[StreamService] = []

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.set()
        for service in running:
            service.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        # A cluster the settings cannot reach (wrong password, unknown CA, TLS to a plaintext
        # port...) is named here, in the log and /healthz, before anything waits on it in silence.
        if not watch.wait_until_ok(stop_requested):
            print("stream-lstm: stopped before connecting to Kafka", file=sys.stderr, flush=True)
            return 0
        service = StreamService(
            settings_of_service, new_evaluator=new_evaluator, telemetry=telemetry, connection_watch=watch
        )
        running.append(service)
        server.health = service.health
        if stop_requested.is_set():
            service.stop()
        service.run()
    finally:
        server.stop()
    print("stream-lstm: stopped cleanly", file=sys.stderr, flush=True)
    return 0
