"""SIGTERM or SIGINT that arrive while the process is still starting are kept, not fatal.

Between ``exec`` and the event loop's own handlers a process spends a second or more importing,
checking its config and compiling rules.  A SIGTERM in that window (an orchestrator scaling down, a
test tearing down) would otherwise kill it with Python's default action — exit status -15, no log
line — although nothing has been read yet and a clean stop costs nothing.  :func:`catch` records
such a signal instead; whoever installs the loop's handlers asks :func:`pending` and stops at once,
through the same path as a signal that arrives later.
"""

from __future__ import annotations

import signal
from types import FrameType

__all__ = ["catch", "pending"]

_received: list[int] = []


def _remember(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)


def catch() -> None:
    """Record SIGTERM/SIGINT from now until the event loop's handlers replace these."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _remember)


def pending() -> int | None:
    """The first stop signal received before the loop's handlers were installed, if any."""
    return _received[0] if _received else None
