"""Timeline tests for ``impossible_travel``: events at t=… from places → alert at t=….

Events are a real Invictus IAMUser record (``tests/data/stateful/travel/invictus``) with the time,
source IP, principal and eventID rewritten.  Locations come from a small fake enricher, except in
the test that uses the real enricher with its bundled DB-IP database.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pydantic
import pytest

from detectors.base import GeoInfo
from detectors.engine import DetectionEngine
from detectors.event import Event, classify_source_ip, parse_event_time
from detectors.impossible_travel import ImpossibleTravel, haversine_km
from detectors.registry import detector_class
from tests.stateful_helpers import Counters, from_template, invictus_iam_user_record
from tests.stateful_helpers import run_detector as run

T0 = parse_event_time("2024-05-01T00:00:00Z")
ALICE = "arn:aws:iam::218007301253:user/alice"

NEW_YORK, LONDON, PARIS, SYDNEY = "98.137.11.163", "81.2.69.142", "90.84.1.1", "1.1.1.1"
FRANKFURT, MOSCOW_FUZZY, MADRID_FUZZY = "185.1.1.1", "95.1.1.1", "88.1.1.1"
AWS_IP, ALLOWED_VPN, NO_GEO, PRIVATE = "52.95.110.1", "151.101.1.1", "45.1.1.1", "10.0.0.5"

GEO = {
    NEW_YORK: GeoInfo(40.7128, -74.0060, "US", "New York", 0.0, 7018, "AT&T"),
    LONDON: GeoInfo(51.5143, -0.0912, "GB", "London", 0.0, 5089, "Virgin Media"),
    PARIS: GeoInfo(48.8566, 2.3522, "FR", "Paris", 0.0, 3215, "Orange"),
    SYDNEY: GeoInfo(-33.8688, 151.209, "AU", "Sydney", 0.0, 13335, "Cloudflare"),
    FRANKFURT: GeoInfo(50.1109, 8.6821, "DE", "Frankfurt", 0.0),
    # 3,440 km apart, but each only known to within 1,600 km: 240 km conservatively
    MOSCOW_FUZZY: GeoInfo(55.7558, 37.6173, "RU", "", 1600.0),
    MADRID_FUZZY: GeoInfo(40.4168, -3.7038, "ES", "", 1600.0),
    AWS_IP: GeoInfo(39.0438, -77.4874, "US", "Ashburn"),
    ALLOWED_VPN: GeoInfo(35.6762, 139.6503, "JP", "Tokyo"),
}


class FakeEnricher:
    """The daemon enricher's interface over fixed tables."""

    attribution = "IP Geolocation by DB-IP (https://db-ip.com)"

    def geo(self, ip: str) -> GeoInfo | None:
        return GEO.get(ip)

    def network_kind(self, ip: str | None) -> str:
        return "aws" if ip == AWS_IP else classify_source_ip(ip)

    def is_allowlisted(self, ip: str | None) -> bool:
        return ip == ALLOWED_VPN


def event(t: float, ip: str, principal: str = ALICE, name: str | None = None, **extra: Any) -> Event:
    raw = from_template(invictus_iam_user_record(), T0 + t, f"{principal}-{ip}-{t}")
    raw["sourceIPAddress"] = ip
    raw["userIdentity"]["arn"] = principal
    if name is not None:
        raw["eventName"] = name
    raw.update(extra)
    return Event(raw)


def make(counters: Counters | None = None, enricher: Any = None, **settings: Any) -> ImpossibleTravel:
    context = (counters or Counters()).context(enricher or FakeEnricher())
    return ImpossibleTravel(ImpossibleTravel.Config(**settings), context)


def test_registered_and_config_is_strict() -> None:
    assert detector_class("impossible_travel") is ImpossibleTravel
    config = ImpossibleTravel.Config.model_validate({"window": "12h", "max_speed_kmh": 1000})
    assert (config.window, config.max_speed_kmh, config.min_distance_km) == (43200.0, 1000.0, 500.0)
    with pytest.raises(pydantic.ValidationError):
        ImpossibleTravel.Config.model_validate({"max_sped_kmh": 1000})


