"""Schema and migrations on real SQLite and Postgres databases."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text

from monitor.models import Base, UsageEventRow
from monitor.store import (
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    normalise_url,
    table_names,
    upgrade,
)

TABLES = {"probe_results", "usage_events", "quota_snapshots", "fx_rates"}


def test_blank_database_migrates_to_head(blank_database_url):
    upgrade(blank_database_url)
    engine = make_engine(blank_database_url)
    try:
        assert current_revision(engine) == head_revision()
        assert table_names(engine) >= TABLES
    finally:
        engine.dispose()


def test_models_and_migrations_agree(database_url):
    """Alembic's autogenerate comparison finds nothing to change: the migrations build exactly the models."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_upgrade_again(database_url):
    downgrade(database_url, "base")
    engine = make_engine(database_url)
    try:
        assert current_revision(engine) is None
        assert not (TABLES & table_names(engine))
        upgrade(database_url)
        assert current_revision(engine) == head_revision()
        assert table_names(engine) >= TABLES
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(database_url):
    upgrade(database_url)
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_sqlite_is_opened_in_wal_mode_with_busy_timeout(sqlite_database):
    upgrade(sqlite_database)
    engine = make_engine(sqlite_database)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    finally:
        engine.dispose()


def test_timestamps_round_trip_as_utc(engine):
    tokyo = timezone(timedelta(hours=9))
    local = datetime(2026, 11, 22, 15, 30, tzinfo=tokyo)
    with engine.begin() as conn:
        conn.execute(
            UsageEventRow.__table__.insert(),
            {
                "event_id": "e1",
                "ts": local,
                "source": "proxy",
                "provider": "zai",
                "model": "glm-4.7",
                "vantage": "tokyo",
                "stream": False,
                "outcome": "ok",
                "complete": True,
            },
        )
    with engine.connect() as conn:
        ts = conn.execute(select(UsageEventRow.ts)).scalar_one()
    assert ts == local
    assert ts.utcoffset() == timedelta(0)
    assert ts.hour == 6


def test_naive_timestamps_are_refused(engine):
    with pytest.raises(Exception, match="naive datetime"), engine.begin() as conn:
        conn.execute(
            UsageEventRow.__table__.insert(),
            {
                "event_id": "e2",
                "ts": datetime(2026, 1, 1),
                "source": "proxy",
                "provider": "zai",
                "vantage": "v",
                "stream": False,
                "outcome": "ok",
                "complete": True,
            },
        )


def test_relative_sqlite_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = normalise_url("sqlite:///./glm-monitor.db")
    assert url == f"sqlite:///{tmp_path / 'glm-monitor.db'}"
    assert normalise_url("postgresql://u@h/db").startswith("postgresql+psycopg://")


def test_bad_url_names_the_fix():
    from monitor.errors import StoreError

    with pytest.raises(StoreError, match=r"expected e\.g\. sqlite"):
        normalise_url("not a url")
