"""Exceptions for every detector: events a SOC decided a detector must not see.

Each detector's config section takes ``exceptions:``, the same schema as the Sigma detector's
(:mod:`detectors.sigma.tuning`) without ``rule_ids``: ``match`` is a Sigma selection (a mapping
— all fields must hold — or a list of mappings — any of them — with any Sigma modifier),
compiled by the rule compiler; ``comment`` (why it exists) is required; ``expires`` (a date,
inclusive, compared with the *event* time) is optional, and ``check-config`` reports expired ones.

They are applied once, by the engine (:meth:`detectors.engine.DetectionEngine.process`): an
event that matches an exception of a detector is not fed to that detector, so it never counts
toward a window, a baseline or a sequence.  A new detector gets this for free.  The Sigma detector
keeps its own per-rule exceptions (``rule_ids``) and opts out (``shared_exceptions = False``).

Older per-detector allowlists (``ignore_principals``, ``ignore_networks``) are mapped onto the same
mechanism: a detector config's :meth:`~detectors.base.DetectorConfig.legacy_exceptions` turns
them into exception predicates with their old meaning, applied in the same place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from detectors.event import Event

__all__ = ["NO_EXCEPTIONS", "DetectorException", "DetectorExceptions", "compile_exceptions", "expired_lines",
           "expiry_epoch", "principal_globs", "source_networks"]


class DetectorException(BaseModel):
    """One exception of a built-in (or plugin) detector (config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A Sigma selection over the raw event (mapping: AND of fields; list of mappings: OR).
    match: dict[str, Any] | list[dict[str, Any]]
    #: Why this exception exists (who asked, which ticket).
    comment: str
    #: Last day the exception applies (UTC, inclusive, event time); from the next day on it is expired.
    expires: date | None = None

    @field_validator("match")
    @classmethod
    def _valid_selection(cls, value: Any) -> Any:
        from detectors.sigma.tuning import compile_selection

        try:
            compile_selection(value)
        except ValueError as error:
            raise ValueError(f"{error} (write field: value pairs, e.g. {{userIdentity.arn|endswith: "
                             "':role/scanner', sourceIPAddress|cidr: 10.0.0.0/8}})") from None
        return value

    @field_validator("comment")
    @classmethod
    def _says_why(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("comment is empty: say why the exception exists (who asked, which ticket)")
        return value

    @property
    def expires_at(self) -> float | None:
        """Epoch seconds from which the exception no longer applies (the day after ``expires``)."""
        return expiry_epoch(self.expires)



def expiry_epoch(expires: date | None) -> float | None:
    """Epoch seconds from which an exception dated ``expires`` no longer applies: the day after it
    (UTC), so an exception is in force through the whole of its last day.  ``None``: never expires."""
    if expires is None:
        return None
    return datetime(expires.year, expires.month, expires.day, tzinfo=UTC).timestamp() + 86400.0


class DetectorExceptions:
    """Compiled exceptions of one detector: ``excepts(event)`` is True when one applies."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Sequence[tuple[Callable[[Event], bool], float | None]] = ()) -> None:
        self._rules = tuple(rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def excepts(self, event: Event) -> bool:
        """True when an unexpired (at the event's time) exception matches ``event``."""
        return any((until is None or event.time < until) and applies(event) for applies, until in self._rules)


NO_EXCEPTIONS = DetectorExceptions()


def _on_raw(predicate: Callable[[dict[str, Any]], bool]) -> Callable[[Event], bool]:
    return lambda event: predicate(event.raw)


def compile_exceptions(config: Any) -> DetectorExceptions:
    """The ``exceptions`` of a detector config plus what its deprecated allowlist keys map to."""
    from detectors.sigma.tuning import compile_selection

    rules: list[tuple[Callable[[Event], bool], float | None]] = []
    for exception in getattr(config, "exceptions", ()):
        if isinstance(exception, DetectorException):
            rules.append((_on_raw(compile_selection(exception.match)), exception.expires_at))
    legacy = getattr(config, "legacy_exceptions", None)
    if legacy is not None:
        rules.extend((predicate, None) for predicate in legacy())
    return DetectorExceptions(rules) if rules else NO_EXCEPTIONS


def expired_lines(section: str, configs: Iterable[Any], now: float) -> list[str]:
    """One line per exception of ``detectors.<section>`` whose ``expires`` has passed at ``now``."""
    out = []
    for index, config in enumerate(configs):
        if not isinstance(config, DetectorException):
            continue
        until = config.expires_at
        if until is not None and now >= until:
            out.append(f"detectors.{section}.exceptions[{index}] ({config.comment}) expired on {config.expires}: "
                       "it no longer excepts anything; fix: remove it, or extend expires if it is still needed")
    return out


def principal_globs(patterns: Sequence[str]) -> list[Callable[[Event], bool]]:
    """Deprecated ``ignore_principals``: the event's principal fullmatches one fnmatch glob (case-sensitive)."""
    if not patterns:
        return []
    import re
    from fnmatch import translate

    regex = re.compile("|".join(f"(?:{translate(pattern)})" for pattern in patterns))
    return [lambda event: regex.fullmatch(event.principal) is not None]


def source_networks(networks: Sequence[str]) -> list[Callable[[Event], bool]]:
    """Deprecated ``ignore_networks``: the event's real source address is in one of the networks."""
    if not networks:
        return []
    import ipaddress

    parsed = tuple(ipaddress.ip_network(network, strict=False) for network in networks)

    def inside(event: Event) -> bool:
        address = event.real_source_ip
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip.version == network.version and ip in network for network in parsed)

    return [inside]
