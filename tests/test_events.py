"""Events as rows: over-long strings never block a batch; captured requests become rows on the writer's side."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from sqlalchemy import select

from monitor.capture.recorder import Exchange, RecorderStats, RequestInfo
from monitor.events import UsageEvent
from monitor.models import UsageEventRow
from monitor.outcomes import Outcome
from monitor.providers import BUILTIN_PROVIDERS
from monitor.writer import write_events


def test_over_long_strings_are_cut_to_their_column_and_stored(engine):
    ev = UsageEvent(
        ts=datetime.now(UTC),
        source="proxy",
        provider="zai",
        model="m" * 500,
        vantage="v",
        outcome=Outcome.OK,
        app="a" * 200,
        error_code="c" * 300,
    )
    write_events(engine, [ev])
    with engine.connect() as conn:
        row = conn.execute(select(UsageEventRow)).one()
    assert (len(row.model), len(row.app), len(row.error_code)) == (128, 64, 64)


class ListSink:
    def __init__(self):
        self.events = []

    def submit(self, event):
        self.events.append(event)


def _exchange(sink, stats, stream=True):
    zai = BUILTIN_PROVIDERS["zai"]
    return Exchange(
        provider=zai,
        endpoint=zai.default_endpoint,
        request=RequestInfo(model="glm-4.7", stream=stream),
        source="proxy",
        vantage="v",
        app="app",
        sink=sink,
        stats=stats,
    )


CHUNK = b'data: {"id":"1","model":"glm-4.7","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
END = (
    b'data: {"id":"1","model":"glm-4.7","choices":[{"index":0,"finish_reason":"stop","delta":{"content":""}}],'
    b'"usage":{"prompt_tokens":10,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":4}}}\n\n'
    b"data: [DONE]\n\n"
)


def test_a_stream_seen_to_its_end_is_complete_even_if_the_client_closes_it(engine):
    sink, stats = ListSink(), RecorderStats()
    x = _exchange(sink, stats)
    x.response_started(200, {"content-type": "text/event-stream"})
    x.feed(CHUNK)
    x.feed(END)
    x.finish(disconnected=True)
    (captured,) = sink.events
    write_events(engine, [captured])
    with engine.connect() as conn:
        row = conn.execute(select(UsageEventRow)).one()
    assert (row.outcome, row.complete, row.input_tokens, row.cached_input_tokens, row.output_tokens) == (
        "ok",
        True,
        10,
        4,
        2,
    )
    assert row.event_id == captured.event_id and row.ttft_ms is not None and row.cost_amount > 0


def test_a_stream_that_fails_midway_is_recorded_with_the_transport_error():
    sink, stats = ListSink(), RecorderStats()
    x = _exchange(sink, stats)
    x.response_started(200, {"content-type": "text/event-stream"})
    x.feed(CHUNK)
    x.finish(error=httpx.ReadTimeout("read timed out"))
    event = sink.events[0].event()
    assert (event.outcome, event.http_status, event.usage.complete) == (Outcome.TIMEOUT, 200, False)
    x2 = _exchange(sink, stats)
    x2.response_started(200, {})
    x2.feed(CHUNK)
    x2.finish(error=httpx.RemoteProtocolError("peer closed connection"))
    assert sink.events[1].event().outcome == Outcome.NETWORK_ERROR


def test_a_bug_while_building_the_row_still_records_the_request():
    sink, stats = ListSink(), RecorderStats()
    x = _exchange(sink, stats, stream=False)
    x.response_started(429, {})
    x.feed(b'{"error":{"code":"1302","message":"busy"}}')
    x.catalog = object()  # a broken price catalog: building the event fails
    x.finish()
    row = sink.events[0].to_row()
    assert row["outcome"] == "rate_limited" and row["http_status"] == 429
    assert stats.failures == 1


def test_event_ids_are_unique_time_ordered_uuid7s():
    import time
    import uuid

    from monitor.events import new_event_id

    first = [new_event_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_event_id()
    assert len(set(first)) == 1000
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in first)
    assert max(first) < later  # a later millisecond sorts after, so inserts land at the end of the index
    ms = int(later.replace("-", "")[:12], 16)
    assert abs(ms - time.time() * 1000) < 5000