def test_haversine_new_york_london() -> None:
    assert haversine_km(40.7128, -74.0060, 51.5074, -0.1278) == pytest.approx(5570, abs=10)
    assert haversine_km(10, 20, 10, 20) == 0.0


def test_new_york_then_london_an_hour_later_alerts_at_london() -> None:
    alerts = run(make(), [event(0, NEW_YORK)], [event(3600, LONDON)])
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.time == T0 + 3600
    assert (alert.detector, alert.severity, alert.principal) == ("impossible_travel", "high", ALICE)
    assert alert.tags == ["attack.initial_access", "attack.t1078.004"]
    assert alert.source_ips == [NEW_YORK, LONDON]
    assert alert.event_ids == sorted([f"{ALICE}-{NEW_YORK}-0", f"{ALICE}-{LONDON}-3600"])
    ev = alert.evidence
    assert ev["first"]["city"] == "New York" and ev["first"]["asn"] == 7018 and ev["first"]["country"] == "US"
    assert ev["second"]["city"] == "London" and ev["second"]["as_org"] == "Virgin Media"
    assert ev["distance_km"] == pytest.approx(5570, abs=10)
    assert ev["gap_seconds"] == 3600
    assert ev["speed_kmh"] == pytest.approx(5570, abs=10)
    assert ev["geoip_attribution"] == "IP Geolocation by DB-IP (https://db-ip.com)"
    assert ev["suppressed"] == 0
    # it names the two addresses with their places, and the principal seen at both
    assert [(r["type"], r["id"], r["detail"]) for r in alert.resources] == [
        ("source_ip", NEW_YORK, "New York, US at 2024-05-01T00:00:00Z"),
        ("source_ip", LONDON, "London, GB at 2024-05-01T01:00:00Z"),
        ("principal", ALICE, "seen 5572 km apart in 3600 s"),
    ]
    # deterministic id: the same input gives the same alert id
    assert run(make(), [event(0, NEW_YORK)], [event(3600, LONDON)])[0].id == alert.id


@pytest.mark.parametrize(
    ("first", "second", "gap"),
    [
        pytest.param(NEW_YORK, NEW_YORK, 60, id="same-ip"),
        pytest.param(LONDON, PARIS, 600, id="below-min-distance"),
        pytest.param(NEW_YORK, LONDON, 8 * 3600, id="plausible-flight"),
        pytest.param(NEW_YORK, AWS_IP, 60, id="aws-range"),
        pytest.param(NEW_YORK, PRIVATE, 60, id="private"),
        pytest.param(NEW_YORK, "ec2.amazonaws.com", 60, id="service-name"),
        pytest.param(NEW_YORK, ALLOWED_VPN, 60, id="allowlisted-vpn"),
        pytest.param(NEW_YORK, NO_GEO, 60, id="no-geolocation"),
        pytest.param(MOSCOW_FUZZY, MADRID_FUZZY, 60, id="accuracy-radii"),
        pytest.param(NEW_YORK, LONDON, 25 * 3600, id="beyond-window"),
    ],
)
def test_negatives_stay_silent(first: str, second: str, gap: float) -> None:
    assert run(make(), [event(0, first)], [event(gap, second)], lateness=0) == []


def test_other_principals_never_pair() -> None:
    bob = "arn:aws:iam::218007301253:user/bob"
    assert run(make(), [event(0, NEW_YORK), event(60, LONDON, principal=bob)]) == []


def test_failed_console_login_is_no_place() -> None:
    failed = event(600, LONDON, name="ConsoleLogin", errorCode="Failed authentication",
                   responseElements={"ConsoleLogin": "Failure"})
    assert run(make(), [event(0, NEW_YORK)], [failed]) == []
    ok = event(600, LONDON, name="ConsoleLogin", responseElements={"ConsoleLogin": "Success"})
    assert len(run(make(), [event(0, NEW_YORK)], [ok])) == 1


