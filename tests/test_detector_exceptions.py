"""Exceptions for every detector (``detectors.<name>.exceptions``): a Sigma selection, a required
comment, an optional ``expires``; the engine does not feed an excepted event to the detector.

Timelines reuse ``console_login_bruteforce``'s sign-ins (Panther's ``Standard.BruteForceByIP``
failure, times and addresses changed): threshold 5 failures per user in 600 s.  Times are seconds
after ``T0`` (2024-05-01).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pydantic
import pytest

from detectors.base import Detector, DetectorContext
from detectors.console_login_bruteforce import ConsoleLoginBruteforce
from detectors.engine import DetectionEngine
from detectors.event import Event
from tests.conftest import run_cli
from tests.stateful_helpers import detector_engine, run_engine
from tests.test_console_login_bruteforce import ATTACKER, T0, login

PENTEST = {"match": {"sourceIPAddress|cidr": "198.51.100.0/24"}, "comment": "PEN-42 external pentest"}


def failures(pentest_at: list[float], attacker_at: list[float]) -> list[Event]:
    """Failed sign-ins of one user from the pentest network and from the attacker, in time order."""
    events = [(t, "198.51.100.7") for t in pentest_at] + [(t, ATTACKER) for t in attacker_at]
    return [login(t, n, ip=ip) for n, (t, ip) in enumerate(sorted(events))]


def burst_times(settings: dict[str, Any], events: list[Event]) -> list[float]:
    engine = detector_engine(ConsoleLoginBruteforce, **settings)
    return [a.time - T0 for a in run_engine(engine, events, batch=2) if a.evidence["finding"] == "burst"]


def test_an_excepted_failure_does_not_count_toward_the_window_an_unexcepted_one_does() -> None:
    # t=0..30: four pentest failures; t=40..70: four attacker failures; t=80: the attacker's fifth.
    events = failures([0, 10, 20, 30], [40, 50, 60, 70, 80])
    assert burst_times({}, events)[:1] == [40]  # counted together, the user reaches 5 at t=40
    assert burst_times({"exceptions": [PENTEST]}, events) == [80]  # only the attacker's five count
    assert burst_times({"exceptions": [PENTEST]}, events[:-1]) == []  # four unexcepted: no burst


@pytest.mark.parametrize(("expires", "burst_at"), [("2024-04-30", 40), ("2024-05-01", 80)])
def test_an_expired_exception_stops_applying_from_the_day_after_in_event_time(expires: str,
                                                                              burst_at: float) -> None:
    events = failures([0, 10, 20, 30], [40, 50, 60, 70, 80])
    assert burst_times({"exceptions": [{**PENTEST, "expires": expires}]}, events)[:1] == [burst_at]


def test_the_old_key_ignore_networks_is_the_same_exception() -> None:
    events = failures([0, 10, 20, 30], [40, 50, 60, 70, 80])
    assert burst_times({"ignore_networks": ("198.51.100.0/24",)}, events) == [80]
    both = {"ignore_networks": ("192.0.2.0/24",), "exceptions": [PENTEST]}
    assert burst_times(both, events) == [80]  # old key and new exceptions apply together


def test_a_new_detector_gets_exceptions_without_code_of_its_own() -> None:
    class Counting(Detector):
        name: ClassVar[str] = "counting"

        def __init__(self, config: Detector.Config, context: DetectorContext | None = None) -> None:
            super().__init__(config, context)
            self.seen: list[str] = []

        def on_event(self, event: Event) -> None:
            self.seen.append(event.event_id)

    config = Counting.Config.model_validate({"exceptions": [PENTEST]})
    detector = Counting(config)
    DetectionEngine([detector]).process_many(failures([0, 20], [10, 30]))
    assert detector.seen == ["login-1", "login-3"]


def test_an_exception_needs_a_valid_selection_and_a_comment() -> None:
    with pytest.raises(pydantic.ValidationError, match="not a valid Sigma selection"):
        ConsoleLoginBruteforce.Config.model_validate(
            {"exceptions": [{"match": {"sourceIPAddress|nosuchmodifier": "x"}, "comment": "x"}]})
    with pytest.raises(pydantic.ValidationError, match="comment"):
        ConsoleLoginBruteforce.Config.model_validate({"exceptions": [{"match": {"eventName": "ConsoleLogin"}}]})
    with pytest.raises(pydantic.ValidationError, match="comment is empty"):
        ConsoleLoginBruteforce.Config.model_validate(
            {"exceptions": [{"match": {"eventName": "ConsoleLogin"}, "comment": "  "}]})
    with pytest.raises(pydantic.ValidationError, match="rule_ids"):  # Sigma-only key: unknown here
        ConsoleLoginBruteforce.Config.model_validate({"exceptions": [{**PENTEST, "rule_ids": ["x"]}]})


def test_check_config_names_file_key_and_fix_and_reports_expired_exceptions(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    section = "detectors:\n  console_login_bruteforce:\n    exceptions:\n"
    config.write_text(section + "      - match: {sourceIPAddress|cidr: 198.51.100.0/24}\n")
    refused = run_cli("check-config", str(config))
    assert refused.returncode == 2
    assert (f"{config}: detectors.console_login_bruteforce.exceptions[0].comment: required key is missing; "
            "fix: add the key") in refused.stderr.decode()
    config.write_text(section + "      - match: {sourceIPAddress|nosuchmodifier: x}\n        comment: x\n")
    refused = run_cli("check-config", str(config))
    assert refused.returncode == 2
    assert (f"{config}: detectors.console_login_bruteforce.exceptions[0].match: " in refused.stderr.decode()
            and "not a valid Sigma selection" in refused.stderr.decode())
    config.write_text(section + "      - match: {sourceIPAddress|cidr: 198.51.100.0/24}\n"
                                "        comment: PEN-42\n        expires: 2020-01-31\n")
    reported = run_cli("check-config", str(config))
    assert reported.returncode == 0, reported.stderr.decode()[-2000:]
    assert ("warning: detectors.console_login_bruteforce.exceptions[0] (PEN-42) expired on 2020-01-31: it no "
            "longer excepts anything; fix: remove it, or extend expires") in reported.stdout.decode()
