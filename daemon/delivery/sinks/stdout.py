"""``stdout`` sink: one JSON object per line — for the demo, for piping into jq, for containers."""

from __future__ import annotations

import sys
from typing import Literal

import orjson

from daemon.delivery.sinks.base import Sink, SinkConfig
from detectors.alert import Alert

__all__ = ["StdoutSink", "StdoutSinkConfig"]


class StdoutSinkConfig(SinkConfig):
    """``type: stdout`` — no other keys but ``name`` and ``pretty``."""

    type: Literal["stdout"] = "stdout"
    pretty: bool = False


class StdoutSink(Sink):
    """Writes alerts as JSON lines to the process's standard output."""

    kind = "stdout"
    Config = StdoutSinkConfig

    async def send(self, alerts: list[Alert]) -> None:
        """Write and flush the alerts (a pipe reader sees them at once)."""
        option = orjson.OPT_INDENT_2 if self.config.pretty else 0  # type: ignore[attr-defined]
        out = sys.stdout.buffer
        for alert in alerts:
            out.write(orjson.dumps(alert.to_dict(), option=option))
            out.write(b"\n")
        out.flush()
