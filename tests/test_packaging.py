"""The distribution ships every package: a plain (non-editable) `pip install .` must work like the checkout."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _declared() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(data["tool"]["setuptools"]["packages"])


def test_every_monitor_package_is_declared():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "monitor").rglob("__init__.py")} | {
        "monitor.migrations",
        "monitor.migrations.versions",
    }
    assert found <= _declared(), f"add to [tool.setuptools] packages: {sorted(found - _declared())}"


def test_migrations_ship_inside_the_package():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["tool"]["setuptools"]["package-dir"]["monitor.migrations"] == "migrations"
    assert (ROOT / "migrations" / "env.py").exists()
