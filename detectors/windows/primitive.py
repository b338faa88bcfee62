"""What every window primitive shares: the watermark, late events, the key store, throttling, snapshots.

Why it exists: the five primitives differ only in the per-key state they keep and in what makes
them fire.  Everything about time (the watermark and late events), memory (the bounded
:class:`~detectors.windows.store.KeyedState`), one-report-per-window throttling and the snapshot
envelope is implemented once here, so that it behaves the same in every primitive.

Late events: the owner tells the primitive the watermark (max event time seen minus the allowed
lateness) through :meth:`WindowPrimitive.advance`.  An event older than it is *late*: it is
counted through ``on_late(1)`` and then handled by ``late_policy``:

* ``"evaluate"`` (default): it is added and evaluated against whatever state remains, so it can
  still fire (a window whose older events were already expired simply counts fewer);
* ``"drop"``: it is not added and ``add`` returns ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Generic, Literal, TypeVar

from detectors.windows.store import SNAPSHOT_VERSION, KeyedState, check_snapshot, freeze, thaw
from detectors.windows.throttle import Throttle

__all__ = ["LatePolicy", "WindowPrimitive"]

LatePolicy = Literal["evaluate", "drop"]

S = TypeVar("S")

_NEG_INF = float("-inf")


def _ignore_count(_n: int) -> None:
    return None


class WindowPrimitive(Generic[S]):
    """Base class: subclasses define ``kind``, the per-key state layout and ``add``.

    Parameters shared by every primitive (all keyword-only):

    ``max_keys``
        Hard cap on keys; beyond it the least recently used keys are evicted (``on_evict(n)``).
    ``late_policy``
        ``"evaluate"`` or ``"drop"``, see the module docstring.
    ``on_late`` / ``on_evict``
        Telemetry hooks called with a count.
    ``throttle``
        ``None`` (default): every qualifying ``add`` reports.  A number of seconds: at most one
        report per key per that many seconds of event time; the next report carries in its
        ``suppressed`` field how many were held back.
    ``max_evidence``
        How many event ids (and distinct values) a report carries at most.
    """

    kind: ClassVar[str] = ""

    def __init__(
        self,
        *,
        horizon: float,
        max_keys: int,
        late_policy: LatePolicy,
        on_late: Callable[[int], None] | None,
        on_evict: Callable[[int], None] | None,
        throttle: float | None,
        max_evidence: int,
    ) -> None:
        if late_policy not in ("evaluate", "drop"):
            raise ValueError(f"late_policy must be 'evaluate' or 'drop', got {late_policy!r}")
        if max_evidence < 0:
            raise ValueError(f"max_evidence must be >= 0, got {max_evidence}")
        self.late_policy: LatePolicy = late_policy
        self.max_evidence = max_evidence
        self._drop_late = late_policy == "drop"
        self._on_late = on_late if on_late is not None else _ignore_count
        self._store: KeyedState[S] = KeyedState(
            horizon=horizon, max_keys=max_keys, newest=self._newest, on_evict=on_evict
        )
        self._throttle = Throttle(throttle, max_keys=max_keys, on_evict=on_evict) if throttle is not None else None
        #: Reports the throttle has held back so far (not checkpointed): a caller that compares it
        #: around one ``add`` knows that the add met the condition again inside the throttle period.
        self.held = 0

    # -- what subclasses provide ------------------------------------------------------------
    @staticmethod
    def _newest(state: Any) -> float:
        """Newest event time held in ``state``."""
        raise NotImplementedError

    def _dump(self, state: S) -> Any:
        """``state`` as plain data."""
        raise NotImplementedError

    def _load(self, data: Any) -> S:
        """Inverse of :meth:`_dump`."""
        raise NotImplementedError

    # -- shared behaviour --------------------------------------------------------------------
    @property
    def watermark(self) -> float:
        """The last watermark given to :meth:`advance` (``-inf`` before any)."""
        return self._store.watermark

    def __len__(self) -> int:
        return len(self._store)

    def advance(self, watermark: float) -> None:
        """Tell the primitive the watermark; expired keys are dropped (cost: O(expired keys))."""
        self._store.advance(watermark)
        if self._throttle is not None:
            self._throttle.advance(watermark)

    def _is_dropped_late(self, time: float) -> bool:
        """Count a late event; ``True`` when the policy says to drop it."""
        if time < self._store.watermark:
            self._on_late(1)
            return self._drop_late
        return False

    def _release(self, key: Hashable, end: float) -> int | None:
        """Throttle gate: ``None`` to suppress, else the number suppressed before this report."""
        if self._throttle is None:
            return 0
        allowed = self._throttle.allow(key, end)
        if allowed is None:
            self.held += 1
        return allowed

    def snapshot(self) -> dict[str, Any]:
        """All state as plain data (dict/list/str/int/float/bool/None), keys in LRU order."""
        wm = self._store.watermark
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.kind,
            "watermark": None if wm == _NEG_INF else wm,
            "keys": [[freeze(key), self._dump(state)] for key, state in self._store.items()],
            "throttle": None if self._throttle is None else self._throttle.snapshot(),
        }

    def restore(self, data: Any) -> None:
        """Replace all state with a :meth:`snapshot`; ``ValueError`` if it is foreign or newer."""
        data = check_snapshot(data, self.kind)
        wm = data.get("watermark")
        self._store.load(
            [(thaw(key), self._load(state)) for key, state in data["keys"]],
            _NEG_INF if wm is None else float(wm),
        )
        saved_throttle = data.get("throttle")
        if self._throttle is not None and saved_throttle is not None:
            self._throttle.restore(saved_throttle)
