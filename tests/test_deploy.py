"""The production artefacts stay consistent with the code: Dockerfile, Kubernetes manifests, IAM
policy, Grafana dashboard and Prometheus rules.

kubectl, helm and promtool are not available here, so each artefact is checked the way the tool
would see it: the Dockerfile is parsed (its real build is tests/test_container.py); the manifests
are parsed and every cross-reference is resolved; the dashboard's and rules' PromQL is checked name
by name against a running daemon.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from daemon.config import parse_duration
from daemon.metrics import Metrics
from detectors.event import parse_event_time
from tests.conftest import ROOT, DaemonProcess, free_port, http_get, run_cli, wait_for

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = DEPLOY / "grafana" / "trailguard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
POLICY = DEPLOY / "iam" / "trailguard-policy.json"
SAMPLE = Path(__file__).parent / "data" / "deploy" / (
    "218007301253_CloudTrail_us-east-1_20230710T1220Z_8sBQhbu5YO94UV8p.json")

#: PromQL identifiers that name trailguard's (or the process collector's) metrics.
METRIC_NAME = re.compile(r"\b(?:trailguard|process)_[a-z0-9_]+\b")
#: Metrics Prometheus itself synthesises for every target.
PROMETHEUS_BUILTINS = frozenset({"up"})
SECRET_WORDS = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
AWS_ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
SEVERITIES = frozenset({"info", "low", "medium", "warning", "high", "critical"})


# -- Dockerfile --------------------------------------------------------------------------------------
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each a list of instructions starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def copy_sources(stage: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(source, destination) of every plain ``COPY`` (from the build context) in ``stage``."""
    pairs = []
    for keyword, args in stage:
        if keyword != "COPY":
            continue
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert "--from" not in args, "the runtime stage takes the wheels through a bind mount only"
        pairs.extend((source, words[-1]) for source in words[:-1])
    return pairs


