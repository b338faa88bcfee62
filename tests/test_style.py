"""The codebase stays ruff-clean: a lint failure fails the suite, not just a pre-commit hook."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the test extra; install with pip install -e '.[test]'"
    result = subprocess.run([ruff, "check", "daemon", "detectors", "tests", "bench"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_json_module_in_runtime() -> None:
    """orjson only: the stdlib json module is slow and must not creep into the runtime."""
    offenders = []
    for path in [*ROOT.joinpath("daemon").rglob("*.py"), *ROOT.joinpath("detectors").rglob("*.py")]:
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped in ("import json",) or stripped.startswith(("import json ", "from json ")):
                offenders.append(f"{path.relative_to(ROOT)}: {stripped}")
    assert not offenders, offenders
