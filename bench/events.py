"""Realistic synthetic CloudTrail traffic for benchmarks, built from real records as templates.

Templates are the real Invictus-IR and Stratus records in ``samples/trail``; each generated event
gets a fresh eventID, an event time advancing at a steady rate, a principal drawn from a pool
(Zipf-like: a few busy roles, a long tail of users), a source IP (public, private or an AWS service
name; each principal sticks to its own address or its /24 neighbour, 0.5 % of calls come from
elsewhere), ~5 % authorization failures, and a sprinkle of real attack events (StopLogging,
console login without MFA, GetPasswordData bursts) so detectors do real work.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from daemon.deadletter import InvalidReporter
from daemon.decode import decode_bytes
from daemon.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "trail"

__all__ = ["generate", "load_templates"]


def load_templates() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(ordinary templates, attack templates) from the bundled sample trail."""
    invalid = InvalidReporter(Metrics())
    ordinary: list[dict[str, Any]] = []
    attacks: list[dict[str, Any]] = []
    for path in sorted(SAMPLES.rglob("*")):
        if not path.is_file() or path.suffix not in (".json", ".gz", ".jsonl"):
            continue
        records, _ = decode_bytes(path.read_bytes(), str(path), invalid)
        target = attacks if "stratus" in str(path) else ordinary
        target.extend(r for r in records if isinstance(r, dict) and r.get("eventName"))
    return ordinary, attacks


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate(count: int, *, seed: int = 7, rate: float = 2000.0, start: float = 1_735_689_600.0,
             principals: int = 2000, attack_every: int = 5000) -> Iterator[bytes]:
    """Yield ``count`` orjson-encoded events (about 1 KB each) at ``rate`` events/s of event time."""
    rng = random.Random(seed)
    ordinary, attacks = load_templates()
    public_ips = [f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
                  for _ in range(500)]
    ips = [*public_ips, "10.0.3.17", "172.31.9.4", "ec2.amazonaws.com", "AWS Internal", "lambda.amazonaws.com"]
    accounts = [f"{100000000000 + i * 7919:012d}" for i in range(20)]
    regions = ["us-east-1", "us-east-1", "us-east-1", "eu-west-1", "us-west-2", "ap-southeast-2"]
    names = [f"user-{i}" for i in range(principals)]
    weights = [1.0 / (i + 1) for i in range(principals)]
    for index in range(count):
        if attack_every and index % attack_every == attack_every - 1:
            event = copy.deepcopy(rng.choice(attacks))
        else:
            event = copy.deepcopy(rng.choice(ordinary))
            user_index = rng.choices(range(principals), weights)[0]
            user = names[user_index]
            account = accounts[user_index % len(accounts)]
            identity = event.get("userIdentity")
            if isinstance(identity, dict) and identity.get("type") in ("IAMUser", "AssumedRole"):
                identity["accountId"] = account
                identity["arn"] = (f"arn:aws:iam::{account}:user/{user}" if identity.get("type") == "IAMUser"
                                   else f"arn:aws:sts::{account}:assumed-role/app-{user_index % 50}/{user}")
            event["recipientAccountId"] = account
            event["awsRegion"] = rng.choice(regions)
            # a principal works from its own one or two addresses; 0.5 % of calls come from elsewhere
            if rng.random() < 0.005:
                event["sourceIPAddress"] = rng.choice(ips)
            else:
                home = ips[user_index % len(ips)]
                if index & 1 and home.count(".") == 3 and home[0].isdigit():
                    home = home.rsplit(".", 1)[0] + ".77"  # the same /24: the same place
                event["sourceIPAddress"] = home
            if rng.random() < 0.05:
                event["errorCode"] = rng.choice(["AccessDenied", "Client.UnauthorizedOperation",
                                                 "AccessDeniedException"])
                event["errorMessage"] = "User is not authorized to perform this operation"
        event["eventID"] = f"{seed:04x}{index:012x}-bench-{rng.getrandbits(32):08x}"
        event["eventTime"] = _iso(start + index / rate)
        yield orjson.dumps(event)
