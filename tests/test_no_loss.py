"""Never losing a record, tested from outside: `glm-monitor proxy` in its own process, clients that count what
they saw complete, SIGTERM right after a burst, SIGKILL in the middle of one (database up, down or locked), then
a restart. Every request a client saw complete is stored, and none twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
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
from tests.cli_process import ProxyProcess, free_port

TOTAL = 2000
FAST = ModelProfile(ttft_s=0.0, token_s=0.0, output_tokens=5, cached_share=0.5)


@pytest.fixture
def sim():
    server = SimServer(SimConfig(models={"glm-4.7": FAST}, seed=3)).start()
    try:
        yield server
    finally:
        server.stop()


def Proxy(config: Path, port: int) -> ProxyProcess:
    return ProxyProcess(config, port)


def post(client: httpx.Client, port: int, i: int, app: str) -> int:
    body = {"model": "glm-4.7", "messages": [{"role": "user", "content": f"hi {i}"}], "stream": i % 3 == 0}
    r = client.post(
        f"http://127.0.0.1:{port}/zai/chat/completions",
        json=body,
        headers={"Authorization": "Bearer k", "X-Monitor-App": app},
    )
    return r.status_code


def send(port: int, start: int, stop: int) -> None:
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=8))
    with client, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: post(client, port, i, "no-loss"), range(start, stop)))
    assert statuses == [200] * (stop - start)


class CountingClients:
    """Eight clients sending requests until stopped, each request under its own app name; ``completed`` holds
    the names of the requests whose whole response a client received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.completed: set[str] = set()
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(8)]

    def __enter__(self) -> CountingClients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._stop.is_set() and i < 5000:
                name = f"r{n}-{i}"
                i += 1
                with self._lock:
                    self.sent += 1
                try:
                    # httpx reads the whole body before returning: a 200 here is a response seen complete.
                    status = post(client, self.port, i, name)
                except httpx.HTTPError:
                    continue
                if status == 200:
                    with self._lock:
                        self.completed.add(name)

    def wait_for(self, completed: int, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while len(self.completed) < completed and time.monotonic() < end:
            time.sleep(0.01)
        assert len(self.completed) >= completed


def journal_lines(directory: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in directory.glob("*.jnl"))


def wait_for(predicate, timeout=60.0, what="condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def write_config(tmp_path: Path, url: str, sim: SimServer, journal: Path) -> Path:
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\njournal_dir = "{journal}"\n\n'
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


def stored_apps(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(UsageEventRow.app)).scalars())
    finally:
        engine.dispose()


def _count_or_none(url: str) -> int | None:
    """The stored events, or None while the tables do not exist yet."""
    try:
        return count(url)
    except Exception:
        return None


# --- SIGTERM: what was recorded is stored, and the exit code is 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigterm_right_after_a_burst_stores_every_request_and_exits_0(tmp_path, sim, backend, request):
    url = (
        f"sqlite:///{tmp_path / 'proxy.db'}" if backend == "sqlite" else request.getfixturevalue("private_postgres").url
    )
    upgrade(url)
    proxy = Proxy(write_config(tmp_path, url, sim, tmp_path / "journal"), free_port())
    proxy.start()
    send(proxy.port, 0, 300)
    assert proxy.signal(signal.SIGTERM) == 0  # at once: nothing waited for the events to be stored
    assert count(url) == 300 == distinct_requests(url)
    assert list((tmp_path / "journal").glob("*.jnl")) == []  # a clean stop leaves nothing to replay


def test_ctrl_c_stores_every_request_and_exits_0(tmp_path, sim):
    url = f"sqlite:///{tmp_path / 'proxy.db'}"
    proxy = Proxy(write_config(tmp_path, url, sim, tmp_path / "journal"), free_port())
    proxy.start()
    send(proxy.port, 0, 100)
    assert proxy.signal(signal.SIGINT) == 0
    assert count(url) == 100


def test_sigterm_with_the_database_away_leaves_the_events_in_the_journal_and_says_how_many(
    tmp_path, sim, private_postgres
):
    url = private_postgres.url
    upgrade(url)
    proxy = Proxy(write_config(tmp_path, url, sim, tmp_path / "journal"), free_port())
    proxy.start()
    private_postgres.stop()
    send(proxy.port, 0, 200)
    assert proxy.signal(signal.SIGTERM) == 0
    assert "200 events are left in the journal" in proxy.log.read_text()
    assert journal_lines(tmp_path / "journal") == 200
    private_postgres.start()
    proxy.start()  # the next start writes them
    wait_for(lambda: count(url) == 200, what="the journal replayed")
    proxy.stop()
    assert count(url) == 200 == distinct_requests(url)


# --- SIGKILL in the middle of a burst: every request a client saw complete is stored, none twice


def _killed_mid_burst(proxy: Proxy, url: str, *, after: int) -> set[str]:
    with CountingClients(proxy.port) as clients:
        clients.wait_for(after)
        assert proxy.signal(signal.SIGKILL) == -9  # no flush, no goodbye, clients still sending
    return set(clients.completed)


def _assert_all_stored_once(url: str, completed: set[str]) -> None:
    apps = [app for app in stored_apps(url) if app != "no-loss"]  # the warm-up requests share one name
    assert len(apps) == len(set(apps)), "a request was stored twice"
    missing = completed - set(apps)
    assert not missing, f"{len(missing)} requests seen complete were lost, e.g. {sorted(missing)[:3]}"


def test_kill_9_mid_burst_with_the_database_up(tmp_path, sim):
    url = f"sqlite:///{tmp_path / 'proxy.db'}"
    upgrade(url)
    proxy = Proxy(write_config(tmp_path, url, sim, tmp_path / "journal"), free_port())
    proxy.start()
    completed = _killed_mid_burst(proxy, url, after=400)
    proxy.start()  # adopts what the killed process left in the journal
    wait_for(lambda: set(stored_apps(url)) >= completed, what="the journal replayed")
    proxy.stop()
    _assert_all_stored_once(url, completed)
    assert len(completed) >= 400


def test_kill_9_mid_burst_with_postgres_down(tmp_path, sim, private_postgres):
    url = private_postgres.url
    upgrade(url)
    proxy = Proxy(write_config(tmp_path, url, sim, tmp_path / "journal"), free_port())
    proxy.start()
    private_postgres.stop()
    completed = _killed_mid_burst(proxy, url, after=300)
    private_postgres.start()
    proxy.start()
    wait_for(lambda: set(stored_apps(url)) >= completed, what="the journal replayed")
    proxy.stop()
    _assert_all_stored_once(url, completed)


def test_kill_9_mid_burst_with_sqlite_locked(tmp_path, sim):
    db = tmp_path / "proxy.db"
    url = f"sqlite:///{db}"
    upgrade(url)
    proxy = Proxy(write_config(tmp_path, url, sim, tmp_path / "journal"), free_port())
    proxy.start()
    locker = sqlite3.connect(str(db), timeout=0)
    try:
        send(proxy.port, 0, 50)
        wait_for(lambda: count(url) == 50, what="the first requests stored")
        locker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        completed = _killed_mid_burst(proxy, url, after=300)
        locker.rollback()
    finally:
        locker.close()
    proxy.start()
    wait_for(lambda: set(stored_apps(url)) >= completed, what="the journal replayed")
    proxy.stop()
    _assert_all_stored_once(url, completed)
    assert stored_apps(url).count("no-loss") == 50


def test_postgres_stopped_then_proxy_killed_loses_nothing(tmp_path, sim, private_postgres):
    url = private_postgres.url
    upgrade(url)
    journal = tmp_path / "journal"
    proxy = Proxy(write_config(tmp_path, url, sim, journal), free_port())
    proxy.start()
    try:
        send(proxy.port, 0, TOTAL // 2)
        wait_for(lambda: count(url) == TOTAL // 2, what="the first half stored")
        private_postgres.stop()
        send(proxy.port, TOTAL // 2, TOTAL)
        proxy.signal(signal.SIGKILL)  # no flush, no goodbye
        assert journal_lines(journal) >= TOTAL // 2
        private_postgres.start()
        proxy.start()  # replays the journal it finds
        wait_for(lambda: count(url) == TOTAL, what="the journal replayed")
    finally:
        proxy.stop()
    assert count(url) == TOTAL == distinct_requests(url)


def test_proxy_started_while_postgres_is_down_records_to_the_journal_and_migrates_it_later(
    tmp_path, sim, private_postgres
):
    """A blank database that is down when the proxy starts: the proxy serves anyway, journals, and once the
    database is back it migrates it and writes every request."""
    url = private_postgres.url
    private_postgres.stop()
    journal = tmp_path / "journal"
    proxy = Proxy(write_config(tmp_path, url, sim, journal), free_port())
    proxy.start()
    try:
        assert proxy.proc is not None and proxy.proc.poll() is None  # did not exit for want of a database
        send(proxy.port, 0, 300)
        assert journal_lines(journal) == 300
        private_postgres.start()
        wait_for(lambda: _count_or_none(url) == 300, what="the database migrated and the journal written")
    finally:
        proxy.stop()
    assert count(url) == 300 == distinct_requests(url)
    assert proxy.returncodes == [0]


# --- SIGKILL of the daemon and of an application using the SDK transport


def _adopt(config: Path) -> None:
    """Start (and stop) a process writing to the same database: it adopts what a killed one left."""
    proxy = Proxy(config, free_port())
    proxy.start()
    assert proxy.signal(signal.SIGTERM) == 0


def test_kill_9_of_the_daemon_keeps_every_probe_it_finished(tmp_path, sim):
    url = f"sqlite:///{tmp_path / 'daemon.db'}"
    config = write_config(tmp_path, url, sim, tmp_path / "journal")
    config.write_text(
        config.read_text()
        + '\n[prober]\ninterval = "1s"\njitter = "50ms"\n\n'
        + '[[targets]]\nprovider = "zai"\nmodel = "glm-4.7"\n\n[[targets]]\nprovider = "zai"\nmodel = "glm-4.6"\n'
    )
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "-v", "--config", str(config), "run", "--no-dashboard"],
            env={**os.environ, "ZAI_API_KEY": "k"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finished = lambda: log.read_text().count("probe target=")  # noqa: E731 - logged after the result is submitted
    wait_for(lambda: finished() >= 12, what="a dozen probes")
    daemon.send_signal(signal.SIGKILL)
    assert daemon.wait(10) == -9
    logged = finished()
    _adopt(config)
    engine = make_engine(url)
    with engine.connect() as conn:
        probes = conn.exec_driver_sql("SELECT count(*), count(DISTINCT event_id) FROM probe_results").one()
        mirrored = conn.exec_driver_sql("SELECT count(*) FROM usage_events WHERE source = 'probe'").scalar_one()
    engine.dispose()
    assert probes[0] == probes[1]  # none twice
    assert logged <= probes[0] <= logged + 2  # every finished probe; at most the two in flight beyond them
    assert mirrored == probes[0]


_APP = """
import sys
from monitor.capture import httpx_client

client = httpx_client(app="killed-app", timeout=30)
for i in range(100000):
    r = client.post(sys.argv[1], json={"model": "glm-4.7", "messages": [{"role": "user", "content": "hi"}],
                    "stream": i % 2 == 0}, headers={"Authorization": "Bearer k"})
    r.read()
    assert r.status_code == 200
    print(i, flush=True)  # the application has the whole response
"""


def test_kill_9_of_an_application_using_the_transport_keeps_every_request_it_saw_complete(tmp_path, sim):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    config = write_config(tmp_path, url, sim, tmp_path / "journal")
    env = {**os.environ, "GLM_MONITOR_CONFIG": str(config)}
    out = tmp_path / "app.out"
    with open(out, "w") as f:
        app = subprocess.Popen(
            [sys.executable, "-c", _APP, f"{sim.base_url}/api/paas/v4/chat/completions"], env=env, stdout=f
        )
    seen = lambda: out.read_text().count("\n")  # noqa: E731
    wait_for(lambda: seen() >= 300, what="300 requests")
    app.send_signal(signal.SIGKILL)
    assert app.wait(10) == -9
    completed = seen()
    _adopt(config)
    assert completed <= count(url) <= completed + 1  # at most the one whose end it had not read yet
    assert count(url) == distinct_requests(url)


# --- a journal that cannot be written: one line of alarm, nothing lost while the database is up


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (needs root and mount rights; skipped otherwise) and unmount it afterwards."""
    import shutil

    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("needs mount(8) to make a read-only or full file system")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_read_only_journal_directory_is_one_line_and_loses_nothing(tmp_path, sim, tmpfs):
    read_only = tmpfs("ro,size=1m")
    url = f"sqlite:///{tmp_path / 'proxy.db'}"
    proxy = Proxy(write_config(tmp_path, url, sim, read_only / "journal"), free_port())
    proxy.start()
    send(proxy.port, 0, 200)
    assert proxy.signal(signal.SIGTERM) == 0
    assert count(url) == 200
    log = proxy.log.read_text()
    alarms = [line for line in log.splitlines() if "held in memory" in line]
    assert len(alarms) == 1, alarms
    assert "read-only file system (EROFS)" in alarms[0] and str(read_only / "journal") in alarms[0]
    assert "Traceback" not in log


def test_a_full_journal_disk_keeps_whole_lines_and_every_event_reaches_the_database(tmp_path, tmpfs, caplog):
    from datetime import UTC, datetime

    from monitor.events import UsageEvent
    from monitor.journal import Journal
    from monitor.outcomes import Outcome
    from monitor.spool import decode
    from monitor.usage import Usage
    from monitor.writer import EventWriter

    small = tmpfs("size=64k")
    url = f"sqlite:///{tmp_path / 'full.db'}"
    upgrade(url)
    engine = make_engine(url)
    journal = Journal(small / "journal").open()
    events = [
        UsageEvent(
            ts=datetime.now(UTC),
            source="proxy",
            provider="zai",
            model="glm-4.7",
            vantage="t",
            outcome=Outcome.OK,
            usage=Usage(input_tokens=i, output_tokens=1),
            app="x" * 60,
        )
        for i in range(2000)
    ]
    with EventWriter(engine, flush_interval_s=0.05, journal=journal) as w:
        for ev in events:
            w.submit(ev)
        assert w.flush(timeout=60)
        assert w.held > 0 and w.lost == 0
    engine.dispose()
    assert count(url) == 2000
    alarms = [r.getMessage() for r in caplog.records if "held in memory" in r.getMessage()]
    assert len(alarms) == 1 and "full disk (ENOSPC)" in alarms[0]
    for path in (small / "journal").glob("*.jnl"):  # whatever is left holds whole lines only
        for line in path.read_bytes().splitlines(keepends=True):
            assert line.endswith(b"\n")
            decode(line)
