"""Partition state that follows its Kafka partition: a compacted changelog topic per input topic.

Kafka Streams and quix-streams keep a stateful task's state in a *changelog* topic with the input's
partition count, so whichever instance owns input partition ``p`` can rebuild the state of ``p``
from changelog partition ``p`` — no shared disk.  The split follows quix-streams:

* :mod:`daemon.changelog.parts` — the named state parts of one partition (detector engine, dedupe
  record, …); adding a part is one registration;
* :mod:`daemon.changelog.codec` — a partition's parts as chunked, checksummed changelog records
  (pure, no I/O);
* :mod:`daemon.changelog.producer` — creates the changelog topic and writes a partition's records,
  waiting for the broker's acknowledgement (step 3 of the checkpoint order in
  :mod:`daemon.pipeline`: before any offset is committed);
* :mod:`daemon.changelog.recovery` — reads a changelog partition back on assignment, using the local
  file only as a cache that is verified against the changelog's end offset.
* :mod:`daemon.changelog.reader` — the one consumer configuration that restores and standby
  replicas read changelog partitions with.
"""
