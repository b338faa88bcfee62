"""Every Prometheus metric trailguard exports, with its fixed name, in one place.

Names are an interface (dashboards and alert rules use them): never rename one.  Labels are
low-cardinality only — never a principal or an IP.  The registry is injected so tests can read it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CHECKPOINT_OUTCOMES", "SINK_OUTCOMES", "BatchHistogram", "Metrics"]

#: ``outcome`` values of ``trailguard_sink_deliveries_total`` (exported at 0 from start-up).
SINK_OUTCOMES = ("delivered", "retry", "failed_permanent", "dropped", "blocked")
#: ``outcome`` values of ``trailguard_checkpoints_total``.
CHECKPOINT_OUTCOMES = ("written", "memory", "failed")


class BatchHistogram(Collector):
    """A histogram fed a whole batch at a time (``observe_many``), exported like any other.

    prometheus-client's ``Histogram.observe`` takes a lock and updates two values per call; at tens
    of thousands of events per second that is measurable.  This keeps plain bucket counts and is
    updated once per batch by the (single-threaded) pipeline.
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = sorted(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot: +Inf
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        """Record one value."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: Iterable[float]) -> None:
        """Record many values (one bisect and one list update each; no locks, no objects)."""
        counts, bounds, total = self.counts, self.bounds, 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self.sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """Cumulative buckets in Prometheus' exposition form."""
        cumulative, running = [], 0
        for bound, count in zip([*self.bounds, float("inf")], self.counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        family = HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.sum)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        """Describe without collecting (registration-time name clash check)."""
        yield HistogramMetricFamily(self.name, self.documentation)

_LAG_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 4 * 3600, 24 * 3600)
_FAST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Event-loop pauses and per-stage times on the path of a first notification (target: p99 100 ms).
_PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """The daemon's metrics, registered on ``registry`` (a fresh one per daemon in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # process_cpu_seconds_total, process_resident_memory_bytes, python_info: for the dashboard
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # -- events ------------------------------------------------------------------------
        self.events_received = Counter(
            "trailguard_events_received_total", "Records received, by source.", ["source"], registry=r)
        self.events_processed = Counter(
            "trailguard_events_processed_total", "Valid, unique events run through the detectors.",
            registry=r)
        self.events_invalid = Counter(
            "trailguard_events_invalid_total", "Input that is not a CloudTrail event, by reason.",
            ["reason"], registry=r)
        self.events_duplicate = Counter(
            "trailguard_events_duplicate_total", "Events skipped because their eventID was already seen.",
            registry=r)
        self.events_late = Counter(
            "trailguard_events_late_total", "Events older than the watermark when they reached a detector.",
            ["detector"], registry=r)
        self.event_lag = BatchHistogram(
            "trailguard_event_lag_seconds", "Wall-clock now minus eventTime at processing.",
            buckets=_LAG_BUCKETS, registry=r)
        self.watermark = Gauge(
            "trailguard_watermark_timestamp_seconds", "Max event time seen minus the allowed lateness.",
            registry=r)
        self.account_last_event = Gauge(
            "trailguard_account_last_event_timestamp_seconds",
            "Event time of the newest event seen per account (bounded by the number of accounts).",
            ["account"], registry=r)
        # -- detection ---------------------------------------------------------------------
        self.alerts = Counter(
            "trailguard_alerts_total",
            "Alerts raised (before folding into incidents), by detector, severity and rule (the rule id "
            "for rule-based detectors, the detector name for built-ins).",
            ["detector", "severity", "rule"], registry=r)
        self.incidents = Counter(
            "trailguard_incidents_total",
            "Incident notifications handed to delivery, by detector, rule and kind (opened, updated).",
            ["detector", "rule", "kind"], registry=r)
        self.alerts_suppressed = Counter(
            "trailguard_alerts_suppressed_total", "Alerts not delivered (duplicate, unrouted, unencodable), by reason.",
            ["detector", "reason"], registry=r)
        self.detector_seconds = Counter(
            "trailguard_detector_seconds", "Time spent inside each detector.", ["detector"], registry=r)
        self.detector_errors = Counter(
            "trailguard_detector_errors_total", "Exceptions raised by a detector (event skipped for it).",
            ["detector"], registry=r)
        self.detectors_disabled = Counter(
            "trailguard_detectors_disabled_total",
            "Detectors, or single Sigma rules (rule=\"yes\"), disabled for exceeding the per-event time budget.",
            ["detector", "rule"], registry=r)
        self.state_keys = Gauge(
            "trailguard_state_keys", "Keys held in a detector's state.", ["detector"], registry=r)
        self.state_evictions = Counter(
            "trailguard_state_evictions_total", "Keys evicted because a detector hit its key cap.",
            ["detector"], registry=r)
        # -- pipeline ----------------------------------------------------------------------
        self.queue_depth = Gauge(
            "trailguard_queue_depth", "Items waiting in a pipeline queue.", ["stage"], registry=r)
        self.checkpoints = Counter(
            "trailguard_checkpoints_total", "Checkpoints written, by outcome.", ["outcome"], registry=r)
        self.checkpoint_seconds = Histogram(
            "trailguard_checkpoint_seconds", "Time to write one checkpoint.", buckets=_FAST_BUCKETS,
            registry=r)
        self.checkpoint_pause_seconds = Histogram(
            "trailguard_checkpoint_pause_seconds", "Time one checkpoint held detection paused (snapshot).",
            buckets=_PAUSE_BUCKETS, registry=r)
        self.gc_pause_seconds = Histogram(
            "trailguard_gc_pause_seconds", "Time one cyclic garbage collection stopped the process.",
            ["generation"], buckets=_PAUSE_BUCKETS, registry=r)
        self.stage_seconds = Histogram(
            "trailguard_stage_seconds", "Time a batch or slice spent in one pipeline stage.", ["stage"],
            buckets=_PAUSE_BUCKETS, registry=r)
        self.last_checkpoint = Gauge(
            "trailguard_last_checkpoint_timestamp_seconds", "Wall-clock time of the last checkpoint.",
            registry=r)
        # -- sources -----------------------------------------------------------------------
        self.source_acknowledged = Counter(
            "trailguard_source_acknowledged_total", "Input units acknowledged (files, messages, offsets).",
            ["source"], registry=r)
        self.source_retried = Counter(
            "trailguard_source_retried_total", "Input units left for redelivery after an error.",
            ["source"], registry=r)
        self.source_poison = Counter(
            "trailguard_source_poison_total", "Input units that could not be decoded at all.",
            ["source"], registry=r)
        self.source_errors = Counter(
            "trailguard_source_errors_total", "Errors talking to an input (broker down, throttled).",
            ["source"], registry=r)
        self.source_up = Gauge(
            "trailguard_source_up", "1 when the source is connected and delivering.", ["source"],
            registry=r)
        self.kafka_lag = Gauge(
            "trailguard_kafka_lag", "Messages between the committed offset and the partition end.",
            ["topic", "partition"], registry=r)
        self.sqs_backlog = Gauge(
            "trailguard_sqs_backlog", "ApproximateNumberOfMessages visible in the queue.", ["source"],
            registry=r)
        # -- partition state (changelog) -------------------------------------------------
        self.state_restoring = Gauge(
            "trailguard_state_restoring_partitions", "Partitions whose state is being restored now.",
            registry=r)
        self.state_restore_remaining = Gauge(
            "trailguard_state_restore_remaining_records", "Changelog records still to read by running restores.",
            registry=r)
        self.state_restore_records = Counter(
            "trailguard_state_restore_records_total", "Changelog records read to restore partitions.", registry=r)
        self.state_restores = Counter(
            "trailguard_state_restores_total", "Partition restores, by where the state came from.", ["origin"],
            registry=r)
        self.state_restore_seconds = Histogram(
            "trailguard_state_restore_seconds", "Time to restore one partition's state.",
            buckets=_FAST_BUCKETS, registry=r)
        self.state_standby_partitions = Gauge(
            "trailguard_state_standby_partitions",
            "Partitions this instance keeps warm standby copies of (standby_replicas).", registry=r)
        self.changelog_fenced = Counter(
            "trailguard_changelog_fenced_total",
            "Changelog writes refused or ignored because another instance owns the partition now (a "
            "stalled previous owner was fenced).", registry=r)
        self.changelog_bytes = Counter(
            "trailguard_changelog_bytes_total", "Bytes of partition state written to changelog topics.",
            registry=r)
        self.repartition_produced = Counter(
            "trailguard_repartition_produced_total",
            "Events forwarded to an internal repartition topic, by the state key it re-keys by.", ["key"],
            registry=r)
        self.repartition_consumed = Counter(
            "trailguard_repartition_consumed_total",
            "Records read from internal repartition topics, by state key.", ["key"], registry=r)
        self.partition_batches_dropped = Counter(
            "trailguard_partition_batches_dropped_total",
            "Batches of a partition this instance no longer owns, dropped unprocessed (its new owner reads "
            "them).", registry=r)
        # -- sinks -------------------------------------------------------------------------
        self.sink_deliveries = Counter(
            "trailguard_sink_deliveries_total", "Alert delivery attempts, by sink and outcome.",
            ["sink", "outcome"], registry=r)
        self.sink_spool_depth = Gauge(
            "trailguard_sink_spool_depth", "Alerts spooled and not yet delivered.", ["sink"], registry=r)
        self.sink_latency = Histogram(
            "trailguard_sink_latency_seconds", "Time to deliver one alert to a sink.", ["sink"],
            buckets=_FAST_BUCKETS, registry=r)
        # -- build -------------------------------------------------------------------------
        self.build_info = Gauge(
            "trailguard_build_info", "Always 1; labels carry the version.", ["version"], registry=r)

    def preinitialise(
        self,
        *,
        sources: Iterable[str],
        sinks: Iterable[str],
        detectors: Iterable[str],
        invalid_reasons: Iterable[str],
    ) -> None:
        """Export every labelled series the dashboard and alert rules read, at 0, from start-up.

        Prometheus practice: a series that appears only with the first failure makes
        ``rate()``/``increase()`` miss that failure and ``absent()`` alerts fire on a healthy
        daemon.  Only known, low-cardinality label values are created (names from the config,
        the fixed reasons and outcomes); the alert count by rule is left to its owner.
        """
        for reason in invalid_reasons:
            self.events_invalid.labels(reason=reason)
        for source in sources:
            for family in (self.events_received, self.source_acknowledged, self.source_retried,
                           self.source_poison, self.source_errors, self.source_up):
                family.labels(source=source)
        for sink in sinks:
            for outcome in SINK_OUTCOMES:
                self.sink_deliveries.labels(sink=sink, outcome=outcome)
            self.sink_latency.labels(sink=sink)
        for detector in detectors:
            for family in (self.events_late, self.detector_errors, self.state_evictions,
                           self.detector_seconds, self.state_keys):
                family.labels(detector=detector)
        for outcome in CHECKPOINT_OUTCOMES:
            self.checkpoints.labels(outcome=outcome)
        for stage in ("ingest", "alerts"):
            self.queue_depth.labels(stage=stage)
