"""Several processes started at once on a blank database, as a compose file or a fleet starts them: every one
starts (migrations hold a cross-process lock), and the database ends at the newest revision."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitor.sim import SimServer
from monitor.sim.profiles import ModelProfile, SimConfig
from monitor.store import current_revision, head_revision, make_engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "monitor.cli", "--config", str(config), *args]


@pytest.fixture
def sim():
    server = SimServer(SimConfig(models={"glm-4.7": ModelProfile(ttft_s=0.0, token_s=0.0)}, seed=5)).start()
    try:
        yield server
    finally:
        server.stop()


def _config(tmp_path: Path, url: str, sim: SimServer) -> Path:
    config = tmp_path / "fleet.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\njournal_dir = "{tmp_path / "journal"}"\n\n'
        f'[providers.zai]\nbase_url = "{sim.base_url}/api/paas/v4"\n\n'
        '[prober]\ninterval = "2s"\n\n[[targets]]\nprovider = "zai"\nmodel = "glm-4.7"\n'
    )
    return config


def test_four_migrations_at_once_all_succeed(tmp_path, blank_database_url, sim):
    config = _config(tmp_path, blank_database_url, sim)
    procs = [
        subprocess.Popen(cli(config, "db", "upgrade"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    engine = make_engine(blank_database_url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_two_daemons_and_two_proxies_start_together_on_a_blank_database(tmp_path, blank_database_url, sim):
    config = _config(tmp_path, blank_database_url, sim)
    env = {**os.environ, "ZAI_API_KEY": "k"}
    logs = [tmp_path / f"p{i}.log" for i in range(4)]
    ports = [free_port(), free_port()]
    commands = [
        cli(config, "run", "--no-dashboard"),
        cli(config, "run", "--no-dashboard"),
        cli(config, "proxy", "--port", str(ports[0])),
        cli(config, "proxy", "--port", str(ports[1])),
    ]
    procs = []
    for command, log in zip(commands, logs, strict=True):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
    try:
        end = time.monotonic() + 60
        listening: set[int] = set()
        while time.monotonic() < end and len(listening) < 2:
            assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
            for port in ports:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    listening.add(port)
                except OSError:
                    pass
            time.sleep(0.2)
        assert listening == set(ports)
        time.sleep(3)  # the daemons have probed by now
        assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(60) for p in procs]
    assert codes == [0] * 4, [log.read_text() for log in logs]
    engine = make_engine(blank_database_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM probe_results").scalar_one() >= 2
    engine.dispose()
