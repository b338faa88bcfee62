"""Name what an event touched: the resources an analyst needs before opening the console.

An alert that says "a security group was opened" is useless without the group, the port range and
the CIDR.  This module reads them from the event: CloudTrail's own ``resources[]`` first, then the
request parameters each important API really uses (per-API readers for the calls whose meaning is
in a nested structure: security-group permissions, snapshot/AMI/DB-snapshot sharing, SSM commands,
access keys…), then a generic reader over well-known request-parameter keys (``bucketName``,
``roleName``, ``secretId``, anything ending in ``Name``/``Id``/``Arn``/``Identifier``), so a rule
added later gets resources without code here.  An API call that changes an account-wide setting
(``DisableEbsEncryptionByDefault``, ``LeaveOrganization``) names the account; a sign-in names the
identity signing in.

Each resource is a plain dict ``{"type", "id"}`` plus, when known, ``arn``, ``account_id`` and a
one-line ``detail`` ("tcp 22 from 0.0.0.0/0", "shared with 111122223333").  Values are bounded
(:data:`MAX_VALUE` characters, :data:`MAX_RESOURCES` resources).  This runs only when an alert is
built, never per event, and never raises on a sparse or oddly typed record.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from detectors.event import Event

__all__ = ["MAX_RESOURCES", "MAX_VALUE", "Resource", "bounded", "make_resource", "parse_arn", "resources_of"]

#: Resources kept per alert (then one ``omitted`` entry says how many more there were).
MAX_RESOURCES: Final = 25
#: Longest id/arn/detail kept.
MAX_VALUE: Final = 512

Resource = dict[str, str]
_Reader = Callable[[Event, dict[str, Any]], list[Resource]]

#: Generic request-parameter keys → resource type (the key says what the value is).
KNOWN_KEYS: Final[dict[str, str]] = {
    "bucketName": "s3_bucket",
    "instanceId": "ec2_instance",
    "instanceIds": "ec2_instance",
    "groupId": "security_group",
    "networkAclId": "network_acl",
    "vpcId": "vpc",
    "subnetId": "subnet",
    "volumeId": "ebs_volume",
    "snapshotId": "ebs_snapshot",
    "imageId": "ami",
    "roleName": "iam_role",
    "userName": "iam_user",
    "policyArn": "iam_policy",
    "policyName": "iam_inline_policy",
    "instanceProfileName": "iam_instance_profile",
    "serialNumber": "mfa_device",
    "sAMLProviderArn": "saml_provider",
    "openIDConnectProviderArn": "oidc_provider",
    "accessKeyId": "access_key",
    "secretId": "secret",
    "keyId": "kms_key",
    "functionName": "lambda_function",
    "dBInstanceIdentifier": "rds_instance",
    "dBClusterIdentifier": "rds_cluster",
    "dBSnapshotIdentifier": "rds_snapshot",
    "dBClusterSnapshotIdentifier": "rds_cluster_snapshot",
    "dbiResourceId": "rds_instance",
    "logGroupName": "log_group",
    "trailName": "cloudtrail_trail",
    "eventDataStore": "cloudtrail_event_data_store",
    "detectorId": "guardduty_detector",
    "analyzerName": "access_analyzer",
    "backupVaultName": "backup_vault",
    "recoveryPointArn": "backup_recovery_point",
    "configurationRecorderName": "config_recorder",
    "deliveryChannelName": "config_delivery_channel",
    "repositoryName": "ecr_repository",
    "resolverQueryLogConfigId": "resolver_query_log_config",
    "alarmNames": "cloudwatch_alarm",
    "resourceArn": "resource",
    "roleArn": "iam_role",
    "domainName": "opensearch_domain",
    "clusterName": "cluster",
    "topicArn": "sns_topic",
    "queueUrl": "sqs_queue",
    "tableName": "dynamodb_table",
    "stackName": "cloudformation_stack",
    "hostedZoneId": "route53_hosted_zone",
    "certificateArn": "acm_certificate",
    "documentName": "ssm_document",
    "StandardsSubscriptionArns": "securityhub_standard",
    "servicePrincipal": "aws_service",
    "accountId": "aws_account",
    "accountIds": "aws_account",
}

#: A ``name`` parameter means different things per service.
NAME_BY_SOURCE: Final[dict[str, str]] = {
    "cloudtrail.amazonaws.com": "cloudtrail_trail",
    "ssm.amazonaws.com": "ssm_parameter",
    "sts.amazonaws.com": "federated_user",
    "guardduty.amazonaws.com": "guardduty_object",
    "rolesanywhere.amazonaws.com": "rolesanywhere_trust_anchor",
    "secretsmanager.amazonaws.com": "secret",
}

#: Keys that end like an identifier but do not name a resource.
_NOT_RESOURCES: Final = frozenset({
    "versionId", "statementId", "clientToken", "clientRequestToken", "requestId", "revisionId",
    "ruleNumber", "roleSessionName", "externalId", "tokenCode", "sourceIdentity", "versionStage",
    "kmsKeyId", "host", "Host", "targetName",
})
_GENERIC_SUFFIX: Final = re.compile(r"(?:Name|Id|Arn|ARN|Identifier|Names|Ids|Arns)$")
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SERVICE: Final = re.compile(r"^([a-z0-9-]+)\.amazonaws\.com$")

def _text(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("content", value.get("value", ""))  # EC2 query-API shape: {"content": "fl-…"}
    if value is None or isinstance(value, (dict, list)):
        return ""
    text = str(value)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _items(value: Any) -> list[Any]:
    """CloudTrail lists come bare, or wrapped as ``{"items": [...]}`` (EC2), or as one value."""
    if isinstance(value, dict) and "items" in value:
        value = value["items"]
    if isinstance(value, list):
        return value
    return [] if value is None or value == {} or value == "" else [value]


def parse_arn(arn: str) -> tuple[str, str, str, str, str] | None:
    """``arn:partition:service:region:account:resource`` → its five parts, or ``None``."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        return None
    return parts[1], parts[2], parts[3], parts[4], parts[5]


