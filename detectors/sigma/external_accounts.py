"""Derived ``trailguard.request.*`` fields: the other AWS accounts a request sends data, a key or a route to.

Why it exists: "an object copied into a bucket another account owns" and "an object re-encrypted with
another account's KMS key" are facts about two values of one record - the destination's owner (in
``resources[].accountId``) or the key's ARN, against the account the event happened in
(``recipientAccountId``).  A Sigma detection item tests one field against constants and cannot
compare two fields, so these facts are computed here and tested like fields (wired in by
:func:`detectors.sigma.derived.derived_resolver`).  Field names and semantics: docs/rule-types.md.

* ``trailguard.request.external_bucket_accounts``: for S3 writes that name a destination bucket
  (``CopyObject``, ``PutObject``, ``UploadPartCopy``, ``CreateMultipartUpload``), the owners of that
  bucket, other than the event's account, as CloudTrail lists them in ``resources``.  The
  destination is the resource whose ARN is ``arn:aws:s3:::<requestParameters.bucketName>``; when no
  resource is named so (an inconsistent or scrubbed record), every foreign-owned bucket except the
  copy source counts - copying *from* another account's bucket into your own is an import, not a leak.
* ``trailguard.request.external_kms_key_accounts``: the accounts, other than the event's, of the KMS
  key ARNs the request names for server-side encryption (``x-amz-server-side-encryption-aws-kms-key-id``,
  ``SSEKMSKeyId``, ``kmsKeyId``).  A key id or alias without an ARN is the caller's own account.
* ``trailguard.request.external_peer_accounts``: the owner of the other VPC of a peering, other than
  the event's account - ``requestParameters.peerOwnerId`` of ``CreateVpcPeeringConnection``, the
  requester's ``ownerId`` in the response of ``AcceptVpcPeeringConnection``.

Both are absent (``MISSING``) when the event names no foreign account, so ``field|exists: true`` or
``field: '?*'`` read as "some other account".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from detectors.sigma.values import MISSING, Resolver

__all__ = ["REQUEST_FIELDS", "request_resolver"]

_S3_WRITES: Final = frozenset({"CopyObject", "PutObject", "UploadPartCopy", "CreateMultipartUpload"})
_KMS_KEY_PARAMETERS: Final = ("x-amz-server-side-encryption-aws-kms-key-id", "SSEKMSKeyId", "kmsKeyId")
_BUCKET_ARN: Final = "arn:aws:s3:::"


def _own_account(raw: dict[str, Any]) -> str:
    account = raw.get("recipientAccountId")
    if not isinstance(account, str) or not account:
        identity = raw.get("userIdentity")
        account = identity.get("accountId") if isinstance(identity, dict) else None
    return account if isinstance(account, str) else ""


def _params(raw: dict[str, Any]) -> dict[str, Any]:
    params = raw.get("requestParameters")
    return params if isinstance(params, dict) else {}


def _first(value: Any) -> str:
    """S3 request parameters are sometimes one-element lists (``"host": ["…"]``)."""
    if isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else ""


def _buckets(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """``(bucket name, owner account)`` of every bucket resource that names its owner."""
    resources = raw.get("resources")
    if not isinstance(resources, list):
        return []
    found = []
    for resource in resources:
        if not isinstance(resource, dict):
            continue
        arn = resource.get("ARN") or resource.get("arn")
        account = resource.get("accountId")
        if (isinstance(arn, str) and arn.startswith(_BUCKET_ARN) and "/" not in arn
                and isinstance(account, str) and account):
            found.append((arn[len(_BUCKET_ARN):], account))
    return found


def external_bucket_accounts(raw: dict[str, Any]) -> Any:
    """Owners (other than the event's account) of the bucket an S3 write puts data into."""
    if raw.get("eventName") not in _S3_WRITES:
        return MISSING
    own = _own_account(raw)
    buckets = _buckets(raw)
    params = _params(raw)
    destination = _first(params.get("bucketName"))
    named = [account for name, account in buckets if name == destination]
    if not named:
        source_bucket = _first(params.get("x-amz-copy-source")).lstrip("/").split("/", 1)[0]
        named = [account for name, account in buckets if name != source_bucket]
    foreign = sorted({account for account in named if account != own})
    return foreign or MISSING


def external_kms_key_accounts(raw: dict[str, Any]) -> Any:
    """Accounts (other than the event's) of the KMS key ARNs a request encrypts with."""
    params = _params(raw)
    own = _own_account(raw)
    foreign = set()
    for name in _KMS_KEY_PARAMETERS:
        key = _first(params.get(name))
        parts = key.split(":")
        # arn:aws:kms:<region>:<account>:key/<id> (or alias/<name>)
        if len(parts) >= 6 and parts[0] == "arn" and parts[2] == "kms" and parts[4] and parts[4] != own:
            foreign.add(parts[4])
    return sorted(foreign) or MISSING


def external_peer_accounts(raw: dict[str, Any]) -> Any:
    """The other account of a VPC peering requested or accepted, when it is not the event's."""
    name = raw.get("eventName")
    if name == "CreateVpcPeeringConnection":
        peer = _first(_params(raw).get("peerOwnerId"))
    elif name == "AcceptVpcPeeringConnection":
        response = raw.get("responseElements")
        connection = response.get("vpcPeeringConnection") if isinstance(response, dict) else None
        requester = connection.get("requesterVpcInfo") if isinstance(connection, dict) else None
        peer = _first(requester.get("ownerId")) if isinstance(requester, dict) else ""
    else:
        return MISSING
    return [peer] if peer and peer != _own_account(raw) else MISSING


#: ``trailguard.request.<name>`` → how to compute it from the raw record.
REQUEST_FIELDS: Final[dict[str, Callable[[dict[str, Any]], Any]]] = {
    "external_bucket_accounts": external_bucket_accounts,
    "external_kms_key_accounts": external_kms_key_accounts,
    "external_peer_accounts": external_peer_accounts,
}


def request_resolver(name: str) -> Resolver:
    """The resolver of ``trailguard.request.<name>`` (``name`` must be in :data:`REQUEST_FIELDS`)."""
    return REQUEST_FIELDS[name]
