"""The container image really builds and runs: the Dockerfile is built with buildah from a Debian
base made here with debootstrap, then ``trailguard --version``, ``check-config`` of the bundled
config and a replay of the bundled sample trail run inside the image as its non-root user.

Docker does not run on these machines, ``podman run`` is refused (setrlimit), and Docker Hub is not
reachable; ``buildah --isolation chroot`` builds and runs.  The test installs buildah, debootstrap
and podman with apt-get when they are missing (CI is a clean machine), so it needs root there.
Marked slow (minutes: debootstrap, then pip downloading every dependency); CI runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import orjson
import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

TOOLS = ("buildah", "debootstrap", "podman")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DEBIAN_MIRROR = os.environ.get("TRAILGUARD_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
NON_ROOT = "10001:10001"


def run(*args: str, timeout: float = 1800, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(args, capture_output=True, timeout=timeout, input=input)
    assert result.returncode == 0, (f"{' '.join(args[:4])}… exited {result.returncode}:\n"
                                    f"{result.stdout.decode(errors='replace')[-3000:]}\n"
                                    f"{result.stderr.decode(errors='replace')[-3000:]}")
    return result


def ensure_tools() -> None:
    """buildah, debootstrap and podman on PATH, installed with apt-get when missing."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"{', '.join(missing)} not installed and cannot be installed here (needs root and apt-get); "
                    f"fix: apt-get install -y {' '.join(TOOLS)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=900, env=env)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *TOOLS], check=True, capture_output=True,
                   timeout=1800, env=env)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The trailguard image built from a debootstrap-made Debian base; removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("building a Debian base with debootstrap needs root; fix: run this test as root (CI does)")
    ensure_tools()
    tag = uuid.uuid4().hex[:10]
    base, built = f"localhost/trailguard-test-base:{tag}", f"localhost/trailguard-test:{tag}"
    rootfs = tmp_path_factory.mktemp("container") / "rootfs"
    run("debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs), DEBIAN_MIRROR)
    tarball = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    run("podman", "import", "-", base, input=tarball)
    shutil.rmtree(rootfs, ignore_errors=True)
    volumes = ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if os.path.isfile(CA_BUNDLE) else []
    try:
        run("buildah", "bud", "--isolation", "chroot", "--layers=false", *volumes,
            "--build-arg", f"PYTHON_IMAGE={base}", "--build-arg", "VERSION=0.1.0", "-t", built, str(ROOT))
        yield built
    finally:
        subprocess.run(["buildah", "rmi", "-f", built, base], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    """A working container of the image (``buildah from``), for ``buildah run``."""
    name = run("buildah", "from", image).stdout.decode().strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=300)


def inside(container: str, *command: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` in the container as the image's non-root user."""
    return run("buildah", "run", "--isolation", "chroot", "--user", NON_ROOT, container, "--", *command,
               timeout=600)


def test_image_config_is_non_root_with_the_documented_entrypoint(image: str) -> None:
    config = orjson.loads(run("buildah", "inspect", "--type", "image", image).stdout)["OCIv1"]["config"]
    assert config["User"] == NON_ROOT
    assert config["Entrypoint"] == ["trailguard"]
    assert config["Cmd"] == ["run", "--config", "/opt/trailguard/config/trailguard.yaml"]


def test_version_inside_the_image(container: str) -> None:
    assert inside(container, "id", "-u").stdout.strip() == b"10001"
    assert inside(container, "trailguard", "--version").stdout.decode().startswith("trailguard 0.1.0")


def test_check_config_of_the_bundled_config_inside_the_image(container: str) -> None:
    result = inside(container, "trailguard", "check-config", "/opt/trailguard/config/trailguard.yaml")
    assert b": ok (" in result.stdout and b"sigma" in result.stdout


def test_replay_of_the_sample_trail_inside_the_image(container: str) -> None:
    result = inside(container, "trailguard", "replay", "--quiet", "/opt/trailguard/samples/trail")
    alerts = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert alerts and all(alert["detector"] and alert["severity"] for alert in alerts)
    assert b"replay summary" in result.stderr
