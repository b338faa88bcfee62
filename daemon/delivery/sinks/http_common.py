"""What the HTTP sinks (webhook, Slack, PagerDuty) share: one client, one error policy, redaction.

* **Error policy** — 2xx is success; 408, 429, 5xx, timeouts and connection errors are transient
  (retried, ``Retry-After`` honoured as seconds or an HTTP date); any other status is permanent.
* **Secrets** — Slack and webhook URLs carry their secret in the path, so nothing here ever puts a
  full URL in a message: aiohttp exceptions (whose text includes the URL) are caught and re-raised
  as :class:`~daemon.delivery.sinks.errors.DeliveryError` built from the redacted URL and the status only,
  with the original exception detached (``from None``) so no traceback shows it either.
* **TLS** — verification on by default; ``ca_file`` adds a private CA; turning it off is logged.
"""

from __future__ import annotations

import base64
import os
import ssl
import time
from abc import abstractmethod
from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

import structlog
from pydantic import Field, field_validator

from daemon.config import Duration
from daemon.delivery.sinks.base import Sink, SinkConfig
from daemon.delivery.sinks.errors import DeliveryError, PermanentError, TransientError
from detectors.alert import Alert

if TYPE_CHECKING:  # aiohttp is imported where it is used: a daemon without HTTP sinks never loads it
    import aiohttp

__all__ = [
    "HttpClient",
    "HttpSink",
    "HttpSinkConfig",
    "Redactor",
    "check_http_url",
    "classify_status",
    "parse_retry_after",
    "redact_url",
]

_USER_AGENT = "trailguard"
_BODY_PREVIEW = 200


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…`` — user info, path and query (where secrets live) removed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    suffix = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme or '?'}://{host}{port}{suffix}"


def check_http_url(value: str) -> str:
    """Accept only absolute http(s) URLs with a host (the message never echoes the value)."""
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header (delay seconds or an HTTP date) → seconds from now, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def classify_status(status: int) -> bool | None:
    """True: transient (retry); False: permanent; None: success (2xx)."""
    if 200 <= status < 300:
        return None
    return status in (408, 429) or status >= 500


class Redactor:
    """Replaces every known secret (and each URL's path and query) in a text with ``***``.

    Values shorter than four characters are not scrubbed (they would garble every message and
    protect nothing: such a secret is guessable anyway).
    """

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str | None]) -> None:
        found: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < 4:
                continue
            found.add(secret)
            try:
                parts = urlsplit(secret)
            except ValueError:
                continue
            if parts.scheme and parts.hostname:
                for piece in (parts.path, parts.query, parts.password, parts.username):
                    if piece and len(piece) > 3:
                        found.add(piece)
                        found.update(seg for seg in piece.split("/") if len(seg) >= 12)
                if parts.username is not None or parts.password is not None:
                    # Basic credentials travel base64-encoded in an Authorization header (echoed
                    # by proxies and error pages): scrub that form too, raw and percent-decoded.
                    for user, password in {(parts.username or "", parts.password or ""),
                                           (unquote(parts.username or ""), unquote(parts.password or ""))}:
                        pair = f"{user}:{password}".encode()
                        found.add(base64.b64encode(pair).decode("ascii"))
                        if password and len(password) >= 4:
                            found.add(password)
            for encoded in (base64.b64encode(secret.encode()).decode("ascii"), quote(secret, safe="")):
                if encoded != secret:
                    found.add(encoded)
        # Longest first, so a whole URL is replaced before its pieces.
        self._secrets = sorted(found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


class HttpClient:
    """An aiohttp session with the sink's timeout and TLS settings; :meth:`post` raises classified errors."""

    def __init__(self, *, timeout: float, tls_verify: bool = True, ca_file: str | None = None,
                 redact: Redactor | None = None) -> None:
        import aiohttp

        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.tls_verify = tls_verify
        self.ca_file = ca_file
        self.redact = redact or Redactor(())
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.tls_verify:
            return False
        if self.ca_file:
            return ssl.create_default_context(cafile=self.ca_file)
        return True

    async def start(self) -> None:
        """Create the session (needs the running loop)."""
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=8)
            self._session = aiohttp.ClientSession(timeout=self.timeout, connector=connector,
                                                  headers={"User-Agent": _USER_AGENT})

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body``; return the 2xx status or raise Transient/PermanentError (sanitized)."""
        import aiohttp

        if self._session is None:
            await self.start()
        assert self._session is not None
        where = redact_url(url)
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                status = response.status
                verdict = classify_status(status)
                if verdict is None:
                    await response.read()
                    return status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                preview = (await response.content.read(_BODY_PREVIEW)).decode("utf-8", "replace")
        except TimeoutError:
            raise TransientError(f"timed out after {self.timeout.total}s posting to {where}") from None
        except aiohttp.ClientError as error:
            raise TransientError(f"{type(error).__name__} posting to {where}") from None
        except OSError as error:
            raise TransientError(f"{type(error).__name__} posting to {where}") from None
        message = f"HTTP {status} from {where}: {self.redact(preview.strip())[:_BODY_PREVIEW]}"
        if verdict:
            raise TransientError(message, retry_after=retry_after, status=status)
        raise PermanentError(message, status=status)


class HttpSinkConfig(SinkConfig):
    """Keys every HTTP sink accepts, on top of ``type``/``name``."""

    timeout: Duration = Field(default=10.0, gt=0)
    """Whole-request timeout (connect + send + response)."""
    tls_verify: bool = True
    """Verify the server certificate (turning it off is logged at start)."""
    ca_file: str | None = None
    """A PEM bundle of extra CAs to trust (private PKI)."""

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isfile(value):
            raise ValueError(f"ca_file {value!r} does not exist")
        return value


class HttpSink(Sink):
    """One POST per alert, in order; a failure reports how many went through before it."""

    #: The dispatcher reads this many alerts from the spool per :meth:`send`.
    max_batch = 50
    #: Deliveries go through the dispatcher's spool (retries, durability, dead letters).
    spooled = True

    def __init__(self, config: HttpSinkConfig) -> None:
        super().__init__(config)
        self.redact = Redactor(self.secrets())
        self.client = HttpClient(timeout=config.timeout, tls_verify=config.tls_verify,
                                 ca_file=config.ca_file, redact=self.redact)
        self.log = structlog.get_logger(f"trailguard.sink.{self.kind}")

    @abstractmethod
    def secrets(self) -> list[str | None]:
        """Every secret value this sink holds (scrubbed from any text it produces)."""

    @abstractmethod
    def target(self) -> str:
        """The URL to POST to (may hold a secret: never log it, use :func:`redact_url`)."""

    @abstractmethod
    def encode(self, alert: Alert) -> tuple[bytes, dict[str, str]]:
        """The request body and headers for one alert."""

    async def start(self) -> None:
        """Create the HTTP session; nothing is contacted yet (an unreachable receiver is retried later)."""
        if not self.config.tls_verify:  # type: ignore[attr-defined]
            self.log.warning("TLS certificate verification is off for this sink", sink=self.name,
                             target=redact_url(self.target()))
        await self.client.start()

    async def send(self, alerts: list[Alert]) -> None:
        """POST each alert; on failure raise with ``delivered`` = how many succeeded first."""
        url = self.target()
        for index, alert in enumerate(alerts):
            body, headers = self.encode(alert)
            try:
                await self.client.post(url, body, headers)
            except DeliveryError as error:
                error.delivered = index
                raise

    async def stop(self) -> None:
        """Close the HTTP session."""
        await self.client.close()
