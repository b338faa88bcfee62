"""Identity lineage: for a role session, the chain back to the principal that started it.

An alert on ``assumed-role/deploy/aws-go-sdk-1688990082`` tells an analyst little; "IAM user
``bert-jan`` assumed ``deploy``, whose session assumed ``admin``" is what they reconstruct by hand
first.  The stream contains it: every successful ``AssumeRole``, ``AssumeRoleWithSAML``,
``AssumeRoleWithWebIdentity``, ``AssumeRoot`` and ``GetFederationToken`` names the session it
creates (``responseElements.assumedRoleUser.arn`` / ``federatedUser.arn``) and who asked for it
(the caller, or the SAML/web-identity subject), plus the ``sourceIdentity`` when one was set.

:class:`IdentityLineage` keeps ``session ARN → hop`` for the sessions it saw being made, in a
bounded :class:`~detectors.windows.store.KeyedState` (a hop expires :data:`SESSION_HORIZON` of
event time after it was made — longer than any STS session lasts — and the number of sessions is
capped), checkpointed with :meth:`snapshot`/:meth:`restore` like detector state.  The engine feeds
it every event whose name is in :data:`LINEAGE_EVENTS` (one set lookup per event; only those
update it) and :meth:`annotate` fills ``identity_chain`` and ``origin_principal`` on alerts when
they are built.  Keys and values are cut to :data:`MAX_TEXT` characters, so an attacker-chosen
session name cannot grow state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from detectors.alert import Alert
from detectors.event import Event, format_time, get_path
from detectors.windows.store import SNAPSHOT_VERSION, KeyedState, check_snapshot

__all__ = ["LINEAGE_EVENTS", "MAX_HOPS", "SESSION_HORIZON", "IdentityLineage"]

#: The STS calls that create a session (the only events that update lineage).
LINEAGE_EVENTS: Final = frozenset({
    "AssumeRole", "AssumeRoleWithSAML", "AssumeRoleWithWebIdentity", "AssumeRoot", "GetFederationToken",
})
#: A session is remembered this long (event time) after it was made: STS sessions last ≤ 36 h.
SESSION_HORIZON: Final = 36 * 3600.0
#: Longest chain followed (role chaining deeper than this is cut, and cycles stop it).
MAX_HOPS: Final = 10
#: Longest principal / session name / source identity kept.
MAX_TEXT: Final = 512

_KIND: Final = "identity_lineage"

# hop = (parent principal, via eventName, eventID, event time, sourceIdentity)
_Hop = tuple[str, str, str, float, str]


def _text(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    return value[:MAX_TEXT]


def _hop_time(hop: _Hop) -> float:
    return hop[3]


class IdentityLineage:
    """``session ARN → (parent, via, eventID, time, sourceIdentity)``, bounded and checkpointed."""

    def __init__(self, *, max_keys: int = 100_000, horizon: float = SESSION_HORIZON) -> None:
        self._sessions: KeyedState[_Hop] = KeyedState(horizon=horizon, max_keys=max(1, max_keys),
                                                      newest=_hop_time)

    def __len__(self) -> int:
        return len(self._sessions)

    def observe(self, event: Event) -> None:
        """Remember the session a successful STS call created (other events are ignored)."""
        if event.event_name not in LINEAGE_EVENTS or event.error_code:
            return
        response = event.raw.get("responseElements")
        if not isinstance(response, dict):
            return
        name = event.event_name
        key = "federatedUser.arn" if name == "GetFederationToken" else "assumedRoleUser.arn"
        session = _text(get_path(response, key))
        if not session:
            return
        if name == "AssumeRoleWithSAML":
            subject = _text(response.get("subject")) or "unknown"
            parent = f"saml:{_text(response.get('issuer'))}:{subject}"
        elif name == "AssumeRoleWithWebIdentity":
            subject = _text(response.get("subjectFromWebIdentityToken")) or "unknown"
            parent = f"web-identity:{_text(response.get('provider'))}:{subject}"
        else:
            parent = _text(event.principal)
        source_identity = (_text(response.get("sourceIdentity"))
                           or _text(get_path(event.raw, "requestParameters.sourceIdentity"))
                           or _text(get_path(event.raw, "userIdentity.sessionContext.sourceIdentity")))
        hop: _Hop = (parent, name, _text(event.event_id or ""), event.time, source_identity)
        sessions = self._sessions
        if sessions.touch(session) is not None:
            sessions.discard(session)
        sessions.insert(session, hop)

    def chain(self, principal: str) -> list[dict[str, Any]]:
        """Oldest first: the origin, then each session made from the one before, ending at ``principal``.

        Empty when ``principal`` is not a session seen being made.
        """
        sessions = self._sessions
        hops: list[dict[str, Any]] = []
        seen = {principal}
        current = principal
        while len(hops) < MAX_HOPS:
            hop = sessions.get(current, touch=False)
            if hop is None:
                break
            parent, via, event_id, when, source_identity = hop
            entry: dict[str, Any] = {"principal": current, "via": via, "event_id": event_id or None,
                                     "time": format_time(when)}
            if source_identity:
                entry["source_identity"] = source_identity
            hops.append(entry)
            if parent in seen:
                break
            seen.add(parent)
            current = parent
        if not hops:
            return []
        hops.append({"principal": current})
        hops.reverse()
        return hops

    def annotate(self, alerts: Iterable[Alert]) -> None:
        """Fill ``identity_chain``/``origin_principal`` of alerts that have none yet."""
        if not len(self._sessions):
            return
        for alert in alerts:
            if alert.identity_chain or not alert.principal:
                continue
            chain = self.chain(alert.principal)
            if chain:
                alert.identity_chain = chain
                alert.origin_principal = chain[0]["principal"]

    def advance(self, watermark: float) -> None:
        """Forget sessions made longer than the horizon before ``watermark``."""
        self._sessions.advance(watermark)

    def snapshot(self) -> dict[str, Any]:
        """Plain data: ``{"version", "watermark", "sessions": [[arn, parent, via, id, time, src], …]}``."""
        sessions = self._sessions
        watermark = sessions.watermark
        return {
            "version": SNAPSHOT_VERSION,
            "kind": _KIND,
            "watermark": watermark if watermark != float("-inf") else None,
            "sessions": [[key, *hop] for key, hop in sessions.items()],
        }

    def restore(self, state: Any) -> None:
        """Load :meth:`snapshot` output; malformed entries are skipped, a malformed envelope raises."""
        data = check_snapshot(state, _KIND)
        pairs: list[tuple[Any, _Hop]] = []
        for row in data.get("sessions") or []:
            if (isinstance(row, list) and len(row) == 6 and all(isinstance(v, str) for v in row[:4])
                    and isinstance(row[4], (int, float)) and isinstance(row[5], str)):
                pairs.append((row[0], (row[1], row[2], row[3], float(row[4]), row[5])))
        watermark = data.get("watermark")
        self._sessions.load(pairs, float(watermark) if isinstance(watermark, (int, float)) else float("-inf"))
