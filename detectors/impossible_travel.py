"""Impossible travel: one principal's credentials used from two places too far apart for the time between.

Why it exists: a stolen access key, session token or console session is usually used from the
attacker's own infrastructure while its owner keeps working.  Two calls by the same principal from
public addresses thousands of kilometres apart within minutes cannot both come from one person
(MITRE ATT&CK T1078.004, "Valid Accounts: Cloud Accounts").

How it judges: every event from a public, geolocated address that is not in AWS's published ranges
is a *place* of its principal (``event.principal``) at its event time.  The principal keeps, per
address, the event times it was seen there within ``window`` (event time).  A new event is compared,
for every other address held, with that address's observation nearest in event time (the nearest
earlier *and* the nearest later one), so an event that arrives out of order is judged against its
real neighbours in time, not just the latest arrival.  A pair is impossible when

* ``distance - accuracy_a - accuracy_b >= min_distance_km`` (great-circle distance, haversine,
  less both GeoIP accuracy radii: the conservative distance), and
* that distance divided by the time between the two events (at least one second, CloudTrail's
  resolution) is above ``max_speed_kmh``.

When several pairs qualify the fastest is reported.  Nothing is reported for a pair of events from
the same address.

Skipped events: AWS service names and private addresses (``source_ip_kind`` not ``public``), AWS's
ranges (``network_kind == "aws"``: Lambda, CloudShell, AWS-hosted VPNs and services calling on a
principal's behalf), allowlisted egress/VPN CIDRs (``enricher.is_allowlisted``), addresses without a
geolocation, and failed console sign-ins (a wrong password proves nobody holds the credential).

Parameters: ``max_speed_kmh`` (default 900, an airliner), ``min_distance_km`` (default 500: below
it, GeoIP error and mobile networks dominate), ``window`` (seconds or ``24h``-style, default 24 h:
the longest gap compared; also the throttle period, one alert per principal per window, the next
carries the suppressed count), ``max_places`` (addresses kept per principal, default 16, least
recently seen dropped first), ``max_times`` (event times kept per address, default 16, oldest
dropped first), ``max_keys`` (principals, default 100,000, least recently active evicted),
``ignore_principal_patterns`` (``fnmatch`` globs of principals never tracked), ``late_policy``
(``evaluate``, default: events older than the watermark are counted as late and still compared;
``drop``), plus ``enabled``/``severity``.

Known false positives: VPNs, proxies and privacy relays that exit in another country (allowlist
the corporate ones); GeoIP errors for mobile carriers and satellite links (Starlink exits far from
the user); automation running the same role from a laptop and from a non-AWS cloud or CI provider
in another region (use separate roles, or ``ignore_principal_patterns``); shared IAM users.
Evidence carries the GeoIP attribution string required by the database licence.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from fnmatch import fnmatchcase
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BeforeValidator, Field

from detectors.alert import Alert, make_alert_id
from detectors.base import Detector, DetectorConfig, DetectorContext, GeoInfo, StateKey
from detectors.event import IP_PUBLIC, Event, format_time
from detectors.resources import bounded, make_resource
from detectors.windows.store import SNAPSHOT_VERSION, KeyedState, check_snapshot
from detectors.windows.throttle import Throttle

__all__ = ["ImpossibleTravel", "haversine_km"]

_UNKNOWN: Final = object()
#: Addresses whose enrichment is remembered (cleared wholesale when full).
_MAX_CACHED_IPS: Final = 65_536

_NEG_INF: Final = float("-inf")
_EARTH_RADIUS_KM: Final = 6371.0088
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def _seconds(value: Any) -> Any:
    """``90``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` → seconds (other values left for pydantic to refuse)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class _Place:
    """One address of a principal: where it is and the (sorted) event times it was seen there."""

    __slots__ = ("accuracy", "ids", "lat", "lon", "times")

    def __init__(self, lat: float, lon: float, accuracy: float, times: list[float], ids: list[str]) -> None:
        self.lat = lat
        self.lon = lon
        self.accuracy = accuracy
        self.times = times
        self.ids = ids


def _continues_newest(trail: _Trail, geo: GeoInfo, t: float) -> bool:
    """True when the event adds nothing to compare: it is at the *place* (coordinates) of the
    trail's newest sighting, with an accuracy radius no smaller, and not older than it.

    Why nothing is lost: every sighting ``s`` at another place is at or before the newest sighting
    ``N`` (``N`` is the newest of all), and when the later of ``s`` and ``N`` arrived it was
    compared with the other's nearest sighting in time, at a gap no longer than ``t - s``.  The
    event's distance to that place is the same and its conservative distance no larger (its
    accuracy radius is no smaller), so its speed can only be lower.  The address may differ (a
    second address in the same /24, a NAT pool): only the place matters, so a principal is
    compared only when it changes place.
    """
    last = trail.last
    if last is None or t < trail.newest:
        return False
    if last.lat != geo.latitude or last.lon != geo.longitude or geo.accuracy_km < last.accuracy:
        return False
    times = last.times
    return bool(times) and times[-1] == trail.newest


class _Trail:
    """A principal's places (address → :class:`_Place`), the newest event time among them, and
    the place that holds that newest sighting (``last``: what :func:`_continues_newest` checks).
    """

    __slots__ = ("last", "newest", "places")

    def __init__(self, newest: float, places: dict[str, _Place], last: _Place | None = None) -> None:
        self.newest = newest
        self.places = places
        self.last = last


def _newest(trail: _Trail) -> float:
    return trail.newest


class _Hit:
    """The fastest impossible pair found for one event."""

    __slots__ = ("distance", "effective", "gap", "ip", "other_id", "other_time", "speed")

    def __init__(self, ip: str, other_time: float, other_id: str, distance: float, effective: float,
                 gap: float, speed: float) -> None:
        self.ip = ip
        self.other_time = other_time
        self.other_id = other_id
        self.distance = distance
        self.effective = effective
        self.gap = gap
        self.speed = speed


def _is_failed_console_login(event: Event) -> bool:
    if event.event_name != "ConsoleLogin":
        return False
    return event.error_code is not None or event.get("responseElements.ConsoleLogin") == "Failure"


class ImpossibleTravel(Detector):
    """Reports a principal seen at two public locations faster apart than ``max_speed_kmh``."""

    name: ClassVar[str] = "impossible_travel"
    #: State keyed by principal.
    state_key: ClassVar[StateKey | None] = "principal"
    severity: ClassVar[str] = "high"
    tags: ClassVar[tuple[str, ...]] = ("attack.initial_access", "attack.t1078.004")
    runbook: ClassVar[str | None] = (
        "Ask the principal's owner whether they used both locations (VPN, travel, a CI provider). If "
        "not: revoke its sessions (for a role, an inline deny on aws:TokenIssueTime) and rotate its "
        "keys, then review every call made from the unexpected address."
    )

    class Config(DetectorConfig):
        """Tuning for :class:`ImpossibleTravel`."""

        #: Speed (km/h) above which travel between two events is impossible.
        max_speed_kmh: float = Field(900.0, gt=0)
        #: Conservative distance (km, after subtracting accuracy radii) below which nothing is reported.
        min_distance_km: float = Field(500.0, ge=0)
        #: Longest event-time gap compared; also how long places are kept and the throttle period.
        window: Seconds = Field(86_400.0, gt=0)
        #: Addresses kept per principal (least recently seen dropped first).
        max_places: int = Field(16, ge=2)
        #: Event times kept per address (oldest dropped first).
        max_times: int = Field(16, ge=1)
        #: Principals tracked at most (least recently active evicted).
        max_keys: int = Field(100_000, ge=1)
        #: ``fnmatch`` globs of principals never tracked (e.g. a shared break-glass user).
        ignore_principal_patterns: tuple[str, ...] = ()
        #: ``evaluate`` (default) compares events older than the watermark too; ``drop`` ignores them.
        late_policy: Literal["evaluate", "drop"] = "evaluate"

    config: Config

    def __init__(self, config: DetectorConfig, context: DetectorContext | None = None) -> None:
        super().__init__(config, context)
        on_evict = self.context.on_evict
        self._trails: KeyedState[_Trail] = KeyedState(
            horizon=self.config.window,
            max_keys=self.config.max_keys,
            newest=_newest,
            on_evict=lambda n: on_evict(self.name, n),
        )
        #: address → its place (or None: not a place), so each address is enriched once.
        self._ip_places: dict[str, object] = {}
        #: (lat, lon, lat, lon) → great-circle km: principals keep comparing the same few places.
        self._distances: dict[tuple[float, float, float, float], float] = {}
        self._throttle = Throttle(
            self.config.window,
            max_keys=self.config.max_keys,
            on_evict=lambda n: on_evict(self.name, n),
        )

    # -- events ------------------------------------------------------------------------------
    def _place_of(self, ip: str) -> GeoInfo | None:
        """One enrichment pass per address: not AWS, not allowlisted, and geolocated."""
        enricher = self.context.enricher
        if enricher.network_kind(ip) != IP_PUBLIC:
            return None
        allowlisted = getattr(enricher, "is_allowlisted", None)
        if allowlisted is not None and allowlisted(ip):
            return None
        return enricher.geo(ip)

    def on_event(self, event: Event) -> list[Alert] | None:
        """Compare the event's place with the principal's other places; remember it.

        The hot path (most events: a principal at its usual place) is one address-cache lookup,
        one store lookup and an append; the place comparison runs only when the place changes.
        """
        if event.source_ip_kind != IP_PUBLIC:
            return None
        ip = event.source_ip
        places = self._ip_places
        geo = places.get(ip, _UNKNOWN)
        if geo is _UNKNOWN:
            geo = self._place_of(ip)
            if len(places) >= _MAX_CACHED_IPS:
                places.clear()  # enrichment is static: a cold cache only costs lookups
            places[ip] = geo
        if geo is None or (event.event_name == "ConsoleLogin" and _is_failed_console_login(event)):
            return None
        principal = event.principal
        patterns = self.config.ignore_principal_patterns
        if patterns and any(fnmatchcase(principal, p) for p in patterns):
            return None
        t = event.time
        store = self._trails
        if t < store.watermark:
            self.context.on_late(self.name, 1)
            if self.config.late_policy == "drop":
                return None
        cutoff = store.watermark - self.config.window
        trail = store.get(principal)
        hit = (self._fastest(trail, ip, geo, t, cutoff)  # type: ignore[arg-type]
               if trail is not None and not _continues_newest(trail, geo, t) else None)  # type: ignore[arg-type]
        if t >= cutoff:
            self._remember(principal, trail, ip, geo, t, event.event_id or "", cutoff)  # type: ignore[arg-type]
        if hit is None:
            return None
        suppressed = self._throttle.allow(principal, t)
        if suppressed is None:
            return None
        return [self._alert(event, geo, hit, suppressed)]  # type: ignore[arg-type]

    def _fastest(self, trail: _Trail, ip: str, geo: GeoInfo, t: float, cutoff: float) -> _Hit | None:
        """The fastest impossible pair between (``ip``, ``t``) and the trail's other places."""
        config = self.config
        window, min_distance, max_speed = config.window, config.min_distance_km, config.max_speed_kmh
        best: _Hit | None = None
        lat, lon, accuracy = geo.latitude, geo.longitude, geo.accuracy_km
        distances = self._distances
        for other, place in trail.places.items():
            if other == ip or (place.lat == lat and place.lon == lon):
                continue  # the same address, or another address at the same place (same /24, NAT pool)
            pair = (lat, lon, place.lat, place.lon) if lat < place.lat else (place.lat, place.lon, lat, lon)
            distance = distances.get(pair)
            if distance is None:
                distance = haversine_km(lat, lon, place.lat, place.lon)
                if len(distances) >= _MAX_CACHED_IPS:
                    distances.clear()
                distances[pair] = distance
            effective = distance - accuracy - place.accuracy
            if effective < min_distance:
                continue
            times = place.times
            j = bisect_left(times, t)
            for i in (j - 1, j):
                if not 0 <= i < len(times):
                    continue
                s = times[i]
                if s < cutoff or abs(s - t) > window:
                    continue
                gap = max(abs(t - s), 1.0)
                speed = effective / (gap / 3600.0)
                if speed > max_speed and (best is None or speed > best.speed
                                          or (speed == best.speed and other < best.ip)):
                    best = _Hit(other, s, place.ids[i], distance, effective, gap, speed)
        return best

    def _remember(self, principal: str, trail: _Trail | None, ip: str, geo: GeoInfo, t: float,
                  event_id: str, cutoff: float) -> None:
        config = self.config
        places = trail.places if trail is not None else None
        place = places.pop(ip, None) if places is not None else None
        if place is None:
            place = _Place(geo.latitude, geo.longitude, geo.accuracy_km, [], [])
        if trail is None:
            trail = _Trail(t, {}, place)
            places = trail.places
            self._trails.insert(principal, trail)
        elif t >= trail.newest:
            trail.newest = t
            trail.last = place
        places[ip] = place  # type: ignore[index]  # most recently seen last
        times = place.times
        if not times or times[-1] < t:  # in order: the common case
            times.append(t)
            place.ids.append(event_id)
        else:
            j = bisect_left(times, t)
            if j < len(times) and times[j] == t:
                return  # this address at this second is already known (a duplicate or a burst)
            times.insert(j, t)
            place.ids.insert(j, event_id)
        stale = bisect_left(times, cutoff)
        drop = max(stale, len(times) - config.max_times)
        if drop > 0:
            del times[:drop], place.ids[:drop]
        if len(places) > config.max_places:
            oldest = min(places, key=lambda k: places[k].times[-1] if places[k].times else _NEG_INF)
            del places[oldest]

    def _alert(self, event: Event, geo: GeoInfo, hit: _Hit, suppressed: int) -> Alert:
        enricher = self.context.enricher
        ip, t = event.source_ip, event.time
        here = self._place_evidence(ip, t, event.event_id or "", geo)
        there = self._place_evidence(hit.ip, hit.other_time, hit.other_id, enricher.geo(hit.ip))
        first, second = (there, here) if hit.other_time <= t else (here, there)
        summary = (
            f"{event.principal} was seen at {first['ip']} ({_where(first)}) and {hit.gap:.0f} s "
            f"{'later' if first is there else 'earlier'} at {ip} ({_where(here)}): "
            f"{hit.effective:.0f} km apart, {hit.speed:.0f} km/h."
        )
        ids = sorted(i for i in (event.event_id, hit.other_id) if i)
        resources = bounded([
            *(make_resource("source_ip", place["ip"], detail=f"{_where(place)} at {place['time']}")
              for place in (first, second)),
            make_resource("principal", event.principal,
                          detail=f"seen {hit.effective:.0f} km apart in {hit.gap:.0f} s"),
        ])
        return Alert(
            detector=self.name,
            title="Impossible travel between two source IPs of one principal",
            severity=self.effective_severity,
            time=t,
            summary=summary,
            account_id=event.account_id,
            region=event.region,
            principal=event.principal,
            source_ips=[first["ip"], second["ip"]],
            event_ids=ids,
            evidence={
                "first": first,
                "second": second,
                "distance_km": round(hit.distance, 1),
                "conservative_distance_km": round(hit.effective, 1),
                "gap_seconds": round(hit.gap, 3),
                "speed_kmh": round(hit.speed, 1),
                "max_speed_kmh": self.config.max_speed_kmh,
                "geoip_attribution": getattr(enricher, "attribution", "") or "",
                "suppressed": suppressed,
            },
            tags=list(self.tags),
            runbook=self.runbook,
            entity=event.principal,
            id="" if ids else make_alert_id(self.name, None, event.principal, hit.other_time, t),
            resources=resources,
        )

    @staticmethod
    def _place_evidence(ip: str, t: float, event_id: str, geo: GeoInfo | None) -> dict[str, Any]:
        return {
            "ip": ip,
            "time": format_time(t),
            "event_id": event_id,
            "city": geo.city if geo else "",
            "country": geo.country if geo else "",
            "asn": geo.asn if geo else None,
            "as_org": geo.as_org if geo else "",
            "accuracy_km": geo.accuracy_km if geo else 0.0,
        }

    def on_watermark(self, watermark: float) -> None:
        """Forget principals with no place left within the window; age the throttle."""
        self._trails.advance(watermark)
        self._throttle.advance(watermark)
        return None

    # -- state -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain data: the watermark, every live principal's places, and the throttle."""
        wm = self._trails.watermark
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.name,
            "watermark": None if wm == _NEG_INF else wm,
            "trails": [
                [principal, trail.newest,
                 [[ip, p.lat, p.lon, p.accuracy, list(p.times), list(p.ids)] for ip, p in trail.places.items()]]
                for principal, trail in self._trails.items()
            ],
            "throttle": self._throttle.snapshot(),
        }

    def restore(self, state: Any) -> None:
        """Load :meth:`snapshot` output (``ValueError`` for a foreign or newer snapshot)."""
        data = check_snapshot(state, self.name)
        raw_wm = data.get("watermark")
        watermark = float(raw_wm) if isinstance(raw_wm, (int, float)) else _NEG_INF
        pairs: list[tuple[Any, _Trail]] = []
        for principal, newest, places in data.get("trails") or []:
            pairs.append((principal, _Trail(float(newest), {
                ip: _Place(float(lat), float(lon), float(acc), [float(x) for x in times], [str(x) for x in ids])
                for ip, lat, lon, acc, times, ids in places
            })))
        self._trails.load(pairs, watermark)
        throttle = data.get("throttle")
        if throttle is not None:
            self._throttle.restore(throttle)

    def state_keys(self) -> int:
        """Principals tracked."""
        return len(self._trails)


def _where(place: dict[str, Any]) -> str:
    return ", ".join(part for part in (place["city"], place["country"]) if part) or "unknown location"
