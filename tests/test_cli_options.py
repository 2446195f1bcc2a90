"""Command-line rough edges a new user meets in the first hour: --database-url before or after any command that
touches the database, durations as the config writes them, TOML in messages printed as written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def glm(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GLM_MONITOR_CONFIG" and not k.endswith("_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("where", ["before", "after"])
def test_database_url_works_before_or_after_the_command(tmp_path, where):
    url = f"sqlite:///{tmp_path / 'chosen.db'}"

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        args = ["--database-url", url, *command] if where == "before" else [*command, "--database-url", url]
        return glm(*args, cwd=tmp_path)

    assert run("db", "upgrade").returncode == 0
    assert run("fx", "set", "2026-11-01", "USDJPY=151.2").returncode == 0
    shown = run("fx", "show", "--on", "2026-11-02")
    assert shown.returncode == 0 and "151.2" in shown.stdout
    status = run("status", "--json")
    assert json.loads(status.stdout)["state"] == "UNKNOWN"
    assert (tmp_path / "chosen.db").exists() and not (tmp_path / "glm-monitor.db").exists()


def test_demo_takes_durations_as_the_config_writes_them(tmp_path):
    bad = glm("demo", "--interval", "soon", cwd=tmp_path)
    assert bad.returncode == 2 and "--interval" in bad.stderr
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitor.cli",
            "demo",
            "--interval",
            "5m",
            "--no-dashboard",
            "--database-url",
            f"sqlite:///{tmp_path / 'd.db'}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "every 300s" in out


def test_toml_in_a_message_is_printed_as_written(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GLM_MONITOR_CONFIG" and not k.endswith("_API_KEY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", "--no-dashboard"],
        cwd=tmp_path,
        env={**env, "COLUMNS": "300"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert "Add [[targets]] and API keys to probe real providers" in out
