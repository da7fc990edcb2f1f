"""Every setting of every command, declared once, grouped by the command that reads it.

A command's settings are a tuple of :class:`~stream_lstm.config.setting.Setting`; the command line
(:mod:`stream_lstm.cli`), the ``STREAM_LSTM_*`` environment, the TOML file and the generated
reference (docs/reference/settings.md) all read these tuples, so each name, parser, default and
help text is written here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from stream_lstm.config.kafka_settings import KAFKA_CLIENT, KAFKA_SETTINGS, SECURITY_SETTINGS, start_position
from stream_lstm.config.secret import secret
from stream_lstm.config.setting import (
    Setting,
    base_rate_odds,
    extra_step_events,
    host_port_list,
    log_level,
    lr_boost_half_life,
    max_abs_value,
    model_list,
    non_negative_float,
    non_negative_int,
    parse_auto_bool,
    parse_bool,
    port_or_any,
    positive_float,
    positive_int,
    steps_per_batch,
    stream_rate_half_life,
    trend_scales,
)
from stream_lstm.errors import ConfigError
from stream_lstm.learner.limits import (
    DEFAULT_BASE_RATE_ODDS,
    DEFAULT_EXTRA_STEP_EVENTS,
    DEFAULT_LR_BOOST_HALF_LIFE,
)
from stream_lstm.messages.categories import DEFAULT_CATEGORY_BUCKETS
from stream_lstm.messages.stream_rate import DEFAULT_STREAM_RATE_HALF_LIFE
from stream_lstm.messages.trend_scales import DEFAULT_TREND_SCALES

#: The models run unless ``--models`` says otherwise: the LSTM, the baselines and their mixture.
DEFAULT_MODELS = ("lstm", "logreg", "logreg_lags", "no_change", "mix")

#: ``evaluate --parallel auto`` uses a second process from this many events on.
PARALLEL_MIN_EVENTS = 5_000

# ---------------------------------------------------------------------- the learner (evaluate, run)

LEARNER_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "models",
        model_list,
        DEFAULT_MODELS,
        "models to run, comma-separated (mix: their mixture by past log loss)",
    ),
    Setting("batch_size", positive_int, 64, "events per micro-batch (1: learn after every event)"),
    Setting("window", positive_int, 1000, "labelled events in the rolling scores"),
    Setting("hidden_size", positive_int, 32, "LSTM state size"),
    Setting("tbptt_steps", positive_int, 8, "steps a gradient flows back through, per key"),
    Setting("learning_rate", non_negative_float, 0.01, "Adam step size of the LSTM (0 freezes it)"),
    Setting(
        "lr_boost_half_life",
        lr_boost_half_life,
        DEFAULT_LR_BOOST_HALF_LIFE,
        "half-life, in optimizer steps, of the LSTM's early boost: its first step takes twice"
        " --learning-rate, and the extra halves every this many steps (0: none; else at least 1)",
    ),
    Setting("clip_grad_norm", float, 1.0, "largest gradient norm of an LSTM step"),
    Setting(
        "steps_per_batch",
        steps_per_batch,
        2,
        "LSTM optimizer steps on each micro-batch (more learn more per event, at some speed)",
    ),
    Setting(
        "extra_step_events",
        extra_step_events,
        DEFAULT_EXTRA_STEP_EVENTS,
        "micro-batches that start within a stream's first this many labelled events take one LSTM"
        " optimizer step more than --steps-per-batch (0: none; tuned at batch 64)",
    ),
    Setting(
        "base_rate_odds",
        base_rate_odds,
        DEFAULT_BASE_RATE_ODDS,
        "prior log-odds, in nats, of the LSTM's network against the base rate (the rate of positive"
        " labels so far): its predictions are their average by past likelihood, the network's own"
        " wherever it beats the base rate (0: off)",
    ),
    Setting("max_keys", positive_int, 100_000, "keys with a state; the least recently seen go first"),
    Setting("max_features", positive_int, 32, "distinct feature names the LSTM takes as inputs"),
    Setting(
        "input_clip",
        positive_float,
        10.0,
        "standardised inputs of the LSTM and logreg are clipped to plus or minus this",
    ),
    Setting(
        "category_buckets",
        non_negative_int,
        DEFAULT_CATEGORY_BUCKETS,
        "inputs of the LSTM and logreg for categorical (text) features, hashed by name and value"
        " (0: categories are ignored)",
    ),
    Setting(
        "trend_scales",
        trend_scales,
        DEFAULT_TREND_SCALES,
        "trend inputs of the LSTM and logreg_lags per feature: its distance from the key's moving"
        " averages, at half-lives of 4, 16, 64, ... events (0: none)",
    ),
    Setting(
        "stream_rate_half_life",
        stream_rate_half_life,
        DEFAULT_STREAM_RATE_HALF_LIFE,
        "half-life, in labelled events, of the stream rate: the moving average of every key's"
        " earlier labels, a feature of the LSTM and logreg_lags once there is more than one key"
        " (0: none)",
    ),
    Setting("device", str, "auto", "torch device: auto (CUDA when present), cpu, cuda, cuda:N"),
    Setting("seed", int, 0, "seed of the LSTM's initial weights"),
)

#: The settings that are keyword arguments of the LSTM learner.
LSTM_HYPERPARAMETERS = (
    "hidden_size",
    "tbptt_steps",
    "learning_rate",
    "lr_boost_half_life",
    "clip_grad_norm",
    "steps_per_batch",
    "extra_step_events",
    "base_rate_odds",
    "max_features",
    "category_buckets",
    "trend_scales",
    "stream_rate_half_life",
    "input_clip",
    "device",
    "seed",
)

RUNTIME_SETTINGS: tuple[Setting, ...] = (
    Setting("torch_threads", positive_int, 1, "CPU threads torch may use for the LSTM"),
)


def lstm_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    """The LSTM's keyword arguments out of the resolved settings."""
    return {name: settings[name] for name in LSTM_HYPERPARAMETERS}


