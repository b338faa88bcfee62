"""trailguard's native, streaming Sigma engine for detection rules.

pySigma parses and validates the rules; :mod:`~detectors.sigma.compiler` turns each detection into
Python closures evaluated on every event; :class:`~detectors.sigma.ruleset.RuleSet` indexes the rules
by the eventName/eventSource they require; :class:`~detectors.sigma.detector.SigmaDetector` is the
detector the engine runs.  Correlation rules (``event_count``, ``value_count``, ``temporal``,
``temporal_ordered``, value aggregations) run in ``correlation.py`` on the shared event-time
window engine, fed by the detection rules' matches.
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
