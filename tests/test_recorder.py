"""The recording core off the request path: usage parsed on the writer's side while a response is small, on the
request path (catching up in small steps) once it outgrows ``DEFER_BYTES``, with the same tokens, time to first
token and error-body verdicts either way; request bodies and event ids made when the writer needs them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import select

from monitor.capture import httpx2_client, httpx_client
from monitor.capture.recorder import DEFER_BYTES, CapturedEvent, Exchange, RecorderStats, RequestInfo
from monitor.config import Settings
from monitor.models import UsageEventRow
from monitor.outcomes import Outcome, classify
from monitor.providers import BUILTIN_PROVIDERS, with_base_url
from monitor.sim import ModelProfile, SimConfig, SimServer, run_in_thread
from monitor.usage import parse_response
from monitor.writer import EventWriter

ZAI = BUILTIN_PROVIDERS["zai"]
DASHSCOPE = BUILTIN_PROVIDERS["dashscope"]


class ListSink:
    def __init__(self) -> None:
        self.events: list[CapturedEvent] = []

    def submit(self, event: Any) -> None:
        self.events.append(event)


def _exchange(sink: ListSink, stats: RecorderStats, **kw: Any) -> Exchange:
    kw.setdefault("provider", ZAI)
    kw.setdefault("endpoint", kw["provider"].default_endpoint)
    if "request" not in kw and "request_body" not in kw:
        kw["request"] = RequestInfo(model="glm-4.7", stream=True)
    return Exchange(source="transport", vantage="v", app="app", sink=sink, stats=stats, **kw)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunk(delta: dict[str, Any], **extra: Any) -> bytes:
    return _sse({"id": "chatcmpl-1", "model": "glm-4.7", "choices": [{"index": 0, "delta": delta}], **extra})


END = (
    _sse(
        {
            "id": "chatcmpl-1",
            "model": "glm-4.7",
            "choices": [{"index": 0, "finish_reason": "stop", "delta": {"content": ""}}],
            "usage": {"prompt_tokens": 1234, "completion_tokens": 5678, "prompt_tokens_details": {"cached_tokens": 99}},
        }
    )
    + b"data: [DONE]\n\n"
)


def _stream(prelude: int, tokens: int) -> bytes:
    """An openai-dialect stream: ``prelude`` events without output, ``tokens`` content events, usage, [DONE]."""
    role = _chunk({"role": "assistant", "content": ""})
    text = _chunk({"content": "token "})
    return role * prelude + text * tokens + END


def _cut(body: bytes, size: int) -> list[bytes]:
    """``body`` in pieces of ``size`` bytes: borders fall anywhere, inside events and lines."""
    return [body[i : i + size] for i in range(0, len(body), size)]


def _feed_timed(x: Exchange, chunks: list[bytes]) -> tuple[list[tuple[float, float]], list[int]]:
    """Feed ``chunks``; return each feed's (start, end) perf_counter bracket and the bytes held after it."""
    brackets: list[tuple[float, float]] = []
    held: list[int] = []
    for chunk in chunks:
        before = time.perf_counter()
        x.feed(chunk)
        brackets.append((before, time.perf_counter()))
        held.append(x.held_bytes)
    return brackets, held


def _first_token_chunk(chunks: list[bytes]) -> int:
    """Index of the chunk that ends the first content event's data line (what ``UsageParser.feed`` reports)."""
    body = b"".join(chunks)
    end = body.index(b"\n", body.index(b'"content":"token ')) + 1
    total = 0
    for i, chunk in enumerate(chunks):
        total += len(chunk)
        if total >= end:
            return i
    raise AssertionError("no token")


def _run(chunks: list[bytes]) -> tuple[Any, tuple[float, float], tuple[float, float], list[int], RecorderStats]:
    """Record ``chunks`` as one stream; return the event, the bracket of the exchange's start, the bracket of
    the first-token chunk's feed, the bytes held after each chunk, and the stats."""
    sink, stats = ListSink(), RecorderStats()
    made = time.perf_counter()
    x = _exchange(sink, stats)
    started = (made, time.perf_counter())
    x.response_started(200, {"content-type": "text/event-stream"})
    brackets, held = _feed_timed(x, chunks)
    x.finish()
    (captured,) = sink.events
    return captured.event(), started, brackets[_first_token_chunk(chunks)], held, stats


def _assert_ttft_is_arrival_of(event: Any, started: tuple[float, float], arrival: tuple[float, float]) -> None:
    # ttft_ms = (arrival of the first-token chunk - start) in ms, both taken inside the brackets measured around
    # them; a time taken at any other chunk, or when the held chunks were parsed, would fall outside.
    low = (arrival[0] - started[1]) * 1000.0
    high = (arrival[1] - started[0]) * 1000.0
    assert low <= event.ttft_ms <= high