def check_keys_cover_batch(settings: dict[str, Any]) -> None:
    """Refuse ``max_keys`` below ``batch_size``: every key of a batch needs a state."""
    if settings["max_keys"] < settings["batch_size"]:
        raise ConfigError(
            f"max_keys ({settings['max_keys']}) must be at least the batch size ({settings['batch_size']}): "
            "every key of a batch needs a state"
        )


# ---------------------------------------------------------------------- where an event is in a message or row


def unit_share(text: str) -> float:
    """A share from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a share from 0 to 1, got {text!r}")
    return value


def field_names(text: str) -> tuple[str, ...]:
    """Comma-separated field or column names (``a,b,c``); spaces around a name are dropped."""
    names = tuple(name.strip() for name in str(text).split(","))
    if not all(names):
        raise ValueError(f"expected names separated by commas, got {text!r}")
    return names


def label_value(text: str) -> str:
    """A label value (``yes``, ``3``): not empty."""
    value = str(text).strip()
    if not value:
        raise ValueError("expected a label value, got an empty one")
    return value


#: Which fields are features and how labels read: shared by messages (run) and CSV rows
#: (evaluate, produce), so that the same options read the same data in both.
FEATURE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "features",
        field_names,
        None,
        "read only these features, comma-separated (default: every field that is not the key, time or label)",
        metavar="NAME,...",
    ),
    Setting(
        "ignore", field_names, (), "never read these fields as features, comma-separated", metavar="NAME,..."
    ),
    Setting(
        "categorical",
        field_names,
        (),
        "these fields are categories even when their values are numbers (a zip code), comma-separated; "
        "in messages, text values are categories anyway (in CSV files only these columns may hold text)",
        metavar="NAME,...",
    ),
    Setting(
        "positive_label",
        label_value,
        None,
        "the label value that means 1 (yes, churned, 3); every other value means 0. Default: labels "
        "are 0/1 or true/false",
        metavar="VALUE",
    ),
)

#: Where an event is in a JSON message (run).
MESSAGE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "key",
        str,
        "key",
        "field of the entity key, a dot path into nested objects (device.id); a message without it "
        "takes its Kafka message key",
        metavar="FIELD",
    ),
    Setting("ts", str, "ts", "field of the event time (seconds or ISO-8601), a dot path", metavar="FIELD"),
    Setting("label", str, "label", "field of the label, a dot path", metavar="FIELD"),
    Setting(
        "features_field",
        str,
        "features",
        "object of the features, a dot path; '.' for flat messages, whose top-level fields other than "
        "the key, time and label are the features",
        metavar="FIELD",
    ),
    *FEATURE_SETTINGS,
)


def message_mapping(settings: dict[str, Any]) -> Any:
    """The :class:`~stream_lstm.messages.mapping.MessageMapping` of the resolved settings."""
    from stream_lstm.messages.mapping import MessageMapping

    return MessageMapping(
        key=settings["key"] or None,
        ts=settings["ts"] or None,
        label=settings["label"] or None,
        features_field=settings["features_field"],
        features=settings["features"],
        ignore=frozenset(settings["ignore"]),
        categorical=frozenset(settings["categorical"]),
        positive_label=settings["positive_label"],
    )


def csv_columns(settings: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :class:`~stream_lstm.offline.csv_source.CsvEventSource` (and
    ``CsvSpec``) in the resolved settings of ``evaluate`` or ``produce``."""
    return {
        "label": settings["label"],
        "key": settings["key"],
        "ts": settings["ts"],
        "features": settings["features"],
        "ignore": settings["ignore"],
        "categorical": settings["categorical"],
        "positive_label": settings["positive_label"],
    }


