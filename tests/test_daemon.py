"""The daemon as users run it: `glm-monitor run` in a subprocess against the simulator on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from monitor.models import ProbeHourlyRow, ProbeResultRow, UsageEventRow
from monitor.sim import SimServer
from monitor.sim.profiles import ModelProfile, SimConfig
from monitor.store import make_engine

FAST = ModelProfile(ttft_s=0.02, token_s=0.001, output_tokens=20)
TARGETS = {("zai", "glm-4.7"), ("zai", "glm-4.6"), ("bigmodel", "glm-4.7-flash")}


def wait_for(predicate, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def sim():
    server = SimServer(SimConfig(models={"glm-4.7": FAST, "glm-4.6": FAST, "glm-4.7-flash": FAST}, seed=1)).start()
    try:
        yield server
    finally:
        server.stop()


def write_config(tmp_path: Path, database_url: str, sim: SimServer) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(
        f"""
vantage = "test-vantage"

[database]
url = "{database_url}"

[providers.zai]
base_url = "{sim.base_url}/api/paas/v4"
max_concurrency = 2

[providers.bigmodel]
base_url = "{sim.base_url}/api/paas/v4"

[prober]
interval = "1s"
jitter = "100ms"
deadline = "3s"

[[targets]]
provider = "zai"
model = "glm-4.7"

[[targets]]
provider = "zai"
model = "glm-4.6"

[[targets]]
provider = "bigmodel"
model = "glm-4.7-flash"
""",
        encoding="utf-8",
    )
    return path


def test_daemon_records_every_target_survives_an_outage_and_stops_cleanly(tmp_path, database_url, sim):
    config = write_config(tmp_path, database_url, sim)
    env = {**os.environ, "ZAI_API_KEY": "test-key", "BIGMODEL_API_KEY": "test-key-2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "--config", str(config), "-v", "run", "--no-dashboard"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    engine = make_engine(database_url)

    def rows(*where):
        with engine.connect() as conn:
            return conn.execute(select(ProbeResultRow.provider, ProbeResultRow.model).where(*where)).all()

    try:
        wait_for(lambda: {tuple(r) for r in rows(ProbeResultRow.outcome == "ok")} == TARGETS, what="ok rows")

        sim.stop()
        stopped_at = datetime.now(UTC)
        wait_for(
            lambda: {tuple(r) for r in rows(ProbeResultRow.outcome == "network_error")} == TARGETS,
            what="network_error rows while the simulator is down",
        )
        sim.start()
        back_at = datetime.now(UTC)
        wait_for(
            lambda: {tuple(r) for r in rows(ProbeResultRow.outcome == "ok", ProbeResultRow.ts > back_at)} == TARGETS,
            what="ok rows after the simulator came back",
        )
        assert stopped_at < back_at
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out

    # Housekeeping ran: the rollups the dashboard reads know every target.
    with engine.connect() as conn:
        rolled = {tuple(r) for r in conn.execute(select(ProbeHourlyRow.provider, ProbeHourlyRow.model).distinct())}
    assert rolled == TARGETS

    match = re.search(r"stopped after (\d+) probes", out)
    assert match, out
    done = int(match.group(1))
    with engine.connect() as conn:
        probes = conn.execute(select(func.count()).select_from(ProbeResultRow)).scalar_one()
        usage = conn.execute(select(func.count()).select_from(UsageEventRow)).scalar_one()
        vantages = set(conn.execute(select(ProbeResultRow.vantage).distinct()).scalars())
    engine.dispose()
    assert probes == done, "every finished probe is stored"
    assert usage == done, "every probe is also a usage event"
    assert vantages == {"test-vantage"}
    # Logs: one structured line per probe at debug level, summaries at info level.
    assert re.search(r"probe target=zai/glm-4.7 vantage=test-vantage outcome=ok status=200", out)
    assert "test-key" not in out
