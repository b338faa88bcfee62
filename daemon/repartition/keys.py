"""An event's value of each state key, and the Kafka message key it is routed by.

One place, so the internal topics are keyed exactly as the detectors key their state: the
account and principal are :class:`~detectors.event.Event`'s normalised fields (``account_id``,
``principal``), the source IP its ``sourceIPAddress``, and the organisation one constant (all of
it in one partition).  A missing value is routed by a fixed placeholder, never by ``None`` (which
Kafka would spread round-robin, splitting the key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from detectors.base import StateKey
from detectors.event import Event

__all__ = ["KEY_OF", "message_key"]

_MISSING: Final = b"-"
_ORGANISATION: Final = b"organisation"

#: State key → the event's value of it.
KEY_OF: Final[dict[StateKey, Callable[[Event], str]]] = {
    "account": lambda event: event.account_id,
    "principal": lambda event: event.principal,
    "source_ip": lambda event: event.source_ip,
    "organisation": lambda event: "",
}


def message_key(key: StateKey, event: Event) -> bytes:
    """The Kafka message key that sends ``event`` to the partition holding its ``key`` state."""
    if key == "organisation":
        return _ORGANISATION
    value = KEY_OF[key](event)
    return value.encode("utf-8", "surrogatepass") if value else _MISSING
