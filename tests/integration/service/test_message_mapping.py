"""Users' own message shapes through `stream-lstm run` on the real brokers, with both Kafka clients.

Each mapping setting is used by one of two services: a flat message with a nested key and time,
text labels and categories (``--features-field . --key device.id --ts meta.time --label outcome
--positive-label yes --categorical zip --ignore note``), and features in a nested object of which
only some are read (``--features-field data.values --features load,city --label y``). Every
message's prediction must carry the key, time and label the mapping names; a message that is
only readable because of a setting (an ignored object, an unselected list, a numeric category)
must be predicted, and one the mapping refuses must be a dead letter with its reason.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.integration.conftest import Broker
from tests.integration.service_harness import TopicReader, produce_raw, source_offsets, wait_for

pytestmark = pytest.mark.slow

FLAT_SETTINGS = (
    "--features-field", ".",
    "--key", "device.id",
    "--ts", "meta.time",
    "--label", "outcome",
    "--positive-label", "yes",
    "--categorical", "zip",
    "--ignore", "note",
)  # fmt: skip

NESTED_SETTINGS = ("--features-field", "data.values", "--features", "load,city", "--label", "y")


def flat_messages(count: int, seed: int) -> list[tuple[dict[str, Any], dict[str, Any] | str]]:
    """(message, what its prediction must say, or the reason of its dead letter)."""
    rng = random.Random(seed)
    cases: list[tuple[dict[str, Any], dict[str, Any] | str]] = []
    for i in range(count):
        device = rng.choice([7, "pump-2", "valve-9"])
        city = rng.choice(["Paris", "Lyon", "Nice"])
        outcome = rng.choice(["yes", "no", "maybe", None])
        message = {
            "device": {"id": device},
            "meta": {"time": 1_700_000_000 + i},
            "load": rng.random(),
            "on": rng.random() < 0.5,
            "city": city,
            "zip": rng.choice([75001, 69001, "06000"]),  # numbers or text: a category either way
            "note": {"free": "text"},  # an object: only readable because it is ignored
            "outcome": outcome,
        }
        label = None if outcome is None else int(outcome == "yes")
        cases.append((message, {"key": str(device), "ts": 1_700_000_000 + i, "label": label}))
    cases += [
        ({"device": {"id": "x"}, "zip": [1], "outcome": "yes"}, "bad_category"),
        ({"device": {"id": "x"}, "load": [1, 2], "outcome": "yes"}, "bad_feature"),
        ({"device": {"id": 1.5}, "load": 1, "outcome": "no"}, "bad_key"),
        ({"device": {"id": "x"}, "load": 1, "outcome": ["yes"]}, "bad_label"),
    ]
    return cases


def nested_messages(count: int, seed: int) -> list[tuple[dict[str, Any], dict[str, Any] | str]]:
    rng = random.Random(seed)
    cases: list[tuple[dict[str, Any], dict[str, Any] | str]] = []
    for i in range(count):
        label = rng.choice([True, False, None])
        message = {
            "key": f"m{i % 4}",
            "ts": f"2024-01-01T00:00:{i % 60:02d}Z",
            "data": {"values": {"load": rng.random(), "city": rng.choice(["Oslo", "Rome"]), "junk": [1]}},
            "y": label,
        }
        expected = {
            "key": f"m{i % 4}",
            "ts": 1704067200 + i % 60,
            "label": None if label is None else int(label),
        }
        cases.append((message, expected))
    cases += [
        ({"key": "m0", "values": {"load": 1}, "y": True}, "missing_features"),
        ({"key": "m0", "data": {"values": {"load": "NaN"}}, "y": True}, "non_finite"),
        ({"key": "m0", "data": {"values": {"load": 1}}, "y": "yes"}, "bad_label"),
    ]
    return cases


# Each shape on one broker (with both clients), so that the suite stays short: the flat one,
# which uses most settings, on the reference broker.
@pytest.mark.parametrize(
    ("broker", "settings", "messages"),
    [("apache-kafka", FLAT_SETTINGS, flat_messages), ("tansu", NESTED_SETTINGS, nested_messages)],
    ids=["flat", "nested"],
    indirect=["broker"],
)
def test_each_mapping_setting_reads_users_messages(
    broker: Broker, topics: dict[str, str], service_factory, settings: tuple[str, ...], messages: Any
) -> None:
    cases = messages(120, seed=3)
    random.Random(5).shuffle(cases)
    produce_raw(
        broker.bootstrap_servers,
        topics["input"],
        [(None, json.dumps(message).encode()) for message, _ in cases],
    )
    service = service_factory("--batch-size", "16", *settings).start()
    out = TopicReader(broker.bootstrap_servers, topics["output"])
    dead = TopicReader(broker.bootstrap_servers, topics["dead"])

    def everything_handled() -> bool:
        service.assert_alive()
        return set(source_offsets(out.read())) | set(source_offsets(dead.read())) >= set(range(len(cases)))

    wait_for(everything_handled, 90, service.quoting_log("every offset predicted or dead-lettered"))
    predictions = {record["source"]["offset"]: record for record in out.records}
    letters = {letter["source"]["offset"]: letter for letter in dead.records}
    for offset, (message, expected) in enumerate(cases):
        if isinstance(expected, str):
            assert offset not in predictions, (message, predictions.get(offset))
            assert letters[offset]["reason"] == expected, (message, letters[offset])
        else:
            assert offset not in letters, (message, letters.get(offset))
            record = predictions[offset]
            assert {name: record[name] for name in ("key", "ts", "label")} == expected, (message, record)
            assert all(0.0 <= p <= 1.0 for p in record["predictions"].values()), record
    assert service.terminate() < 10
