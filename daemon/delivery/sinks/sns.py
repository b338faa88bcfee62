"""``sns`` sink: each alert published as JSON to an SNS topic, with filterable attributes.

Subscribers (email, SQS, Lambda, HTTPS) filter on the ``severity`` and ``detector`` message
attributes.  For a FIFO topic (ARN ending ``.fifo``) the alert id is the deduplication id, so SNS
drops a re-sent alert within its five-minute window, and the detector is the message group.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from daemon.delivery.sinks.aws_common import AwsSink, AwsSinkConfig
from detectors.alert import Alert

__all__ = ["SnsSink", "SnsSinkConfig"]


class SnsSinkConfig(AwsSinkConfig):
    """``type: sns`` with the ``topic_arn``."""

    type: Literal["sns"] = "sns"
    topic_arn: str

    @field_validator("topic_arn")
    @classmethod
    def _arn(cls, value: str) -> str:
        if not value.startswith("arn:") or value.count(":") < 5:
            raise ValueError("must be an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
        return value


class SnsSink(AwsSink):
    """PublishBatch, ten alerts per call."""

    kind = "sns"
    Config = SnsSinkConfig
    service = "sns"

    def __init__(self, config: SnsSinkConfig) -> None:
        super().__init__(config)
        self.topic_arn = config.topic_arn
        self._fifo = config.topic_arn.endswith(".fifo")

    def _region(self) -> str | None:
        return self._aws.region or self.topic_arn.split(":")[3] or None

    def where(self) -> str:
        """The topic ARN."""
        return f"SNS topic {self.topic_arn}"

    async def _send_batch(self, client: Any, alerts: list[Alert]) -> dict[str, Any]:
        entries = self.entries(alerts, "Message", self._fifo)
        for entry, alert in zip(entries, alerts, strict=True):
            entry["Subject"] = f"[{alert.severity.upper()}] {alert.title}"[:99]
        return await client.publish_batch(TopicArn=self.topic_arn, PublishBatchRequestEntries=entries)
