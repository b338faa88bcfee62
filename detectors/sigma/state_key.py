"""The state key a Sigma rule set needs, from its correlations' ``group-by``.

Single-event rules are stateless; the state is the correlations' windows, the ``new_terms`` groups
and the creator record.  Each correlation declares its key through its ``group-by``:

* a principal field (``userIdentity.arn``, ``principalId``, ``accessKeyId``, ``userName``) →
  ``principal``;
* else ``sourceIPAddress`` → ``source_ip``;
* no ``group-by`` at all → ``organisation`` (one count over everything);
* anything else (``recipientAccountId``, a bucket name, a request parameter: values that live in
  one account) → ``account``.

The creator record (who created each secret, parameter, function) is keyed by the resource, which
lives in one account → ``account``.  A rule set with no state is stateless (``None``: judged on
the input partitions, each event once).  A rule set whose correlations all share one key needs that
key.  Mixed keys run together on ``account`` — the detector keeps one engine's state and is not
split by correlation (see docs/production.md "Scaling out on Kafka"), so a principal- or
IP-grouped correlation in a mixed set sees an account's share of its key, as before keys were
declared.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from detectors.base import StateKey

__all__ = ["group_by_key", "rule_set_key"]

_PRINCIPAL_FIELDS: Final = frozenset({
    "userIdentity.arn", "userIdentity.principalId", "userIdentity.accessKeyId", "userIdentity.userName",
    "userIdentity.sessionContext.sessionIssuer.arn", "trailguard.principal",
})


def group_by_key(group_by: Iterable[str]) -> StateKey:
    """The key a correlation grouped by ``group_by`` needs (see the module docstring)."""
    fields = set(group_by)
    if not fields:
        return "organisation"
    if fields & _PRINCIPAL_FIELDS:
        return "principal"
    if "sourceIPAddress" in fields:
        return "source_ip"
    return "account"


def rule_set_key(correlation_group_bys: Iterable[Iterable[str]], *, tracks_creators: bool) -> StateKey | None:
    """The one key a rule set's state needs; ``None`` when it keeps none."""
    keys = {group_by_key(group_by) for group_by in correlation_group_bys}
    if tracks_creators:
        keys.add("account")
    if not keys:
        return None
    return keys.pop() if len(keys) == 1 else "account"
