"""The SDK capture transport with the real openai and anthropic SDKs against the simulator, on SQLite and Postgres.

Every test checks what a user would: the application gets the same answer as without the transport, and the
database holds exactly one event per request (per attempt, with SDK retries) with the simulator's numbers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
import uvicorn
from sqlalchemy import select

from monitor.capture import (
    AsyncRecordingTransport,
    Recorder,
    RecorderStats,
    RecordingTransport,
    async_httpx2_client,
    async_httpx_client,
    httpx2_client,
    httpx_client,
)
from monitor.config import Settings, settings_from_dict
from monitor.models import UsageEventRow
from monitor.providers import BUILTIN_PROVIDERS, Endpoint, Provider, custom_provider, with_base_url
from monitor.sim import ModelProfile, SimApp, SimConfig, SimServer, run_in_thread
from monitor.store import make_engine
from monitor.writer import EventWriter

MODEL = "glm-4.7"
PROMPT_TOKENS = 100
CACHED = 30  # floor(100 * 0.3)
OUTPUT = 20
REASONING = 10  # floor(20 * 0.5), thinking on by default
KEY = "sk-glmtest-0123456789abcdef.SeCrEtPaRt"
MESSAGES = [{"role": "user", "content": "Say something about latency."}]
FIXED_NOW = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # 11:00 in Beijing: off-peak


def _config() -> SimConfig:
    profile = ModelProfile(
        ttft_s=0.01,
        token_s=0.001,
        ttft_jitter=0.0,
        peak_factor=1.0,
        output_tokens=OUTPUT,
        prompt_tokens=PROMPT_TOKENS,
        cached_share=0.3,
        reasoning_share=0.5,
    )
    # A frozen clock and a reset before each call make two calls' answers byte-identical (ids, text, created).
    return SimConfig(models={MODEL: profile}, fixed_now=FIXED_NOW)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with run_in_thread(_config()) as server:
        yield server


class _GzipEverything:
    """ASGI middleware compressing every response, streams included (each chunk sync-flushed, as nginx does)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        packer = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)

        async def send_gzip(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message["headers"] if k.lower() != b"content-length"]
                message = {**message, "headers": [*headers, (b"content-encoding", b"gzip")]}
            elif message["type"] == "http.response.body":
                more = message.get("more_body", False)
                body = packer.compress(message.get("body", b""))
                body += packer.flush(zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH)
                message = {**message, "body": body}
            await send(message)

        await self.app(scope, receive, send_gzip)


@contextmanager
def _serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a thread; yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def gzip_sim() -> Iterator[str]:
    """A simulator whose every answer is gzip-encoded; yields its base URL."""
    with _serve(_GzipEverything(SimApp(_config()))) as base:
        yield base


class _Moved:
    """ASGI middleware answering ``/old/...`` with a 307 to ``/...`` (a provider that moved its API)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/old/"):
            await receive()
            headers = [(b"location", scope["path"][4:].encode()), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 307, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def _providers(base: str) -> list[Provider]:
    """zai (openai dialect), the Coding Plan's Anthropic endpoint and DashScope native, all on ``base``."""
    coding = BUILTIN_PROVIDERS["zai-coding"]
    anthropic_ep = replace(coding.endpoints[1], base_url=base + "/api/anthropic")
    dashscope = BUILTIN_PROVIDERS["dashscope"]
    return [
        with_base_url(BUILTIN_PROVIDERS["zai"], base + "/api/paas/v4"),
        replace(coding, endpoints=(coding.endpoints[0], anthropic_ep)),
        replace(dashscope, endpoints=(Endpoint("dashscope-native", base + "/api/v1", "dashscope"),)),
    ]


@pytest.fixture
def writer(engine: Any) -> Iterator[EventWriter]:
    with EventWriter(engine, flush_interval_s=0.05) as w:
        yield w


@pytest.fixture
def stats() -> RecorderStats:
    return RecorderStats()


