"""A SIGTERM that arrives while ``trailguard run`` or ``relay`` is still starting stops it cleanly.

Before the loop's handlers exist, Python's default action would kill the process (status -15, no
log line).  :mod:`daemon.early_signals` keeps the signal, and the daemon stops as soon as its
handlers are installed: a follow-mode daemon, which would otherwise run forever, returns 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon import early_signals
from daemon.app import Daemon
from daemon.components import check
from daemon.config import load_config
from tests.conftest import free_port


@pytest.fixture
def default_handlers() -> Iterator[None]:
    """Whatever the test installs, the test process gets its own handlers (and a clean record) back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    early_signals._received.clear()
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_signal_before_the_loop_is_recorded_not_fatal(default_handlers: None) -> None:
    assert early_signals.pending() is None
    early_signals.catch()
    os.kill(os.getpid(), signal.SIGTERM)
    assert early_signals.pending() == signal.SIGTERM


async def test_a_daemon_asked_to_stop_while_starting_stops_once_running(tmp_path: Path,
                                                                        default_handlers: None) -> None:
    (tmp_path / "in").mkdir()
    config_path = tmp_path / "trailguard.yaml"
    config_path.write_text(f"""
sources: [{{type: file, paths: ["{tmp_path}/in"], follow: true, poll_interval: 0.05s}}]
sinks: [{{type: file, path: "{tmp_path}/alerts.jsonl"}}]
state: {{path: "{tmp_path}/state"}}
metrics: {{host: 127.0.0.1, port: {free_port()}}}
""")
    early_signals.catch()
    os.kill(os.getpid(), signal.SIGTERM)  # while "starting": no loop handler exists yet
    config = load_config(config_path)
    daemon = Daemon(config, check(config, str(config_path)))
    loop = asyncio.get_running_loop()
    try:
        with capture_logs() as logs:
            daemon.install_signal_handlers()
            assert await asyncio.wait_for(daemon.run(), 30) == 0, "a follow-mode daemon stops only when asked"
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    assert any(e["event"].startswith("stop requested") and e.get("signal") == "SIGTERM" for e in logs)
