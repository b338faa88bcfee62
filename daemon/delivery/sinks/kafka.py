"""``kafka`` sink: each alert produced as JSON to a topic, keyed by alert id.

``acks="all"`` and, where the broker supports it, the idempotent producer (no duplicates from the
producer's own retries).  Brokers that refuse ``InitProducerId`` — tansu, for one, answers
``UnknownError`` — get a plain ``acks="all"`` producer instead, with a WARNING at connect time.
The key is the alert id, so a consumer (or a compacted topic) can drop re-sent alerts.

The producer connects lazily, on first send: a broker that is down when the daemon starts is an
outage the dispatcher's spool rides out, not a reason to refuse start-up.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownError,
    UnsupportedVersionError,
)
from aiokafka.helpers import create_ssl_context
from pydantic import Field, SecretStr, model_validator

from daemon.config import Duration
from daemon.delivery.sinks.base import Sink, SinkConfig
from daemon.delivery.sinks.errors import PermanentError, TransientError
from detectors.alert import Alert

__all__ = ["KafkaSink", "KafkaSinkConfig"]

#: Errors that no retry can fix for the alert at hand.
_PERMANENT = (MessageSizeTooLargeError, RecordTooLargeError, InvalidTopicError, TopicAuthorizationFailedError,
              ClusterAuthorizationFailedError)
#: What a broker answers to InitProducerId when it has no idempotent producer support.
_NO_IDEMPOTENCE = (UnsupportedVersionError, UnknownError, ClusterAuthorizationFailedError)


class KafkaSinkConfig(SinkConfig):
    """``type: kafka``: ``bootstrap_servers`` and ``topic``, plus TLS/SASL like the Kafka source."""

    type: Literal["kafka"] = "kafka"
    bootstrap_servers: str | list[str]
    topic: str = Field(min_length=1)
    client_id: str = "trailguard"
    enable_idempotence: bool = True
    """Ask for the idempotent producer; falls back (WARNING) when the broker does not support it."""
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    request_timeout: Duration = Field(default=30.0, gt=0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None

    @model_validator(mode="after")
    def _security(self) -> KafkaSinkConfig:
        sasl = self.security_protocol.startswith("SASL")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism, sasl_username "
                             "and sasl_password")
        if not sasl and self.sasl_mechanism:
            raise ValueError("sasl_mechanism is set but security_protocol is not SASL_PLAINTEXT/SASL_SSL")
        return self


class KafkaSink(Sink):
    """Produces alert JSON; :meth:`send` waits for every record's acknowledgement."""

    kind = "kafka"
    Config = KafkaSinkConfig
    max_batch = 200
    spooled = True

    def __init__(self, config: KafkaSinkConfig) -> None:
        super().__init__(config)
        self._config = config
        self._producer: AIOKafkaProducer | None = None
        self.idempotent: bool | None = None
        self.log = structlog.get_logger("trailguard.sink.kafka")

    def secrets(self) -> list[str | None]:
        """The SASL password (the dispatcher scrubs it from anything it logs)."""
        return [self._config.sasl_password.get_secret_value() if self._config.sasl_password else None]

    def _options(self, idempotent: bool) -> dict[str, Any]:
        c = self._config
        options: dict[str, Any] = {
            "bootstrap_servers": c.bootstrap_servers,
            "client_id": c.client_id,
            "acks": "all",
            "enable_idempotence": idempotent,
            "compression_type": c.compression_type,
            "request_timeout_ms": int(c.request_timeout * 1000),
            "security_protocol": c.security_protocol,
        }
        if c.security_protocol in ("SSL", "SASL_SSL"):
            context: ssl.SSLContext = create_ssl_context(cafile=c.ssl_ca_file, certfile=c.ssl_cert_file,
                                                         keyfile=c.ssl_key_file)
            options["ssl_context"] = context
        if c.sasl_mechanism:
            options.update(sasl_mechanism=c.sasl_mechanism, sasl_plain_username=c.sasl_username,
                           sasl_plain_password=c.sasl_password.get_secret_value() if c.sasl_password else None)
        return options

    async def _connect(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        want = self._config.enable_idempotence if self.idempotent is None else self.idempotent
        producer = AIOKafkaProducer(**self._options(want))
        try:
            await producer.start()
        except _NO_IDEMPOTENCE as error:
            await producer.stop()
            if not want:
                raise
            self.log.warning("broker does not support the idempotent producer; producing with acks=all only",
                             sink=self.name, error=type(error).__name__)
            want = False
            producer = AIOKafkaProducer(**self._options(False))
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
        except BaseException:
            await producer.stop()
            raise
        self.idempotent = want
        self._producer = producer
        return producer

    async def send(self, alerts: list[Alert]) -> None:
        """Produce every alert, then wait for each acknowledgement in order."""
        try:
            producer = await self._connect()
        except KafkaError as error:
            raise self._classify(error, 0) from None
        topic = self._config.topic
        futures = []
        for index, alert in enumerate(alerts):
            try:
                futures.append(await producer.send(topic, value=orjson.dumps(alert.to_dict()),
                                                   key=alert.id.encode()))
            except KafkaError as error:
                await self._settle(futures)
                raise self._classify(error, self._acked(futures, index)) from None
        for index, future in enumerate(futures):
            try:
                await future
            except KafkaError as error:
                await self._settle(futures[index + 1:])
                raise self._classify(error, index) from None

    @staticmethod
    async def _settle(futures: list[Any]) -> None:
        for future in futures:
            try:
                await future
            except KafkaError:
                pass

    @staticmethod
    def _acked(futures: list[Any], limit: int) -> int:
        for index, future in enumerate(futures[:limit]):
            if future.exception() is not None:
                return index
        return limit

    def _classify(self, error: KafkaError, delivered: int) -> TransientError | PermanentError:
        message = f"{type(error).__name__} producing to topic {self._config.topic}"
        if isinstance(error, _PERMANENT):
            return PermanentError(message, delivered=delivered)
        return TransientError(message, delivered=delivered)

    async def flush(self) -> None:
        """Wait until every produced record is acknowledged."""
        if self._producer is not None:
            await self._producer.flush()

    async def stop(self) -> None:
        """Flush and close the producer."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()
