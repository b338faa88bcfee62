"""An incident's opened and updated notifications as each destination receives them.

Against real receivers: the local HTTP server for webhook, PagerDuty and Slack, ``moto_server``
for SQS.  PagerDuty must see one ``dedup_key`` for both (the update changes the same PagerDuty
alert), Slack a short follow-up, the JSON sinks ``"kind": "opened" | "updated"``.
"""

from __future__ import annotations

import orjson
import pytest
from aiobotocore.session import get_session

from daemon.delivery.incidents import Incidents
from daemon.delivery.sinks.pagerduty import PagerDutySink, PagerDutySinkConfig
from daemon.delivery.sinks.slack import SlackSink, SlackSinkConfig
from daemon.delivery.sinks.sqs import SqsSink, SqsSinkConfig
from daemon.delivery.sinks.webhook import WebhookSink, WebhookSinkConfig
from detectors.alert import Alert
from tests.brokers import MotoServer
from tests.http_receiver import Receiver

T0 = 1_700_000_000.0


def raised(n: int, severity: str = "high", ip: str = "203.0.113.7") -> Alert:
    return Alert(detector="sigma", title="EC2 Windows Password Data Requested", severity=severity,
                 time=T0 + n, summary="GetPasswordData by stratus", account_id="123837392027",
                 region="us-east-1", principal="arn:aws:sts::123837392027:assumed-role/stratus/s",
                 source_ips=[ip], event_ids=[f"ev-{n}"], rule_id="rule-gpd", entity="stratus")


def notifications(severities: tuple[str, ...] = ("high",) * 29) -> list[Alert]:
    """Opened at once, then (after the window) the update with the totals."""
    incidents = Incidents()
    out = incidents.fold([raised(i, s, ip=f"203.0.113.{i % 3}") for i, s in enumerate(severities)], T0)
    out += incidents.fold([], T0 + 7200)
    return out


@pytest.fixture
async def receiver():
    server = await Receiver().start()
    yield server
    await server.stop()


async def test_webhook_payload_says_opened_then_updated_with_the_same_incident(receiver: Receiver) -> None:
    sink = WebhookSink(WebhookSinkConfig(type="webhook", url=receiver.url()))
    await sink.start()
    await sink.send(notifications())
    await sink.stop()
    opened, updated = (r.json() for r in receiver.requests)
    assert (opened["kind"], updated["kind"]) == ("opened", "updated")
    assert opened["incident"]["id"] == updated["incident"]["id"] == opened["id"]
    assert (opened["incident"]["count"], updated["incident"]["count"]) == (1, 29)
    assert updated["incident"]["kind"] == "closed"
    assert updated["incident"]["event_ids_total"] == 29
    assert updated["incident"]["source_ips"] == ["203.0.113.0", "203.0.113.1", "203.0.113.2"]


async def test_pagerduty_update_reuses_the_incidents_dedup_key(receiver: Receiver) -> None:
    sink = PagerDutySink(PagerDutySinkConfig(type="pagerduty", routing_key="R0123", api_url=receiver.url("/v2")))
    await sink.start()
    sent = notifications(("medium", "medium", "critical", "medium"))
    await sink.send(sent)
    await sink.stop()
    events = [r.json() for r in receiver.requests]
    assert [e["payload"]["custom_details"]["kind"] for e in events] == ["opened", "updated", "updated"]
    assert {e["dedup_key"] for e in events} == {sent[0].id}, "one PagerDuty alert for the whole incident"
    assert [e["payload"]["severity"] for e in events] == ["warning", "critical", "critical"]
    assert all(e["event_action"] == "trigger" for e in events)
    assert events[-1]["payload"]["custom_details"]["incident"]["count"] == 4


async def test_slack_posts_a_short_follow_up_for_an_update(receiver: Receiver) -> None:
    sink = SlackSink(SlackSinkConfig(type="slack", url=receiver.url(), mention="<!here>",
                                     min_mention_severity="critical"))
    await sink.start()
    hostile = [raised(0), raised(1)]
    hostile[0].title = "Password <https://evil.example|click> <!channel>"
    incidents = Incidents()
    sent = incidents.fold(hostile, T0)
    sent += incidents.fold([], T0 + 7200)
    sent += notifications(("high", "critical"))
    await sink.send(sent)
    await sink.stop()
    first, follow_up, _, escalation = (r.json() for r in receiver.requests)
    assert len(first["blocks"]) > 2 and first["blocks"][0]["type"] == "header"
    assert [b["type"] for b in follow_up["blocks"]] == ["section", "context"]
    text = follow_up["blocks"][0]["text"]["text"]
    assert "Update [HIGH]" in text and "2 matching events" in text and "(closed)" in text
    assert "2023-11-14T22:13:20Z – 2023-11-14T22:13:21Z" in text
    assert "<https://evil.example" not in follow_up["text"] and "<!channel>" not in follow_up["text"]
    assert "&lt;!channel&gt;" in text, "attacker-controlled title escaped in the follow-up too"
    assert sent[0].id in follow_up["blocks"][1]["elements"][0]["text"]
    assert "<!here>" not in follow_up["text"], "no mention for a closing update"
    assert escalation["text"].startswith("<!here>"), "an escalation to the mention level mentions again"


async def test_sqs_message_carries_the_kind(moto_endpoint: MotoServer) -> None:
    moto_endpoint.reset()
    async with get_session().create_client("sqs", region_name="us-east-1",
                                           endpoint_url=moto_endpoint.endpoint) as sqs:
        queue_url = (await sqs.create_queue(QueueName="incidents"))["QueueUrl"]
        sink = SqsSink(SqsSinkConfig(type="sqs", queue_url=queue_url, endpoint_url=moto_endpoint.endpoint))
        await sink.start()
        await sink.send(notifications(("high",) * 3))
        await sink.stop()
        bodies: list[dict] = []
        for _ in range(20):
            response = await sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            bodies.extend(orjson.loads(m["Body"]) for m in response.get("Messages", []))
            if len(bodies) >= 2:
                break
    assert sorted((b["kind"], b["incident"]["count"]) for b in bodies) == [("opened", 1), ("updated", 3)]
