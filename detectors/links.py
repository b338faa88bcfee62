"""Console links an analyst clicks first: the triggering event in CloudTrail, the principal in IAM.

The CloudTrail event-history page of one event is
``https://{region}.console.aws.amazon.com/cloudtrail/home?region={region}#/events/{eventID}``
(event history is regional: the link must name the event's region).  The IAM console is global:
``https://console.aws.amazon.com/iam/home#/users/details/{name}`` (``roles/details`` for a role or
an assumed-role session's role).  Other partitions have their own console hosts: GovCloud
(``console.amazonaws-us-gov.com``) and China (``console.amazonaws.cn``); the partition is read from
the principal's ARN, else from the region name.  Only names IAM allows (letters, digits and ``+=,.@_-``) get a
principal link, and event ids are percent-encoded, so a forged value cannot change where a link goes.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

__all__ = ["CONSOLE_HOSTS", "event_link", "links_for", "partition_of", "principal_link"]

#: Partition → (regional console host pattern, global console host).
CONSOLE_HOSTS: Final = {
    "aws": ("{region}.console.aws.amazon.com", "console.aws.amazon.com"),
    "aws-us-gov": ("console.amazonaws-us-gov.com", "console.amazonaws-us-gov.com"),
    "aws-cn": ("console.amazonaws.cn", "console.amazonaws.cn"),
}


#: What IAM allows in user and role names; anything else is not a real principal and gets no link.
_IAM_NAME: Final = re.compile(r"^[\w+=,.@-]{1,128}$")


def partition_of(arn: str = "", region: str = "") -> str:
    """``aws``, ``aws-us-gov`` or ``aws-cn``: from an ARN when it has one, else from the region."""
    if arn.startswith("arn:"):
        partition = arn.split(":", 2)[1]
        if partition in CONSOLE_HOSTS:
            return partition
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if region.startswith("cn-"):
        return "aws-cn"
    return "aws"


def _safe_region(region: str) -> str:
    return region if region and all(c.isalnum() or c == "-" for c in region) and len(region) < 32 else ""


def event_link(event_id: str, region: str, partition: str = "aws") -> str | None:
    """The CloudTrail event-history page of one event, or ``None`` without an id or region."""
    region = _safe_region(region)
    if not event_id or not region:
        return None
    regional, _ = CONSOLE_HOSTS.get(partition, CONSOLE_HOSTS["aws"])
    host = regional.format(region=region)
    return f"https://{host}/cloudtrail/home?region={region}#/events/{quote(event_id, safe='')}"


def principal_link(principal: str) -> str | None:
    """The IAM console page of a user, a role, or the role behind an assumed-role session."""
    if not principal.startswith("arn:"):
        return None
    parts = principal.split(":", 5)
    if len(parts) != 6:
        return None
    partition, service, resource = parts[1], parts[2], parts[5]
    _, host = CONSOLE_HOSTS.get(partition, CONSOLE_HOSTS["aws"])
    kind, _, rest = resource.partition("/")
    name = rest.split("/", 1)[0] if service == "sts" else rest.rsplit("/", 1)[-1]
    if kind in ("user", "role", "assumed-role") and not _IAM_NAME.match(name):
        return None
    if service == "iam" and kind == "user":
        page = f"users/details/{quote(name, safe='')}"
    elif (service == "iam" and kind == "role") or (service == "sts" and kind == "assumed-role"):
        page = f"roles/details/{quote(name, safe='')}"
    elif service == "iam" and resource == "root":
        page = "home"
    else:
        return None
    return f"https://{host}/iam/home#/{page}"


def links_for(event_id: str | None, region: str, principal: str) -> dict[str, str]:
    """``{"event": …, "principal": …}`` with only the links that can be made."""
    links: dict[str, str] = {}
    event = event_link(event_id or "", region, partition_of(principal, region))
    if event:
        links["event"] = event
    person = principal_link(principal)
    if person:
        links["principal"] = person
    return links
