"""The account map: inline, YAML and CSV, strict errors naming file/key/fix, stamped on alerts by the
real CLI replay, and used by routing (``account_environments``/``account_tags``)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import orjson
import pytest

from daemon.accounts import AccountMap, load_account_map
from daemon.components import check
from daemon.config import ConfigError, load_config
from daemon.delivery.routing import Router, RoutingConfig
from detectors.alert import Alert
from tests.conftest import DATA, ROOT, run_cli

SCHEMA = orjson.loads((ROOT / "config" / "alert.schema.json").read_bytes())
SESSIONS = DATA / "alerts" / "invictus_role_sessions.json"


def alert(account: str = "123837392027") -> Alert:
    return Alert(detector="d", title="t", severity="high", time=0.0, summary="s", account_id=account)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_inline_yaml_and_csv_maps_merge_with_inline_winning(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "accounts.csv", "account_id,name,environment,owner,tags\n"
                     "123837392027,stratus-lab,sandbox,red-team,lab;attack\n"
                     "012345678901,payments-prod,prod,payments,pci\n")
    accounts = load_account_map({"path": csv_path, "entries": {
        "123837392027": {"name": "lab", "environment": "dev"}, "111122223333": "shorthand-name"}})
    assert accounts.get("012345678901").tags == ("pci",), "leading zero kept"
    assert accounts.get("123837392027").name == "lab"
    assert accounts.get("111122223333").name == "shorthand-name"
    yaml_path = write(tmp_path / "accounts.yaml", '"210987654321": {name: logs, environment: prod, tags: [core]}\n')
    assert load_account_map({"path": yaml_path}).get("210987654321").environment == "prod"
    stamped = alert("012345678901")
    accounts.annotate(stamped)
    assert stamped.account_name == "payments-prod"
    assert stamped.to_dict()["account"] == {"name": "payments-prod", "environment": "prod", "owner": "payments",
                                            "tags": ["pci"]}
    unknown = alert("999999999999")
    accounts.annotate(unknown)
    assert unknown.account_name == "" and unknown.account is None


@pytest.mark.parametrize(("files", "section", "expected"), [
    ({}, {"entries": {123456789012: {"name": "x"}}},
     'accounts.entries.123456789012: account id is a number, not a string (YAML drops leading zeros); '
     'fix: quote it, e.g. "123456789012"'),
    ({}, {"entries": {"12345": {"name": "x"}}}, "accounts.entries.12345: not an AWS account id"),
    ({}, {"entries": {"123456789012": {"nmae": "x"}}}, "accounts.entries.123456789012.nmae: unknown key"),
    ({}, {"pth": "a.csv"}, "accounts.pth: unknown key"),
    ({}, {"path": "missing.csv"}, "accounts.path: cannot read"),
    ({"a.txt": "x"}, {"path": "a.txt"}, "is neither .csv nor .yaml/.yml"),
    ({"a.csv": "id,name\n1,x\n"}, {"path": "a.csv"}, "a.csv: line 1: the header must name account_id and name"),
    ({"a.csv": "account_id,name\n123456789012,a\n123456789012,b\n"}, {"path": "a.csv"},
     "a.csv: line 3: account 123456789012 is listed twice"),
    ({"a.csv": "account_id,name\n12345678901,a\n"}, {"path": "a.csv"},
     "a.csv: line 2: account_id '12345678901' is not a 12-digit AWS account id"),
    ({"a.yaml": "- not\n- a mapping\n"}, {"path": "a.yaml"}, "a.yaml: must be a mapping of account id"),
    ({"a.yaml": "123456789012: {name: x}\n"}, {"path": "a.yaml"}, "a.yaml: <top>.123456789012: account id is a"),
])
def test_every_problem_names_file_key_and_fix(tmp_path: Path, files: dict[str, str], section: dict,
                                              expected: str) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    config_path = tmp_path / "trailguard.yaml"
    config_path.write_text("sources: [{type: file, paths: [x]}]\n")
    (tmp_path / "x").mkdir()
    config = load_config(config_path)
    config = config.model_copy(update={"accounts": section})
    with pytest.raises(ConfigError) as caught:
        check(config, str(config_path))
    text = "\n".join(caught.value.problems)
    assert expected in text, text
    assert all("fix:" in line for line in caught.value.problems), text


def test_routing_on_account_environment_and_tags() -> None:
    accounts = AccountMap(load_account_map({"entries": {
        "111111111111": {"name": "prod", "environment": "prod", "tags": ["pci"]},
        "222222222222": {"name": "dev", "environment": "dev"}}}).entries)
    router = Router(RoutingConfig.model_validate({"routes": [
        {"account_environments": ["prod"], "sinks": ["pagerduty"], "continue": True},
        {"account_tags": ["pci"], "sinks": ["siem"]}], "default_sinks": ["slack"]}), ["pagerduty", "siem", "slack"])
    routed = {}
    for account in ("111111111111", "222222222222", "333333333333"):
        item = alert(account)
        accounts.annotate(item)
        routed[account] = router.route(item)
    assert routed == {"111111111111": ("pagerduty", "siem"), "222222222222": ("slack",), "333333333333": ("slack",)}


def test_replay_stamps_account_and_lineage_on_alerts(tmp_path: Path) -> None:
    write(tmp_path / "accounts.csv", "account_id,name,environment,owner,tags\n"
          "123837392027,stratus-lab,sandbox,red-team,lab\n")
    # per-event output: every alert, not only incident notifications, must carry the stamps
    config = write(tmp_path / "trailguard.yaml", "accounts:\n  path: accounts.csv\n"
                   "delivery:\n  incidents:\n    enabled: false\n")
    result = run_cli("replay", "--config", config, str(SESSIONS))
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    alerts = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(alerts) >= 5  # the pack alerts on bulk reads only (issue 12), so fewer than 29 per-call alerts
    for item in alerts:
        jsonschema.validate(item, SCHEMA)
        assert item["account_name"] == "stratus-lab" and item["account"]["environment"] == "sandbox"
        assert item["resources"] and item["links"]["event"].startswith("https://")
    assert {a["origin_principal"] for a in alerts if ":assumed-role/" in a["principal"]} == \
        {"arn:aws:iam::123837392027:user/bert-jan"}


def test_check_config_refuses_a_broken_account_map(tmp_path: Path) -> None:
    config = write(tmp_path / "trailguard.yaml", "accounts:\n  path: nowhere.yaml\n")
    result = run_cli("check-config", config)
    assert result.returncode == 2, result.stderr.decode()
    assert "accounts.path: cannot read" in (result.stderr + result.stdout).decode()
