"""Memory per key: trailguard's hand-written stores against cachetools' equivalents.

Why it exists: issue 16 asks to replace the hand-written LRU/TTL stores by ``cachetools`` unless
their memory per key is measurably better.  This measures, with tracemalloc, the bytes each store
holds per key once filled with N keys (the keys and values themselves are allocated beforehand and
shared, so only the store's own overhead is counted):

* eventID dedupe: ``daemon.dedupe.Deduplicator`` vs ``cachetools.LRUCache`` / ``FIFOCache`` /
  ``TTLCache`` (with an event-time timer) holding id → event time;
* detector key state: ``detectors.windows.store.KeyedState`` vs ``cachetools.LRUCache`` holding
  key → state object.

Run: ``python bench/cachetools_memory.py [N]`` (needs ``pip install cachetools``); prints a table.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable

import cachetools

from daemon.dedupe import Deduplicator
from detectors.windows.store import KeyedState


def per_key(fill: Callable[[], object], n: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = fill()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del store
    return (after - before) / n


def main(n: int = 200_000) -> None:
    ids = [f"{i:08x}-1111-2222-3333-444455556666" for i in range(n)]
    times = [1_700_000_000.0 + i for i in range(n)]
    states = [[t, 1] for t in times]
    clock = [0.0]

    def dedupe() -> object:
        d = Deduplicator(horizon=3600.0, max_ids=n)
        for event_id, t in zip(ids, times, strict=True):
            d.seen(event_id, t)
        return d

    def cache(kind: type, **extra: object) -> Callable[[], object]:
        def fill() -> object:
            c = kind(maxsize=n, **extra)
            for event_id, t in zip(ids, times, strict=True):
                clock[0] = t
                c[event_id] = t
            return c
        return fill

    def keyed() -> object:
        k = KeyedState(horizon=3600.0, max_keys=n, newest=lambda state: state[0])
        for event_id, state in zip(ids, states, strict=True):
            k.insert(event_id, state)
        return k

    def lru_state() -> object:
        c = cachetools.LRUCache(maxsize=n)
        for event_id, state in zip(ids, states, strict=True):
            c[event_id] = state
        return c

    rows = [
        ("dedupe: Deduplicator (ours)", per_key(dedupe, n)),
        ("dedupe: cachetools.FIFOCache", per_key(cache(cachetools.FIFOCache), n)),
        ("dedupe: cachetools.LRUCache", per_key(cache(cachetools.LRUCache), n)),
        ("dedupe: cachetools.TTLCache (event-time timer)",
         per_key(cache(cachetools.TTLCache, ttl=10.0 * n, timer=lambda: clock[0]), n)),  # every key kept
        ("key state: KeyedState (ours)", per_key(keyed, n)),
        ("key state: cachetools.LRUCache", per_key(lru_state, n)),
    ]
    print(f"bytes per key, {n:,} keys, Python {sys.version.split()[0]}, cachetools {cachetools.__version__}")
    for name, value in rows:
        print(f"  {name:<50} {value:8.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
