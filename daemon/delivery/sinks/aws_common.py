"""What the SNS and SQS sinks share: an aiobotocore client, message attributes, error policy.

Credentials and region come from the standard AWS chain (environment, profile, instance role);
``region`` and ``endpoint_url`` in the sink config override them (``endpoint_url`` for VPC
endpoints, LocalStack or moto).  Both APIs take up to ten messages per batch call; the result
lists failures per entry, which become a transient or permanent error for the first failed one
(``SenderFault`` means the message itself was refused: permanent).
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import AsyncExitStack
from typing import Any, Final

import orjson
from aiobotocore.session import get_session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field

from daemon.config import Duration
from daemon.delivery.sinks.base import Sink, SinkConfig
from daemon.delivery.sinks.errors import DeliveryError, PermanentError, TransientError
from detectors.alert import Alert

__all__ = ["AwsSink", "AwsSinkConfig", "classify_aws_error", "message_attributes"]

#: AWS error codes that mean "slow down", whatever the HTTP status says.
_THROTTLED: Final = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "TooManyRequestsException",
    "RequestLimitExceeded", "RequestThrottledException", "KMSThrottlingException", "SlowDown",
    "ServiceUnavailable", "InternalError", "InternalFailure", "RequestTimeout", "RequestTimeoutException",
})


class AwsSinkConfig(SinkConfig):
    """Keys the AWS sinks share."""

    region: str | None = None
    """AWS region (default: from the environment / profile, or the ARN / queue URL)."""
    endpoint_url: str | None = None
    """Custom endpoint (VPC endpoint, LocalStack, moto)."""
    timeout: Duration = Field(default=10.0, gt=0)
    """Connect and read timeout per call."""


def message_attributes(alert: Alert) -> dict[str, dict[str, str]]:
    """``severity`` and ``detector`` as String attributes, so subscriptions can filter."""
    return {"severity": {"DataType": "String", "StringValue": alert.severity},
            "detector": {"DataType": "String", "StringValue": alert.detector}}


def classify_aws_error(error: Exception, what: str, delivered: int) -> DeliveryError:
    """A botocore exception → Transient/PermanentError (message: error code and status only)."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "?"))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{code} (HTTP {status}) from {what}"
        if code in _THROTTLED or status in (0, 408, 429) or status >= 500:
            return TransientError(message, delivered=delivered, status=status)
        return PermanentError(message, delivered=delivered, status=status)
    return TransientError(f"{type(error).__name__} calling {what}", delivered=delivered)


class AwsSink(Sink):
    """An aiobotocore client for one service; subclasses build and send batches of ten."""

    service: str = ""
    max_batch = 10
    spooled = True

    def __init__(self, config: AwsSinkConfig) -> None:
        super().__init__(config)
        self._aws = config
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def start(self) -> None:
        """Create the client (no network call: an unreachable endpoint is retried on send)."""
        if self._client is not None:
            return
        self._stack = AsyncExitStack()
        boto = BotoConfig(connect_timeout=self._aws.timeout, read_timeout=self._aws.timeout,
                          retries={"max_attempts": 2, "mode": "standard"})
        self._client = await self._stack.enter_async_context(get_session().create_client(
            self.service, region_name=self._region(), endpoint_url=self._aws.endpoint_url, config=boto))

    def _region(self) -> str | None:
        return self._aws.region

    @abstractmethod
    def where(self) -> str:
        """The destination, for messages (ARN / queue URL: not secrets)."""

    @abstractmethod
    async def _send_batch(self, client: Any, alerts: list[Alert]) -> dict[str, Any]:
        """One batch API call for at most ten alerts; returns the response."""

    async def send(self, alerts: list[Alert]) -> None:
        """Send in batches of ten; raise for the first entry that failed."""
        if self._client is None:
            await self.start()
        for offset in range(0, len(alerts), 10):
            chunk = alerts[offset:offset + 10]
            try:
                response = await self._send_batch(self._client, chunk)
            except (ClientError, BotoCoreError) as error:
                raise classify_aws_error(error, self.where(), offset) from None
            failed = response.get("Failed") or []
            if failed:
                first = min(failed, key=lambda entry: int(entry["Id"]))
                index = int(first["Id"])
                message = f"{first.get('Code', '?')} for alert {chunk[index].id} from {self.where()}"
                cls = PermanentError if first.get("SenderFault") else TransientError
                raise cls(message, delivered=offset + index)

    @staticmethod
    def body(alert: Alert) -> str:
        """The alert's wire JSON as text."""
        return orjson.dumps(alert.to_dict()).decode()

    def entries(self, alerts: list[Alert], body_key: str, fifo: bool) -> list[dict[str, Any]]:
        """Batch entries: the alert JSON under ``body_key``, attributes, FIFO group/dedup ids."""
        result = []
        for index, alert in enumerate(alerts):
            entry: dict[str, Any] = {"Id": str(index), body_key: self.body(alert),
                                     "MessageAttributes": message_attributes(alert)}
            if fifo:
                entry.update(MessageGroupId=alert.detector, MessageDeduplicationId=alert.id)
            result.append(entry)
        return result

    async def stop(self) -> None:
        """Close the client."""
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()