@pytest.fixture
def record(sim: SimServer, writer: EventWriter, stats: RecorderStats) -> dict[str, Any]:
    """Keyword arguments that point a recording client at the test database and the simulator."""
    return {"sink": writer, "providers": _providers(sim.base_url), "settings": Settings(), "stats": stats}


def _rows(engine: Any, writer: EventWriter) -> list[dict[str, Any]]:
    assert writer.flush(10)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(UsageEventRow.__table__).order_by("ts"))]


def _stored(database_url: str) -> list[dict[str, Any]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(UsageEventRow.__table__))]
    finally:
        engine.dispose()


def _only(engine: Any, writer: EventWriter) -> dict[str, Any]:
    rows = _rows(engine, writer)
    assert len(rows) == 1, rows
    return rows[0]


def _assert_ok_tokens(row: dict[str, Any], *, app: str | None, stream: bool, provider: str = "zai") -> None:
    assert row["source"] == "transport"
    assert row["provider"] == provider
    assert row["model"] == MODEL
    assert row["app"] == app
    assert row["vantage"] == "local"
    assert row["outcome"] == "ok"
    assert row["http_status"] == 200
    assert row["error_code"] is None
    assert row["stream"] is stream
    assert row["complete"] is True
    assert row["input_tokens"] == PROMPT_TOKENS
    assert row["cached_input_tokens"] == CACHED
    assert row["output_tokens"] == OUTPUT
    assert row["latency_ms"] > 0
    if stream:
        assert 0 < row["ttft_ms"] <= row["latency_ms"]
    else:
        assert row["ttft_ms"] is None
    assert row["cost_amount"] is not None
    assert row["cost_currency"] == "USD"


def _openai(base: str, http_client: Any = None, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/api/paas/v4", api_key=KEY, http_client=http_client, **kw)


def _chat(client: openai.OpenAI, sim: SimServer, **kw: Any) -> Any:
    sim.reset()
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, **kw)  # type: ignore[arg-type]


def _chat_stream(client: openai.OpenAI, sim: SimServer, **kw: Any) -> list[dict[str, Any]]:
    sim.reset()
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **kw)  # type: ignore[arg-type]
    return [chunk.model_dump() for chunk in stream]


# --- openai SDK ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [httpx2_client, httpx_client], ids=["httpx2", "httpx"])
def test_openai_nonstream_same_answer_one_event(factory, sim, record, engine, writer):
    direct = _chat(_openai(sim.base_url), sim)
    recorded = _chat(_openai(sim.base_url, factory(app="crm-bot", **record)), sim)

    assert recorded.model_dump() == direct.model_dump()
    assert recorded.usage.prompt_tokens == PROMPT_TOKENS
    assert recorded.usage.prompt_tokens_details.cached_tokens == CACHED
    assert recorded.usage.completion_tokens == OUTPUT
    assert recorded.usage.completion_tokens_details.reasoning_tokens == REASONING
    row = _only(engine, writer)
    _assert_ok_tokens(row, app="crm-bot", stream=False)
    assert row["reasoning_tokens"] == REASONING
    assert row["request_id"] == recorded.id
    assert row["cost_amount"] > 0
    assert row["price_source"].startswith("genai-prices")