# ---------------------------------------------------------------------- CSV columns (evaluate, produce)

_KEY_COLUMN = Setting("key", str, None, "name of the key column; without it the file is one stream")
_TS_COLUMN = Setting("ts", str, None, "name of the timestamp column (seconds or ISO-8601)")

# ---------------------------------------------------------------------- stream-lstm run

RUN_SETTINGS: tuple[Setting, ...] = (
    *KAFKA_SETTINGS,
    Setting("input_topic", str, "events", "topic of the input events"),
    Setting("output_topic", str, "predictions", "topic the predictions are written to"),
    Setting("dead_letter_topic", str, "dead-letters", "topic malformed messages are written to"),
    Setting("group_id", str, "stream-lstm", "Kafka consumer group of the service"),
    Setting(
        "start_from",
        start_position,
        "earliest",
        "where a partition starts when the group has no offset for it (none in the checkpoint "
        "store, none committed): earliest (learn the topic's history) or latest (only new events)",
        metavar="earliest|latest",
    ),
    Setting(
        "checkpoint_dir",
        str,
        "checkpoints",
        "checkpoint store: per-partition offsets and key states, per-instance weights "
        "(share it between the instances of a group)",
    ),
    Setting(
        "checkpoint_topic",
        str,
        None,
        "keep the checkpoint store in this compacted Kafka topic instead of --checkpoint-dir, so "
        "the instances of a group share no disk (created when missing)",
        metavar="TOPIC",
    ),
    Setting(
        "instance_id",
        str,
        None,
        "this instance's name in the checkpoint store (default: the host name); "
        "unique among running instances",
    ),
    Setting(
        "checkpoint_key",
        secret,
        None,
        "sign every checkpoint with this key (HMAC-SHA256, 32+ bytes; the same on every instance) "
        "and refuse checkpoints it did not sign (docs/security.md)",
        metavar="KEY",
        secret=True,
    ),
    Setting(
        "checkpoint_previous_key",
        secret,
        None,
        "during a key rotation: also accept checkpoints signed with this old key (never signs)",
        metavar="KEY",
        secret=True,
    ),
    Setting("checkpoint_every", positive_int, 10_000, "checkpoint after this many messages"),
    Setting("checkpoint_interval", positive_float, 5.0, "checkpoint at least this often, in seconds"),
    Setting("metrics_port", port_or_any, 9100, "port of /metrics and /healthz (0: any free port)"),
    Setting("metrics_host", str, "0.0.0.0", "address /metrics and /healthz listen on"),
    Setting("exactly_once", parse_bool, False, "write predictions and offsets in Kafka transactions"),
    Setting(
        "transactional_id",
        str,
        None,
        "--exactly-once: transactional id (default: stream-lstm-GROUP-INSTANCE_ID)",
    ),
    Setting("max_message_bytes", positive_int, 1_000_000, "larger messages go to the dead-letter topic"),
    Setting(
        "max_key_bytes",
        positive_int,
        1024,
        "longest entity key in UTF-8 bytes (the key field, else the message key); longer: dead letter",
    ),
    Setting("max_name_bytes", positive_int, 256, "longest feature name in UTF-8 bytes; longer: dead letter"),
    Setting("max_message_features", positive_int, 256, "most features in one message; more: dead letter"),
    Setting(
        "max_abs_value",
        max_abs_value,
        1e18,
        "largest magnitude of a feature value or ts (at most 1e18); larger: dead letter",
    ),
    Setting("session_timeout_ms", positive_int, 10_000, "consumer group session timeout"),
    Setting("heartbeat_interval_ms", positive_int, 2_000, "consumer group heartbeat interval"),
    Setting(
        "max_poll_interval_ms", positive_int, 300_000, "longest time between polls before leaving the group"
    ),
    Setting(
        "fetch_max_wait_ms",
        positive_int,
        100,
        "longest time the broker may hold a fetch that finds nothing new (bounds latency on brokers "
        "that wait it out, like the embedded one)",
    ),
    Setting("log_level", log_level, "INFO", "DEBUG, INFO, WARNING or ERROR (any case)", metavar="LEVEL"),
    *MESSAGE_SETTINGS,
    *LEARNER_SETTINGS,
    *RUNTIME_SETTINGS,
    Setting(
        "learner_process",
        parse_auto_bool,
        "auto",
        "run the LSTM in a process of its own, so that it learns on another CPU while this one "
        "does the Kafka I/O and the baselines (same predictions); auto: when this process may "
        "use 2+ CPUs",
        metavar="auto|true|false",
    ),
)

