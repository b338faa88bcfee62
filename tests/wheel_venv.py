"""A fresh venv holding trailguard only as the built wheel (not the source tree, not editable).

The wheel is built from a copy of the checkout (so a stale ``build/`` directory cannot leak into
it).  To stay fast, the venv borrows the test venv's already-installed dependencies through a
``.pth`` line — a plain path entry, so the test venv's editable-install hook is not run and the
``daemon``/``detectors`` packages can only come from the wheel.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SKIP = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                               ".ruff_cache", "bench", "tests", "var")


def build_wheel(workdir: Path) -> Path:
    """Build trailguard's wheel from a copy of the checkout; returns the ``.whl`` path."""
    source = workdir / "src"
    shutil.copytree(ROOT, source, ignore=_SKIP)
    out = workdir / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = out.glob("trailguard-*.whl")
    return wheel


def make_venv(workdir: Path, wheel: Path) -> Path:
    """A venv with ``wheel`` installed (no deps: they come from the test venv); returns its bin dir."""
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "--no-deps", "--no-index", "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    # Only after the install, so pip never sees (let alone touches) the test venv's editable trailguard.
    (purelib / "zz_test_venv_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv / "bin"