@pytest.mark.parametrize("include_usage", [True, False], ids=["include_usage", "no_stream_options"])
@pytest.mark.parametrize("factory", [httpx2_client, httpx_client], ids=["httpx2", "httpx"])
def test_openai_stream_same_chunks_one_event(factory, include_usage, sim, record, engine, writer):
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    direct = _chat_stream(_openai(sim.base_url), sim, **kw)
    recorded = _chat_stream(_openai(sim.base_url, factory(app="crm-bot", **record)), sim, **kw)

    assert recorded == direct
    usage = recorded[-1]["usage"]  # Zhipu sends usage on its last chunk whatever stream_options says
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (PROMPT_TOKENS, OUTPUT)
    row = _only(engine, writer)
    _assert_ok_tokens(row, app="crm-bot", stream=True)
    assert row["cached_input_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert row["reasoning_tokens"] == usage["completion_tokens_details"]["reasoning_tokens"] == REASONING
    assert row["finish_reason"] == "stop"


@pytest.mark.parametrize("factory", [async_httpx2_client, async_httpx_client], ids=["httpx2", "httpx"])
def test_async_openai_stream_and_nonstream(factory, sim, record, engine, writer):
    async def run(http_client: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        client = openai.AsyncOpenAI(base_url=sim.base_url + "/api/paas/v4", api_key=KEY, http_client=http_client)
        sim.reset()
        answer = await client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        sim.reset()
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk.model_dump() async for chunk in stream]
        await client.close()
        return answer.model_dump(), chunks

    direct = asyncio.run(run(None))
    recorded = asyncio.run(run(factory(app="async-bot", **record)))

    assert recorded == direct
    rows = _rows(engine, writer)
    assert len(rows) == 2
    by_stream = {r["stream"]: r for r in rows}
    _assert_ok_tokens(by_stream[False], app="async-bot", stream=False)
    _assert_ok_tokens(by_stream[True], app="async-bot", stream=True)
    assert by_stream[True]["reasoning_tokens"] == REASONING


# --- anthropic SDK ------------------------------------------------------------------------------------------


def _anthropic(base: str, http_client: Any = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base + "/api/anthropic", api_key=KEY, http_client=http_client)


def _assert_anthropic_row(row: dict[str, Any], usage: Any, *, stream: bool) -> None:
    _assert_ok_tokens(row, app="claude-code", stream=stream, provider="zai-coding")
    # The anthropic dialect's input_tokens leave cache reads out; the stored total has them in.
    assert row["input_tokens"] == usage.input_tokens + usage.cache_read_input_tokens
    assert row["cached_input_tokens"] == usage.cache_read_input_tokens
    assert row["output_tokens"] == usage.output_tokens
    assert row["reasoning_tokens"] is None  # the anthropic dialect does not break thinking out
    assert row["finish_reason"] == "end_turn"
    # Coding Plan requests are covered by the subscription: priced at zero, and said so.
    assert row["cost_amount"] == Decimal(0)
    assert row["price_source"] == "subscription (Coding Plan)"


def test_anthropic_nonstream(sim, record, engine, writer):
    def call(client: anthropic.Anthropic) -> Any:
        sim.reset()
        return client.messages.create(model=MODEL, max_tokens=200, messages=MESSAGES)  # type: ignore[arg-type]

    direct = call(_anthropic(sim.base_url))
    recorded = call(_anthropic(sim.base_url, httpx2_client(app="claude-code", **record)))

    assert recorded.model_dump() == direct.model_dump()
    assert recorded.usage.input_tokens == PROMPT_TOKENS - CACHED
    _assert_anthropic_row(_only(engine, writer), recorded.usage, stream=False)


def test_anthropic_messages_stream(sim, record, engine, writer):
    def call(client: anthropic.Anthropic) -> tuple[str, Any]:
        sim.reset()
        with client.messages.stream(model=MODEL, max_tokens=200, messages=MESSAGES) as stream:  # type: ignore[arg-type]
            text = "".join(stream.text_stream)
            return text, stream.get_final_message()

    direct_text, direct = call(_anthropic(sim.base_url))
    text, final = call(_anthropic(sim.base_url, httpx2_client(app="claude-code", **record)))

    assert text == direct_text and text
    assert final.model_dump() == direct.model_dump()
    _assert_anthropic_row(_only(engine, writer), final.usage, stream=True)


def test_async_anthropic_stream(sim, record, engine, writer):
    async def call(http_client: Any) -> Any:
        client = anthropic.AsyncAnthropic(
            base_url=sim.base_url + "/api/anthropic", api_key=KEY, http_client=http_client
        )
        sim.reset()
        async with client.messages.stream(model=MODEL, max_tokens=200, messages=MESSAGES) as stream:  # type: ignore[arg-type]
            final = await stream.get_final_message()
        await client.close()
        return final

    direct = asyncio.run(call(None))
    final = asyncio.run(call(async_httpx2_client(app="claude-code", **record)))

    assert final.model_dump() == direct.model_dump()
    _assert_anthropic_row(_only(engine, writer), final.usage, stream=True)


# --- failures -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "outcome"), [("1302", "concurrency_limited"), ("1305", "overloaded")], ids=["1302", "1305"]
)
def test_429_raises_as_usual_and_is_recorded_once(code, outcome, sim, record, engine, writer):
    client = _openai(sim.base_url, httpx2_client(app="crm-bot", **record), max_retries=0)
    with pytest.raises(openai.RateLimitError) as raised:
        _chat(client, sim, extra_headers={"X-Sim-Fail": code})

    assert raised.value.status_code == 429
    assert raised.value.body["code"] == code  # type: ignore[index]  # the SDK still read the error body
    row = _only(engine, writer)
    assert (row["outcome"], row["http_status"], row["error_code"]) == (outcome, 429, code)
    assert row["app"] == "crm-bot" and row["provider"] == "zai" and row["model"] == MODEL
    assert row["input_tokens"] is None and row["cost_amount"] is None
    assert row["error_message"]


