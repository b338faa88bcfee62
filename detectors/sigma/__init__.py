"""trailguard's native, streaming Sigma engine for detection rules.

pySigma parses and validates the rules; :mod:`~detectors.sigma.compiler` turns each detection into
Python closures evaluated on every event; :class:`~detectors.sigma.ruleset.RuleSet` indexes the rules
by the eventName/eventSource they require; :class:`~detectors.sigma.detector.SigmaDetector` is the
detector the engine runs.  Correlation rules are parsed and handed on (``RuleSet.correlation_rules``
and ``SigmaDetector.on_match``), not evaluated here.
"""

from detectors.sigma.loader import CORRELATION_NOTICE, DEFAULT_LOGSOURCES, Logsource, load_rules, load_sources
from detectors.sigma.ruleset import CompiledRule, LoadIssue, RuleSet
from detectors.sigma.values import Unsupported

__all__ = [
    "CORRELATION_NOTICE",
    "DEFAULT_LOGSOURCES",
    "CompiledRule",
    "LoadIssue",
    "Logsource",
    "RuleSet",
    "Unsupported",
    "load_rules",
    "load_sources",
]
