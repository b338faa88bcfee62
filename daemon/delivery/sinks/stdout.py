"""``stdout`` sink: one JSON object per line — for the demo, for piping into jq, for containers."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Literal

import orjson

from daemon.delivery.sinks.base import Sink, SinkConfig
from daemon.delivery.sinks.errors import PermanentError
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

    def __init__(self, config: StdoutSinkConfig) -> None:
        super().__init__(config)
        self._closed = False

    async def send(self, alerts: list[Alert]) -> None:
        """Write and flush the alerts (a pipe reader sees them at once).

        Once the reader is gone (``trailguard replay … | head -1``) every alert is refused
        permanently, at once — dead-lettered and logged by the dispatcher, never retried until
        the shutdown deadline.
        """
        if self._closed:
            raise PermanentError("standard output is closed (the reader went away)")
        option = orjson.OPT_INDENT_2 if self.config.pretty else 0  # type: ignore[attr-defined]
        out = sys.stdout.buffer
        written = 0
        try:
            for alert in alerts:
                out.write(orjson.dumps(alert.to_dict(), option=option))
                out.write(b"\n")
                written += 1
            out.flush()
        except (BrokenPipeError, ValueError) as error:
            self._closed = True
            # Later flushes (and the interpreter's at exit) must not raise into shutdown again.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise PermanentError(f"standard output is closed: {error}", delivered=0) from None
