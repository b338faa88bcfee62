"""The derived ``trailguard.request.*`` fields: which other account an S3 write sends data or a key to.

Each case is a CloudTrail record shape the pack's rules meet: the destination bucket named in
``resources`` with its owner, a scrubbed record whose names do not line up, a copy *from* another
account (an import), KMS keys given as ARN, id or alias, and records of other calls."""

from __future__ import annotations

import re
from typing import Any

import pytest

from detectors.sigma.derived import derived_resolver
from detectors.sigma.external_accounts import (
    external_bucket_accounts,
    external_kms_key_accounts,
    external_peer_accounts,
)
from detectors.sigma.values import MISSING, Unsupported

OWN = "111122223333"
OTHER = "999988887777"


def copy_record(destination: str, source: str, buckets: dict[str, str], **params: Any) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for name, account in buckets.items():
        resources += [{"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{name}/k"},
                      {"type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::{name}", "accountId": account}]
    return {"eventName": "CopyObject", "eventSource": "s3.amazonaws.com", "recipientAccountId": OWN,
            "requestParameters": {"bucketName": destination, "key": "k", "x-amz-copy-source": f"{source}/k",
                                  **params},
            "resources": resources}


def test_a_copy_into_another_accounts_bucket_names_that_account() -> None:
    raw = copy_record("drop", "data", {"data": OWN, "drop": OTHER})
    assert external_bucket_accounts(raw) == [OTHER]


def test_a_copy_from_another_accounts_bucket_into_our_own_is_an_import() -> None:
    raw = copy_record("data", "drop", {"data": OWN, "drop": OTHER})
    assert external_bucket_accounts(raw) is MISSING


def test_a_copy_within_the_account_names_nobody() -> None:
    assert external_bucket_accounts(copy_record("data", "data", {"data": OWN})) is MISSING


def test_a_scrubbed_record_whose_names_do_not_match_counts_foreign_buckets_except_the_source() -> None:
    raw = copy_record("renamed-dest", "renamed-src", {"a": OTHER, "b": OWN})
    assert external_bucket_accounts(raw) == [OTHER]
    raw = copy_record("renamed-dest", "a", {"a": OTHER, "b": OWN})
    assert external_bucket_accounts(raw) is MISSING


def test_other_calls_and_sparse_records_have_no_destination() -> None:
    assert external_bucket_accounts({"eventName": "GetObject", "resources": [{"accountId": OTHER}]}) is MISSING
    assert external_bucket_accounts({"eventName": "CopyObject"}) is MISSING
    assert external_bucket_accounts({"eventName": "CopyObject", "resources": "junk",
                                     "requestParameters": ["junk"]}) is MISSING


@pytest.mark.parametrize(("key", "expected"), [
    (f"arn:aws:kms:us-east-1:{OTHER}:key/0f4c3f70", [OTHER]),
    (f"arn:aws:kms:us-east-1:{OWN}:key/0f4c3f70", MISSING),
    ("alias/data-key", MISSING),
    ("0f4c3f70-2f8e-4d8c-9d59-5b7e1c1d2a11", MISSING),
    ([f"arn:aws:kms:eu-west-1:{OTHER}:alias/x"], [OTHER]),
    (12, MISSING),
])
def test_kms_keys_of_another_account_are_named_by_their_arn(key: Any, expected: Any) -> None:
    raw = copy_record("data", "data", {"data": OWN}, **{"x-amz-server-side-encryption-aws-kms-key-id": key})
    found = external_kms_key_accounts(raw)
    assert found is MISSING if expected is MISSING else found == expected


def test_the_account_falls_back_to_the_callers_when_the_recipient_is_missing() -> None:
    raw = {"eventName": "PutObject", "userIdentity": {"accountId": OWN},
           "requestParameters": {"SSEKMSKeyId": f"arn:aws:kms:us-east-1:{OWN}:key/k"}}
    assert external_kms_key_accounts(raw) is MISSING


def test_the_fields_are_reachable_from_rules_and_a_typo_is_refused() -> None:
    raw = copy_record("drop", "data", {"data": OWN, "drop": OTHER})
    assert derived_resolver("trailguard.request.external_bucket_accounts")(raw) == [OTHER]
    with pytest.raises(Unsupported, match=re.escape("trailguard.request.external_kms_key_accounts")):
        derived_resolver("trailguard.request.external_bucket_account")


def test_a_peering_with_another_account_names_it_and_one_inside_the_account_does_not() -> None:
    request = {"eventName": "CreateVpcPeeringConnection", "recipientAccountId": OWN,
               "requestParameters": {"vpcId": "vpc-1", "peerVpcId": "vpc-2", "peerOwnerId": OTHER}}
    assert external_peer_accounts(request) == [OTHER]
    request["requestParameters"]["peerOwnerId"] = OWN
    assert external_peer_accounts(request) is MISSING
    accept = {"eventName": "AcceptVpcPeeringConnection", "recipientAccountId": OWN,
              "responseElements": {"vpcPeeringConnection": {"requesterVpcInfo": {"ownerId": OTHER},
                                                            "accepterVpcInfo": {"ownerId": OWN}}}}
    assert external_peer_accounts(accept) == [OTHER]
    assert external_peer_accounts({**accept, "responseElements": None}) is MISSING
    assert external_peer_accounts({"eventName": "DeleteVpcPeeringConnection"}) is MISSING
