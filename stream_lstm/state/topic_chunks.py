"""How :class:`~stream_lstm.state.topic_store.KafkaTopicStore` lays a checkpoint out in its topic.

A checkpoint ``NAME`` (``instances/INSTANCE_ID`` or ``partitions/TOPIC/PARTITION``) of one
``VERSION`` (a random hex string per write) is stored as records keyed

* ``NAME@VERSION/I``: its chunks, the bytes of :func:`~stream_lstm.state.checkpoint.encode_checkpoint`
  cut into pieces of at most the store's ``chunk_bytes``, and
* ``NAME``: its manifest, JSON naming the live version, its chunk count, size and SHA-256, the
  time it was written and its epoch; with a checkpoint key, also ``key_id`` and ``hmac``
  (:mod:`stream_lstm.state.signing`), and the chunks then hold a signed envelope.

This module holds that format alone: the keys, the manifest, and putting the chunks back
together; the store does the reading and writing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from stream_lstm.errors import CheckpointError, CheckpointRejected
from stream_lstm.kafka.interface import Partition
from stream_lstm.state.store import check_instance_id

#: Below the default 1 MB message limit of Kafka brokers, with room for the record's overhead.
DEFAULT_CHUNK_BYTES = 512 * 1024
MANIFEST_FORMAT = 1


def instance_name(instance_id: str) -> str:
    """The checkpoint name of an instance."""
    return f"instances/{check_instance_id(instance_id)}"


def partition_name(partition: Partition) -> str:
    """The checkpoint name of a partition."""
    topic, number = partition
    return f"partitions/{topic}/{int(number)}"


def chunk_key(name: str, version: str, index: int) -> str:
    """The record key of chunk ``index`` of ``version`` of checkpoint ``name``."""
    return f"{name}@{version}/{index}"


def is_manifest_key(key: str) -> bool:
    """Whether a record key names a manifest (else it names a chunk)."""
    return "@" not in key


def chunk_owner(key: str) -> str:
    """The checkpoint name a chunk key belongs to."""
    return key.partition("@")[0]


def split_into_chunks(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into consecutive chunks of at most ``size`` bytes."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def new_manifest(data: bytes, chunks: int, version: str, epoch: int = 0) -> dict[str, Any]:
    """The manifest of ``data``, written now as ``chunks`` chunks of ``version``; ``epoch`` is a
    partition checkpoint's ownership epoch (0 for an instance's)."""
    return {
        "format": MANIFEST_FORMAT,
        "version": version,
        "chunks": chunks,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "written": time.time(),
        "epoch": epoch,
    }


#: A manifest is a few hundred bytes: a longer record under a manifest's key is not one (and is
#: never parsed: JSON nested deep enough would exhaust the parser's recursion).
MAX_MANIFEST_BYTES = 4096

#: The most chunks a manifest may name (100 GB at the default chunk size), so that a forged count
#: cannot make a reader build billions of chunk keys.
MAX_CHUNKS = 100_000


def _parse_manifest(value: bytes) -> Any:
    """The JSON of a manifest record; ``ValueError`` for one too long or nested too deep."""
    if len(value) > MAX_MANIFEST_BYTES:
        raise ValueError(f"{len(value):,} bytes, longer than any manifest")
    try:
        return json.loads(value)
    except RecursionError:
        raise ValueError("nested too deep") from None


def manifest_epoch(value: bytes) -> int | None:
    """The ownership epoch a manifest record names; ``None`` for one without (written by a
    version before epochs, which cannot be ordered against the others) or unreadable."""
    try:
        epoch = _parse_manifest(value).get("epoch")
    except (ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def manifest_chunk_keys(name: str, manifest: Mapping[str, Any]) -> set[str]:
    """The keys of the chunks that ``manifest`` of checkpoint ``name`` names."""
    return {chunk_key(name, manifest["version"], i) for i in range(manifest["chunks"])}


def read_manifest(view: Mapping[str, bytes], name: str, where: str) -> dict[str, Any]:
    """The manifest of ``name`` in ``view`` (record key to value), checked for its fields;
    :class:`CheckpointRejected` naming ``where`` when it cannot be read (``not_a_checkpoint``) or
    has another format (``unknown_version``)."""
    try:
        manifest = _parse_manifest(view[name])
        if manifest["format"] != MANIFEST_FORMAT:
            raise CheckpointRejected(
                f"{where} has store format {manifest['format']}; this version reads {MANIFEST_FORMAT}",
                "unknown_version",
            )
        fields = (
            ("version", str),
            ("chunks", int),
            ("bytes", int),
            ("sha256", str),
            ("written", (int, float)),
        )
        for field, kind in fields:
            if not isinstance(manifest[field], kind) or isinstance(manifest[field], bool):
                raise TypeError(field)
        if not 0 <= manifest["chunks"] <= min(manifest["bytes"], MAX_CHUNKS):
            raise ValueError(f"{manifest['chunks']} chunks for {manifest['bytes']} bytes")
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointRejected(
            f"{where} has an unreadable manifest: {error!r}", "not_a_checkpoint"
        ) from None
    return manifest


def join_chunks(view: Mapping[str, bytes], name: str, manifest: Mapping[str, Any], where: str) -> bytes:
    """The checkpoint bytes that ``manifest`` of ``name`` names, from the chunks in ``view``;
    :class:`CheckpointRejected` (``damaged``) naming ``where`` when one is missing or they do not
    match it."""
    parts = []
    for index in range(manifest["chunks"]):
        chunk = view.get(chunk_key(name, manifest["version"], index))
        if chunk is None:
            raise CheckpointRejected(
                f"checkpoint {where} is incomplete: chunk {index + 1} of {manifest['chunks']} "
                f"of version {manifest['version']} is missing",
                "damaged",
            )
        parts.append(chunk)
    data = b"".join(parts)
    if len(data) != manifest["bytes"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise CheckpointRejected(
            f"checkpoint {where} is damaged: its chunks do not match the manifest", "damaged"
        )
    return data


def orphaned_chunks(
    view: Mapping[str, bytes], written_at: Mapping[str, float], store: str, *, now: float, grace_s: float
) -> list[str]:
    """The chunk keys in ``view`` that no manifest names and that were written ``grace_s`` or more
    before ``now`` (``written_at``: chunk key to Unix seconds; unknown counts as now). Names whose
    manifest cannot be read are left alone; ``store`` describes the store, for the errors."""
    named: dict[str, str | None] = {}  # name -> the version its manifest names (None: none)
    unreadable: set[str] = set()
    orphans = []
    for key in view:
        name, at, rest = key.partition("@")
        if not at or name in unreadable:
            continue  # a manifest, or a name whose live version cannot be told
        if name not in named:
            try:
                named[name] = (
                    read_manifest(view, name, f"{name} in {store}")["version"] if name in view else None
                )
            except CheckpointError:
                unreadable.add(name)
                continue
        if rest.partition("/")[0] == named[name]:
            continue
        if now - written_at.get(key, now) >= grace_s:
            orphans.append(key)
    return orphans