def _resource(kind: str, ident: Any, *, arn: Any = None, account_id: Any = None,
              detail: str = "") -> Resource | None:
    text = _text(ident)
    if not text:
        return None
    out: Resource = {"type": kind, "id": text}
    arn_text = _text(arn) if arn else (text if text.startswith("arn:") else "")
    if arn_text:
        out["arn"] = arn_text
        parsed = parse_arn(arn_text)
        if parsed and parsed[3] and not account_id:
            account_id = parsed[3]
    account = _text(account_id)
    if account:
        out["account_id"] = account
    if detail:
        out["detail"] = _text(detail)
    return out


def _from_cloudtrail(event: Event) -> list[Resource]:
    found: list[Resource] = []
    for item in _items(event.raw.get("resources")):
        if not isinstance(item, dict):
            continue
        arn = _text(item.get("ARN") or item.get("arn"))
        declared = _text(item.get("type"))
        kind = _type_of_declared(declared) if declared else "resource"
        ident = arn
        parsed = parse_arn(arn) if arn else None
        if parsed:
            resource_part = parsed[4]
            if parsed[1] != "s3" and "/" in resource_part:
                ident = resource_part.split("/", 1)[1] if resource_part.split("/", 1)[0] else resource_part
            elif parsed[1] == "s3":
                ident = resource_part
        made = _resource(kind, ident, arn=arn or None, account_id=item.get("accountId"))
        if made:
            found.append(made)
    return found


def _type_of_declared(declared: str) -> str:
    """``AWS::S3::Bucket`` → ``s3_bucket``."""
    parts = [p for p in declared.split("::") if p and p != "AWS"]
    return "_".join(_snake(p) for p in parts) or "resource"


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


