"""A partition's state as changelog records: chunks under the broker's message limit plus a manifest.

A snapshot can be megabytes (a million dedupe ids), more than a Kafka message may hold, so the
encoded body is cut into chunks of ``chunk_bytes``.  Each write is one *generation*: chunks are keyed
``<topic>/<partition>/<generation>/<n>`` and the manifest ``<topic>/<partition>/manifest`` is written
last, naming the generation, the chunk count and a SHA-256 of the body.  A crash between chunks
leaves the previous manifest pointing at the previous generation's chunks, which are still there:
old chunks are tombstoned only after the new manifest is acknowledged, and compaction then drops
them.  Reading keeps the latest value per key (what compaction keeps) and assembles the manifest's
generation; a missing chunk or a bad checksum is an error that names the partition.

**Fencing.**  A manifest names the consumer-group generation of the instance that wrote it
(``owner_generation``), and a new owner writes a *claim* ``<topic>/<partition>/claim`` with its
generation right after restoring.  A manifest from an older generation than a claim before it in
the log is the write of a stalled previous owner (paused past its session timeout, then resumed)
and is ignored on restore (:func:`fenced_manifest`), so it cannot roll the partition back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

__all__ = ["FORMAT", "ChangelogCorrupt", "EncodedWrite", "PackedParts", "Restored", "assemble", "chunked",
           "claim_key", "claim_record", "encode", "fenced_manifest", "manifest_key", "owner_generation", "pack"]

FORMAT: Final = "trailguard-changelog"
VERSION: Final = 1


class ChangelogCorrupt(Exception):
    """The changelog holds a manifest whose chunks are missing or do not match its checksum."""


@dataclass(frozen=True, slots=True)
class PackedParts:
    """A partition's parts packed into one body (taken while the state is consistent), not yet cut
    into records: cutting and hashing need no consistent state, so they happen off the event loop."""

    generation: int
    body: bytes
    #: The consumer-group generation of the writer.
    owner: int = -1


@dataclass(frozen=True, slots=True)
class EncodedWrite:
    """The records of one generation, in produce order (chunks, then the manifest)."""

    generation: int
    records: list[tuple[bytes, bytes]]
    chunk_keys: frozenset[bytes]
    #: The encoded parts (what the local cache file keeps).
    body: bytes


@dataclass(slots=True)
class Restored:
    """A partition's state as read back: its parts, generation and the chunk keys still live."""

    generation: int
    parts: dict[str, Any]
    live_keys: set[bytes] = field(default_factory=set)
    #: The encoded parts, as read (for the local cache file).
    body: bytes = b""


def manifest_key(partition: str) -> bytes:
    """The manifest's key for partition key ``topic/p``."""
    return f"{partition}/manifest".encode()


def claim_key(partition: str) -> bytes:
    """The key of the claim a new owner of partition ``topic/p`` writes after restoring it."""
    return f"{partition}/claim".encode()


def claim_record(partition: str, owner_generation: int) -> tuple[bytes, bytes]:
    """The claim of ``partition`` by the consumer-group generation ``owner_generation``."""
    return claim_key(partition), msgpack.packb({"owner_generation": owner_generation, "claimed_at": time.time()},
                                               use_bin_type=True)


def owner_generation(value: bytes | None) -> int:
    """The consumer-group generation a manifest or claim names (``-1``: unknown or not recorded)."""
    if not value:
        return -1
    try:
        found = msgpack.unpackb(value, raw=False).get("owner_generation", -1)
    except Exception:
        return -1
    return found if isinstance(found, int) else -1


def fenced_manifest(value: bytes | None, claimed: int) -> bool:
    """Whether a manifest was written by an older generation than the newest claim before it."""
    written_by = owner_generation(value)
    return written_by >= 0 and written_by < claimed


def _chunk_key(partition: str, generation: int, index: int) -> bytes:
    return f"{partition}/{generation}/{index}".encode()


def encode(partition: str, generation: int, parts: Mapping[str, Any], chunk_bytes: int,
           owner: int = -1) -> EncodedWrite:
    """Encode ``parts`` (name → snapshot) as generation ``generation`` of ``partition``, written by the
    consumer-group generation ``owner``."""
    return chunked(partition, pack(generation, parts, owner), chunk_bytes)


def pack(generation: int, parts: Mapping[str, Any], owner: int = -1) -> PackedParts:
    """``parts`` packed as generation ``generation`` (the only step that reads the live state)."""
    return PackedParts(generation, msgpack.packb(dict(parts), use_bin_type=True), owner)


def chunked(partition: str, packed: PackedParts, chunk_bytes: int) -> EncodedWrite:
    """The records of ``packed``: its body cut into chunks, then the manifest with the body's SHA-256
    (pure and thread-safe: SHA-256 of a large body runs without the GIL)."""
    generation, body, owner = packed.generation, packed.body, packed.owner
    records: list[tuple[bytes, bytes]] = []
    keys = []
    view = memoryview(body)
    for index, start in enumerate(range(0, max(len(body), 1), chunk_bytes)):
        key = _chunk_key(partition, generation, index)
        keys.append(key)
        records.append((key, bytes(view[start:start + chunk_bytes])))
    manifest = {"format": FORMAT, "version": VERSION, "partition": partition, "generation": generation,
                "chunks": len(keys), "size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                "written_at": time.time(), "owner_generation": owner}
    records.append((manifest_key(partition), msgpack.packb(manifest, use_bin_type=True)))
    return EncodedWrite(generation, records, frozenset(keys), body)


def assemble(partition: str, latest: Mapping[bytes, bytes | None]) -> Restored | None:
    """The state the latest manifest of ``partition`` names, from latest-value-per-key records.

    ``None`` when the partition has never been written.  Raises :class:`ChangelogCorrupt` when the
    manifest is unreadable, a chunk is missing or the checksum does not match.
    """
    prefix = f"{partition}/".encode()
    live = {key for key, value in latest.items() if value is not None and key.startswith(prefix)}
    raw = latest.get(manifest_key(partition))
    if raw is None:
        return None
    live.discard(manifest_key(partition))
    live.discard(claim_key(partition))
    try:
        manifest = msgpack.unpackb(raw, raw=False)
        generation, count, digest = int(manifest["generation"]), int(manifest["chunks"]), str(manifest["sha256"])
    except Exception as error:
        raise ChangelogCorrupt(f"changelog of {partition}: unreadable manifest ({error})") from None
    if manifest.get("format") != FORMAT or int(manifest.get("version", 0)) > VERSION:
        raise ChangelogCorrupt(f"changelog of {partition}: manifest format {manifest.get('format')} "
                               f"version {manifest.get('version')} is not one this trailguard reads")
    pieces = []
    for index in range(count):
        chunk = latest.get(_chunk_key(partition, generation, index))
        if chunk is None:
            raise ChangelogCorrupt(f"changelog of {partition}: generation {generation} misses chunk {index} "
                                   f"of {count}")
        pieces.append(chunk)
    body = b"".join(pieces)
    if hashlib.sha256(body).hexdigest() != digest:
        raise ChangelogCorrupt(f"changelog of {partition}: generation {generation} fails its checksum")
    parts = msgpack.unpackb(body, raw=False, strict_map_key=False)
    if not isinstance(parts, dict):
        raise ChangelogCorrupt(f"changelog of {partition}: generation {generation} is not a mapping of parts")
    return Restored(generation, parts, live, body)
