"""The spool file: exact round trips, order, progress kept across failed replays, torn lines, shared use."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from monitor.spool import Spool, decode, encode


def rows(n, start=0):
    return [
        {
            "event_id": f"e{i}",
            "ts": datetime(2026, 11, 22, 3, 0, tzinfo=UTC) + timedelta(seconds=i),
            "cost_amount": Decimal("0.0000077650"),
            "complete": i % 2 == 0,
            "input_tokens": None,
            "latency_ms": 12.5,
            "model": "glm-4.7",
        }
        for i in range(start, start + n)
    ]


def test_a_line_round_trips_exactly():
    row = rows(1)[0] | {"ts": datetime(2026, 1, 1, 9, tzinfo=timezone(timedelta(hours=9)))}
    table, back = decode(encode("usage_events", row))
    assert table == "usage_events" and back == row
    assert isinstance(back["cost_amount"], Decimal) and str(back["cost_amount"]) == "0.0000077650"
    assert back["ts"].utcoffset() == timedelta(hours=9)


def test_replay_writes_everything_in_order_then_empties(tmp_path):
    spool = Spool(tmp_path / "w.spool")
    spool.append("usage_events", rows(5))
    spool.append("probe_results", rows(2, start=100))
    spool.append("usage_events", rows(3, start=5))
    assert spool.pending_bytes() > 0
    seen = []
    assert spool.replay(lambda t, rs: seen.append((t, [r["event_id"] for r in rs])), batch_size=4) == 10
    assert seen == [
        ("usage_events", ["e0", "e1", "e2", "e3"]),
        ("usage_events", ["e4"]),
        ("probe_results", ["e100", "e101"]),
        ("usage_events", ["e5", "e6", "e7"]),
    ]
    assert spool.pending_bytes() == 0
    assert spool.replay(lambda t, rs: pytest.fail("nothing left")) == 0


def test_a_failed_replay_keeps_the_rows_and_resumes_where_it_stopped(tmp_path):
    spool = Spool(tmp_path / "w.spool")
    spool.append("usage_events", rows(10))
    written = []

    def flaky(table, batch):
        if len(written) >= 4:
            raise ConnectionError("database went away again")
        written.extend(r["event_id"] for r in batch)

    with pytest.raises(ConnectionError):
        spool.replay(flaky, batch_size=2)
    assert written == ["e0", "e1", "e2", "e3"]
    assert spool.pending_bytes() > 0
    rest = []
    spool.replay(lambda t, batch: rest.extend(r["event_id"] for r in batch), batch_size=2)
    assert rest == [f"e{i}" for i in range(4, 10)]


def test_a_torn_last_line_is_skipped_and_counted(tmp_path):
    spool = Spool(tmp_path / "w.spool")
    spool.append("usage_events", rows(3))
    with open(spool.path, "ab") as f:
        f.write(encode("usage_events", rows(1, start=3)[0])[:25])  # a crash mid-write
    got = []
    assert spool.replay(lambda t, batch: got.extend(batch)) == 3
    assert spool.skipped_lines == 1


def _append_many(path: str, start: int) -> None:
    spool = Spool(path)
    for k in range(50):
        spool.append("usage_events", rows(4, start=start + 4 * k))


def test_several_processes_can_share_one_spool(tmp_path):
    path = str(tmp_path / "shared.spool")
    procs = [multiprocessing.Process(target=_append_many, args=(path, 1000 * p)) for p in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    ids = []
    Spool(path).replay(lambda t, batch: ids.extend(r["event_id"] for r in batch))
    assert len(ids) == 4 * 50 * 4 == len(set(ids))
