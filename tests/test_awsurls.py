"""The region an SQS queue URL names, as both the SQS source and the SQS sink read it."""

from __future__ import annotations

import pytest

from daemon.awsurls import region_from_queue_url


@pytest.mark.parametrize(("url", "region"), [
    ("https://sqs.us-east-1.amazonaws.com/123456789012/cloudtrail-events", "us-east-1"),
    ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q", "cn-north-1"),
    ("http://sqs.eu-west-1.localhost.localstack.cloud:4566/000000000000/q", "eu-west-1"),
    ("http://localhost:4566/000000000000/q", None),
    ("https://sqs-fips.us-east-1.amazonaws.com/123456789012/q", None),
    ("https://vpce-0a1b.sqs.us-east-1.vpce.amazonaws.com/123456789012/q", None),
    ("not a url", None),
])
def test_region_from_queue_url(url: str, region: str | None) -> None:
    assert region_from_queue_url(url) == region
