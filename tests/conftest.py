"""Shared fixtures: free ports, running the real ``trailguard`` CLI as a subprocess, test data paths."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.brokers"]

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
TRAILGUARD = [sys.executable, "-m", "daemon.cli"]


def free_port() -> int:
    """A TCP port nobody listens on right now (bound to loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(*args: str, timeout: float = 120, input: bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``trailguard ARGS`` to completion, capturing stdout and stderr."""
    return subprocess.run([*TRAILGUARD, *args], cwd=ROOT, capture_output=True, timeout=timeout, input=input,
                          env={**os.environ, **(env or {})})


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET ``url``; returns (status, body) — HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> None:
    """Poll ``predicate`` until it is truthy or fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


class DaemonProcess:
    """A ``trailguard run`` subprocess with its metrics port; stdout/stderr go to files."""

    def __init__(self, config: Path, workdir: Path, port: int) -> None:
        self.port = port
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self._stdout = self.stdout_path.open("wb")
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen([*TRAILGUARD, "run", "--config", str(config)], cwd=ROOT,
                                     stdout=self._stdout, stderr=self._stderr)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """Read one sample from the daemon's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        _, body = http_get(self.url("/metrics"))
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == name and (labels is None or all(sample.labels.get(k) == v
                                                                   for k, v in labels.items())):
                    return sample.value
        return None

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.stderr_path.read_text()[-3000:]}")
            return http_get(self.url("/readyz"))[0] == 200

        wait_for(ready, timeout, what="/readyz")

    def stop(self, sig: int = 15, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stdout.close()
        self._stderr.close()
        return self.proc.returncode

    def stdout_lines(self) -> list[str]:
        return [line for line in self.stdout_path.read_text().splitlines() if line.strip()]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    """Factory: ``start_daemon(config_text)`` → a running :class:`DaemonProcess` (stopped at teardown)."""
    started: list[DaemonProcess] = []

    def start(config_text: str, port: int | None = None) -> DaemonProcess:
        port = port or free_port()
        config = tmp_path / f"trailguard-{len(started)}.yaml"
        config.write_text(config_text.replace("{port}", str(port)).replace("{tmp}", str(tmp_path)))
        workdir = tmp_path / f"daemon-{len(started)}"
        workdir.mkdir()
        process = DaemonProcess(config, workdir, port)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(9)
