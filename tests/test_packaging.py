"""`pip install .` (not editable) installs what pyproject.toml lists: every package of the source
tree must be listed there, or a non-editable install silently leaves it out."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_for_installation():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for init in (ROOT / "eventformer").rglob("__init__.py")}
    missing = sorted(found - listed)
    assert not missing, f"packages pyproject.toml does not install: {missing}"
    assert "eventformer_cli" in listed and config["package-dir"]["eventformer_cli"] == "cli"
