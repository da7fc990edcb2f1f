"""The topic store's screen without a broker: which manifests enter the view, and what a refused
one falls back to."""

from __future__ import annotations

import json

from stream_lstm.state.signing import MIN_KEY_BYTES, CheckpointSigner
from stream_lstm.state.topic_chunks import chunk_key, manifest_epoch, new_manifest
from stream_lstm.state.topic_screen import MANIFEST_HISTORY, RecordScreen

NAME = "partitions/in/0"
SIGNER = CheckpointSigner(b"k" * MIN_KEY_BYTES)


class Rejections(list):
    def __call__(self, reason: str, name: str) -> None:
        self.append((reason, name))


def version(screen: RecordScreen, view: dict[str, bytes], data: bytes, name: str = "v") -> bytes:
    """Write ``data`` as version ``name`` into ``view`` as a store would; return its manifest."""
    sealed = screen.sealed(data, NAME)
    view[chunk_key(NAME, name, 0)] = sealed
    manifest = json.dumps(screen.signed(new_manifest(sealed, 1, name), NAME)).encode()
    screen.accepted(NAME, manifest)
    view[NAME] = manifest
    return manifest


def test_with_a_key_only_manifests_it_signed_for_that_name_are_admitted() -> None:
    rejections = Rejections()
    screen = RecordScreen("store", SIGNER, rejections)
    view: dict[str, bytes] = {}
    genuine = version(screen, view, b"state")
    assert screen.admits(NAME, genuine)
    assert not screen.admits("partitions/in/1", genuine)  # replayed under another name
    assert not screen.admits(NAME, json.dumps(new_manifest(b"x", 1, "forged")).encode())
    assert not screen.admits(NAME, b"\x00 not json")
    assert not screen.admits(NAME, b'{"format": 2, "version": "v"}')
    assert rejections == [
        ("bad_signature", "partitions/in/1"),
        ("unsigned", NAME),
        ("not_a_checkpoint", NAME),
        ("unknown_version", NAME),
    ]
    assert screen.payload(view, NAME) == b"state"


def test_without_a_key_any_well_formed_manifest_is_admitted_and_the_payload_is_as_written() -> None:
    screen = RecordScreen("store")
    view: dict[str, bytes] = {}
    assert screen.admits(NAME, version(screen, view, b"state"))
    assert view[chunk_key(NAME, "v", 0)] == b"state"  # not signed
    assert not screen.admits(NAME, b"[]")


def test_a_refused_manifest_falls_back_to_the_latest_earlier_one_whose_chunks_are_there() -> None:
    screen = RecordScreen("store")
    view: dict[str, bytes] = {}
    first = version(screen, view, b"first", "v1")
    version(screen, view, b"second", "v2")
    del view[chunk_key(NAME, "v2", 0)]  # tombstoned by its writer when the third replaced it
    version(screen, view, b"third", "v3")
    bad = version(screen, view, b"bad", "v4")
    assert view[NAME] == bad
    assert screen.fall_back(view, NAME)  # v4 refused: v3 is complete
    assert screen.payload(view, NAME) == b"third"
    assert screen.fall_back(view, NAME)  # v3 refused too: v2 has lost its chunk, v1 has not
    assert view[NAME] == first
    assert not screen.fall_back(view, NAME)  # nothing left
    assert NAME not in view


def test_the_history_is_bounded() -> None:
    screen = RecordScreen("store")
    view: dict[str, bytes] = {}
    for index in range(MANIFEST_HISTORY + 3):
        version(screen, view, b"x", f"v{index}")
    fallbacks = 0
    while screen.fall_back(view, NAME):
        fallbacks += 1
    assert fallbacks == MANIFEST_HISTORY - 1


def test_a_manifest_nested_too_deep_too_long_or_naming_too_many_chunks_is_refused_not_fatal() -> None:
    """A planted record of any of these shapes once escaped as RecursionError or built billions of
    chunk keys; each is now a manifest refused like any other, with or without a key."""
    deep = b"[" * 200_000 + b"]" * 200_000
    huge_count = json.dumps({**new_manifest(b"x" * 10, 1, "v"), "chunks": 10**10}).encode()
    too_long = json.dumps({**new_manifest(b"x", 1, "v"), "padding": "p" * 10_000}).encode()
    for screen in (RecordScreen("store"), RecordScreen("store", SIGNER)):
        rejections = Rejections()
        screen.on_rejected = rejections
        for value in (deep, huge_count, too_long):
            assert not screen.admits(NAME, value)
        assert [reason for reason, _ in rejections] == ["not_a_checkpoint"] * 3
    assert manifest_epoch(deep) is None