# -- per-API readers ----------------------------------------------------------------------------
def _permissions_detail(params: dict[str, Any]) -> list[str]:
    """``tcp 22-22 from 0.0.0.0/0`` for each permission of a security-group rule change."""
    out: list[str] = []
    perms = _items(params.get("ipPermissions"))
    if not perms and ("fromPort" in params or "cidrIp" in params):
        perms = [{"ipProtocol": params.get("ipProtocol"), "fromPort": params.get("fromPort"),
                  "toPort": params.get("toPort"), "ipRanges": [{"cidrIp": params.get("cidrIp")}]}]
    for perm in perms[:10]:
        if not isinstance(perm, dict):
            continue
        proto = _text(perm.get("ipProtocol")) or "?"
        proto = "all" if proto == "-1" else proto
        low, high = _text(perm.get("fromPort")), _text(perm.get("toPort"))
        ports = "all ports" if proto == "all" or low in ("", "-1") else (low if low == high or not high
                                                                           else f"{low}-{high}")
        sources = [_text(r.get("cidrIp") or r.get("cidrIpv6")) for r in _items(perm.get("ipRanges"))
                   + _items(perm.get("ipv6Ranges")) if isinstance(r, dict)]
        sources += [_text(g.get("groupId")) for g in _items(perm.get("groups")) if isinstance(g, dict)]
        sources += [_text(p.get("prefixListId")) for p in _items(perm.get("prefixListIds"))
                    if isinstance(p, dict)]
        where = ", ".join(s for s in sources if s) or "?"
        out.append(f"{proto} {ports} from {where}")
    return out


def _security_group(event: Event, params: dict[str, Any]) -> list[Resource]:
    ident = params.get("groupId") or params.get("groupName")
    details = _permissions_detail(params)
    made = _resource("security_group", ident, detail="; ".join(details))
    return [made] if made else []


def _network_acl(event: Event, params: dict[str, Any]) -> list[Resource]:
    ports = params.get("portRange") if isinstance(params.get("portRange"), dict) else {}
    low, high = _text(ports.get("from")), _text(ports.get("to"))
    proto = _text(params.get("aclProtocol")) or "?"
    proto = "all" if proto == "-1" else proto
    port_text = f" {low}-{high}" if low else ""
    direction = "egress to" if params.get("egress") is True else "ingress from"
    cidr = _text(params.get("cidrBlock") or params.get("ipv6CidrBlock")) or "?"
    detail = f"rule {_text(params.get('ruleNumber')) or '?'} {_text(params.get('ruleAction')) or '?'} " \
             f"{proto}{port_text} {direction} {cidr}"
    made = _resource("network_acl", params.get("networkAclId"), detail=detail)
    return [made] if made else []


def _shared_accounts(permission: Any) -> tuple[list[str], bool]:
    """Accounts added to a ``createVolumePermission``/``launchPermission``, and whether it went public."""
    accounts: list[str] = []
    public = False
    add = permission.get("add") if isinstance(permission, dict) else None
    for item in _items(add):
        if not isinstance(item, dict):
            continue
        if item.get("group") == "all":
            public = True
        user = _text(item.get("userId"))
        if user:
            accounts.append(user)
    return accounts, public


def _sharing(kind: str, ident: Any, accounts: list[str], public: bool, what: str) -> list[Resource]:
    targets = (["everyone (public)"] if public else []) + accounts
    detail = f"shared with {', '.join(targets)}" if targets else ""
    made = _resource(kind, ident, detail=detail)
    out = [made] if made else []
    for account in accounts:
        shared = _resource("aws_account", account, account_id=account, detail=f"given access to {what}")
        if shared:
            out.append(shared)
    return out


def _snapshot_attribute(event: Event, params: dict[str, Any]) -> list[Resource]:
    accounts, public = _shared_accounts(params.get("createVolumePermission"))
    snapshot = _text(params.get("snapshotId"))
    return _sharing("ebs_snapshot", snapshot, accounts, public, f"snapshot {snapshot}")


def _image_attribute(event: Event, params: dict[str, Any]) -> list[Resource]:
    accounts, public = _shared_accounts(params.get("launchPermission"))
    image = _text(params.get("imageId"))
    return _sharing("ami", image, accounts, public, f"image {image}")


def _db_snapshot_attribute(event: Event, params: dict[str, Any]) -> list[Resource]:
    added = [_text(v) for v in _items(params.get("valuesToAdd"))]
    public = "all" in added
    accounts = [a for a in added if a and a != "all"]
    if params.get("dBClusterSnapshotIdentifier"):
        kind, ident = "rds_cluster_snapshot", _text(params.get("dBClusterSnapshotIdentifier"))
    else:
        kind, ident = "rds_snapshot", _text(params.get("dBSnapshotIdentifier"))
    return _sharing(kind, ident, accounts, public, f"DB snapshot {ident}")