def test_dockerfile_is_multi_stage_non_root_and_production_ready() -> None:
    build, runtime = stages()
    assert re.match(r"\$\{PYTHON_IMAGE\} AS build$", build[0][1])
    assert "python:3.11-slim" in DOCKERFILE.read_text()
    assert any(keyword == "RUN" and "pip wheel . -w /wheels" in args for keyword, args in build)
    runtime_keywords = dict(runtime)  # the last of each instruction wins, as in Docker
    install = next(args for keyword, args in runtime if keyword == "RUN" and "pip install" in args)
    assert "from=build" in install and "--no-index" in install and "--find-links=/wheels" in install

    user = runtime_keywords["USER"].split(":")
    assert user[0].isdigit() and int(user[0]) != 0 and user[0] != "root", "run as a numeric non-root UID"
    assert all(part.isdigit() and int(part) != 0 for part in user)
    assert runtime_keywords["STOPSIGNAL"] == "SIGTERM"
    assert runtime_keywords["VOLUME"] == "/var/lib/trailguard"
    assert runtime_keywords["EXPOSE"] == "9108"
    assert runtime_keywords["ENTRYPOINT"] == '["trailguard"]'
    cmd = orjson.loads(runtime_keywords["CMD"])
    assert cmd[:2] == ["run", "--config"]
    healthcheck = runtime_keywords["HEALTHCHECK"]
    assert "/healthz" in healthcheck and "urllib.request" in healthcheck and "curl" not in healthcheck
    assert "9108" in healthcheck
    env = " ".join(args for keyword, args in runtime if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    check = [args for keyword, args in runtime if keyword == "RUN" and "check-config" in args]
    assert check == [f"trailguard check-config {cmd[2]}"], "the bundled config is validated at build time"
    # check-config runs as the final user, after the config is copied in
    order = [(keyword, "check-config" in args) for keyword, args in runtime]
    assert order.index(("USER", False)) < order.index(("RUN", True))
    assert not [keyword for keyword, _ in order if keyword == "COPY"], "config and samples come inside the wheel"
    assert [keyword for keyword, _ in order[-2:]] == ["ENTRYPOINT", "CMD"]

    labels = " ".join(args for keyword, args in runtime if keyword == "LABEL")
    for key in ("version", "source", "title", "licenses", "description", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert any(keyword == "ARG" and args.startswith("VERSION=") for keyword, args in runtime)
    assert "IP Geolocation by DB-IP" in labels and "CC BY 4.0" in labels


def test_dockerfile_bakes_in_no_secret() -> None:
    text = DOCKERFILE.read_text()
    assert not AWS_ACCESS_KEY.search(text)
    for stage in stages():
        for keyword, args in stage:
            if keyword not in ("ENV", "ARG"):
                continue
            for assignment in shlex.split(args):
                name = assignment.partition("=")[0]
                assert not SECRET_WORDS.search(name), f"{keyword} {name}: secrets come from the runtime environment"


def test_dockerfile_copies_exist_and_are_not_dockerignored() -> None:
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    build, runtime = stages()
    copied = copy_sources(build) + copy_sources(runtime)
    assert {source.rstrip("/") for source, _ in copied} >= {"pyproject.toml", "setup.py", "README.md", "daemon",
                                                            "detectors", "config", "samples"}
    for source, _ in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert source.rstrip("/") not in ignored, f"COPY {source}: excluded by .dockerignore"
    assert (ROOT / "config" / "trailguard.yaml").is_file()
    assert {".git", ".venv", "tests", ".env"} <= ignored


# The image itself is built and smoke-tested with buildah in tests/test_container.py; the installed
# wheel (packages, entry point, bundled data) is exercised from a fresh venv in tests/test_install.py.


# -- Kubernetes ----------------------------------------------------------------------------------------
def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def objects(kustomization: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every object the kustomization applies, by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in load_yaml_documents(K8S / resource):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{resource}: incomplete object"
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def generated_configmaps(kustomization: dict[str, Any]) -> dict[str, dict[str, str]]:
    """configMapGenerator entries as name → {key: content}."""
    maps: dict[str, dict[str, str]] = {}
    for generator in kustomization["configMapGenerator"]:
        data: dict[str, str] = {}
        for spec in generator.get("files", []):
            key, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
            data[key] = (K8S / path).read_text()
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        maps[generator["name"]] = data
    return maps


def example_secret() -> dict[str, Any]:
    (secret,) = load_yaml_documents(K8S / "examples" / "trailguard-sinks.secret.yaml")
    return secret


def the_workload(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (workload,) = [o for (kind, _), o in objects.items() if kind in ("StatefulSet", "Deployment")]
    return workload


def the_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def k8s_config(kustomization: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(generated_configmaps(kustomization)["trailguard-config"]["trailguard.yaml"])


def test_every_file_parses_and_every_resource_is_listed(objects: dict, kustomization: dict) -> None:
    listed = {K8S / r for r in kustomization["resources"]}
    for path in K8S.rglob("*.yaml"):
        docs = load_yaml_documents(path)
        assert docs, f"{path} is empty"
        if path.parent == K8S and path.name != "kustomization.yaml":
            assert path in listed, f"{path.name} is not in kustomization.yaml resources"
    kinds = {kind for kind, _ in objects}
    assert {"Namespace", "ServiceAccount", "StatefulSet", "Service", "ServiceMonitor",
            "PodDisruptionBudget"} <= kinds
    assert ("Secret", "trailguard-sinks") not in objects, "secret values never come from the repository"
    assert kustomization["namespace"] == objects[("Namespace", kustomization["namespace"])]["metadata"]["name"]


def test_workload_references_resolve(objects: dict, kustomization: dict) -> None:
    workload = the_workload(objects)
    assert workload["kind"] == "StatefulSet"
    spec = workload["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert ("ServiceAccount", pod["serviceAccountName"]) in objects

    service = objects[("Service", spec["serviceName"])]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    container = the_container(workload)
    (container_port,) = container["ports"]
    assert service_port["name"] == "metrics" and service_port["targetPort"] == container_port["name"]
    assert service_port["port"] == container_port["containerPort"] == 9108

    (monitor,) = [o for (kind, _), o in objects.items() if kind == "ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [service_port["name"]]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"

    (budget,) = [o for (kind, _), o in objects.items() if kind == "PodDisruptionBudget"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    generated = generated_configmaps(kustomization)
    for volume in pod["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] in generated, volume
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] in generated

    secret = example_secret()
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs, "sink credentials come from a Secret"
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    assert all(value == "" for value in secret["stringData"].values()), "the example Secret holds no value"


def test_probes_ports_and_config_agree(objects: dict, kustomization: dict) -> None:
    workload = the_workload(objects)
    container = the_container(workload)
    port = container["ports"][0]
    config = k8s_config(kustomization)
    assert config["metrics"]["port"] == port["containerPort"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}

    pod = workload["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert parse_duration(config["shutdown"]["deadline"]) < pod["terminationGracePeriodSeconds"]

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    args = container["args"]
    config_path = Path(args[args.index("--config") + 1])
    config_volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "trailguard-config")
    assert Path(mounts[config_volume["name"]]["mountPath"]) == config_path.parent
    assert config_path.name in generated_configmaps(kustomization)["trailguard-config"]
    (claim,) = workload["spec"]["volumeClaimTemplates"]
    state_mount = Path(mounts[claim["metadata"]["name"]]["mountPath"])
    assert state_mount == Path("/var/lib/trailguard"), "the image's VOLUME"
    assert Path(config["state"]["path"]).is_relative_to(state_mount)
    assert Path(config["pipeline"]["dead_letter_path"]).is_relative_to(state_mount)
    rules_volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "trailguard-rules")
    assert mounts[rules_volume["name"]]["mountPath"] in config["detectors"]["sigma"]["paths"]


def test_pod_is_locked_down_and_sized(objects: dict) -> None:
    workload = the_workload(objects)
    pod = workload["spec"]["template"]["spec"]
    container = the_container(workload)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["runAsNonRoot"] is True
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"},
                                      "limits": {"cpu": "1", "memory": "1Gi"}}
    (account,) = [o for (kind, _), o in objects.items() if kind == "ServiceAccount"]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/trailguard", "/tmp"}


def test_configmap_config_passes_check_config(kustomization: dict, tmp_path: Path) -> None:
    """Container paths are rewritten to where the same files are in this checkout.

    ``/opt/trailguard`` (the image's install prefix) is the repository root; ``/etc/trailguard/rules.d``
    is ``deploy/kubernetes/rules`` (the rules ConfigMap's source); ``/var/lib/trailguard`` (the
    volume) is a temporary directory.  Secrets get placeholder values, non-secret variables come
    from the ``trailguard-env`` generator.
    """
    generated = generated_configmaps(kustomization)
    text = generated["trailguard-config"]["trailguard.yaml"]
    volume = tmp_path / "volume"
    volume.mkdir()
    for container_path, local in (("/var/lib/trailguard", volume), ("/opt/trailguard", ROOT),
                                  ("/etc/trailguard/rules.d", K8S / "rules")):
        assert container_path in text
        text = text.replace(container_path, str(local))
    config = tmp_path / "trailguard.yaml"
    config.write_text(text)
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", orjson.dumps(yaml.safe_load(text)).decode()))
    provided = dict(generated["trailguard-env"])
    secret_env = {e["name"] for e in the_container(the_workload_from(kustomization))["env"]}
    assert used <= provided.keys() | secret_env, "every ${VAR} in the config is set in the pod"
    env = {**provided, **{name: f"https://example.invalid/{name.lower()}" for name in secret_env}}
    result = run_cli("check-config", str(config), env=env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    out = result.stdout.decode()
    assert "1 source(s), 3 sink(s)" in out and "cloudtrail_silence" in out and "sigma" in out


def the_workload_from(kustomization: dict[str, Any]) -> dict[str, Any]:
    docs = [d for r in kustomization["resources"] for d in load_yaml_documents(K8S / r)]
    (workload,) = [d for d in docs if d["kind"] == "StatefulSet"]
    return workload


def test_site_rules_load_without_problems(kustomization: dict) -> None:
    from detectors.sigma.loader import load_rules

    rules_generator = next(g for g in kustomization["configMapGenerator"] if g["name"] == "trailguard-rules")
    files = [K8S / spec for spec in rules_generator["files"]]
    assert {p.name for p in (K8S / "rules").iterdir()} == {p.name for p in files}
    ruleset, issues = load_rules(files)
    assert issues == []
    assert len(ruleset) == len(files)


# -- IAM -----------------------------------------------------------------------------------------------
def test_iam_policy_is_least_privilege() -> None:
    policy = orjson.loads(POLICY.read_bytes())
    assert policy["Version"] == "2012-10-17"
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert len(statements) == len(policy["Statement"])

    def actions(statement: dict[str, Any]) -> set[str]:
        value = statement["Action"]
        return {value} if isinstance(value, str) else set(value)

    for statement in statements.values():
        assert statement["Effect"] == "Allow"
        assert not any("*" in action for action in actions(statement)), "no wildcard actions"
        assert statement["Resource"] != "*" and isinstance(statement["Resource"], str)
    required = {sid: s for sid, s in statements.items() if not sid.startswith("Optional")}
    granted = set().union(*(actions(s) for s in required.values()))
    assert granted == {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                       "sqs:GetQueueAttributes", "s3:GetObject", "kms:Decrypt"}
    s3 = next(s for s in required.values() if actions(s) == {"s3:GetObject"})
    assert s3["Resource"].startswith("arn:aws:s3:::") and s3["Resource"].endswith("/AWSLogs/*")
    for statement in statements.values():
        if "kms:Decrypt" in actions(statement):
            via = statement["Condition"]["StringEquals"]["kms:ViaService"]
            assert re.fullmatch(r"(s3|sqs)\.[a-z0-9-]+\.amazonaws\.com", via)
    optional = set().union(*(actions(s) for sid, s in statements.items() if sid.startswith("Optional")))
    assert {"sns:Publish", "sqs:SendMessage"} <= optional


def test_no_aws_keys_anywhere_in_deploy() -> None:
    for path in [*DEPLOY.rglob("*"), DOCKERFILE, ROOT / ".dockerignore", ROOT / "docs" / "production.md"]:
        if path.is_file():
            assert not AWS_ACCESS_KEY.search(path.read_text()), path


# -- Grafana and Prometheus: structure -----------------------------------------------------------------
def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in orjson.loads(DASHBOARD.read_bytes())["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def used_metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


def test_dashboard_structure() -> None:
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    assert dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert balanced(target["expr"]), target["expr"]
    titles = " ".join(p["title"].lower() for p in dashboard_panels())
    for topic in ("by source", "invalid", "lag percentiles", "watermark", "by detector", "by severity",
                  "suppressed", "spool", "latency", "state keys", "evictions", "kafka", "sqs", "checkpoint",
                  "last-event age", "cpu", "memory"):
        assert topic in titles, topic


def test_dashboard_covers_every_trailguard_metric() -> None:
    # every trailguard family, plus the process CPU and memory the dashboard promises
    families = {m.name for m in Metrics().registry.collect() if m.name.startswith("trailguard_")}
    families |= {"process_cpu_seconds", "process_resident_memory_bytes"}
    used = {strip_sample_suffix(name) for name in used_metric_names(dashboard_exprs())}
    missing = {name for name in families if name not in used and f"{name}_total" not in used}
    assert not missing


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in re.sub(r'"[^"]*"', '""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def strip_sample_suffix(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def test_alert_rules_structure() -> None:
    data = yaml.safe_load(ALERTS.read_text())
    assert set(data) == {"groups"}
    names: list[str] = []
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
            names.append(rule["alert"])
            assert re.fullmatch(r"Trailguard[A-Za-z]+", rule["alert"])
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in SEVERITIES
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert balanced(rule["expr"]), rule["alert"]
            assert 'job="trailguard"' in rule["expr"]
    assert len(names) == len(set(names))
    for expected in ("TrailguardDown", "TrailguardPipelineStalled", "TrailguardEventLagHigh", "TrailguardSinkFailing",
                     "TrailguardSinkSpoolGrowing", "TrailguardStateEvictionsHigh", "TrailguardInvalidInputHigh",
                     "TrailguardSourceDown", "TrailguardKafkaLagGrowing", "TrailguardCloudTrailSilence"):
        assert expected in names
    silence = next(r for r in alert_rules() if r["alert"] == "TrailguardCloudTrailSilence")
    assert "trailguard_account_last_event_timestamp_seconds" in silence["expr"] and "86400" in silence["expr"]


# -- Grafana and Prometheus: every name against a running daemon -------------------------------------
@pytest.fixture(scope="module")
def running_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A real ``trailguard run`` following a directory with one CloudTrail file, checkpointing."""
    work = tmp_path_factory.mktemp("daemon")
    trail = work / "trail"
    trail.mkdir()
    shutil.copy(SAMPLE, trail / SAMPLE.name)
    port = free_port()
    config = work / "trailguard.yaml"
    config.write_text(f"""
sources:
  - type: file
    paths: ["{trail}"]
    follow: true
    poll_interval: 0.2
sinks:
  - type: file
    path: {work}/alerts.jsonl
detectors:
  cloudtrail_silence:
    min_events: 1
state:
  path: {work}/state
  checkpoint_interval: 0.5
metrics:
  host: 127.0.0.1
  port: {port}
logging:
  format: json
""")
    process = DaemonProcess(config, work, port)
    try:
        process.wait_ready(timeout=60)
        wait_for(lambda: (process.metric("trailguard_events_processed_total") or 0) >= 6, 30,
                 what="the sample file to be processed")
        wait_for(lambda: process.metric("trailguard_state_keys", {"detector": "cloudtrail_silence"}) == 1, 30,
                 what="a checkpoint publishing the silence detector's state")
        yield process
    finally:
        assert process.stop() == 0, process.stderr_path.read_text()[-3000:]


def exposed_names(daemon: DaemonProcess) -> set[str]:
    """Family names a scrape shows (``# HELP``/``# TYPE``: present even with no labelled child yet)."""
    status, body = http_get(daemon.url("/metrics"))
    assert status == 200
    names = set()
    histograms = set()
    for line in body.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            names.add(line.split()[2])
            if line.startswith("# TYPE ") and line.split()[3] == "histogram":
                histograms.add(line.split()[2])
    return names | {f"{h}_{suffix}" for h in histograms for suffix in ("bucket", "sum", "count")}


def process_collector_names() -> set[str]:
    """What prometheus-client's default process collector exports (CPU, RSS, fds, start time)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return {sample.name for family in registry.collect() for sample in family.samples}


def test_dashboard_metric_names_exist_in_a_running_daemon(running_daemon: DaemonProcess) -> None:
    exposed = exposed_names(running_daemon)
    used = used_metric_names(dashboard_exprs())
    trailguard = {name for name in used if name.startswith("trailguard_")}
    assert trailguard and not trailguard - exposed, sorted(trailguard - exposed)
    process = used - trailguard
    assert process == {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    # The daemon's own registry may not carry the process collector (see docs/production.md);
    # the names must then be exactly what that collector exports once registered.
    assert not process - (exposed | process_collector_names()), sorted(process)


def test_alert_rule_metric_names_exist_in_a_running_daemon(running_daemon: DaemonProcess) -> None:
    exposed = exposed_names(running_daemon)
    for rule in alert_rules():
        names = used_metric_names([rule["expr"]])
        builtins = set(re.findall(r"\b(up)\{", rule["expr"]))
        assert names or (builtins and builtins <= PROMETHEUS_BUILTINS), rule["alert"]
        assert not names - exposed, (rule["alert"], sorted(names - exposed))
    records = orjson.loads(SAMPLE.read_bytes())["Records"]
    newest = max(parse_event_time(r["eventTime"]) for r in records)
    account = records[0]["recipientAccountId"]
    assert running_daemon.metric("trailguard_account_last_event_timestamp_seconds", {"account": account}) == newest
