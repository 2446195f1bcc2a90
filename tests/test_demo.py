"""The newcomer's path: `glm-monitor demo --backfill` and `glm-monitor run` with no config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from monitor.demo import DEMO_TARGETS, backfill, demo_settings
from monitor.models import ProbeResultRow, UsageEventRow
from monitor.store import make_engine


def test_backfill_fills_every_target_with_a_week_of_plausible_history(engine, database_url):
    settings = demo_settings("http://127.0.0.1:9", database_url)
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    written = backfill(engine, settings, 7, now=now)
    with engine.connect() as conn:
        per_target = dict(
            conn.execute(
                select(ProbeResultRow.provider + "/" + ProbeResultRow.model, func.count()).group_by(
                    ProbeResultRow.provider, ProbeResultRow.model
                )
            ).all()
        )
        first, last = conn.execute(select(func.min(ProbeResultRow.ts), func.max(ProbeResultRow.ts))).one()
        outcomes = set(conn.execute(select(ProbeResultRow.outcome).distinct()).scalars())
        apps = set(conn.execute(select(UsageEventRow.app).where(UsageEventRow.source == "proxy").distinct()).scalars())
        usage_total = conn.execute(select(func.count()).select_from(UsageEventRow)).scalar_one()
        probe_total = conn.execute(select(func.count()).select_from(ProbeResultRow)).scalar_one()
    assert set(per_target) == {f"{p}/{m}" for p, m, _ in DEMO_TARGETS}
    assert all(n == 7 * 24 * 12 for n in per_target.values())  # every 5 minutes for 7 days
    assert first >= now - timedelta(days=7) and last < now
    assert "ok" in outcomes and {"concurrency_limited", "overloaded"} & outcomes
    assert {"crm-bot", "coding-agent"} <= apps
    assert written == usage_total + probe_total


def _wait_for_rows(url: str, where, timeout: float = 60.0, table=ProbeResultRow) -> int:
    engine = make_engine(url)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with engine.connect() as conn:
                    n = conn.execute(select(func.count()).select_from(table).where(where)).scalar_one()
                if n:
                    return n
            except Exception:
                pass  # the database may not be migrated yet
            time.sleep(0.3)
        return 0
    finally:
        engine.dispose()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_command_backfills_probes_live_serves_the_dashboard_and_stops_on_ctrl_c(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    port = _free_port()
    started = datetime.now(UTC)
    cmd = ["demo", "--backfill", "1d", "--interval", "1", "--database-url", url, "--dashboard-port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert _wait_for_rows(url, ProbeResultRow.ts >= started) > 0
        dashboard_up = _wait_for_http(f"http://127.0.0.1:{port}/_stcore/health")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert dashboard_up, "the demo serves the dashboard"
    assert f"dashboard: http://127.0.0.1:{port}" in out
    assert "simulated GLM provider: http://127.0.0.1:" in out
    assert "backfilling 1 days" in out
    assert "zai/glm-4.7-flash" in out


def _wait_for_http(url: str, timeout: float = 60.0) -> bool:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def test_run_without_config_probes_the_simulator_into_its_own_file(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "GLM_MONITOR_CONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", "--no-dashboard"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        assert _wait_for_rows(f"sqlite:///{tmp_path / 'glm-monitor-demo.db'}", ProbeResultRow.outcome != "") > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "no targets configured: probing the built-in simulated provider" in out
    assert not (tmp_path / "glm-monitor.db").exists(), "simulated data never goes into the real database"


@pytest.mark.parametrize("command", ["demo", "dashboard"])
def test_sigterm_stops_the_command_and_every_child_it_started_and_exits_0(tmp_path, command):
    """What systemd, Docker and Kubernetes send on every stop: nothing may be left running (Streamlit included)."""
    import psutil

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    port = _free_port()
    if command == "demo":
        args = ["--interval", "1", "--database-url", url, "--dashboard-port", str(port)]
    else:
        config = tmp_path / "glm-monitor.toml"
        config.write_text(f'[database]\nurl = "{url}"\n\n[dashboard]\nport = {port}\n')
        args = ["--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert _wait_for_http(f"http://127.0.0.1:{port}/_stcore/health"), "the dashboard came up"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "Streamlit runs in a child process"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    _, alive = psutil.wait_procs(children, timeout=15)
    assert alive == [], [p.cmdline() for p in alive]


def test_the_first_command_leaves_a_demo_that_status_and_the_proxy_find_in_the_same_folder(tmp_path):
    """The README's first command with no config, then `status --json` and `proxy` in that folder with no flags:
    the same database, the same plans, and the proxy's /zai route reaching the demo's simulator."""
    import httpx

    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "GLM_MONITOR_CONFIG"}
    demo_db = f"sqlite:///{tmp_path / 'glm-monitor-demo.db'}"
    run = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", "--no-dashboard"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    proxy = None
    try:
        assert _wait_for_rows(demo_db, ProbeResultRow.outcome != "") > 0
        end = time.monotonic() + 120
        while True:  # the daemon rolls its probes up within a minute of starting
            status = subprocess.run(
                [sys.executable, "-m", "monitor.cli", "status", "--json"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            data = json.loads(status.stdout)
            if data["targets"] or time.monotonic() > end:
                break
            time.sleep(3)
        assert data["state"] != "UNKNOWN", data["summary"]
        assert {(t["provider"], t["model"]) for t in data["targets"]} >= {("zai", "glm-4.7")}
        assert {q["plan"] for q in data["quotas"]} == {"zai-free", "coding-pro", "team-budget"}

        port = _free_port()
        proxy = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "proxy", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        assert _wait_for_http(f"http://127.0.0.1:{port}/zai/models", timeout=60)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/zai/chat/completions",
            json={"model": "glm-4.7-flash", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            headers={"Authorization": "Bearer my-own-key", "X-Monitor-App": "curl-test"},
            timeout=60,
        )
        assert answer.status_code in (200, 429)  # the simulated free tier throttles now and then
    finally:
        for proc in (proxy, run):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                out, _ = proc.communicate(timeout=60)
                assert proc.returncode == 0, out
    assert _wait_for_rows(demo_db, UsageEventRow.app == "curl-test", table=UsageEventRow) == 1
    assert not (tmp_path / "glm-monitor.db").exists()