def _send_command(event: Event, params: dict[str, Any]) -> list[Resource]:
    document = _text(params.get("documentName"))
    out = [r for r in (_resource("ec2_instance", i, detail=f"runs {document}" if document else "")
                       for i in _items(params.get("instanceIds"))) if r]
    for target in _items(params.get("targets")):
        if isinstance(target, dict):
            values = ",".join(_text(v) for v in _items(target.get("values")))
            made = _resource("ssm_target", f"{_text(target.get('key'))}={values}", detail=f"runs {document}")
            if made:
                out.append(made)
    doc = _resource("ssm_document", document)
    return out + ([doc] if doc else [])


def _start_session(event: Event, params: dict[str, Any]) -> list[Resource]:
    made = _resource("ec2_instance", params.get("target"),
                     detail=f"session document {_text(params.get('documentName'))}"
                     if params.get("documentName") else "interactive session")
    return [made] if made else []


def _access_key(event: Event, params: dict[str, Any]) -> list[Resource]:
    user = params.get("userName") or _caller_user(event)
    out = [r for r in [_resource("iam_user", user)] if r]
    created = event.get("responseElements.accessKey.accessKeyId")
    key = _resource("access_key", created or params.get("accessKeyId"),
                    detail=f"for user {_text(user)}" if user else "")
    return out + ([key] if key else [])


def _caller_user(event: Event) -> str:
    """The caller's own user name (IAM calls without ``userName`` act on the caller)."""
    name = event.get("userIdentity.userName")
    if isinstance(name, str) and name:
        return name
    return ""


def _list_keys(event: Event, params: dict[str, Any]) -> list[Resource]:
    user = params.get("userName") or _caller_user(event) or event.principal
    made = _resource("iam_user", user, detail="access keys listed")
    return [made] if made else []


def _s3_objects(event: Event, params: dict[str, Any]) -> list[Resource]:
    bucket = _text(params.get("bucketName"))
    out = [r for r in [_resource("s3_bucket", bucket)] if r]
    keys = [params.get("key")] if params.get("key") else []
    delete = params.get("Delete")
    if isinstance(delete, dict):
        keys += [o.get("Key") for o in _items(delete.get("Object")) if isinstance(o, dict)]
    for key in keys:
        made = _resource("s3_object", f"{bucket}/{_text(key)}" if bucket else key)
        if made:
            out.append(made)
    return out


def _batch_secrets(event: Event, params: dict[str, Any]) -> list[Resource]:
    out = [r for r in (_resource("secret", s) for s in _items(params.get("secretIdList"))) if r]
    for item in _items(params.get("filters")):
        if isinstance(item, dict):
            values = ",".join(_text(v) for v in _items(item.get("values")))
            made = _resource("secret_filter", f"{_text(item.get('key'))}={values}")
            if made:
                out.append(made)
    for secret in _items(event.get("responseElements.secretValues")):
        if isinstance(secret, dict):
            made = _resource("secret", secret.get("name") or secret.get("aRN"), arn=secret.get("aRN"))
            if made:
                out.append(made)
    return out


def _ssm_names(event: Event, params: dict[str, Any]) -> list[Resource]:
    decrypt = " (decrypted)" if params.get("withDecryption") is True else ""
    names = _items(params.get("names")) or _items(params.get("name"))
    return [r for r in (_resource("ssm_parameter", n, detail=f"read{decrypt}") for n in names) if r]


def _assume_role(event: Event, params: dict[str, Any]) -> list[Resource]:
    role = _resource("iam_role", params.get("roleArn"), detail=f"session {_text(params.get('roleSessionName'))}"
                     if params.get("roleSessionName") else "")
    return [role] if role else []


def _lambda_permission(event: Event, params: dict[str, Any]) -> list[Resource]:
    grantee = _text(params.get("principal"))
    made = _resource("lambda_function", params.get("functionName"),
                     detail=f"{_text(params.get('action')) or 'access'} granted to {grantee}" if grantee else "")
    return [made] if made else []


def _org_detach(event: Event, params: dict[str, Any]) -> list[Resource]:
    out = [_resource("organizations_policy", params.get("policyId"),
                     detail=f"detached from {_text(params.get('targetId'))}" if params.get("targetId") else ""),
           _resource("organizations_target", params.get("targetId"))]
    return [r for r in out if r]


