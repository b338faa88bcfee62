"""``sqs`` sink: each alert sent as JSON to an SQS queue, with filterable attributes.

For a downstream consumer (SOAR, ticketing) that pulls at its own pace.  ``severity`` and
``detector`` are String message attributes.  For a FIFO queue (URL ending ``.fifo``) the alert id
is the deduplication id and the detector the message group.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import field_validator

from daemon.awsurls import region_from_queue_url
from daemon.delivery.sinks.aws_common import AwsSink, AwsSinkConfig
from detectors.alert import Alert

__all__ = ["SqsSink", "SqsSinkConfig"]


class SqsSinkConfig(AwsSinkConfig):
    """``type: sqs`` with the ``queue_url``."""

    type: Literal["sqs"] = "sqs"
    queue_url: str

    @field_validator("queue_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.count("/") < 2:
            raise ValueError("must be a queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)")
        return value


class SqsSink(AwsSink):
    """SendMessageBatch, ten alerts per call."""

    kind = "sqs"
    Config = SqsSinkConfig
    service = "sqs"

    def __init__(self, config: SqsSinkConfig) -> None:
        super().__init__(config)
        self.queue_url = config.queue_url
        self._fifo = config.queue_url.endswith(".fifo")

    def _region(self) -> str | None:
        return self._aws.region or region_from_queue_url(self.queue_url)

    def where(self) -> str:
        """The queue URL."""
        return f"SQS queue {self.queue_url}"

    async def _send_batch(self, client: Any, alerts: list[Alert]) -> dict[str, Any]:
        entries = self.entries(alerts, "MessageBody", self._fifo)
        return await client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
