"""Shared fixtures: real databases (a SQLite file always; Postgres when MONITOR_TEST_DATABASE_URL is set).

Each Postgres-backed test gets a database of its own, created on the server named by
MONITOR_TEST_DATABASE_URL and dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from monitor.store import make_engine, upgrade

PG_ENV = "MONITOR_TEST_DATABASE_URL"
BACKENDS = ["sqlite", "postgres"]


def _pg_admin_url() -> str | None:
    url = os.environ.get(PG_ENV)
    if not url:
        return None
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """URL of a fresh, empty Postgres database (skipped when MONITOR_TEST_DATABASE_URL is unset)."""
    admin_url = _pg_admin_url()
    if admin_url is None:
        pytest.skip(f"Postgres tests need {PG_ENV}")
    name = f"glm_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_database(tmp_path: Path) -> str:
    """URL of a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'monitor.db'}"


@pytest.fixture(params=BACKENDS)
def blank_database_url(request: pytest.FixtureRequest) -> str:
    """A blank database URL, once for SQLite and once for Postgres."""
    fixture = "sqlite_database" if request.param == "sqlite" else "pg_database"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def database_url(blank_database_url: str) -> str:
    """A database migrated to head, once for SQLite and once for Postgres."""
    upgrade(blank_database_url)
    return blank_database_url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a migrated database (SQLite and Postgres)."""
    eng = make_engine(database_url)
    try:
        yield eng
    finally:
        eng.dispose()


PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


class PrivatePostgres:
    """A Postgres server of the test's own (initdb in a temp folder, trust auth), which the test may stop and
    start: a real database outage without touching the machine's shared server."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.data = root / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _pg(self, *args: str) -> None:
        import subprocess

        tool = str(PG_BIN[-1] / args[0])
        subprocess.run(["runuser", "-u", "postgres", "--", tool, *args[1:]], check=True, capture_output=True)

    def init(self) -> None:
        import shutil

        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    """A private Postgres server, started; stopped at the end (skipped where Postgres is not installed)."""
    import shutil
    import socket

    if not PG_BIN or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs the Postgres server binaries and root (to run them as the postgres user)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path("/tmp") / f"glm-pg-{uuid.uuid4().hex[:8]}"
    pg = PrivatePostgres(root, port)
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)
