"""Decoding checkpoints is total: whatever the bytes, a state or CheckpointRejected, nothing else.

Property-based, over arbitrary bytes, over valid checkpoints cut, flipped and stretched, over
headers describing arrays that do not fit, and over valid checkpoint trees with any one field
replaced by a hostile value (another type, a huge or negative number, an array of another type
or shape), removed, or joined by an extra one.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stream_lstm.errors import REJECTED_REASONS, CheckpointRejected
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.checkpoint import decode_checkpoint, encode_checkpoint
from stream_lstm.state.codec import DTYPES, FORMAT_NAME, MAGIC, SCHEMA, decode_tree, encode_tree
from stream_lstm.state.state_tree import INSTANCE, PARTITION
from stream_lstm.state.store import InstanceState, PartitionState


def _checkpoints() -> tuple[bytes, bytes]:
    evaluator = PrequentialEvaluator(
        build_models(["lstm", "logreg", "no_change"], max_keys=4, lstm={"hidden_size": 3, "device": "cpu"}),
        window=5,
        max_keys=4,
    )
    events = list(temporal_stream(40, n_keys=6, seed=2))
    for start in range(0, 40, 4):
        evaluator.process(events[start : start + 4])
    keys = sorted(evaluator.models["lstm"].tracked_keys())
    partition = PartitionState(
        topic="in", partition=0, offset=40, keys=keys, key_state=evaluator.export_keys(keys)
    )
    instance = InstanceState(evaluator=evaluator, instance="a")
    return encode_checkpoint(instance), encode_checkpoint(partition)


INSTANCE_BYTES, PARTITION_BYTES = _checkpoints()
VALID = st.sampled_from([INSTANCE_BYTES, PARTITION_BYTES])
PROPERTIES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_is_rejected(data: bytes) -> None:
    """The decoder's contract: a checkpoint state, or CheckpointRejected with a known reason."""
    try:
        state = decode_checkpoint(data, "hostile")
    except CheckpointRejected as error:
        assert error.reason in REJECTED_REASONS
        assert "hostile" in str(error)
        return
    assert isinstance(state, (InstanceState, PartitionState))


@PROPERTIES
@given(st.binary(max_size=300))
def test_any_bytes_are_refused(data: bytes) -> None:
    decodes_or_is_rejected(data)
    decodes_or_is_rejected(MAGIC + SCHEMA.to_bytes(2, "big") + data)


@PROPERTIES
@given(VALID, st.data())
def test_a_truncated_checkpoint_is_refused_as_damaged(data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(data) - 1))
    try:
        decode_checkpoint(data[:cut], "cut")
    except CheckpointRejected as error:
        assert error.reason == ("not_a_checkpoint" if cut < len(MAGIC) + 2 else "damaged")
    else:
        raise AssertionError(f"a checkpoint cut at {cut} of {len(data)} bytes was accepted")


@PROPERTIES
@given(VALID, st.data())
def test_flipped_inserted_or_removed_bytes_give_a_state_or_a_refusal(
    data: bytes, draw: st.DataObject
) -> None:
    changed = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 8))):
        position = draw.draw(st.integers(0, len(changed) - 1))
        action = draw.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            changed[position] ^= draw.draw(st.integers(1, 255))
        elif action == "insert":
            changed[position:position] = draw.draw(st.binary(min_size=1, max_size=8))
        else:
            del changed[position]
    decodes_or_is_rejected(bytes(changed))


def _with_header(header: Any, tree: bytes = b"{}", payload: bytes = b"") -> bytes:
    block = json.dumps(header).encode()
    return (
        MAGIC
        + SCHEMA.to_bytes(2, "big")
        + len(block).to_bytes(4, "big")
        + block
        + len(tree).to_bytes(4, "big")
        + tree
        + payload
    )


SHAPES = st.lists(
    st.one_of(st.integers(-3, 2**70), st.booleans(), st.floats(allow_nan=False), st.text(max_size=3)),
    max_size=10,
)


@PROPERTIES
@given(
    st.one_of(
        st.sampled_from(DTYPES), st.sampled_from(["|O", "<c16", ">f4", "<U4", "V8", "f", ""]), st.integers()
    ),
    SHAPES,
    st.binary(max_size=64),
)
def test_array_descriptions_that_do_not_fit_their_bytes_are_refused(
    dtype: Any, shape: list[Any], payload: bytes
) -> None:
    header = {
        "format": FORMAT_NAME,
        "schema": SCHEMA,
        "kind": PARTITION,
        "arrays": [{"dtype": dtype, "shape": shape}],
    }
    decodes_or_is_rejected(_with_header(header, b'{"$array": 0}', payload))


def test_json_the_format_does_not_allow_is_refused_as_damaged() -> None:
    header = {"format": FORMAT_NAME, "schema": SCHEMA, "kind": PARTITION, "arrays": []}
    for tree in (
        b"NaN",
        b'{"a": Infinity}',
        b"1e999",
        b'{"a": 1, "a": 2}',
        b'{"$x": 1}',
        b'{"$array": 0}',
        b"[" * 100_000,
    ):
        try:
            decode_checkpoint(_with_header(header, tree), "json")
        except CheckpointRejected as error:
            assert error.reason == "damaged", tree[:20]
        else:
            raise AssertionError(f"{tree[:20]!r} was accepted")
    other = {**header, "format": "pickle"}
    try:
        decode_checkpoint(_with_header(other, b"{}"), "json")
    except CheckpointRejected as error:
        assert error.reason == "damaged"


# ---------------------------------------------------------------------- hostile trees

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**80), 2**80),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.dtype(d) for d in DTYPES]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    elements=None,
)
HOSTILE_VALUES = st.one_of(JSON_VALUES, ARRAYS)


def _paths(tree: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a value in the tree (dict keys and list indices)."""
    found = [path] if path else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += _paths(value, (*path, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found += _paths(value, (*path, index))
    return found


def _container(tree: Any, path: tuple) -> Any:
    for step in path[:-1]:
        tree = tree[step]
    return tree


@PROPERTIES
@given(st.sampled_from([(INSTANCE_BYTES, INSTANCE), (PARTITION_BYTES, PARTITION)]), st.data())
def test_a_tree_with_any_field_replaced_removed_or_added_gives_a_state_or_a_refusal(
    valid: tuple[bytes, str], draw: st.DataObject
) -> None:
    data, kind = valid
    _, tree = decode_tree(data, "valid", (kind,))
    path = draw.draw(st.sampled_from(_paths(tree)))
    container = _container(tree, path)
    action = draw.draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace":
        container[path[-1]] = draw.draw(HOSTILE_VALUES)
    elif action == "remove":
        del container[path[-1]]
    elif isinstance(container, dict):
        container[draw.draw(st.text(max_size=6))] = draw.draw(HOSTILE_VALUES)
    else:
        container.append(draw.draw(HOSTILE_VALUES))
    decodes_or_is_rejected(encode_tree(tree, kind))


def test_the_valid_checkpoints_of_these_properties_are_accepted() -> None:
    """The mutations start from checkpoints that load (else every refusal above would be vacuous)."""
    assert isinstance(decode_checkpoint(INSTANCE_BYTES, "i"), InstanceState)
    assert isinstance(decode_checkpoint(PARTITION_BYTES, "p"), PartitionState)