def _run_instances(event: Event, params: dict[str, Any]) -> list[Resource]:
    out: list[Resource] = []
    for item in _items(event.get("responseElements.instancesSet"))[:MAX_RESOURCES]:
        if isinstance(item, dict):
            made = _resource("ec2_instance", item.get("instanceId"),
                             detail=" ".join(filter(None, (_text(item.get("instanceType")),
                                                           _text(item.get("imageId"))))))
            if made:
                out.append(made)
    requested = [i for i in _items(params.get("instancesSet")) if isinstance(i, dict)]  # the request's shape
    image = _resource("ami", params.get("imageId") or next((i.get("imageId") for i in requested), None))
    return out + ([image] if image else [])


def _sign_in(event: Event, params: dict[str, Any]) -> list[Resource]:
    kind = event.identity_type
    name = event.get("userIdentity.userName") or event.get("additionalEventData.LoginTo")
    arn = event.get("userIdentity.arn")
    if kind == "Root":
        made = _resource("root_user", event.account_id or arn, arn=arn, account_id=event.account_id,
                         detail="console sign-in")
    else:
        made = _resource("iam_user" if kind == "IAMUser" else "principal", name or event.principal,
                         arn=arn, account_id=event.account_id, detail=f"{event.event_name}")
    return [made] if made else []


PER_API: Final[dict[str, _Reader]] = {
    "AuthorizeSecurityGroupIngress": _security_group,
    "AuthorizeSecurityGroupEgress": _security_group,
    "RevokeSecurityGroupIngress": _security_group,
    "RevokeSecurityGroupEgress": _security_group,
    "ModifySecurityGroupRules": _security_group,
    "CreateNetworkAclEntry": _network_acl,
    "ReplaceNetworkAclEntry": _network_acl,
    "ModifySnapshotAttribute": _snapshot_attribute,
    "ModifyImageAttribute": _image_attribute,
    "ModifyDBSnapshotAttribute": _db_snapshot_attribute,
    "ModifyDBClusterSnapshotAttribute": _db_snapshot_attribute,
    "SendCommand": _send_command,
    "StartSession": _start_session,
    "CreateAccessKey": _access_key,
    "UpdateAccessKey": _access_key,
    "DeleteAccessKey": _access_key,
    "ListAccessKeys": _list_keys,
    "GetObject": _s3_objects,
    "PutObject": _s3_objects,
    "DeleteObject": _s3_objects,
    "DeleteObjects": _s3_objects,
    "PutObjectAcl": _s3_objects,
    "BatchGetSecretValue": _batch_secrets,
    "GetParameter": _ssm_names,
    "GetParameters": _ssm_names,
    "AssumeRole": _assume_role,
    "AssumeRoleWithSAML": _assume_role,
    "AssumeRoleWithWebIdentity": _assume_role,
    "DetachPolicy": _org_detach,
    "RunInstances": _run_instances,
    "ConsoleLogin": _sign_in,
    "ExternalIdPDirectoryLogin": _sign_in,
    "PasswordUpdated": _sign_in,
    "CheckMfa": _sign_in,
}
for _name in ("AddPermission", "AddPermission20150331", "AddPermission20150331v2"):
    PER_API[_name] = _lambda_permission


def _generic(event: Event, params: dict[str, Any]) -> list[Resource]:
    """Well-known keys and, failing those, any scalar ``…Name``/``…Id``/``…Arn`` parameter."""
    out: list[Resource] = []
    bucket = params.get("bucketName")
    for key, value in params.items():
        if key in _NOT_RESOURCES or not isinstance(key, str):
            continue
        kind = KNOWN_KEYS.get(key)
        if kind is None:
            if key == "name" or key == "Name":
                kind = NAME_BY_SOURCE.get(event.event_source) or f"{_service(event)}_name"
            elif _GENERIC_SUFFIX.search(key) and (not isinstance(value, dict) or "content" in value):
                kind = f"{_service(event)}_{_snake(_GENERIC_SUFFIX.sub('', key)) or 'resource'}"
            else:
                continue
        if key == "groupName" and event.event_source == "iam.amazonaws.com":
            kind = "iam_group"
        for item in _items(value)[:MAX_RESOURCES]:
            if kind == "s3_bucket" or bucket is None:
                made = _resource(kind, item)
            else:
                made = _resource(kind, item, detail=f"in bucket {_text(bucket)}")
            if made:
                out.append(made)
    if not out:
        for value in params.values():  # one level of wrapping: {"DeleteFlowLogsRequest": {"FlowLogId": …}}
            if isinstance(value, dict) and value:
                out.extend(_generic(event, {k: v for k, v in value.items() if k != "tag"}))
                if out:
                    break
    return out


