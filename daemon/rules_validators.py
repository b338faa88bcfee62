"""pySigma's own rule validators for ``trailguard rules validate --strict``.

pySigma ships the checks SigmaHQ runs on its rule repository (dangling detections, duplicate tags
and references, wildcard and modifier misuse, tag formats, ...).  ``--strict`` runs all of them next
to the pack's metadata checks, except the few listed in :data:`EXCLUDED` with the reason: two
download MITRE ATT&CK / D3FEND data over the network (the daemon and CI run offline; the
metadata check already requires well-formed ATT&CK tactic and technique tags), and two flag what
CloudTrail records need on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from sigma.correlations import SigmaCorrelationRule
from sigma.rule import SigmaRule
from sigma.validation import SigmaValidator
from sigma.validators.core import validators

__all__ = ["EXCLUDED", "pysigma_problems", "sigma_rules_by_id"]

#: pySigma validator identifier → why ``--strict`` does not run it.
EXCLUDED: Final[dict[str, str]] = {
    "attacktag": "downloads MITRE ATT&CK data at run time; ATT&CK tag format is checked by the metadata check",
    "d3_fendtag": "downloads MITRE D3FEND data at run time",
    "escaped_wildcard": "CloudTrail policies carry a literal '*' principal, which rules must match as '\\*'",
    "number_as_string": "CloudTrail writes some numbers as strings (ipProtocol '-1'), matched as strings on purpose",
}

_VALIDATOR: Final = SigmaValidator([cls for name, cls in sorted(validators.items()) if name not in EXCLUDED])


def pysigma_problems(rule: SigmaRule | SigmaCorrelationRule) -> list[str]:
    """Each pySigma validator issue for ``rule``, as ``<Issue>: <description>`` (empty when clean)."""
    return [f"pySigma {type(issue).__name__}: {issue.description}" for issue in _VALIDATOR.validate_rule(rule)]


def sigma_rules_by_id(rules: Iterable[SigmaRule | SigmaCorrelationRule]) -> dict[str, SigmaRule | SigmaCorrelationRule]:
    """Index pySigma rule objects by their id, for looking up a compiled rule's or plan's source."""
    return {str(rule.id): rule for rule in rules if rule.id is not None}