def test_each_sdk_retry_is_its_own_event(sim, record, engine, writer):
    client = _openai(sim.base_url, httpx2_client(app="crm-bot", **record), default_headers={"X-Sim-Fail": "1302"})
    with pytest.raises(openai.RateLimitError):
        _chat(client.with_options(max_retries=2), sim)

    rows = _rows(engine, writer)
    assert len(rows) == 3  # the first attempt and two retries
    assert {(r["outcome"], r["error_code"]) for r in rows} == {("concurrency_limited", "1302")}
    assert len({r["event_id"] for r in rows}) == 3


def test_stall_times_out_and_is_recorded_as_timeout(sim, record, engine, writer):
    client = _openai(sim.base_url, httpx2_client(app="crm-bot", **record), max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        _chat(client, sim, stream=True, extra_headers={"X-Sim-Fail": "stall", "X-Sim-Stall-Ms": "3000"})

    row = _only(engine, writer)
    assert row["outcome"] == "timeout"
    assert row["http_status"] is None
    assert row["stream"] is True
    assert 250 <= row["latency_ms"] < 3000


def test_connection_refused_is_a_network_error_and_the_error_is_unchanged(record, engine, writer):
    with SimServer(_config()) as dead:
        base = dead.base_url
    record = {**record, "providers": _providers(base)}
    with httpx_client(app="crm-bot", **record) as client, pytest.raises(httpx.ConnectError):
        client.post(base + "/api/paas/v4/chat/completions", json={"model": MODEL, "messages": MESSAGES})

    row = _only(engine, writer)
    assert (row["outcome"], row["http_status"], row["model"]) == ("network_error", None, MODEL)


def test_cut_stream_is_recorded_incomplete(sim, record, engine, writer):
    client = _openai(sim.base_url, httpx2_client(app="crm-bot", **record), max_retries=0)
    chunks = _chat_stream(client, sim, extra_headers={"X-Sim-Fail": "cut", "X-Sim-Cut-After": "5"})

    assert len(chunks) == 5  # the application got what was sent, and no error
    row = _only(engine, writer)
    assert row["complete"] is False
    assert row["outcome"] == "ok"
    assert row["output_tokens"] is None  # the usage never came
    assert row["ttft_ms"] is not None


@pytest.mark.parametrize("factory", [httpx2_client, httpx_client], ids=["httpx2", "httpx"])
def test_stream_closed_early_by_the_app_is_recorded_incomplete(factory, sim, record, engine, writer):
    client = _openai(sim.base_url, factory(app="crm-bot", **record), max_retries=0)
    sim.reset()
    slow = {"X-Sim-TTFT-Ms": "10", "X-Sim-Token-Ms": "50"}  # 20 tokens: about 1 s in all
    with client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_headers=slow,
    ) as stream:
        got = []
        for chunk in stream:
            got.append(chunk)
            if len(got) == 2:
                break

    row = _only(engine, writer)
    assert row["complete"] is False
    assert row["output_tokens"] is None
    assert row["latency_ms"] < 600  # finished when the app closed, not when the stream would have ended