def _service(event: Event) -> str:
    match = _SERVICE.match(event.event_source)
    return match.group(1).replace("-", "_") if match else "aws"


def _principal(event: Event) -> list[Resource]:
    made = _resource("principal", event.principal, detail=f"acted on itself: {event.event_name}")
    return [made] if made else []


def _account(event: Event) -> list[Resource]:
    made = _resource("aws_account", event.account_id, account_id=event.account_id,
                     detail=f"account-wide: {event.event_source or 'aws'} {event.event_name}")
    return [made] if made else []


def resources_of(event: Event) -> list[Resource]:
    """What ``event`` touched, most specific first; never empty when the event names an account."""
    try:
        raw_params = event.raw.get("requestParameters")
        params = raw_params if isinstance(raw_params, dict) else {}
        reader = PER_API.get(event.event_name)
        found = reader(event, params) if reader is not None else []
        if not found:
            found = _generic(event, params)
        if not found:
            response = event.raw.get("responseElements")
            if isinstance(response, dict):
                found = _generic(event, {k: v for k, v in response.items() if k in KNOWN_KEYS
                                         or k.endswith(("Arn", "ARN"))})
        cloudtrail = _from_cloudtrail(event)
    except (TypeError, ValueError, AttributeError, KeyError):  # a record shaped in a way never seen
        found, cloudtrail = [], []
    merged: list[Resource] = []
    seen: set[tuple[str, str]] = set()
    by_id = {r["id"].lstrip("/"): r for r in found}
    by_id.update({r["arn"]: r for r in found if r.get("arn")})
    extra: list[Resource] = []
    for resource in cloudtrail:  # the same thing named by the request: keep one, with its ARN
        same = by_id.get(resource.get("arn", "")) or by_id.get(resource["id"].lstrip("/"))
        if same is None:
            extra.append(resource)
            continue
        for key in ("arn", "account_id"):
            if key in resource and key not in same:
                same[key] = resource[key]
    for resource in found + extra:
        key = (resource["type"], resource["id"])
        if key in seen:
            continue
        seen.add(key)
        merged.append(resource)
    if not merged:
        merged = _account(event) or _principal(event)
    return bounded(merged)


def make_resource(kind: str, ident: Any, *, arn: Any = None, account_id: Any = None,
                  detail: str = "") -> Resource | None:
    """One resource dict with bounded values, or ``None`` when ``ident`` is empty (for detectors)."""
    return _resource(kind, ident, arn=arn, account_id=account_id, detail=detail)


def bounded(resources: Iterable[Resource | None]) -> list[Resource]:
    """``resources`` without ``None``s and repeats (same type and id), cut to :data:`MAX_RESOURCES`.

    What a stateful detector uses to put together resources from several places (its state, the
    triggering event's :func:`resources_of`); one ``omitted`` entry says how many were left out.
    """
    merged: list[Resource] = []
    seen: set[tuple[str, str]] = set()
    omitted = 0
    for resource in resources:
        if resource is None:
            continue
        if resource.get("type") == "omitted":  # an earlier cut: count it again below
            head = resource.get("id", "").split(" ", 1)[0]
            omitted += int(head) if head.isdigit() else 0
            continue
        key = (resource["type"], resource["id"])
        if key in seen:
            continue
        seen.add(key)
        merged.append(resource)
    if len(merged) > MAX_RESOURCES:
        omitted += len(merged) - MAX_RESOURCES
        merged = merged[:MAX_RESOURCES]
    if omitted:
        merged.append({"type": "omitted", "id": f"{omitted} more resources"})
    return merged
