"""Configs a careless operator (or an attacker with write access to a ConfigMap) produces: each is a
refusal naming the file and the fix, with exit 2 from ``check-config`` — never a traceback, never
minutes of CPU, never silent acceptance."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config
from tests.conftest import run_cli

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))

CASES = {
    "billion_laughs": (LAUGHS.encode(), "billion laughs"),
    "deeply_nested": (("x: " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nested too deeply"),
    "nested_past_64": (("x: " + "[" * 100 + "]" * 100 + "\n").encode(), "more than 64 levels"),
    "duplicate_sinks": (b"sinks: [{type: stdout}]\nsinks: [{type: file, path: /tmp/x}]\n",
                        "the key 'sinks' appears twice (first at line 1)"),
    "duplicate_nested_key": (b"state:\n  path: /a\n  path: /b\n", "the key 'path' appears twice"),
    "not_utf8": (b"logging: {level: info}\n# caf\xe9\n", "not UTF-8 text (byte 28, line 2)"),
    "checkpoint_interval_zero": (b"state: {checkpoint_interval: 0}\n", "greater than 0"),
    "checkpoint_interval_inf": (b"state: {checkpoint_interval: .inf}\n", "finite number of seconds"),
    "checkpoint_interval_nan": (b"state: {checkpoint_interval: .nan}\n", "finite number of seconds"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_config_refuses(tmp_path: Path, name: str) -> None:
    content, message = CASES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    text = str(refused.value)
    assert str(path) in text and message in text and "fix:" in text, text


def test_merge_keys_still_override_as_yaml_says(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("metrics: &m {host: 127.0.0.1, port: 9000}\nlogging: {level: info}\n"
                    "shutdown: {deadline: 5s}\nstate:\n  <<: {checkpoint_interval: 30s}\n"
                    "  checkpoint_interval: 5s\n")
    config = load_config(path)
    assert config.state.checkpoint_interval == 5.0 and config.metrics.port == 9000


@pytest.mark.parametrize(("content", "message"), [
    ("sources: [{type: sqs, queue_url: 'not a url at all'}]\n", "not an SQS queue URL"),
    ("sources: [{type: sqs, queue_url: 'https://sqs.us-east-1.amazonaws.com/only-one-part'}]\n",
     "not an SQS queue URL"),
    ("sinks: [{type: stdout}]\nsinks: [{type: stdout}]\n", "appears twice"),
    (LAUGHS, "billion laughs"),
])
def test_check_config_exits_2_with_the_refusal(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "trailguard.yaml"
    path.write_text(content)
    result = run_cli("check-config", str(path), timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 2 and message in err and "Traceback" not in err, err[-2000:]


# A bad place to write: refused at start-up (run) and by check-config with file, key and fix, never a
# traceback or "metrics: cannot listen".  /proc/sys is not writable even for root.
WEBHOOK = "sinks: [{type: webhook, url: 'http://127.0.0.1:9/x'}]\n"
PLACES = {
    "spool_dir_is_a_file": (WEBHOOK + "delivery: {spool_dir: afile}\n",
                            "delivery.spool_dir: {d}/afile exists and is not a directory"),
    "spool_dir_not_creatable": (WEBHOOK + "delivery: {spool_dir: afile/spool}\n",
                                "delivery.spool_dir: {d}/afile/spool cannot be created: {d}/afile is a file"),
    "spool_dir_not_writable": (WEBHOOK + "delivery: {spool_dir: /proc/sys}\n",
                               "delivery.spool_dir: /proc/sys is not writable"),
    "spool_dir_parent_not_writable": (WEBHOOK + "delivery: {spool_dir: /proc/sys/trailguard}\n",
                                      "delivery.spool_dir: /proc/sys/trailguard cannot be created: "
                                      "/proc/sys is not writable"),
    "dead_letter_dir_is_a_file": (WEBHOOK + "delivery: {dead_letter_dir: afile}\n",
                                  "delivery.dead_letter_dir: {d}/afile exists and is not a directory"),
    "file_sink_path_is_a_directory": ("sinks: [{type: file, path: adir}]\n",
                                      "sinks[0].path: {d}/adir is a directory; fix: name a file"),
    "file_sink_dir_not_creatable": ("sinks: [{type: file, path: afile/alerts.jsonl}]\n",
                                    "sinks[0].path: {d}/afile/alerts.jsonl cannot be created: {d}/afile is a file"),
}


@pytest.mark.parametrize("name", sorted(PLACES))
def test_a_bad_place_to_write_is_refused_with_key_and_fix(tmp_path: Path, name: str) -> None:
    content, message = PLACES[name]
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    (tmp_path / "in.json").write_text('{"Records": []}')
    path = tmp_path / "trailguard.yaml"
    path.write_text("sources: [{type: file, paths: [in.json]}]\nmetrics: {port: 0}\n" + content)
    commands = [("check-config", str(path))]
    if name in ("spool_dir_is_a_file", "file_sink_path_is_a_directory"):
        commands.append(("run", "-c", str(path)))
    for command in commands:
        result = run_cli(*command, timeout=120)
        err = result.stderr.decode()
        expected = message.format(d=tmp_path)
        assert result.returncode == 2, (command, err[-2000:])
        assert f"{path}: {expected}" in err and "fix:" in err, (command, err[-2000:])
        assert "Traceback" not in err and "cannot listen" not in err, err[-2000:]
