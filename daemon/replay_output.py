"""What ``trailguard replay`` prints: the alerts (JSON lines, or one readable line each on a
terminal) and the per-rule backtest report a detection engineer reads after replaying an archive.

The alerts reach this sink through the real dispatcher (routing, dedup), so the report counts what
would have been delivered.  Pretty output is built from :class:`rich.text.Text` pieces, never rich
markup, and control characters are replaced: an attacker-chosen principal or user agent cannot
forge a line or inject terminal styling.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from daemon.delivery.sinks.base import Sink, SinkConfig
from daemon.delivery.sinks.errors import PermanentError
from detectors.alert import SEVERITIES, SEVERITY_RANK, Alert
from detectors.event import format_time

__all__ = ["ReplayOutput", "RuleTally", "printable", "render_summary"]

_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def printable(text: object, limit: int = 200) -> str:
    """``text`` with every non-printable character (newline, ESC, …) replaced, cut at ``limit``."""
    value = "".join(c if c.isprintable() else "\ufffd" for c in str(text))
    return value if len(value) <= limit else value[: limit - 1] + "…"


@dataclass(slots=True)
class RuleTally:
    """Alerts of one rule (or one built-in detector) over a replay."""

    detector: str
    rule: str
    title: str
    alerts: int = 0
    severities: Counter[str] = field(default_factory=Counter)
    first: float = float("inf")
    last: float = float("-inf")
    principals: set[str] = field(default_factory=set)

    def add(self, alert: Alert) -> None:
        self.alerts += 1
        self.severities[alert.severity] += 1
        self.first = min(self.first, alert.time)
        self.last = max(self.last, alert.time)
        if len(self.principals) < 1000:
            self.principals.add(alert.principal)

    def as_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "rule": self.rule, "title": self.title, "alerts": self.alerts,
                "severity": dict(sorted(self.severities.items(), key=lambda kv: -SEVERITY_RANK.get(kv[0], 0))),
                "first": format_time(self.first), "last": format_time(self.last),
                "principals": len(self.principals)}


class ReplayOutput(Sink):
    """The replay's one sink: writes alerts to stdout and tallies them per rule."""

    kind = "stdout"

    def __init__(self, format: Literal["json", "pretty"], only: frozenset[str] = frozenset(),
                 out: TextIO | None = None) -> None:
        super().__init__(SinkConfig(type="stdout"))
        self.format = format
        self.only = only
        self.tallies: dict[tuple[str, str], RuleTally] = {}
        self.filtered_out = 0
        self._closed = False
        self._out = out or sys.stdout
        self._console = Console(file=self._out, highlight=False, soft_wrap=True) if format == "pretty" else None

    def wanted(self, alert: Alert) -> bool:
        """``--rule``: only alerts of the named rules (id or title) or detectors."""
        return not self.only or bool({alert.rule_id, alert.title, alert.detector} & self.only)

    async def send(self, alerts: list[Alert]) -> None:
        """Write the alerts; once the reader is gone (``replay … | head -1``) refuse every alert at
        once, permanently (the dispatcher dead-letters and logs them), like the stdout sink."""
        if self._closed:
            raise PermanentError("standard output is closed (the reader went away)")
        try:
            self._write(alerts)
        except (BrokenPipeError, ValueError) as error:
            self._closed = True
            with contextlib.suppress(OSError, ValueError):  # later flushes must not raise again
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._out.fileno())
            raise PermanentError(f"standard output is closed: {error}", delivered=0) from None

    def _write(self, alerts: list[Alert]) -> None:
        buffer = self._out.buffer if self._console is None and hasattr(self._out, "buffer") else None
        for alert in alerts:
            if not self.wanted(alert):
                self.filtered_out += 1
                continue
            key = (alert.detector, alert.rule_id or alert.detector)
            tally = self.tallies.get(key)
            if tally is None:
                tally = self.tallies[key] = RuleTally(alert.detector, key[1], alert.title)
            tally.add(alert)
            if self._console is not None:
                self._console.print(alert_line(alert))
            elif buffer is not None:
                buffer.write(orjson.dumps(alert.to_dict()) + b"\n")
            else:
                self._out.write(orjson.dumps(alert.to_dict()).decode() + "\n")
        self._out.flush()

    def report(self) -> list[dict[str, Any]]:
        """The per-rule backtest, noisiest first."""
        ordered = sorted(self.tallies.values(), key=lambda t: (-t.alerts, t.detector, t.rule))
        return [t.as_dict() for t in ordered]


def alert_line(alert: Alert) -> Text:
    """One readable line: time, severity, detector/rule title, who, where, what."""
    line = Text()
    line.append(format_time(alert.time).replace("T", " "), style="dim")
    line.append("  ")
    line.append(f"{alert.severity.upper():<9}", style=_STYLE.get(alert.severity, ""))
    line.append(printable(alert.title, 80), style="bold")
    line.append(f"  [{alert.detector}]", style="dim")
    line.append("  ")
    line.append(printable(alert.principal or "-", 100), style="magenta")
    where = "/".join(p for p in (alert.account_id, alert.region) if p)
    if where:
        line.append(f"  {printable(where, 60)}")
    if alert.source_ips:
        line.append(f"  {printable(alert.source_ips[0], 60)}", style="blue")
    line.append("  — ")
    line.append(printable(alert.summary, 200))
    return line


def render_summary(summary: dict[str, Any], rules: list[dict[str, Any]], console: Console) -> None:
    """The end-of-replay table: one row per rule/detector (alerts raised, incidents, notifications delivered,
    severities), then totals."""
    counted = {(r.get("detector"), r.get("rule")): r for r in summary.get("by_rule") or [] if isinstance(r, dict)}
    table = Table(title="trailguard replay — alerts per rule", title_justify="left", expand=False)
    table.add_column("alerts", justify="right")
    table.add_column("incidents", justify="right")
    table.add_column("notified", justify="right")
    table.add_column("severity")
    table.add_column("detector")
    table.add_column("rule")
    table.add_column("first → last", style="dim")
    for row in rules:
        severity = Text()
        for name in reversed(SEVERITIES):
            if name in row["severity"]:
                severity.append(f"{name} {row['severity'][name]} ", style=_STYLE.get(name, ""))
        found = counted.get((row["detector"], row["rule"]))  # raised vs delivered (incidents fold repeats)
        alerts = found["alerts"] if found else row["alerts"]
        table.add_row(str(alerts), "-" if found is None else str(found["incidents"]),
                      str(row["alerts"]), severity,
                      Text(row["detector"]), Text(printable(row["title"], 60)),
                      f"{row['first'][:19]} → {row['last'][:19]}")
    if rules:
        console.print(table)
    else:
        console.print("no alerts", style="bold")
    rate = summary.get("events_per_second")
    console.print(
        f"{summary['events']:,} events ({summary['duplicates']:,} duplicates, {summary['invalid']:,} invalid"
        + (f", {summary['outside_range']:,} outside --since/--until" if summary.get("outside_range") else "")
        + f") in {summary['seconds']:.1f}s" + (f" ({rate:,.0f}/s)" if rate else "")
        + f"; {summary['alerts']:,} alerts, {summary.get('notifications', summary['alerts']):,} notifications",
        highlight=False)
    for reason, count in summary.get("invalid_by_reason", {}).items():
        console.print(f"  invalid {reason}: {count:,}", style="yellow", highlight=False)
