"""A pipeline that records what a source let through, for the source integration tests.

Why it exists: the Kafka and SQS source tests check delivery end to end (what reached the sinks,
what was acknowledged) through the real :class:`~daemon.pipeline.Pipeline`.  They need the same
three pieces: a detector that alerts on every event, a sink that keeps the alerts, and the
pipeline wiring between them and one source.
"""

from __future__ import annotations

from typing import Any

from daemon.config import PipelineConfig
from daemon.delivery.dispatch import Dispatcher
from daemon.delivery.incidents import Incidents, IncidentsConfig
from daemon.delivery.sinks.base import Sink, SinkConfig
from daemon.metrics import Metrics
from daemon.pipeline import Pipeline
from daemon.sources.base import Source
from detectors.alert import Alert
from detectors.base import Detector
from detectors.engine import DetectionEngine
from detectors.event import Event

__all__ = ["LATENESS", "Every", "Recording", "pipeline_for"]

#: Allowed lateness wide enough that no stored sample event is ever late.
LATENESS = 10 * 365 * 86400


class Every(Detector):
    """Alerts on every event: the alerts are the record of what got through."""

    name = "every"

    def __init__(self, *_: Any) -> None:  # fork() passes (config, context)
        super().__init__(self.Config(), None)

    def on_event(self, event: Event) -> list[Alert]:
        return [Alert.from_event(event, detector="every", title="seen", severity="low", summary="seen")]


class Recording(Sink):
    """Keeps every alert it is sent."""

    kind = "recording"

    def __init__(self) -> None:
        super().__init__(SinkConfig(type="recording"))
        self.alerts: list[Alert] = []

    async def send(self, alerts: list[Alert]) -> None:
        self.alerts.extend(alerts)

    def event_ids(self) -> set[str]:
        """The ids of every event an alert was sent for."""
        return {event_id for alert in self.alerts for event_id in alert.event_ids}


def pipeline_for(source: Source, metrics: Metrics) -> tuple[Pipeline, Recording]:
    """A pipeline from ``source`` through :class:`Every` to a :class:`Recording` sink (returned too).

    Invalid records go to the source's own reporter; no periodic checkpoint task runs
    (``checkpoint_interval=0``).
    """
    sink = Recording()
    pipeline = Pipeline(sources=[source], engine=DetectionEngine([Every()], allowed_lateness=LATENESS),
                        dispatcher=Dispatcher([sink], metrics), invalid=source.invalid, metrics=metrics,
                        config=PipelineConfig(queue_size=4, allowed_lateness=LATENESS), checkpoint_interval=0,
                        incidents=Incidents(IncidentsConfig(enabled=False)))
    return pipeline, sink