def test_ignored_principals_are_not_tracked() -> None:
    d = make(ignore_principal_patterns=("arn:aws:iam::*:user/ali*",))
    assert run(d, [event(0, NEW_YORK)], [event(60, LONDON)]) == []
    assert d.state_keys() == 0


def test_out_of_order_event_is_judged_against_its_neighbours_in_event_time() -> None:
    # New York at t=0 and t=7200 arrive first; London at t=3600 arrives last, within lateness.
    d = make()
    alerts = run(d, [event(0, NEW_YORK), event(7200, NEW_YORK)], [event(3600, LONDON)], lateness=3600)
    assert len(alerts) == 1
    assert alerts[0].evidence["gap_seconds"] == 3600
    assert alerts[0].time == T0 + 3600


def test_out_of_order_arrival_after_a_later_event_is_not_compared_with_arrival_order() -> None:
    # London t=0, New York t=40000 (11 h: plausible); a London event at t=1000 arrives last.  Its
    # neighbour in time is London itself (and New York 39,000 s later): nothing is impossible.
    alerts = run(make(), [event(0, LONDON), event(40_000, NEW_YORK)], [event(1000, LONDON)], lateness=86400)
    assert alerts == []
    # ... whereas a New York event at t=1000 arriving last is impossible against London at t=0.
    alerts = run(make(), [event(0, LONDON), event(40_000, NEW_YORK)], [event(1000, NEW_YORK)], lateness=86400)
    assert [a.evidence["gap_seconds"] for a in alerts] == [1000]


def test_late_beyond_lateness_is_counted_and_still_evaluated_or_dropped() -> None:
    counters = Counters()
    d = make(counters)
    alerts = run(d, [event(0, NEW_YORK), event(7200, NEW_YORK)], [event(3600, LONDON)], lateness=900)
    assert counters.late == 1
    assert len(alerts) == 1  # late_policy "evaluate": the window (24 h) still holds New York
    counters = Counters()
    d = make(counters, late_policy="drop")
    assert run(d, [event(0, NEW_YORK), event(7200, NEW_YORK)], [event(3600, LONDON)], lateness=900) == []
    assert counters.late == 1


def test_one_alert_per_principal_per_window_and_the_next_carries_the_suppressed_count() -> None:
    day = 86400
    batch = [event(0, NEW_YORK), event(3600, LONDON), event(7200, NEW_YORK), event(10800, LONDON),
             event(day + 3700, NEW_YORK), event(day + 7300, LONDON)]
    alerts = run(make(), batch)
    assert [a.time - T0 for a in alerts] == [3600, day + 7300]
    assert [a.evidence["suppressed"] for a in alerts] == [0, 2]


LONDON_B, LONDON_FUZZY = "81.2.69.143", "81.2.69.144"
GEO[LONDON_B] = GeoInfo(51.5143, -0.0912, "GB", "London", 0.0, 5089, "Virgin Media")  # same /24, same place
GEO[LONDON_FUZZY] = GeoInfo(51.5143, -0.0912, "GB", "", 5100.0)  # London's coordinates, known to 5,100 km


def _counting_comparisons(d: ImpossibleTravel) -> list[float]:
    calls: list[float] = []
    compare = d._fastest

    def counted(trail: Any, ip: str, geo: GeoInfo, t: float, cutoff: float) -> Any:
        calls.append(t - T0)
        return compare(trail, ip, geo, t, cutoff)

    d._fastest = counted  # type: ignore[method-assign]
    return calls


def test_a_principal_is_compared_only_when_its_place_changes() -> None:
    # New York t=0; London t=3600 (alert); more London calls from a second address of the same
    # place; back to New York t=3900.  Only the two place changes are compared.
    d = make()
    calls = _counting_comparisons(d)
    alerts = run(d, [event(0, NEW_YORK), event(3600, LONDON), event(3700, LONDON_B), event(3800, LONDON),
                     event(3900, NEW_YORK)])
    assert calls == [3600, 3900]
    assert [a.time - T0 for a in alerts] == [3600]
    assert alerts[0].source_ips == [NEW_YORK, LONDON]


