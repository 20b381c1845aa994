"""The distribution's package list (the metadata is in pyproject.toml).

runner (with runner.engine) and kernels are found as usual; conf/, the Hydra config tree that
DESIGN.md keeps at the top of the repository, is mapped to the package runner.conf
(pyproject.toml: package-dir), so a wheel carries it as runner/conf/ and `python -m runner`
finds it from any folder (runner/cli.py: CONF_DIR). Each config group folder is a package of
its own for setuptools to copy its YAML files.
"""
from pathlib import Path

from setuptools import find_packages, setup

CONF = Path(__file__).resolve().parent / "conf"
CONF_PACKAGES = ["runner.conf"] + sorted(
    "runner.conf." + ".".join(p.relative_to(CONF).parts)
    for p in CONF.rglob("*") if p.is_dir() and not p.name.startswith(("_", ".")))

setup(packages=find_packages(include=["runner*", "kernels*"]) + CONF_PACKAGES)
