"""The event-time window engine: the primitives every stateful detector is declared with.

Why it exists: CloudTrail arrives minutes late and out of order, and attackers choose the keys
detectors group by.  Getting event time, lateness, duplicates and bounded memory right once, here,
lets a detector be a few declared parameters instead of re-coded window logic.

Every primitive is keyed (any hashable: a string, or a tuple such as ``(account, region)``), works
in event time, and follows the same contract:

* ``add(key, time, …, event_id=None)`` returns a small frozen report (or ``None``) describing
  what fired: window start/end, counts or values, and a bounded sample of event ids for evidence.
  The same ``event_id`` added twice for a key counts once.
* ``advance(watermark)`` tells it the watermark (max event time seen minus the allowed lateness),
  expiring state in O(expired keys).  Events older than the watermark are *late*: counted through
  ``on_late(1)`` and handled by ``late_policy`` (``"evaluate"``, the default, or ``"drop"``).
* ``max_keys`` caps keys; least recently used ones are evicted and counted through ``on_evict(n)``.
  ``len()`` is the number of keys held.
* ``throttle=seconds`` allows one report per key per that period; the next report carries in
  ``suppressed`` how many were held back.
* ``snapshot()`` returns plain data (``version``-stamped); ``restore()`` loads it and raises
  ``ValueError`` for another primitive's snapshot or a newer format.

The primitives:

* :class:`CountWindow` — at least N events within W (sliding).
* :class:`DistinctCountWindow` — at least N distinct values within W.
* :class:`SequenceWindow` — named steps in order (or all of them) within W.
* :class:`FirstSeen` — a value new for the key after its learning period.
* :class:`BaselineRate` — a bucket's count far above the key's own EWMA baseline.

Nothing here does I/O, reads the wall clock or logs.
"""

from detectors.windows.baseline import BaselineRate, SpikeReport
from detectors.windows.count import CountReport, CountWindow
from detectors.windows.distinct import DistinctCountWindow, DistinctReport
from detectors.windows.first_seen import FirstSeen, FirstSeenReport
from detectors.windows.primitive import LatePolicy, WindowPrimitive
from detectors.windows.sequence import SequenceReport, SequenceWindow
from detectors.windows.store import SNAPSHOT_VERSION, KeyedState
from detectors.windows.throttle import Throttle

__all__ = [
    "SNAPSHOT_VERSION",
    "BaselineRate",
    "CountReport",
    "CountWindow",
    "DistinctCountWindow",
    "DistinctReport",
    "FirstSeen",
    "FirstSeenReport",
    "KeyedState",
    "LatePolicy",
    "SequenceReport",
    "SequenceWindow",
    "SpikeReport",
    "Throttle",
    "WindowPrimitive",
]
