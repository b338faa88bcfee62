"""``webhook`` sink: each alert POSTed as JSON to a URL, optionally HMAC-signed.

For SOAR platforms and in-house receivers.  With ``hmac_secret`` set, two headers let the
receiver check the sender and refuse replays:

* ``X-Trailguard-Timestamp: <unix seconds>``
* ``X-Trailguard-Signature: sha256=<hex>`` = HMAC-SHA256(secret, ``<timestamp>.`` + exact body)

The timestamp is inside the signed bytes, so it cannot be altered; a receiver rejects requests
whose timestamp is older than a few minutes (see :func:`verify_signature`).  The alert body is
the schema's wire form, byte for byte what was signed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Literal

import orjson
from pydantic import SecretStr, field_validator

from daemon.delivery.sinks.http_common import HttpSink, HttpSinkConfig, check_http_url
from detectors.alert import Alert

__all__ = ["WebhookSink", "WebhookSinkConfig", "sign", "verify_signature"]


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` + hex HMAC over ``timestamp.body``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: bytes, timestamp: str, body: bytes, signature: str, *,
                     tolerance: float = 300.0, now: float | None = None) -> bool:
    """What a receiver runs: constant-time compare, and a timestamp no older than ``tolerance`` s."""
    try:
        age = (time.time() if now is None else now) - float(timestamp)
    except ValueError:
        return False
    if abs(age) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSinkConfig(HttpSinkConfig):
    """``type: webhook``: ``url`` (a secret: often carries a token), optional HMAC and headers."""

    type: Literal["webhook"] = "webhook"
    url: SecretStr
    hmac_secret: SecretStr | None = None
    signature_header: str = "X-Trailguard-Signature"
    timestamp_header: str = "X-Trailguard-Timestamp"
    headers: dict[str, SecretStr] = {}
    """Extra request headers (values are secrets: e.g. ``Authorization: Bearer ${TOKEN}``)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        check_http_url(value.get_secret_value())
        return value


class WebhookSink(HttpSink):
    """POSTs the alert's wire JSON; signs it when a secret is configured."""

    kind = "webhook"
    Config = WebhookSinkConfig

    def __init__(self, config: WebhookSinkConfig) -> None:
        self._config = config
        super().__init__(config)
        self._secret = config.hmac_secret.get_secret_value().encode() if config.hmac_secret else None
        self._headers = {"Content-Type": "application/json",
                         **{k: v.get_secret_value() for k, v in config.headers.items()}}

    def secrets(self) -> list[str | None]:
        """The URL, the HMAC key and every custom header value."""
        c = self._config
        return [c.url.get_secret_value(), c.hmac_secret.get_secret_value() if c.hmac_secret else None,
                *(v.get_secret_value() for v in c.headers.values())]

    def target(self) -> str:
        """The configured URL."""
        return self._config.url.get_secret_value()

    def encode(self, alert: Alert) -> tuple[bytes, dict[str, str]]:
        """The wire JSON, plus timestamp and signature headers when signing."""
        body = orjson.dumps(alert.to_dict())
        if self._secret is None:
            return body, self._headers
        timestamp = str(int(time.time()))
        return body, {**self._headers, self._config.timestamp_header: timestamp,
                      self._config.signature_header: sign(self._secret, timestamp, body)}
