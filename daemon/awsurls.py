"""What an SQS queue URL says about its region — one reading for the SQS source and the SQS sink.

``https://sqs.eu-west-1.amazonaws.com/123456789012/name`` (and LocalStack's
``sqs.eu-west-1.localhost.localstack.cloud``) carry the region as the host's second label; other
hosts (``localhost:4566``, VPC endpoints, FIPS endpoints) do not, and then botocore's own region
(``AWS_REGION``, the profile) applies.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["region_from_queue_url"]


def region_from_queue_url(url: str) -> str | None:
    """The region named in an SQS queue URL's host, or ``None`` when the host does not name one."""
    labels = (urlsplit(url).hostname or "").split(".")
    return labels[1] if len(labels) > 3 and labels[0] == "sqs" else None