def test_failing_sink_never_breaks_the_request(sim, stats):
    class Broken:
        def submit(self, event: Any) -> None:
            raise RuntimeError("database on fire")

    kw = {"sink": Broken(), "providers": _providers(sim.base_url), "settings": Settings(), "stats": stats}
    direct = _chat_stream(_openai(sim.base_url), sim)
    recorded = _chat_stream(_openai(sim.base_url, httpx2_client(app="x", **kw)), sim)
    answer = _chat(_openai(sim.base_url, httpx_client(app="x", **kw)), sim)

    assert recorded == direct
    assert answer.usage.completion_tokens == OUTPUT
    assert stats.failures == 2
    assert stats.recorded == 0


def test_unknown_hosts_are_not_recorded(sim, record, engine, writer):
    with run_in_thread(_config()) as other:
        answer = _chat(_openai(other.base_url, httpx2_client(app="x", **record)), other)
        assert answer.usage.completion_tokens == OUTPUT
        # Same host but a path outside every endpoint: not a provider call either.
        with httpx_client(app="x", **record) as client:
            assert client.post(sim.base_url + "/_sim/reset").status_code == 200
        # A GET under a provider's base URL (a model list) is not usage.
        assert [m.id for m in _openai(sim.base_url, httpx2_client(app="x", **record)).models.list()] == [MODEL]

    assert _rows(engine, writer) == []


def test_api_keys_never_reach_the_database(sim, record, engine, writer):
    oa = _openai(sim.base_url, httpx2_client(app="crm-bot", **record), max_retries=0)
    _chat(oa, sim)
    _chat_stream(oa, sim)
    with pytest.raises(openai.RateLimitError):
        _chat(oa, sim, extra_headers={"X-Sim-Fail": "1302"})
    with pytest.raises(openai.AuthenticationError):
        _chat(oa.with_options(api_key="invalid-" + KEY), sim)
    _anthropic(sim.base_url, httpx2_client(app="crm-bot", **record)).messages.create(
        model=MODEL,
        max_tokens=50,
        messages=MESSAGES,  # type: ignore[arg-type]
    )

    rows = _rows(engine, writer)
    assert len(rows) == 5
    assert {r["outcome"] for r in rows} == {"ok", "concurrency_limited", "auth_error"}
    secret_parts = (KEY, KEY.split(".")[1], "0123456789abcdef", "Bearer")
    for row in rows:
        for column, value in row.items():
            for part in secret_parts:
                assert part not in str(value), f"{column} holds part of the API key"


def test_app_header_overrides_app_per_request(sim, record, engine, writer):
    client = _openai(sim.base_url, httpx2_client(app="default-app", **record))
    _chat(client, sim, extra_headers={"X-Monitor-App": "billing-job"})
    _chat(client, sim)

    assert [r["app"] for r in _rows(engine, writer)] == ["billing-job", "default-app"]


def test_app_sees_each_chunk_when_it_is_sent(sim, record, engine, writer):
    client = _openai(sim.base_url, httpx2_client(app="crm-bot", **record))
    sim.reset()
    arrivals = []
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_headers={"X-Sim-TTFT-Ms": "50", "X-Sim-Token-Ms": "30"},
    )
    for _chunk in stream:
        arrivals.append(time.perf_counter() - start)

    assert len(arrivals) == OUTPUT + 1  # 20 tokens and the closing chunk
    assert arrivals[-1] - arrivals[0] >= 0.5  # 20 gaps of 30 ms: nothing was held back
    row = _only(engine, writer)
    assert 50 <= row["ttft_ms"] < 300
    assert row["latency_ms"] >= 600


