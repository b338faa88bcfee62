"""``type: digest`` sink: one short plain-text line per alert appended to a file (a pager digest).

Shows the sink contract: a strict ``Config`` model with a ``type`` field, ``send`` that delivers
every alert or raises, ``flush`` that makes it durable.  Control characters in alert strings are
replaced, so an attacker-chosen principal cannot forge a second line.
"""

from __future__ import annotations

import os
from typing import Literal

from daemon.delivery.sinks.base import Sink, SinkConfig
from detectors.alert import Alert


class DigestSinkConfig(SinkConfig):
    """``type: digest``, ``path``: the file lines are appended to."""

    type: Literal["digest"] = "digest"
    path: str


def _clean(text: str) -> str:
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


class DigestSink(Sink):
    """Appends ``severity detector principal: summary`` lines to ``path``."""

    kind = "digest"
    Config = DigestSinkConfig

    async def send(self, alerts: list[Alert]) -> None:
        lines = "".join(f"{a.severity} {a.detector} {_clean(a.principal)}: {_clean(a.summary)}\n" for a in alerts)
        with open(self.config.path, "a", encoding="utf-8") as handle:  # type: ignore[attr-defined]
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
