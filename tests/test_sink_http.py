"""Webhook, Slack and PagerDuty sinks against a real local HTTP receiver: payloads, signatures, errors."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import pytest
from pydantic import ValidationError

from daemon.delivery.sinks.errors import PermanentError, TransientError
from daemon.delivery.sinks.http_common import Redactor, parse_retry_after, redact_url
from daemon.delivery.sinks.pagerduty import PagerDutySink, PagerDutySinkConfig
from daemon.delivery.sinks.slack import SlackSink, SlackSinkConfig
from daemon.delivery.sinks.webhook import WebhookSink, WebhookSinkConfig, verify_signature
from detectors.alert import Alert
from tests.http_receiver import Receiver, Reply

SECRET_PATH = "/services/T0SECRET/B0SECRET/xoxbVerySecretToken123"


def make_alert(n: int = 0, severity: str = "high", **extra: object) -> Alert:
    fields: dict = dict(detector="root_activity", title="Root user activity", severity=severity,
                        time=1_700_000_000.0 + n, summary=f"root did thing {n}", account_id="111122223333",
                        region="eu-west-1", principal="arn:aws:iam::111122223333:root",
                        source_ips=["203.0.113.7"], event_ids=[f"ev-{n}"], evidence={"event_name": "X"},
                        tags=["mitre:T1078"], rule_id="root-1", runbook="https://wiki.example/runbooks/root",
                        entity="root")
    fields.update(extra)
    return Alert(**fields)


@pytest.fixture
async def receiver():
    server = await Receiver().start()
    yield server
    await server.stop()


async def make_sink(cls, config):
    sink = cls(config)
    await sink.start()
    return sink


async def test_webhook_posts_wire_json_signed_with_hmac_and_timestamp(receiver: Receiver) -> None:
    sink = await make_sink(WebhookSink, WebhookSinkConfig(
        type="webhook", url=receiver.url("/in?token=abc"), hmac_secret="s3cret",
        headers={"Authorization": "Bearer tok"}))
    alert = make_alert()
    await sink.send([alert])
    await sink.stop()
    (got,) = receiver.requests
    assert got.json() == alert.to_dict()
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Authorization"] == "Bearer tok"
    timestamp, signature = got.headers["X-Trailguard-Timestamp"], got.headers["X-Trailguard-Signature"]
    assert signature.startswith("sha256=")
    assert abs(int(timestamp) - time.time()) < 5
    assert verify_signature(b"s3cret", timestamp, got.body, signature)
    assert not verify_signature(b"wrong", timestamp, got.body, signature)
    assert not verify_signature(b"s3cret", timestamp, got.body + b" ", signature), "body tampering detected"
    assert not verify_signature(b"s3cret", str(int(timestamp) - 1), got.body, signature), "timestamp is signed"
    assert not verify_signature(b"s3cret", timestamp, got.body, signature, now=float(timestamp) + 3600), \
        "an old request is a replay"


async def test_webhook_header_names_are_configurable_and_unsigned_without_secret(receiver: Receiver) -> None:
    sink = await make_sink(WebhookSink, WebhookSinkConfig(type="webhook", url=receiver.url(), hmac_secret="k",
                                                          signature_header="X-Sig", timestamp_header="X-Ts"))
    await sink.send([make_alert()])
    plain = await make_sink(WebhookSink, WebhookSinkConfig(type="webhook", url=receiver.url()))
    await plain.send([make_alert(1)])
    await sink.stop()
    await plain.stop()
    signed, unsigned = receiver.requests
    assert verify_signature(b"k", signed.headers["X-Ts"], signed.body, signed.headers["X-Sig"])
    assert "X-Trailguard-Signature" not in unsigned.headers


@pytest.mark.parametrize(("reply", "kind", "retry_after"), [
    (Reply(500), TransientError, None),
    (Reply(503, {"Retry-After": "7"}), TransientError, 7.0),
    (Reply(429, {"Retry-After": "2"}), TransientError, 2.0),
    (Reply(408), TransientError, None),
    (Reply(400), PermanentError, None),
    (Reply(404), PermanentError, None),
    (Reply(410), PermanentError, None),
])
async def test_http_status_classification(receiver: Receiver, reply: Reply, kind: type,
                                          retry_after: float | None) -> None:
    receiver.default = reply
    sink = await make_sink(WebhookSink, WebhookSinkConfig(type="webhook", url=receiver.url()))
    with pytest.raises(kind) as caught:
        await sink.send([make_alert()])
    await sink.stop()
    assert caught.value.status == reply.status
    assert caught.value.retry_after == retry_after


async def test_retry_after_as_http_date(receiver: Receiver) -> None:
    receiver.default = Reply(429, {"Retry-After": formatdate(time.time() + 30, usegmt=True)})
    sink = await make_sink(WebhookSink, WebhookSinkConfig(type="webhook", url=receiver.url()))
    with pytest.raises(TransientError) as caught:
        await sink.send([make_alert()])
    await sink.stop()
    assert 25 <= caught.value.retry_after <= 31


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(formatdate(1000.0, usegmt=True), now=990.0) == 10.0
    assert parse_retry_after(formatdate(1000.0, usegmt=True), now=2000.0) == 0.0


async def test_timeout_and_refused_connections_are_transient(receiver: Receiver) -> None:
    receiver.default = Reply(200, delay=2.0)
    slow = await make_sink(WebhookSink, WebhookSinkConfig(type="webhook", url=receiver.url(), timeout=0.2))
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out"):
        await slow.send([make_alert()])
    assert time.monotonic() - started < 1.5
    await slow.stop()
    await receiver.stop()
    down = await make_sink(WebhookSink, WebhookSinkConfig(type="webhook", url=receiver.url(SECRET_PATH)))
    with pytest.raises(TransientError) as caught:
        await down.send([make_alert()])
    await down.stop()
    assert "T0SECRET" not in str(caught.value) and "xoxb" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_batch_failure_reports_how_many_arrived(receiver: Receiver) -> None:
    receiver.script = [Reply(200), Reply(200), Reply(502)]
    sink = await make_sink(WebhookSink, WebhookSinkConfig(type="webhook", url=receiver.url()))
    with pytest.raises(TransientError) as caught:
        await sink.send([make_alert(i) for i in range(5)])
    await sink.stop()
    assert caught.value.delivered == 2
    assert len(receiver.accepted) == 2


async def test_error_body_echoing_the_url_is_scrubbed(receiver: Receiver) -> None:
    receiver.default = Reply(404, body=f"no such hook: {receiver.url(SECRET_PATH)}")
    sink = await make_sink(SlackSink, SlackSinkConfig(type="slack", url=receiver.url(SECRET_PATH)))
    with pytest.raises(PermanentError) as caught:
        await sink.send([make_alert()])
    await sink.stop()
    text = str(caught.value)
    assert "404" in text and "no such hook" in text
    assert "xoxbVerySecretToken123" not in text and "T0SECRET" not in text


def test_redaction_helpers() -> None:
    assert redact_url("https://hooks.slack.com/services/T0/B0/XYZ") == "https://hooks.slack.com/…"
    assert redact_url("https://user:pw@example.com:8443/x?k=v") == "https://example.com:8443/…"
    assert redact_url("http://example.com") == "http://example.com"
    scrub = Redactor(["https://hooks.slack.com" + SECRET_PATH, "routingkey0123456789"])
    assert "xoxb" not in scrub(f"failed {SECRET_PATH} and xoxbVerySecretToken123 and routingkey0123456789")


def test_configs_are_strict_and_keep_secrets_out_of_repr() -> None:
    with pytest.raises(ValidationError):
        WebhookSinkConfig(type="webhook", url="https://example.com/x", retries=3)
    with pytest.raises(ValidationError, match="http"):
        WebhookSinkConfig(type="webhook", url="ftp://example.com/x")
    with pytest.raises(ValidationError, match="does not exist"):
        WebhookSinkConfig(type="webhook", url="https://example.com/x", ca_file="/nonexistent/ca.pem")
    config = SlackSinkConfig(type="slack", url="https://hooks.slack.com" + SECRET_PATH)
    assert "xoxb" not in repr(config) and "xoxb" not in str(config.model_dump())
    key = PagerDutySinkConfig(type="pagerduty", routing_key="R0123456789abcdef0123456789abcdef")
    assert "R0123456789" not in repr(key)
    assert WebhookSinkConfig(type="webhook", url="https://example.com/x").tls_verify is True


async def test_slack_block_kit_message(receiver: Receiver) -> None:
    sink = await make_sink(SlackSink, SlackSinkConfig(type="slack", url=receiver.url(SECRET_PATH),
                                                      mention="<!here>"))
    alert = make_alert(severity="critical", principal="evil<https://phish.example|click>&co",
                       source_ips=["203.0.113.7", "198.51.100.2"])
    quiet = make_alert(1, severity="low", runbook=None)
    await sink.send([alert, quiet])
    await sink.stop()
    message, low = (r.json() for r in receiver.requests)
    assert receiver.requests[0].path == SECRET_PATH
    assert message["text"].startswith("<!here> :rotating_light: [CRITICAL] Root user activity — evil&lt;")
    header, mention, summary, facts, resources, links, runbook, context = message["blocks"]
    assert resources["text"]["text"] == (
        "principal `evil&lt;https://phish.example|click&gt;&amp;co` — acting identity\naws_account `111122223333`")
    assert links["text"]["text"].startswith(":link: <https://eu-west-1.console.aws.amazon.com/cloudtrail/")
    assert header == {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                                 "text": ":rotating_light: Root user activity"}}
    assert mention["text"]["text"] == "<!here>"
    assert summary["text"] == {"type": "mrkdwn", "text": "root did thing 0"}
    texts = [f["text"] for f in facts["fields"]]
    assert "*Severity*\n:rotating_light: CRITICAL" in texts
    assert "*Account / region*\n111122223333 / eu-west-1" in texts
    assert "*Source IPs*\n203.0.113.7, 198.51.100.2" in texts
    assert "*Principal*\nevil&lt;https://phish.example|click&gt;&amp;co" in texts, "CloudTrail data escaped"
    assert runbook["text"]["text"] == ":book: <https://wiki.example/runbooks/root|Runbook>"
    footer = context["elements"][0]["text"]
    assert alert.id in footer
    assert "Root user activity" in message["text"] and ":rotating_light:" in message["text"]
    assert [b["type"] for b in low["blocks"]] == ["header", "section", "section", "section", "section",
                                                  "context"], \
        "no mention below min_mention_severity, no runbook block without a runbook"
    assert not any("Runbook" in str(b) for b in low["blocks"])


@pytest.mark.parametrize(("severity", "expected"), [
    ("info", "info"), ("low", "info"), ("medium", "warning"), ("high", "error"), ("critical", "critical")])
async def test_pagerduty_trigger_event(receiver: Receiver, severity: str, expected: str) -> None:
    receiver.default = Reply(202, body='{"status":"success","dedup_key":"x"}')
    key = "R0123456789abcdef0123456789abcdef"
    sink = await make_sink(PagerDutySink, PagerDutySinkConfig(type="pagerduty", routing_key=key,
                                                              api_url=receiver.url("/v2/enqueue")))
    alert = make_alert(severity=severity, evidence={"count": 7})
    await sink.send([alert])
    await sink.stop()
    event = receiver.requests[0].json()
    assert receiver.requests[0].path == "/v2/enqueue"
    assert event["routing_key"] == key and event["event_action"] == "trigger"
    assert event["dedup_key"] == alert.id
    payload = event["payload"]
    assert payload["severity"] == expected
    assert payload["source"] == "trailguard:111122223333/eu-west-1"
    assert payload["timestamp"] == "2023-11-14T22:13:20Z"
    assert payload["custom_details"]["evidence"] == {"count": 7}
    assert payload["custom_details"]["principal"] == alert.principal
    assert event["links"][0] == {"href": "https://wiki.example/runbooks/root", "text": "Runbook"}


async def test_sink_started_before_receiver_is_up_delivers_once_it_is() -> None:
    receiver = Receiver()
    sink = await make_sink(WebhookSink, WebhookSinkConfig(type="webhook", url=receiver.url()))
    with pytest.raises(TransientError):
        await sink.send([make_alert()])
    await receiver.start()
    try:
        await sink.send([make_alert()])
    finally:
        await sink.stop()
        await receiver.stop()
    assert len(receiver.accepted) == 1


async def test_slow_receiver_within_timeout_succeeds(receiver: Receiver) -> None:
    receiver.default = Reply(200, delay=0.3)
    sink = await make_sink(WebhookSink, WebhookSinkConfig(type="webhook", url=receiver.url(), timeout=2))
    await asyncio.wait_for(sink.send([make_alert()]), 3)
    await sink.stop()
    assert len(receiver.accepted) == 1