def _assert_usage_exact(event: Any, body: bytes) -> None:
    whole = parse_response("openai", body, stream=True)
    assert event.usage == whole
    assert (event.usage.input_tokens, event.usage.cached_input_tokens, event.usage.output_tokens) == (1234, 99, 5678)
    assert event.usage.complete is True


@pytest.mark.parametrize("size", [1, 7, 97, 100_000])
def test_a_small_stream_is_parsed_off_the_request_path_with_exact_tokens_and_ttft(size):
    body = _stream(prelude=1, tokens=20)
    chunks = _cut(body, size)
    event, started, arrival, held, stats = _run(chunks)

    assert held[-1] == len(body)  # nothing was parsed while the chunks passed
    _assert_usage_exact(event, body)
    _assert_ttft_is_arrival_of(event, started, arrival)
    assert event.outcome == "ok" and stats.failures == 0


def test_a_stream_larger_than_the_deferral_bound_gives_exact_tokens_and_ttft():
    # The first token comes in the held part; the backlog is parsed on the request path once the bound is
    # crossed, then every chunk as it passes.
    body = _stream(prelude=1, tokens=3 * DEFER_BYTES // len(_chunk({"content": "token "})))
    assert len(body) > 2 * DEFER_BYTES
    size = 1000
    chunks = _cut(body, size)
    event, started, arrival, held, stats = _run(chunks)

    _assert_usage_exact(event, body)
    _assert_ttft_is_arrival_of(event, started, arrival)
    assert stats.failures == 0
    # Memory stays bounded, the backlog shrinks a little with each chunk (no chunk waits for all of it), and
    # the request path catches up before the end.
    assert max(held) <= DEFER_BYTES
    crossed = next(i for i, h in enumerate(held) if h < (i + 1) * size)
    assert held[crossed] >= DEFER_BYTES - 3 * size
    assert held[-1] == 0


@pytest.mark.parametrize("share", [1.05, 2.2], ids=["while-catching-up", "after-catching-up"])
def test_a_first_token_past_the_deferral_bound_is_timed_on_the_request_path(share):
    # No output in the first ``share`` * DEFER_BYTES: the first token is parsed on the request path, from the held
    # backlog while it is catching up, or as its chunk passes once it has caught up.
    prelude = int(share * DEFER_BYTES) // len(_chunk({"role": "assistant", "content": ""}))
    body = _stream(prelude=prelude, tokens=50)
    chunks = _cut(body, 4096)
    event, started, arrival, held, _ = _run(chunks)

    first = _first_token_chunk(chunks)
    assert sum(map(len, chunks[:first])) > DEFER_BYTES
    assert (held[first] > 0) is (share < 2)
    _assert_usage_exact(event, body)
    _assert_ttft_is_arrival_of(event, started, arrival)
    assert max(held) <= DEFER_BYTES


def test_one_huge_chunk_crossing_the_bound_is_parsed_at_once():
    body = _stream(prelude=1, tokens=(DEFER_BYTES // 100) * 2)
    event, started, arrival, held, _ = _run([body])

    assert held == [0]
    _assert_usage_exact(event, body)
    _assert_ttft_is_arrival_of(event, started, arrival)


def test_a_stream_cut_by_a_transport_error_keeps_what_was_seen():
    sink, stats = ListSink(), RecorderStats()
    x = _exchange(sink, stats)
    x.response_started(200, {})
    body = _stream(prelude=1, tokens=3)
    x.feed(body[: len(body) - len(END)])
    x.finish(error=TimeoutError("read timed out"))
    event = sink.events[0].event()
    assert (event.outcome, event.http_status, event.usage.complete, event.ttft_ms is not None) == (
        "timeout",
        200,
        False,
        True,
    )


# --- error bodies: judged whole while small enough, by status alone past that -----------------------------------


ERROR = b'{"error":{"code":"1302","message":"High concurrency usage of this API"}}'


@pytest.mark.parametrize(
    ("status", "size", "kept"),
    [
        (200, 4 * 1024, True),
        (200, 4 * 1024 + 1, False),
        (429, 64 * 1024, True),
        (429, 64 * 1024 + 1, False),
        (500, DEFER_BYTES + 10_000, False),
    ],
)
def test_error_bodies_are_judged_whole_only_up_to_their_size_limit(status, size, kept):
    body = ERROR + b" " * (size - len(ERROR))  # trailing whitespace: still the same JSON document
    headers = {"content-type": "application/json"}
    assert classify(status, headers, body) != classify(status, headers, b"")  # so the two cases differ

    sink, stats = ListSink(), RecorderStats()
    x = _exchange(sink, stats, request=RequestInfo(model="glm-4.7"))
    x.response_started(status, headers)
    for chunk in _cut(body, 3000):
        x.feed(chunk)
    x.finish()
    event = sink.events[0].event()

    verdict = classify(status, headers, body if kept else b"")
    assert (event.outcome, event.error_code, event.error_message) == (
        verdict.outcome,
        verdict.error_code,
        verdict.message if verdict.outcome != Outcome.OK else None,
    )
    assert stats.failures == 0


# --- the request body, read when the event is built -------------------------------------------------------------


def _request_event(body: bytes | None, **kw: Any) -> tuple[Any, RecorderStats]:
    sink, stats = ListSink(), RecorderStats()
    x = _exchange(sink, stats, request_body=body, **kw)
    x.response_started(200, {"content-type": "application/json"})
    x.feed(b'{"id":"r1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}')
    x.finish()
    return sink.events[0].event(), stats


@pytest.mark.parametrize("padding", [0, DEFER_BYTES], ids=["kept-until-built", "parsed-at-start"])
def test_the_request_body_gives_model_and_stream_whatever_its_size(padding):
    body = json.dumps({"model": "glm-4.6", "stream": True, "messages": [{"role": "user", "content": "x" * padding}]})
    event, stats = _request_event(body.encode())
    assert (event.model, event.stream, stats.failures) == ("glm-4.6", True, 0)


def test_dashscope_streams_asked_for_by_header_are_streams():
    dashscope = {"provider": DASHSCOPE, "endpoint": DASHSCOPE.default_endpoint}
    event, _ = _request_event(b'{"model":"qwen-plus","input":{}}', stream_asked=True, **dashscope)
    assert (event.model, event.stream) == ("qwen-plus", True)
    event, _ = _request_event(b'{"model":"qwen-plus","input":{}}', **dashscope)
    assert event.stream is False


@pytest.mark.parametrize("size", [200_000, DEFER_BYTES + 1], ids=["kept-until-built", "parsed-at-start"])
def test_a_request_body_that_breaks_the_json_parser_still_records_the_request(size):
    event, stats = _request_event(b"[" * size)  # RecursionError inside json.loads
    assert (event.outcome, event.model, event.stream, event.usage.input_tokens) == ("ok", None, False, 3)
    assert stats.failures == 1


# --- event ids ---------------------------------------------------------------------------------------------------


def test_the_event_id_is_made_once_and_the_same_for_every_thread():
    sink, stats = ListSink(), RecorderStats()
    x = _exchange(sink, stats)
    x.finish()
    (captured,) = sink.events
    barrier = threading.Barrier(8)
    seen: list[str] = []

    def ask() -> None:
        barrier.wait()
        seen.append(captured.event_id)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1
    assert uuid.UUID(seen[0]).version == 7
    assert captured.to_row()["event_id"] == seen[0] == captured.event_id


# --- through the SDK: a long stream, recorded exactly ------------------------------------------------------------


LONG = 3000  # output tokens: a stream of several hundred KB, well past DEFER_BYTES


@pytest.fixture(scope="module")
def long_sim() -> Iterator[SimServer]:
    profile = ModelProfile(
        ttft_s=0.02,
        token_s=0.0,
        ttft_jitter=0.0,
        peak_factor=1.0,
        output_tokens=LONG,
        prompt_tokens=100,
        cached_share=0.3,
        reasoning_share=0.5,
    )
    with run_in_thread(SimConfig(models={"glm-4.7": profile})) as server:
        yield server


@pytest.mark.parametrize("factory", [httpx2_client, httpx_client], ids=["httpx2", "httpx"])
def test_a_long_sdk_stream_is_recorded_with_exact_tokens(factory, long_sim, engine):
    providers = [with_base_url(ZAI, long_sim.base_url + "/api/paas/v4")]
    with EventWriter(engine, flush_interval_s=0.05) as writer:
        client = openai.OpenAI(
            base_url=long_sim.base_url + "/api/paas/v4",
            api_key="sk-test",
            http_client=factory(app="long", sink=writer, providers=providers, settings=Settings()),
        )
        stream = client.chat.completions.create(
            model="glm-4.7",
            messages=[{"role": "user", "content": "Write a lot."}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Monitor-App": "billing-job"},
        )
        chunks = [chunk for chunk in stream]
        assert writer.flush(10)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == LONG

    with engine.connect() as conn:
        (row,) = [dict(r._mapping) for r in conn.execute(select(UsageEventRow.__table__))]
    assert (row["outcome"], row["complete"], row["stream"], row["app"]) == ("ok", True, True, "billing-job")
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]) == (
        usage.prompt_tokens,
        usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None,
        LONG,
    )
    assert 20 <= row["ttft_ms"] <= row["latency_ms"]
