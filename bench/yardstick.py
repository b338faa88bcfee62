"""The Panther yardstick: how trailguard's default detectors do on Panther's labelled CloudTrail samples.

Panther's 143 CloudTrail rules ship single-event tests (``{rule_id, test_name, expected_alert,
event}``), written by other people for other code: a fair, outside measure of coverage and noise.
Each Panther rule is mapped to a behaviour (the pack's directory names) and to the *owners* that
answer for it - pack rules (``dir/stem``) or Python detectors.  Rules whose behaviour trailguard does
not cover stateless (thresholds, sequences, threat intelligence, organisation-specific allowlists,
change inventories) are listed with the reason and not counted.

Per covered sample the whole default detector set (``check(load_config(None))`` +
``build_detectors``: the Sigma pack plus the remaining Python detectors) sees the event:

* a positive is *flagged* when any detector alerts (what a SOC would see);
* a negative is *silent* when none of its Panther rule's owners alert.  Alerts of other rules on a
  negative are often right (Panther's "failed root login" negative for the root-login rule is a
  failed root login) and are reported separately as ``silent_all``.

Stateful detectors are rebuilt for every sample so that samples cannot feed each other's windows.
Misses are listed with the explanation from :data:`EXPLAINED`; ``docs/rule-pack.md`` carries the
table.  Run: ``.venv/bin/python bench/yardstick.py [--json out.json]`` (exit 1 below the targets).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from daemon.components import DEFAULT_RULE_PATHS, build_detectors, check
from daemon.config import REPO_ROOT, load_config
from detectors.alert import Alert
from detectors.base import Detector, DetectorContext
from detectors.event import Event, InvalidEvent

__all__ = ["COVERED", "EXPLAINED", "NOT_COVERED", "Report", "main", "run_yardstick"]

SAMPLES: Final = REPO_ROOT / "tests" / "data" / "rulepack" / "panther_cloudtrail_rule_tests.ndjson"
TARGET_FLAGGED: Final = 0.90
TARGET_SILENT: Final = 0.95


@dataclass(frozen=True, slots=True)
class Coverage:
    """The behaviour a Panther rule belongs to and the pack rules / detectors that answer for it."""

    behaviour: str
    owners: tuple[str, ...]


def _c(behaviour: str, *owners: str) -> Coverage:
    return Coverage(behaviour, owners)


LOG = "logging_tampering"
IAM = "iam_persistence"
PUB = "public_exposure"
DES = "destruction"
CRED = "credential_access"
EXE = "execution"
ORG = "organizations"
SIGN = "sign_in"
ROOT = "root_usage"
_SHARED = (f"{PUB}/snapshot_or_image_made_public", f"{PUB}/snapshot_or_image_shared_with_account")
_ROOT_API = (f"{ROOT}/root_activity", f"{ROOT}/root_read_only_activity", f"{ROOT}/root_api_call_refused")

#: Panther rule id → behaviour and owners.
COVERED: Final[dict[str, Coverage]] = {
    "AWS.Bedrock.DeleteModelInvocationLoggingConfiguration": _c(LOG, f"{LOG}/bedrock_invocation_logging_deleted"),
    "AWS.CloudTrail.DNSLogsDeleted": _c(LOG, f"{LOG}/dns_query_logging_deleted"),
    "AWS.CloudTrail.EventSelectorsDisabled": _c(LOG, "cloudtrail_tampering"),
    "AWS.CloudTrail.SecurityConfigurationChange": _c(LOG, f"{LOG}/cloudtrail_logging_stopped", "cloudtrail_tampering"),
    "AWS.CloudTrail.Stopped": _c(LOG, f"{LOG}/cloudtrail_logging_stopped"),
    "AWS.ConfigService.DisabledDeleted": _c(LOG, f"{LOG}/config_recording_stopped"),
    "AWS.Macie.Evasion": _c(LOG, f"{LOG}/macie_disabled"),
    "AWS.RDS.ActivityStreamStopped": _c(LOG, f"{LOG}/rds_activity_stream_stopped"),
    "AWS.S3.DisableBucketLogging": _c(LOG, f"{LOG}/s3_access_logging_disabled"),
    "AWS.SecurityHub.Finding.Evasion": _c(LOG, f"{LOG}/securityhub_findings_tampered"),
    "AWS.VPCFlow.LogsDeleted": _c(LOG, f"{LOG}/vpc_flow_logs_deleted"),
    "AWS.IAM.AttachAdminRolePolicy": _c(IAM, f"{IAM}/admin_policy_attached"),
    "AWS.IAM.AttachAdminUserPolicy": _c(IAM, f"{IAM}/admin_policy_attached"),
    "AWS.IAM.Backdoor.User.Keys": _c(IAM, f"{IAM}/access_key_created_for_another_user"),
    "AWS.IAM.BackdoorRole": _c(IAM, f"{IAM}/trust_policy_allows_anyone", f"{IAM}/trust_policy_allows_external_account"),
    "AWS.CloudTrail.LoginProfileCreatedOrModified": _c(IAM, f"{IAM}/login_profile_for_another_user"),
    "AWS.User.Login.Profile.Modified": _c(IAM, f"{IAM}/login_profile_for_another_user"),
    "AWS.Suspicious.SAML.Activity": _c(IAM, f"{IAM}/identity_provider_changed"),
    "AWS.CloudTrail.AMIModifiedForPublicAccess": _c(PUB, *_SHARED),
    "AWS.CloudTrail.SnapshotMadePublic": _c(PUB, *_SHARED),
    "AWS.RDS.SnapshotShared": _c(PUB, *_SHARED),
    "AWS.CloudTrail.ResourceMadePublic": _c(PUB, f"{PUB}/resource_policy_allows_everyone"),
    "AWS.CloudTrail.NetworkACLPermissiveEntry": _c(PUB, f"{PUB}/network_acl_allows_all_ingress"),
    "AWS.S3.DeletePublicAccessBlock": _c(PUB, f"{PUB}/s3_public_access_block_removed"),
    "AWS.RDS.InstanceMadePublic": _c(PUB, f"{PUB}/rds_instance_made_public"),
    "AWS.RDS.PublicRestore": _c(PUB, f"{PUB}/rds_instance_made_public"),
    "AWS.KMS.CustomerManagedKeyLoss": _c(DES, f"{DES}/kms_key_disabled_or_scheduled_for_deletion"),
    "AWS.CloudTrail.ShortLifecycle": _c(DES, f"{DES}/s3_lifecycle_short_expiration"),
    "AWS.S3.BucketDeleted": _c(DES, f"{DES}/s3_bucket_deleted"),
    "AWS.RDS.InstanceDeletion": _c(DES, f"{DES}/rds_deleted_without_final_snapshot",
                                   f"{DES}/rds_deleted_with_final_snapshot"),
    "AWS.RDS.SnapshotDeleted": _c(DES, f"{DES}/rds_snapshot_or_backup_deleted"),
    "AWS.RDS.AutomatedBackupDeleted": _c(DES, f"{DES}/rds_snapshot_or_backup_deleted"),
    "AWS.RDS.DeletionProtectionDisabled": _c(DES, f"{DES}/rds_deletion_protection_disabled"),
    "AWS.S3.SuspendVersioning": _c(DES, f"{DES}/s3_versioning_suspended"),
    "AWS.S3.DisableMfaDelete": _c(DES, f"{DES}/s3_versioning_suspended"),
    "AWS.S3.SecurityControlDisabling": _c(DES, f"{DES}/s3_versioning_suspended", f"{LOG}/s3_access_logging_disabled"),
    "AWS.S3.DeleteBucketEncryption": _c(DES, f"{DES}/s3_encryption_or_replication_removed"),
    "AWS.S3.DeleteBucketReplication": _c(DES, f"{DES}/s3_encryption_or_replication_removed"),
    "AWS.EC2.EBS.Encryption.Disabled": _c(DES, f"{DES}/ebs_default_encryption_disabled"),
    "AWS.EC2.ManyPasswordReadAttempts": _c(CRED, f"{CRED}/ec2_password_data_retrieved"),
    "AWS.SecretsManager.RetrieveSecrets": _c(CRED, f"{CRED}/secret_value_retrieved"),
    "AWS.SecretsManager.BatchRetrieveSecrets": _c(CRED, f"{CRED}/secrets_batch_retrieved",
                                                  f"{CRED}/secrets_batch_retrieved_catch_all"),
    "AWS.SecretsManager.BatchRetrieveSecretsCatchAll": _c(CRED, f"{CRED}/secrets_batch_retrieved_catch_all"),
    "AWS.SSM.DecryptSSMParams": _c(CRED, f"{CRED}/ssm_parameter_decrypted"),
    "AWS.EC2.DownloadInstanceUserData": _c(CRED, f"{CRED}/ec2_user_data_read"),
    "AWS.CloudTrail.IAMCompromisedKeyQuarantine": _c(CRED, f"{CRED}/aws_key_quarantine_policy_applied"),
    "AWS.IAM.AccessKeyCompromised": _c(CRED, f"{CRED}/aws_key_quarantine_policy_applied"),
    "AWS.Lambda.UpdateFunctionCode": _c(EXE, f"{EXE}/lambda_code_updated"),
    "AWS.Lambda.UpdateFunctionConfiguration": _c(EXE, f"{EXE}/lambda_layer_attached"),
    "AWS.Potential.Backdoor.Lambda": _c(EXE, f"{EXE}/lambda_permission_public"),
    "AWS.EC2.Startup.Script.Change": _c(EXE, f"{EXE}/ec2_user_data_modified"),
    "AWS.EC2.MultiInstanceConnect": _c(EXE, f"{EXE}/ec2_ssh_key_pushed"),
    "AWS.CloudTrail.AttemptToLeaveOrg": _c(ORG, f"{ORG}/leave_organization"),
    "AWS.Console.LoginWithoutMFA": _c(SIGN, f"{SIGN}/console_login_without_mfa",
                                      f"{SIGN}/root_console_login_without_mfa"),
    "AWS.Unsuccessful.MFA.attempt": _c(SIGN, f"{SIGN}/console_login_failed"),
    "AWS.Root.Activity": _c(ROOT, *_ROOT_API, f"{ROOT}/root_console_login"),
    "AWS.Console.RootLogin": _c(ROOT, f"{ROOT}/root_console_login"),
    "AWS.Console.RootLoginFailed": _c(ROOT, f"{ROOT}/root_sign_in_failed"),
    "AWS.CloudTrail.RootAccessKeyCreated": _c(ROOT, *_ROOT_API),
    "AWS.CloudTrail.RootPasswordChanged": _c(ROOT, *_ROOT_API),
}

_STATEFUL = "stateful: a threshold, window or first-seen baseline, not a single-event rule"
_INVENTORY = "change inventory: any create/modify of the resource type, not a threat signal by itself"
_ORG_SPECIFIC = "organisation-specific: needs the customer's allowlist (accounts, roles, regions, VPC endpoints)"
_INTEL = "needs threat intelligence or enrichment (IP reputation, geolocation, lookups)"
_DISCOVERY = "discovery/enumeration calls: noise one at a time, meaningful only as a burst (stateful)"
_NOT_YET = "behaviour not in the pack yet"

#: Panther rule id → why the pack does not cover it (not counted).
NOT_COVERED: Final[dict[str, str]] = {
    "AWS.Bedrock.GuardrailUpdateDelete": _NOT_YET,
    "AWS.CloudTrail.Account.Discovery": _DISCOVERY,
    "AWS.CloudTrail.CodebuildProjectMadePublic": _NOT_YET,
    "AWS.CloudTrail.Created": _INVENTORY,
    "AWS.CloudTrail.EnableRegion": _NOT_YET,
    "AWS.CloudTrail.IAMAnythingChanged": _INVENTORY,
    "AWS.CloudTrail.IAMAssumeRoleBlacklistIgnored": _ORG_SPECIFIC,
    "AWS.CloudTrail.IAMEntityCreatedWithoutCloudFormation": _ORG_SPECIFIC,
    "AWS.CloudTrail.IMDSCredentialExfiltration": _STATEFUL,
    "AWS.CloudTrail.Password.Policy.Discovery": _DISCOVERY,
    "AWS.CloudTrail.PasswordSpraying": _STATEFUL,
    "AWS.CloudTrail.SES.CheckIdentityVerifications": _DISCOVERY,
    "AWS.CloudTrail.SES.CheckSESSendingEnabled": _DISCOVERY,
    "AWS.CloudTrail.SES.CheckSendQuota": _DISCOVERY,
    "AWS.CloudTrail.SES.ListIdentities": _DISCOVERY,
    "AWS.CloudTrail.UnauthorizedAPICall": _STATEFUL,
    "AWS.CloudTrail.UserAccessKeyAuth": _ORG_SPECIFIC,
    "AWS.CloudTrail.VPCE.AccessDenied": _ORG_SPECIFIC,
    "AWS.CloudTrail.VPCE.ExternalPrincipal": _ORG_SPECIFIC,
    "AWS.CloudTrail.VPCE.S3ExternalIP": _ORG_SPECIFIC,
    "AWS.CloudTrail.VPCE.SensitiveAPICalls": _ORG_SPECIFIC,
    "AWS.ConfigService.Created": _INVENTORY,
    "AWS.Console.GetSigninToken.Abuse": _NOT_YET,
    "AWS.Console.LoginWithoutSAML": _ORG_SPECIFIC,
    "AWS.Console.Sign-In": _INVENTORY,
    "AWS.EC2.GatewayModified": _INVENTORY,
    "AWS.EC2.LaunchUnusualEC2Instances": _ORG_SPECIFIC,
    "AWS.EC2.ManualSecurityGroupChange": _ORG_SPECIFIC,
    "AWS.EC2.Monitoring": _INVENTORY,
    "AWS.EC2.NetworkACLModified": _INVENTORY,
    "AWS.EC2.RouteTableModified": _INVENTORY,
    "AWS.EC2.SecurityGroupModified": _INVENTORY,
    "AWS.EC2.StopInstances": _INVENTORY,
    "AWS.EC2.Traffic.Mirroring": _NOT_YET,
    "AWS.EC2.VPCModified": _INVENTORY,
    "AWS.EC2.Vulnerable.XZ.Image.Launched": _INTEL,
    "AWS.ECR.CRUD": _INVENTORY,
    "AWS.ECR.EVENTS": _INVENTORY,
    "AWS.IAM.CreateRole": _INVENTORY,
    "AWS.IAM.CreateUser": _INVENTORY,
    "AWS.IAM.CredentialsUpdated": _INVENTORY,
    "AWS.IAM.Group.Read.Only.Events": _DISCOVERY,
    "AWS.IAM.PolicyModified": _INVENTORY,
    "AWS.IAMUser.ReconAccessDenied": _STATEFUL,
    "AWS.IPSet.Modified": "the samples carry no eventName or eventSource (Panther's test feeds a data model, "
                          "not a CloudTrail record); the pack's guardduty_findings_suppressed rule covers it",
    "AWS.LAMBDA.CRUD": _INVENTORY,
    "AWS.Modify.Cloud.Compute.Infrastructure": _INVENTORY,
    "AWS.RDS.ClusterFailover": _INVENTORY,
    "AWS.RDS.IAMRoleAdded": _NOT_YET,
    "AWS.RDS.InstanceRebooted": _INVENTORY,
    "AWS.RDS.LogFileDownloaded": _NOT_YET,
    "AWS.RDS.ManualSnapshotCreated": _INVENTORY,
    "AWS.RDS.MasterPasswordUpdated": _NOT_YET,
    "AWS.RDS.SecurityGroupIngressAuthorized": _NOT_YET,
    "AWS.RDS.SnapshotCopiedCrossRegion": _NOT_YET,
    "AWS.RDS.SnapshotEnumeration": _DISCOVERY,
    "AWS.RDS.SnapshotExport": _NOT_YET,
    "AWS.S3.BucketPolicyModified": _INVENTORY,
    "AWS.S3.CopyObject.CrossAccount.Encryption.KMS": _ORG_SPECIFIC,
    "AWS.S3.CopyObjectToExternalAccountBucket": _ORG_SPECIFIC,
    "AWS.S3.CopyObjectWithClientSideEncryption": _NOT_YET,
    "AWS.S3.DeleteObject": _STATEFUL,
    "AWS.S3.DeleteObjects": _STATEFUL,
    "AWS.S3.RansomwareNoteUpload": _NOT_YET,
    "AWS.SSM.DistributedCommand": _STATEFUL,
    "AWS.STS.GetCallerIdentity.TruffleHog": _NOT_YET,
    "AWS.STS.GetSessionToken.Misuse": _STATEFUL,
    "AWS.SecretsManager.RetrieveSecretsMultiRegion": _STATEFUL,
    "AWS.Software.Discovery": _DISCOVERY,
    "AWS.UnusedRegion": _ORG_SPECIFIC,
    "AWS.WAF.Disassociation": _NOT_YET,
    "Retrieve.SSO.access.token": _INVENTORY,
    "Role.Assumed.by.AWS.Service": _INVENTORY,
    "Role.Assumed.by.User": _INVENTORY,
    "Sign-in.with.AWS.CLI.prompt": _INVENTORY,
    "Standard.BruteForceByIP": _STATEFUL,
    "Standard.BruteForceByUser": _STATEFUL,
    "Standard.GreyNoiseV3.MaliciousIP": _INTEL,
    "Standard.ImpossibleTravel.Login": _STATEFUL,
    "Standard.NewAWSAccountCreated": _INVENTORY,
    "Standard.NewUserAccountCreated": _STATEFUL,
    "Standard.OTX.MaliciousIndicator": _INTEL,
    "Standard.SignInFromRogueState": _INTEL,
}

#: (Panther rule id, test name) → why trailguard differs from the label (kept in docs/rule-pack.md).
EXPLAINED: Final[dict[tuple[str, str], str]] = {
    ("AWS.Console.LoginWithoutMFA", "No MFA Login - New User"): (
        "identical record to the IAM-user positive; Panther silences it through a mocked 'user created "
        "minutes ago' lookup a stateless rule cannot make"),
    ("AWS.CloudTrail.RootAccessKeyCreated", "Root Created Access Key For User"): (
        "Panther wants only root's own key; root creating a key for a user is still root activity "
        "(and also fires access_key_created_for_another_user)"),
    ("AWS.Root.Activity", "Root Read-Only Enumeration"): (
        "reported on purpose by root_read_only_activity (medium): a root key enumerating the account is how "
        "a thief starts; disable that one rule to match Panther"),
    ("AWS.Lambda.UpdateFunctionConfiguration", "AssumedRole Updates Lambda Configuration with Layers (Normal CI/CD)"): (
        "the layer rule keeps automation roles in scope (a stolen pipeline or instance role adding a layer is "
        "the attack); list deployment roles in the sigma exceptions"),
    ("AWS.RDS.PublicRestore", "Not-Restore-RDS-Request"): (
        "a CreateDBInstance whose response says publiclyAccessible=true: a new public database is what "
        "rds_instance_made_public reports; Panther's rule only looks at restores"),
    ("AWS.Potential.Backdoor.Lambda", "Lambda Add Permission Event"): (
        "the sample has no principal; the pack only flags AddPermission to '*' (any AddPermission would "
        "alert on every S3/SNS/API Gateway trigger)"),
    ("AWS.Potential.Backdoor.Lambda", "Lambda Add Permission Event v2"): (
        "the sample has no principal; the pack only flags AddPermission to '*' (any AddPermission would "
        "alert on every S3/SNS/API Gateway trigger)"),
    ("AWS.CloudTrail.ResourceMadePublic", "Mixed Conditions Some Restrictive (Should Alert)"): (
        "one statement restricted by aws:PrincipalOrgID, a second wildcard statement unrestricted: Sigma "
        "cannot pair Principal and Condition per statement, so any condition silences the rule"),
}


@dataclass(slots=True)
class SampleResult:
    """One labelled sample and what trailguard did with it."""

    rule_id: str
    test_name: str
    expected: bool
    behaviour: str
    alerted_by: list[str]
    owners: tuple[str, ...]
    invalid: str | None = None

    @property
    def flagged(self) -> bool:
        return bool(self.alerted_by)

    @property
    def flagged_by_owner(self) -> bool:
        return any(name in self.owners for name in self.alerted_by)

    @property
    def correct(self) -> bool:
        return self.flagged if self.expected else not self.flagged_by_owner


@dataclass(slots=True)
class BehaviourScore:
    """Counts for one behaviour (or the total)."""

    positives: int = 0
    flagged: int = 0
    negatives: int = 0
    silent: int = 0
    silent_all: int = 0

    def add(self, result: SampleResult) -> None:
        if result.expected:
            self.positives += 1
            self.flagged += result.flagged
        else:
            self.negatives += 1
            self.silent += not result.flagged_by_owner
            self.silent_all += not result.flagged

    @property
    def flagged_share(self) -> float:
        return self.flagged / self.positives if self.positives else 1.0

    @property
    def silent_share(self) -> float:
        return self.silent / self.negatives if self.negatives else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"positives": self.positives, "flagged": self.flagged, "flagged_share": round(self.flagged_share, 4),
                "negatives": self.negatives, "silent": self.silent, "silent_share": round(self.silent_share, 4),
                "silent_all": self.silent_all}


@dataclass(slots=True)
class Report:
    """The yardstick's result."""

    results: list[SampleResult]
    behaviours: dict[str, BehaviourScore]
    total: BehaviourScore
    not_covered: dict[str, tuple[str, int]]
    detectors: list[str]
    unmapped: list[str] = field(default_factory=list)

    @property
    def misses(self) -> list[SampleResult]:
        return [result for result in self.results if not result.correct]

    @property
    def meets_targets(self) -> bool:
        return self.total.flagged_share >= TARGET_FLAGGED and self.total.silent_share >= TARGET_SILENT

    def to_dict(self) -> dict[str, Any]:
        return {
            "detectors": self.detectors,
            "targets": {"flagged_share": TARGET_FLAGGED, "silent_share": TARGET_SILENT},
            "total": self.total.to_dict(),
            "meets_targets": self.meets_targets,
            "behaviours": {name: score.to_dict() for name, score in sorted(self.behaviours.items())},
            "misses": [{"rule_id": m.rule_id, "test_name": m.test_name, "expected_alert": m.expected,
                        "alerted_by": m.alerted_by, "invalid": m.invalid,
                        "explanation": EXPLAINED.get((m.rule_id, m.test_name), "")} for m in self.misses],
            "not_covered": {rule: {"reason": reason, "samples": count}
                            for rule, (reason, count) in sorted(self.not_covered.items())},
            "unmapped": self.unmapped,
        }