# ---------------------------------------------------------------------- stream-lstm demo

DEMO_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "bootstrap_servers",
        host_port_list,
        None,
        "run on this Kafka cluster (HOST:PORT[,HOST:PORT]) instead of starting the embedded broker; "
        "the demo creates topics of its own there and deletes them at the end",
    ),
    KAFKA_CLIENT,
    *SECURITY_SETTINGS,
)

# ---------------------------------------------------------------------- stream-lstm produce

PRODUCE_SETTINGS: tuple[Setting, ...] = (
    *KAFKA_SETTINGS,
    Setting("topic", str, "events", "topic to write the events to"),
    Setting("label", str, None, "name of the label column (required with a FILE)"),
    _KEY_COLUMN,
    _TS_COLUMN,
    *FEATURE_SETTINGS,
    Setting("rate", positive_float, None, "events per second (default: as fast as possible)"),
)

# ---------------------------------------------------------------------- stream-lstm evaluate

EVALUATE_SETTINGS: tuple[Setting, ...] = (
    Setting("label", str, None, "name of the label column (required)"),
    _KEY_COLUMN,
    _TS_COLUMN,
    *FEATURE_SETTINGS,
    Setting(
        "max_skipped",
        unit_share,
        0.05,
        "fail (exit status 1) when more than this share of the rows are bad and skipped (0 to 1)",
        metavar="SHARE",
    ),
    *LEARNER_SETTINGS,
    *RUNTIME_SETTINGS,
    Setting(
        "parallel",
        parse_auto_bool,
        "auto",
        "run the baselines in a second process beside the LSTM (same scores); auto: when this "
        f"process may use 2+ CPUs and the file has at least {PARALLEL_MIN_EVENTS:,} events",
        metavar="auto|true|false",
    ),
)
