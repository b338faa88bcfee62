"""The start-up cache of the bundled AWS ranges gives exactly the decoded intervals, and never more."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.enrich import ranges_cache
from daemon.enrich.ranges import BUNDLED_SOURCE, bundled_aws_ranges


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TRAILGUARD_CACHE_DIR", str(tmp_path / "cache"))
    bundled_aws_ranges.cache_clear()
    yield tmp_path / "cache"
    bundled_aws_ranges.cache_clear()


def _fresh() -> tuple[tuple[list[int], ...], int, str]:
    bundled_aws_ranges.cache_clear()
    source = bundled_aws_ranges()
    assert source.source == BUNDLED_SOURCE
    return source.ranges.merged(), source.ranges.prefixes, source.version


def test_a_second_start_reads_the_cached_intervals_identical_to_the_decoded_ones(cache: Path) -> None:
    decoded = _fresh()
    files = list(cache.glob("aws-ranges-v*.json"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    cached = _fresh()
    assert cached == decoded
    assert files[0].stat().st_mtime_ns == mtime  # read, not rewritten
    ranges = bundled_aws_ranges().ranges
    assert ranges.contains(ipaddress.ip_address("52.95.110.1"))  # AWS (us-east-1)
    assert not ranges.contains(ipaddress.ip_address("192.0.2.1"))
    assert ranges.contains(ipaddress.ip_address("2600:1f18::1"))  # AWS IPv6


@pytest.mark.parametrize("garbage", [b"", b"{", b'{"key": "other"}', b'{"key": null, "v4": 3}', b"[]"])
def test_a_corrupt_or_foreign_cache_file_is_ignored_and_replaced(cache: Path, garbage: bytes) -> None:
    decoded = _fresh()
    (path,) = cache.glob("aws-ranges-v*.json")
    key = path.name.removeprefix(f"aws-ranges-v{ranges_cache.FORMAT}-").removesuffix(".json")
    if garbage.startswith(b'{"key": null'):
        garbage = garbage.replace(b"null", f'"{key}"'.encode())
    path.write_bytes(garbage)
    assert ranges_cache.read_intervals(key) is None
    assert _fresh() == decoded
    assert ranges_cache.read_intervals(key) is not None  # rewritten whole


def test_an_unwritable_cache_directory_only_costs_the_decode(cache: Path) -> None:
    cache.parent.mkdir(exist_ok=True)
    cache.write_text("a file where the directory should be")
    decoded = _fresh()
    assert decoded[1] > 15_000 and len(decoded[0][0]) > 500
    assert cache.is_file()


def test_the_cache_directory_follows_xdg_when_not_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TRAILGUARD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ranges_cache.cache_dir() == tmp_path / "trailguard"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert ranges_cache.cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "trailguard"