_PANTHER_TIME: Final = re.compile(r"^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)")


def cloudtrail_time(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Panther sample with CloudTrail's ``eventTime`` format (Panther writes its own)."""
    raw = dict(raw)
    for candidate in (raw.get("eventTime"), raw.get("p_event_time")):
        match = _PANTHER_TIME.match(candidate) if isinstance(candidate, str) else None
        if match:
            raw["eventTime"] = f"{match[1]}T{match[2]}Z"
            return raw
    raw["eventTime"] = "2019-01-01T00:00:00Z"
    return raw


def load_samples(path: Path = SAMPLES) -> list[dict[str, Any]]:
    """The labelled samples, one JSON object a line."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class _Detectors:
    """The default detector set: the Sigma pack built once (stateless), the rest rebuilt per sample."""

    def __init__(self) -> None:
        built = check(load_config(None))
        self._factories = [(cls, model) for cls, model in built.detectors if cls.name != "sigma"]
        self._sigma = [detector for detector in build_detectors(built, DetectorContext()) if detector.name == "sigma"]
        self.names = [cls.name for cls, _ in built.detectors]
        root = Path(DEFAULT_RULE_PATHS[0])
        self._rule_names: dict[str, str] = {}
        for detector in self._sigma:
            for rule in detector.rules.rules:  # type: ignore[attr-defined]
                path = Path(rule.path)
                try:
                    name = str(path.relative_to(root).with_suffix(""))
                except ValueError:
                    name = path.stem
                self._rule_names[rule.rule_id] = name

    def fresh(self) -> list[Detector]:
        return [*self._sigma, *(cls(model, DetectorContext()) for cls, model in self._factories)]

    def name_of(self, alert: Alert) -> str:
        if alert.detector == "sigma" and alert.rule_id:
            return self._rule_names.get(alert.rule_id, alert.rule_id)
        return alert.detector


def _alerts(detectors: Iterable[Detector], event: Event) -> list[Alert]:
    return [alert for detector in detectors for alert in (detector.on_event(event) or ())]


def run_yardstick(samples: Sequence[dict[str, Any]] | None = None) -> Report:
    """Run every covered sample through the default detectors and score it."""
    samples = load_samples() if samples is None else samples
    detectors = _Detectors()
    results: list[SampleResult] = []
    behaviours: dict[str, BehaviourScore] = {}
    total = BehaviourScore()
    not_covered: dict[str, tuple[str, int]] = {}
    unmapped: set[str] = set()
    for sample in samples:
        rule_id = sample["rule_id"]
        coverage = COVERED.get(rule_id)
        if coverage is None:
            if rule_id in NOT_COVERED:
                reason, count = not_covered.get(rule_id, (NOT_COVERED[rule_id], 0))
                not_covered[rule_id] = (reason, count + 1)
            else:
                unmapped.add(rule_id)
            continue
        result = SampleResult(rule_id, sample["test_name"], bool(sample["expected_alert"]), coverage.behaviour,
                              [], coverage.owners)
        try:
            event = Event(cloudtrail_time(sample["event"]), "panther")
        except InvalidEvent as error:
            result.invalid = str(error)
        else:
            result.alerted_by = sorted({detectors.name_of(alert) for alert in _alerts(detectors.fresh(), event)})
        results.append(result)
        behaviours.setdefault(coverage.behaviour, BehaviourScore()).add(result)
        total.add(result)
    return Report(results, behaviours, total, not_covered, detectors.names, sorted(unmapped))


def _percent(share: float) -> str:
    return f"{100 * share:5.1f}%"


def format_report(report: Report) -> str:
    """A plain-text table for the terminal."""
    lines = [f"detectors: {', '.join(report.detectors)}",
             f"{'behaviour':<20} {'positives flagged':>22} {'negatives silent':>22} {'silent (all)':>14}"]
    rows = [*sorted(report.behaviours.items()), ("TOTAL", report.total)]
    for name, score in rows:
        lines.append(f"{name:<20} {score.flagged:>4}/{score.positives:<4} {_percent(score.flagged_share):>12} "
                     f"{score.silent:>4}/{score.negatives:<4} {_percent(score.silent_share):>12} "
                     f"{score.silent_all:>6}/{score.negatives:<4}")
    lines.append(f"targets: flagged >= {_percent(TARGET_FLAGGED).strip()}, silent >= {_percent(TARGET_SILENT).strip()}"
                 f" -> {'met' if report.meets_targets else 'NOT MET'}")
    lines.append(f"not covered: {len(report.not_covered)} Panther rules, "
                 f"{sum(count for _, count in report.not_covered.values())} samples")
    if report.unmapped:
        lines.append(f"UNMAPPED Panther rules (add them to COVERED or NOT_COVERED): {', '.join(report.unmapped)}")
    lines.append("misses:")
    for miss in report.misses:
        kind = "positive not flagged" if miss.expected else f"negative flagged by {', '.join(miss.alerted_by)}"
        why = EXPLAINED.get((miss.rule_id, miss.test_name), "UNEXPLAINED")
        lines.append(f"  {miss.rule_id} / {miss.test_name}: {kind} - {why}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``bench/yardstick.py [--json out.json] [--samples file]``; exit 1 below the targets."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--samples", default=str(SAMPLES), help="Panther samples (JSON lines)")
    args = parser.parse_args(argv)
    report = run_yardstick(load_samples(Path(args.samples)))
    print(format_report(report))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
    return 0 if report.meets_targets and not report.unmapped else 1


if __name__ == "__main__":
    sys.exit(main())
