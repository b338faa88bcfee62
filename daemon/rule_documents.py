"""A start-up cache of the rule files' parsed YAML documents, keyed by each file's exact text.

Why: libyaml scans the shipped pack's 136 files quickly, but PyYAML builds the Python objects in
pure Python — ~70 ms CPU of every start (docs/performance.md, round 4) to produce the same plain
data every time; the same documents load from MessagePack in ~3 ms.

Only what ``yaml.safe_load_all`` returns is cached, before pySigma sees anything, so pySigma, the
compiler and every rule behave exactly as after a fresh parse.  A file's documents are stored only
when MessagePack gives them back equal and of the same types — mappings, lists, strings, 64-bit
integers, floats, booleans, null and dates, no YAML alias shared between two places — and are read
back only under the SHA-256 of the file's exact text, in a file written for the same trailguard
and PyYAML versions and cache format.  A corrupt, truncated, foreign or stale file, or a directory
that cannot be written, only costs the parse.  Where: the start-up cache directory of
:func:`daemon.enrich.ranges_cache.cache_dir` (``$TRAILGUARD_CACHE_DIR``, XDG, ``~/.cache/trailguard``).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgpack
import yaml

from daemon import __version__
from daemon.enrich.ranges_cache import cache_dir, write_cache_file

__all__ = ["FORMAT", "RuleDocumentCache"]

#: Bumped when the file's layout changes.
FORMAT: Final = 1
_DATE: Final = 1  # MessagePack extension type of a ``datetime.date``
_INT_RANGE: Final = range(-(1 << 63), 1 << 64)


def _plain(value: Any, seen: set[int]) -> bool:
    """Whether ``value`` survives MessagePack with its types (and no container appears twice)."""
    kind = type(value)
    if value is None or kind in (bool, str, float):
        return True
    if kind is int:
        return value in _INT_RANGE
    if kind is datetime.date:
        return True
    if kind is list or kind is dict:
        if id(value) in seen:  # a YAML alias: one object in two places, two after a round trip
            return False
        seen.add(id(value))
        items = value if kind is list else [*value.keys(), *value.values()]
        return all(_plain(item, seen) for item in items)
    return False


def _default(value: Any) -> msgpack.ExtType:
    if type(value) is datetime.date:
        return msgpack.ExtType(_DATE, value.isoformat().encode("ascii"))
    raise TypeError(f"{type(value).__name__} is not cached")


def _ext(code: int, data: bytes) -> Any:
    if code != _DATE:
        raise ValueError(f"unknown extension type {code}")
    return datetime.date.fromisoformat(data.decode("ascii"))


def _unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False, ext_hook=_ext)


def _pack(documents: list[object]) -> bytes | None:
    """The documents as MessagePack, or ``None`` when they would not come back identical."""
    if not _plain(documents, set()):
        return None
    try:
        blob = msgpack.packb(documents, use_bin_type=True, default=_default)
        return blob if _unpack(blob) == documents else None
    except (TypeError, ValueError, OverflowError):  # e.g. a lone surrogate in a string
        return None


class RuleDocumentCache:
    """Documents of rule file texts, from the cache file where it has them; :meth:`save` after a load."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.key = f"{FORMAT}:{__version__}:{yaml.__version__}"
        self._stored: dict[str, bytes] | None = None
        self._used: dict[str, bytes] = {}
        self.parsed = 0
        """Texts parsed (not found in the cache) since this object was made."""

    @property
    def path(self) -> Path:
        """The cache file."""
        return (self.directory or cache_dir()) / f"rule-documents-v{FORMAT}.msgpack"

    def _load(self) -> dict[str, bytes]:
        try:
            content = _unpack(self.path.read_bytes())
            files = content["files"] if content.get("key") == self.key else {}
            if not isinstance(files, dict):
                return {}
            return {digest: blob for digest, blob in files.items()
                    if isinstance(digest, str) and isinstance(blob, bytes)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException):
            return {}

    def documents(self, text: str, parse: Callable[[str], list[object]]) -> list[object]:
        """``parse(text)``, or the same documents from the cache (``parse``'s errors propagate)."""
        if self._stored is None:
            self._stored = self._load()
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        blob = self._stored.get(digest)
        if blob is not None:
            try:
                documents = _unpack(blob)
            except (ValueError, TypeError, msgpack.UnpackException):
                documents = None
            if isinstance(documents, list):
                self._used[digest] = blob
                return documents
        documents = parse(text)
        self.parsed += 1
        packed = _pack(documents)
        if packed is not None:
            self._used[digest] = packed
        return documents

    def save(self) -> bool:
        """Keep exactly the files of the last load (atomically); ``False`` when it cannot be written."""
        used, self._used = self._used, {}
        stored, self._stored = self._stored, None
        if stored == used:
            return True
        return write_cache_file(self.path, msgpack.packb({"key": self.key, "files": used}, use_bin_type=True))
