"""``replay --since/--until``: only events whose ``eventTime`` falls in the range are processed.

The bounds are applied to the records of each source batch before the pipeline sees them, so
events outside the range neither alert nor build state; they are counted (``outside_range`` in
the summary).  A record whose time cannot be read is passed on, so the pipeline reports it as
invalid with its reason instead of it vanishing here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from detectors.event import parse_event_time

__all__ = ["limit_to_time_range", "parse_bound"]


def parse_bound(text: str) -> float:
    """A ``--since``/``--until`` value: a CloudTrail timestamp, or a date ``YYYY-MM-DD`` (midnight UTC)."""
    try:
        return parse_event_time(text)
    except ValueError:
        pass
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is neither a date (2024-01-31) nor a time (2024-01-31T12:00:00Z)") from None


def limit_to_time_range(source: Any, since: float | None, until: float | None, skipped: list[int]) -> None:
    """Wrap ``source.batches`` to drop records outside ``[since, until)``; ``skipped[0]`` counts them."""
    original = source.batches

    def inside(record: Any) -> bool:
        raw = record.get("eventTime") if isinstance(record, dict) else None
        if not isinstance(raw, str):
            return True
        try:
            moment = parse_event_time(raw)
        except ValueError:
            return True
        return (since is None or moment >= since) and (until is None or moment < until)

    async def limited() -> AsyncIterator[Any]:
        async for batch in original():
            keep = [i for i, record in enumerate(batch.records) if inside(record)]
            if len(keep) != len(batch.records):
                skipped[0] += len(batch.records) - len(keep)
                locations = batch.locations  # kept records keep their original line/index for reports
                batch = dataclasses.replace(
                    batch, records=[batch.records[i] for i in keep],
                    locations=[locations[i] if locations else batch.first_index + i for i in keep])
            yield batch

    source.batches = limited