def test_same_place_with_a_sharper_location_is_still_compared() -> None:
    # London known only to 5,100 km is 470 km from New York conservatively: silent.  The same
    # coordinates from an address known exactly are 5,570 km away: that event must be compared.
    d = make()
    calls = _counting_comparisons(d)
    alerts = run(d, [event(0, NEW_YORK), event(3600, LONDON_FUZZY), event(3700, LONDON)])
    assert calls == [3600, 3700]
    assert [(a.time - T0, a.source_ips) for a in alerts] == [(3700, [NEW_YORK, LONDON])]


def test_key_spray_is_capped_and_evictions_counted() -> None:
    counters = Counters()
    d = make(counters, max_keys=64)
    batch = [event(i, NEW_YORK, principal=f"arn:aws:iam::218007301253:user/u{i}") for i in range(1000)]
    run(d, batch)
    assert d.state_keys() <= 64
    assert counters.evicted >= 1000 - 64


def test_places_and_times_per_principal_are_bounded() -> None:
    d = make(max_places=4, max_times=3)
    ips = [f"45.{i}.0.1" for i in range(10)]
    for ip in ips:
        GEO.setdefault(ip, GeoInfo(0.0, float(len(ip)), "XX"))
    run(d, [event(i * 10, ip) for i, ip in enumerate(ips)] + [event(200 + i, LONDON) for i in range(10)])
    trail = d.snapshot()["trails"][0]
    places = trail[2]
    assert len(places) <= 4
    assert all(len(times) <= 3 for _ip, _lat, _lon, _acc, times, _ids in places)


def test_expired_principals_are_forgotten() -> None:
    d = make(window=3600)
    run(d, [event(0, NEW_YORK)], [event(10_000, LONDON, principal="arn:aws:iam::218007301253:user/bob")])
    assert d.state_keys() == 1


def test_snapshot_msgpack_restore_behaves_identically() -> None:
    before = [event(0, NEW_YORK), event(100, NEW_YORK, principal="arn:aws:iam::218007301253:user/bob"),
              event(3600, LONDON), event(3700, FRANKFURT)]
    after = [event(5000, SYDNEY), event(5100, LONDON, principal="arn:aws:iam::218007301253:user/bob"),
             event(90_000, NEW_YORK), event(93_600, LONDON)]
    original = make()
    engine = DetectionEngine([original], allowed_lateness=900)
    first_alerts = engine.process_many(before)
    assert len(first_alerts) == 1
    wire = msgpack.packb(engine.snapshot(), use_bin_type=True)
    restored = make()
    engine2 = DetectionEngine([restored], allowed_lateness=900)
    engine2.restore(msgpack.unpackb(wire, raw=False, strict_map_key=False))
    assert restored.state_keys() == original.state_keys() == 2
    a1 = [a.to_dict() | {"detected_at": None} for a in engine.process_many(after)]
    a2 = [a.to_dict() | {"detected_at": None} for a in engine2.process_many(after)]
    assert a1 == a2
    # Frankfurt and Sydney (throttled for alice), bob's New York→London across the snapshot, alice next day
    assert [(a["principal"].rsplit("/", 1)[1], a["evidence"]["suppressed"]) for a in a1] == [("bob", 0), ("alice", 2)]
    with pytest.raises(ValueError):
        restored.restore({"version": 1, "kind": "new_region"})


def test_real_enricher_with_bundled_dbip_database() -> None:
    from daemon.enrich import EnrichmentConfig, build_enricher

    enricher = build_enricher(EnrichmentConfig(max_age_days=0))
    try:
        d = make(enricher=enricher)
        # Cambridge (US) then London 30 minutes later; an AWS address (Ashburn) in between is skipped.
        alerts = run(d, [event(0, "104.102.221.250"), event(600, "34.234.236.212")], [event(1800, LONDON)])
    finally:
        enricher.close()
    assert len(alerts) == 1
    ev = alerts[0].evidence
    assert (ev["first"]["country"], ev["second"]["country"]) == ("US", "GB")
    assert ev["geoip_attribution"].startswith("IP Geolocation by DB-IP")
    assert alerts[0].source_ips == ["104.102.221.250", LONDON]
