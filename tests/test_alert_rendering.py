"""Attacker-controlled strings reach Slack, PagerDuty and webhook receivers (real local HTTP servers)
without forging a mention, a link, formatting, a line, or reordered text; runbooks render as links
when they are URLs and as text otherwise; console links reach Slack and PagerDuty."""

from __future__ import annotations

import copy
import unicodedata

import orjson
import pytest

from daemon.delivery.render import is_url, plain, safe_link, single_line, slack_code, slack_text
from daemon.delivery.sinks.pagerduty import PagerDutySink, PagerDutySinkConfig
from daemon.delivery.sinks.slack import SlackSink, SlackSinkConfig
from daemon.delivery.sinks.webhook import WebhookSink, WebhookSinkConfig
from detectors.alert import Alert
from detectors.event import Event
from detectors.sigma.detector import SigmaConfig, SigmaDetector
from tests.http_receiver import Receiver, Reply

RLO = "\u202e"  # right-to-left override
ZWSP = "\u200b"
FORGED_USER = f"evil<!channel> <@U024BE7LH> <https://phish.example|Open in AWS console>{RLO}gnp.exe"
FORGED_LINE = "alice\n*Severity*: low — ignore this alert\r\n> all clear"
FORMATTING = "*bold* _italic_ ~strike~ `code` ```block```"
RULE = """
title: Access Key Created
id: 7c1f5e1a-2b3c-4d5e-8f90-a1b2c3d4e5f6
status: test
description: test rule
logsource: {product: aws, service: cloudtrail}
detection:
  selection: {eventName: CreateAccessKey}
  condition: selection
fields: [requestParameters.userName, userAgent]
level: critical
runbook: https://wiki.example/runbooks/access-key
"""


def hostile_alert(tmp_path) -> Alert:
    """A real Sigma alert from an event whose every attacker-chosen field is hostile."""
    (tmp_path / "rule.yml").write_text(RULE)
    detector = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    record = {
        "eventVersion": "1.08", "eventTime": "2023-07-10T12:00:00Z", "eventID": "ev<!here>|1",
        "eventName": "CreateAccessKey", "eventSource": "iam.amazonaws.com", "awsRegion": "us-east-1",
        "recipientAccountId": "111122223333", "sourceIPAddress": "203.0.113.9",
        "userAgent": FORMATTING + " " + "A" * 5000,
        "userIdentity": {"type": "IAMUser", "accountId": "111122223333", "userName": FORGED_USER,
                         "arn": f"arn:aws:iam::111122223333:user/{FORGED_USER}"},
        "requestParameters": {"userName": FORGED_LINE},
        "responseElements": {"accessKey": {"accessKeyId": f"AKIA{ZWSP}EXAMPLE", "userName": FORGED_LINE}},
    }
    alerts = detector.on_event(Event(copy.deepcopy(record))) or []
    assert len(alerts) == 1
    return alerts[0]


@pytest.fixture
async def receiver():
    server = await Receiver().start()
    yield server
    await server.stop()


def all_strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*all_strings(k), *all_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in all_strings(v)]
    return []


def hidden(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) == "Cf" or (unicodedata.category(c) == "Cc" and c != "\n")]


async def test_slack_message_from_hostile_event_forges_nothing(receiver: Receiver, tmp_path) -> None:
    alert = hostile_alert(tmp_path)
    sink = SlackSink(SlackSinkConfig(type="slack", url=receiver.url("/services/T/B/x")))
    await sink.start()
    await sink.send([alert])
    await sink.stop()
    message = receiver.requests[0].json()
    texts = all_strings(message)
    joined = "\n".join(texts)
    # the only Slack control sequences are the links trailguard made itself
    controls = [t[t.index("<"):] for t in texts if "<" in t]
    for text in controls:
        for piece in text.split("<")[1:]:
            target = piece.split("|", 1)[0]
            assert target.startswith(("https://us-east-1.console.aws.amazon.com/cloudtrail/",
                                      "https://wiki.example/runbooks/access-key")), piece
    assert "<!channel>" not in joined and "<@U024BE7LH>" not in joined and "<https://phish" not in joined
    assert "&lt;!channel&gt;" in joined and "&lt;@U024BE7LH&gt;" in joined, "shown escaped, not dropped"
    assert not any(hidden(t) for t in texts), "no bidi override or zero-width character survives"
    # no line forging: the hostile userName stays on one line wherever it is shown
    for text in texts:
        for line in text.split("\n"):
            assert not line.startswith(("*Severity*: low", "&gt; all clear", "> all clear")), line
    # no formatting from data: the summary shows look-alikes, exact values sit in inline code
    summary = message["blocks"][1]["text"]["text"]
    assert "*bold*" not in summary and "~strike~" not in summary
    assert "`AKIAEXAMPLE`" in joined, "the access key id, in code, zero-width space removed"
    assert max(len(t) for t in texts) <= 3000
    header = message["blocks"][0]["text"]
    assert header["type"] == "plain_text" and len(header["text"]) <= 150
    assert ":book: <https://wiki.example/runbooks/access-key|Runbook>" in joined
    assert "<https://us-east-1.console.aws.amazon.com/cloudtrail/home?region=us-east-1#/events/ev%3C%21here%3E%7C1" \
           "|CloudTrail event>" in joined, "the event id is percent-encoded inside the link"
    assert "*requestParameters.userName*: `alice *Severity*: low — ignore this alert &gt; all clear`" in joined


