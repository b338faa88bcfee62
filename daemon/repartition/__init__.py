"""Repartitioning: every detector sees every event of its key, whatever the producer keyed by.

Kafka Streams' way: when the state a detector keeps is keyed differently from how the input topic
is partitioned (:attr:`detectors.base.Detector.state_key` against the source's ``input_key``), the
input partitions' owner produces each event that detector could use to an internal topic
``<group_id>-<topic>-repartition-<key>`` keyed by the event's value of that key; the same consumer
group consumes the internal topics, and those partitions' engines (with their own changelogged
state, like input partitions) run the detectors of that key.

* :mod:`daemon.repartition.keys` — an event's value of each key (one place);
* :mod:`daemon.repartition.routes` — the routing decision: which detectors run where, topic names;
* :mod:`daemon.repartition.topics` — creating the internal topics before the consumer subscribes;
* :mod:`daemon.repartition.forwarder` — the producer, holding each send until the broker acknowledged
  it, so input offsets are committed only after their events reached the internal topics.
"""

from daemon.repartition.routes import Routes, plan_routes, repartition_topic

__all__ = ["Routes", "plan_routes", "repartition_topic"]
