"""Never losing a record: 2,000 requests through the proxy while the database is away for part of the run,
then the proxy killed with SIGKILL and started again. The database ends with exactly 2,000 events."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from monitor.models import UsageEventRow
from monitor.sim import SimServer
from monitor.sim.profiles import ModelProfile, SimConfig
from monitor.store import make_engine, upgrade

TOTAL = 2000
FAST = ModelProfile(ttft_s=0.0, token_s=0.0, output_tokens=5, cached_share=0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sim():
    server = SimServer(SimConfig(models={"glm-4.7": FAST}, seed=3)).start()
    try:
        yield server
    finally:
        server.stop()


class Proxy:
    """`glm-monitor proxy` as a user runs it, in its own process."""

    def __init__(self, config: Path, port: int) -> None:
        self.config, self.port = config, port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "--config", str(self.config), "proxy", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the proxy did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def send(port: int, start: int, stop: int) -> None:
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=8))

    def one(i: int) -> int:
        body = {"model": "glm-4.7", "messages": [{"role": "user", "content": f"hi {i}"}], "stream": i % 3 == 0}
        r = client.post(
            f"http://127.0.0.1:{port}/zai/chat/completions",
            json=body,
            headers={"Authorization": "Bearer k", "X-Monitor-App": "no-loss"},
        )
        return r.status_code

    with client, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(start, stop)))
    assert statuses == [200] * (stop - start)


def spooled_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for(predicate, timeout=60.0, what="condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def write_config(tmp_path: Path, url: str, sim: SimServer, spool: Path) -> Path:
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\nspool_path = "{spool}"\n\n'
        f'[providers.zai]\nbase_url = "{sim.base_url}/api/paas/v4"\n'
    )
    return config


def count(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(UsageEventRow)).scalar_one()
    finally:
        engine.dispose()


def distinct_requests(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count(func.distinct(UsageEventRow.event_id)))).scalar_one()
    finally:
        engine.dispose()


def test_postgres_stopped_then_proxy_killed_loses_nothing(tmp_path, sim, private_postgres):
    url = private_postgres.url
    upgrade(url)
    spool = tmp_path / "events.spool"
    proxy = Proxy(write_config(tmp_path, url, sim, spool), free_port())
    proxy.start()
    try:
        send(proxy.port, 0, TOTAL // 2)
        wait_for(lambda: count(url) == TOTAL // 2, what="the first half stored")
        private_postgres.stop()
        send(proxy.port, TOTAL // 2, TOTAL)
        wait_for(lambda: spooled_lines(spool) >= TOTAL // 2, what="the second half spooled")
        proxy.kill()  # no flush, no goodbye
        private_postgres.start()
        proxy.start()  # replays the spool it finds
        wait_for(lambda: count(url) == TOTAL, what="the spool replayed")
    finally:
        proxy.stop()
    assert count(url) == TOTAL == distinct_requests(url)


def test_sqlite_locked_by_another_writer_then_proxy_killed_loses_nothing(tmp_path, sim):
    db = tmp_path / "proxy.db"
    url = f"sqlite:///{db}"
    upgrade(url)
    spool = tmp_path / "events.spool"
    proxy = Proxy(write_config(tmp_path, url, sim, spool), free_port())
    proxy.start()
    locker = sqlite3.connect(str(db), timeout=0)
    try:
        send(proxy.port, 0, TOTAL // 2)
        wait_for(lambda: count(url) == TOTAL // 2, what="the first half stored")
        locker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        send(proxy.port, TOTAL // 2, TOTAL)
        wait_for(lambda: spooled_lines(spool) >= TOTAL // 2, what="the second half spooled")
        proxy.kill()
        locker.rollback()
        proxy.start()
        wait_for(lambda: count(url) == TOTAL, what="the spool replayed")
    finally:
        locker.close()
        proxy.stop()
    assert count(url) == TOTAL == distinct_requests(url)
    assert os.path.getsize(spool) == 0


def test_proxy_started_while_postgres_is_down_records_to_the_spool_and_migrates_it_later(
    tmp_path, sim, private_postgres
):
    """A blank database that is down when the proxy starts: the proxy serves anyway, spools, and once the
    database is back it migrates it and writes every request."""
    url = private_postgres.url
    private_postgres.stop()
    spool = tmp_path / "events.spool"
    proxy = Proxy(write_config(tmp_path, url, sim, spool), free_port())
    proxy.start()
    try:
        assert proxy.proc is not None and proxy.proc.poll() is None  # did not exit for want of a database
        send(proxy.port, 0, 300)
        wait_for(lambda: spooled_lines(spool) >= 300, what="the requests spooled")
        private_postgres.start()
        wait_for(lambda: _count_or_none(url) == 300, what="the database migrated and the spool replayed")
    finally:
        proxy.stop()
    assert count(url) == 300 == distinct_requests(url)


def _count_or_none(url: str) -> int | None:
    """The stored events, or None while the tables do not exist yet."""
    try:
        return count(url)
    except Exception:
        return None