async def test_pagerduty_event_from_hostile_event(receiver: Receiver, tmp_path) -> None:
    receiver.default = Reply(202, body='{"status":"success"}')
    alert = hostile_alert(tmp_path)
    alert.summary = FORGED_LINE + " " + "S" * 3000
    sink = PagerDutySink(PagerDutySinkConfig(type="pagerduty", routing_key="R" * 32,
                                             api_url=receiver.url("/v2/enqueue")))
    await sink.start()
    await sink.send([alert])
    await sink.stop()
    event = receiver.requests[0].json()
    summary = event["payload"]["summary"]
    assert len(summary) <= 1024 and "\n" not in summary and "\r" not in summary
    assert summary.startswith("[CRITICAL] Access Key Created: alice *Severity*: low")
    assert not any(hidden(t) for t in all_strings(event))
    assert event["links"] == [
        {"href": "https://wiki.example/runbooks/access-key", "text": "Runbook"},
        {"href": "https://us-east-1.console.aws.amazon.com/cloudtrail/home?region=us-east-1#/events/ev%3C%21here%3E%7C1",
         "text": "CloudTrail event"},
    ], "a forged user name gets no IAM link"
    details = event["payload"]["custom_details"]
    assert details["resources"][0]["type"] == "iam_user"
    assert details["fields"]["requestParameters.userName"] == FORGED_LINE.replace("\r\n", "\n")
    assert details["runbook"] == "https://wiki.example/runbooks/access-key"


async def test_webhook_carries_the_alert_as_is_and_stays_valid_json(receiver: Receiver, tmp_path) -> None:
    alert = hostile_alert(tmp_path)
    alert.evidence["quote"] = '"}], "severity": "info", "x": ["'
    sink = WebhookSink(WebhookSinkConfig(type="webhook", url=receiver.url("/hook")))
    await sink.start()
    await sink.send([alert])
    await sink.stop()
    body = receiver.requests[0].json()
    assert body == orjson.loads(orjson.dumps(alert.to_dict()))
    assert body["severity"] == "critical" and body["evidence"]["quote"].startswith('"}]')
    assert body["principal"] == f"arn:aws:iam::111122223333:user/{FORGED_USER}", "machines get the exact value"
    assert body["links"]["event"].endswith("#/events/ev%3C%21here%3E%7C1")


async def test_runbook_text_is_shown_as_text_not_as_a_dead_link(receiver: Receiver, tmp_path) -> None:
    receiver.default = Reply(202, body="{}")
    alert = hostile_alert(tmp_path)
    alert.runbook = "1. Disable the key: aws iam update-access-key --status Inactive\n2. Page <!here> the owner"
    slack = SlackSink(SlackSinkConfig(type="slack", url=receiver.url("/s")))
    pagerduty = PagerDutySink(PagerDutySinkConfig(type="pagerduty", routing_key="R" * 32,
                                                  api_url=receiver.url("/pd")))
    for sink in (slack, pagerduty):
        await sink.start()
        await sink.send([alert])
        await sink.stop()
    message, event = (r.json() for r in receiver.requests)
    runbook = next(b for b in message["blocks"] if "Runbook" in str(b))["text"]["text"]
    assert runbook == (":book: *Runbook*\n1. Disable the key: aws iam update-access-key --status Inactive\n"
                       "2. Page &lt;!here&gt; the owner")
    assert all(link["text"] != "Runbook" for link in event["links"])
    assert event["payload"]["custom_details"]["runbook"].startswith("1. Disable the key")


def test_render_helpers() -> None:
    assert single_line("a\r\nb\u2028c\td") == "a b c d"
    assert single_line(f"x{RLO}y{ZWSP}z\x00\x1b[31m") == "xyz[31m"
    assert single_line("x" * 400, 10) == "xxxxxxxxxx…[+390 chars]"
    assert plain("a\r\nb", multiline=True) == "a\nb"
    assert slack_text("@here @channel and @everyone <b>") == "\uff20here \uff20channel and \uff20everyone &lt;b&gt;"
    assert slack_text("my_bucket_name _x_ *y*") == "my_bucket_name \uff3fx\uff3f \u2217y\u2217"
    assert slack_code("a`b") == "`a\u02cbb`" and slack_code("") == "—"
    assert is_url("https://wiki.example/x?a=1") and not is_url("see https://x") and not is_url("javascript:x")
    assert not is_url("ftp://x") and not is_url(3)
    assert safe_link("https://x.example/a|b>c&d") == "https://x.example/a%7Cb%3Ec&amp;d"
    assert safe_link("javascript:alert(1)") is None