# --- compression, other dialects, plain httpx ----------------------------------------------------------------


@pytest.mark.parametrize("factory", [httpx2_client, httpx_client], ids=["httpx2", "httpx"])
def test_gzip_answers_are_decoded_for_the_recorder_only(factory, sim, gzip_sim, record, engine, writer):
    record = {**record, "providers": _providers(gzip_sim)}
    with httpx.Client() as raw:  # the server really compresses
        sim.reset()
        r = raw.post(
            gzip_sim + "/api/paas/v4/chat/completions",
            json={"model": MODEL, "messages": MESSAGES},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert r.headers["content-encoding"] == "gzip" and r.json()["usage"]["completion_tokens"] == OUTPUT

    def calls(client: openai.OpenAI) -> tuple[Any, list[dict[str, Any]]]:
        httpx.post(gzip_sim + "/_sim/reset")
        answer = client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        return answer.model_dump(), [c.model_dump() for c in stream]

    direct = calls(_openai(gzip_sim))
    recorded = calls(_openai(gzip_sim, factory(app="gz", **record)))

    assert recorded == direct
    rows = _rows(engine, writer)
    assert len(rows) == 2
    for row in rows:
        _assert_ok_tokens(row, app="gz", stream=row["stream"])
        assert row["reasoning_tokens"] == REASONING


def test_plain_httpx_dashscope_native_stream(sim, record, engine, writer):
    body = {"model": MODEL, "input": {"messages": MESSAGES}, "parameters": {"incremental_output": True}}
    url = sim.base_url + "/api/v1/services/aigc/text-generation/generation"
    headers = {"Authorization": f"Bearer {KEY}", "X-DashScope-SSE": "enable"}
    sim.reset()
    with httpx_client(app="ds", **record) as client, client.stream("POST", url, json=body, headers=headers) as r:
        assert r.status_code == 200
        text = b"".join(r.iter_bytes())

    assert text.count(b"data:") == OUTPUT + 1  # a chunk per token, then the one with the final usage
    row = _only(engine, writer)
    assert (row["provider"], row["model"], row["stream"], row["outcome"]) == ("dashscope", MODEL, True, "ok")
    assert (row["input_tokens"], row["output_tokens"]) == (PROMPT_TOKENS, OUTPUT)
    assert row["ttft_ms"] is not None and row["complete"] is True


def test_transport_classes_wrap_a_transport_of_your_own(sim, record, engine, writer):
    recorder = Recorder("wrapped", **record)
    url = sim.base_url + "/api/paas/v4/chat/completions"
    body = {"model": MODEL, "messages": MESSAGES}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(transport=RecordingTransport(httpx.HTTPTransport(retries=1), recorder=recorder)) as client:
        assert client.post(url, json=body, headers=headers).json()["usage"]["completion_tokens"] == OUTPUT

    async def run() -> int:
        transport = AsyncRecordingTransport(recorder=recorder)
        async with httpx.AsyncClient(transport=transport) as client:
            return (await client.post(url, json=body, headers=headers)).status_code

    assert asyncio.run(run()) == 200
    assert recorder.flush(10)
    rows = _rows(engine, writer)
    assert [(r["app"], r["outcome"], r["output_tokens"]) for r in rows] == [("wrapped", "ok", OUTPUT)] * 2
    assert recorder.stats.recorded == 2 and recorder.stats.failures == 0


# --- the default recorder: from the config file ---------------------------------------------------------------


def test_default_recorder_comes_from_the_config(sim, database_url, tmp_path, monkeypatch):
    config = tmp_path / "glm-monitor.toml"
    config.write_text(
        f'vantage = "tokyo-office"\n[database]\nurl = "{database_url}"\n'
        f'[providers.zai]\nbase_url = "{sim.base_url}/api/paas/v4"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("GLM_MONITOR_CONFIG", str(config))
    recorder = Recorder("from-config")
    answer = _chat(_openai(sim.base_url, httpx2_client(recorder=recorder)), sim)

    assert answer.usage.completion_tokens == OUTPUT
    assert recorder.flush(10)
    rows = _stored(database_url)
    assert [(r["app"], r["vantage"], r["provider"], r["output_tokens"]) for r in rows] == [
        ("from-config", "tokyo-office", "zai", OUTPUT)
    ]


def test_a_broken_config_disables_recording_not_the_app(sim, tmp_path, monkeypatch):
    config = tmp_path / "glm-monitor.toml"
    config.write_text('[database]\nurll = "sqlite:///x.db"\n', encoding="utf-8")
    monkeypatch.setenv("GLM_MONITOR_CONFIG", str(config))
    recorder = Recorder("x")
    answer = _chat(_openai(sim.base_url, httpx2_client(recorder=recorder)), sim)

    assert answer.usage.completion_tokens == OUTPUT
    assert recorder.sink is None
    assert recorder.stats.failures == 1 and recorder.stats.recorded == 0


def test_importing_the_transport_does_not_import_httpx2():
    code = "import sys, monitor.capture; assert 'httpx2' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_redirect_is_not_an_answer_the_request_it_leads_to_is(record, engine, writer):
    with _serve(_Moved(SimApp(_config()))) as base:
        moved = custom_provider("moved", base + "/old/api/paas/v4")
        record = {**record, "providers": [*_providers(base), moved]}
        client = _openai(base + "/old", httpx2_client(app="x", **record))
        answer = client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]

    assert answer.usage.completion_tokens == OUTPUT
    row = _only(engine, writer)
    assert (row["provider"], row["http_status"], row["output_tokens"]) == ("zai", 200, OUTPUT)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_records_through_a_writer_of_its_own(sim, database_url):
    # As gunicorn --preload does: the client is made before the fork and used only in the worker.
    settings = settings_from_dict({"database": {"url": database_url}})
    recorder = Recorder("worker", settings=settings, providers=_providers(sim.base_url))
    client = httpx_client(recorder=recorder)
    body = {"model": MODEL, "messages": MESSAGES}
    pid = os.fork()
    if pid == 0:  # the worker: report through the exit code only
        code = 3
        try:
            r = client.post(sim.base_url + "/api/paas/v4/chat/completions", json=body, headers={"Authorization": KEY})
            code = 0 if r.status_code == 200 and recorder.flush(10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    rows = _stored(database_url)
    assert [(r["app"], r["provider"], r["output_tokens"]) for r in rows] == [("worker", "zai", OUTPUT)]


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate", "deflate, gzip"])
def test_fallback_decoders_match_httpx(coding):
    # Used only when httpx's private decoders cannot be imported; they must give the recorder the same bytes.
    from monitor.capture.transport import _decoder, _decoder_table, _Flavour, _joined

    data = b"data: " + b"x" * 5000 + b"\n\n"
    encoders = {
        "gzip": lambda b: zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16),
        "deflate": lambda b: zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS),
        "raw-deflate": lambda b: zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS),
    }
    body = data
    for name in [c.strip() for c in coding.split(",")]:
        packer = encoders[name](body)
        body = packer.compress(body) + packer.flush()
    header = coding.replace("raw-deflate", "deflate")
    fallback = _Flavour("none", object, object, *_decoder_table("monitor._no_such_httpx"))
    for flavour in (fallback, _Flavour("httpx", object, object, *_decoder_table("httpx"))):
        decoder = _decoder(header, flavour)
        assert decoder is not None
        out = b"".join(_joined(decoder.decode(body[i : i + 7])) for i in range(0, len(body), 7))
        assert out + _joined(decoder.flush()) == data, flavour.name
