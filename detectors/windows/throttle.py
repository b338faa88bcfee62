"""One report per key per period, counting what it held back.

Why it exists: a window keeps firing while an attack goes on (every failed login past the
threshold completes another window).  Detectors want one alert per burst that says how many more
occurrences it stands for.  :class:`Throttle` lets the first report for a key through, suppresses
reports within ``period`` seconds (event time) of it, and hands the number suppressed to the next
report it lets through.  The count of suppressed reports is kept as long as they keep coming; once
none has come for ``period`` seconds of watermark, the key is forgotten with its count.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from detectors.windows.store import SNAPSHOT_VERSION, KeyedState, check_snapshot, freeze, thaw

__all__ = ["Throttle"]


def _last_seen(state: list) -> float:
    return state[2]


class Throttle:
    """Lets one report per key through every ``period`` seconds of event time.

    State per key is ``[last_reported_time, suppressed, last_seen_time]``.
    """

    kind = "throttle"

    def __init__(
        self,
        period: float,
        *,
        max_keys: int = 100_000,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        if period <= 0:
            raise ValueError(f"throttle period must be > 0, got {period}")
        self.period = float(period)
        self._store: KeyedState[list] = KeyedState(
            horizon=self.period, max_keys=max_keys, newest=_last_seen, on_evict=on_evict
        )

    def __len__(self) -> int:
        return len(self._store)

    def allow(self, key: Hashable, time: float) -> int | None:
        """``None`` to suppress this report, else how many were suppressed since the last one."""
        state = self._store.get(key)
        if state is None:
            self._store.insert(key, [time, 0, time])
            return 0
        if time > state[2]:
            state[2] = time
        last = state[0]
        if last - self.period < time < last + self.period:
            state[1] += 1
            return None
        suppressed = state[1]
        state[1] = 0
        if time > last:
            state[0] = time
        return suppressed

    def advance(self, watermark: float) -> None:
        """Forget keys that have been quiet for a period."""
        self._store.advance(watermark)

    def snapshot(self) -> dict[str, Any]:
        """Plain-data state (see :meth:`restore`)."""
        wm = self._store.watermark
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.kind,
            "watermark": None if wm == float("-inf") else wm,
            "keys": [[freeze(k), list(s)] for k, s in self._store.items()],
        }

    def restore(self, data: Any) -> None:
        """Load what :meth:`snapshot` returned; raises ``ValueError`` for a foreign or newer format."""
        data = check_snapshot(data, self.kind)
        wm = data.get("watermark")
        self._store.load(
            [(thaw(k), [float(s[0]), int(s[1]), float(s[2])]) for k, s in data["keys"]],
            float("-inf") if wm is None else float(wm),
        )
