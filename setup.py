"""Packaging that pyproject.toml cannot express: the repository's ``config/`` and ``samples/``
trees ship inside the wheel as package data of ``daemon._bundled`` (found at run time by
``daemon.bundled`` through ``importlib.resources``).  Metadata lives in pyproject.toml."""

from setuptools import find_packages, setup

BUNDLED = {"daemon._bundled.config": "config", "daemon._bundled.samples": "samples"}

setup(
    packages=[*find_packages(include=["daemon", "daemon.*", "detectors", "detectors.*"]), *BUNDLED],
    package_dir=BUNDLED,
    package_data={
        "daemon": ["py.typed"],
        "detectors": ["py.typed"],
        **{name: ["**/*"] for name in BUNDLED},
    },
    exclude_package_data={name: ["**/__pycache__/*", "**/*.pyc"] for name in BUNDLED},
)
