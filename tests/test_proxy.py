"""The recording reverse proxy, end to end: real SDKs -> proxy -> simulator or fixture upstream -> database.

Every comparison with a direct call uses two identical simulators (same seed, frozen clock): the direct client
talks to one, the proxy to the other, so the n-th answer of each is the same to the byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import hashlib
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from yarl import URL

from monitor.capture.proxy import ProxyServer, UsageChunkFilter, ask_for_usage, build_app
from monitor.capture.recorder import RecorderStats
from monitor.capture.upstream import UpstreamClient
from monitor.config import Settings, settings_from_dict
from monitor.models import UsageEventRow
from monitor.providers import Provider
from monitor.sim import ModelProfile, SimConfig, SimServer, estimate_prompt_tokens
from monitor.writer import EventWriter
from tests.casefiles import load_cases, load_http
from tests.fixture_server import run_fixture_server, without_usage_event
from tests.forward_proxy import run_forward_proxy

API_KEY = "sk-proxytest-0123456789abcdef"
MODEL = "glm-4.7"
PROMPT = "Say hello to the proxy"
PROFILE = ModelProfile(
    ttft_s=0.02, token_s=0.002, output_tokens=12, cached_share=0.25, reasoning_share=0.5, ttft_jitter=0.0
)
PROMPT_TOKENS = estimate_prompt_tokens(len(PROMPT))
MESSAGES: Any = [{"role": "user", "content": PROMPT}]


def sim_config() -> SimConfig:
    return SimConfig(models={MODEL: PROFILE}, seed=7, fixed_now=datetime(2026, 3, 2, 1, 0, tzinfo=UTC))


def pointed(settings: Settings, origin: str) -> dict[str, Provider]:
    """The catalog with every endpoint's scheme and host moved to ``origin`` (paths kept)."""
    out = {}
    for pid, provider in settings.catalog().items():
        endpoints = []
        for ep in provider.endpoints:
            path = "/" + ep.base_url.split("://", 1)[1].partition("/")[2]
            endpoints.append(dataclasses.replace(ep, base_url=origin + path.rstrip("/")))
        out[pid] = dataclasses.replace(provider, endpoints=tuple(endpoints))
    return out


@dataclasses.dataclass
class Rig:
    """A proxy recording into a real database, in front of ``upstream_url``."""

    proxy: ProxyServer
    writer: EventWriter
    stats: RecorderStats
    engine: Engine

    @property
    def url(self) -> str:
        return self.proxy.url

    def rows(self, expected: int, timeout: float = 10.0) -> list[UsageEventRow]:
        """Wait until ``expected`` exchanges are recorded, write them, and return every stored row in order."""
        deadline = time.monotonic() + timeout
        while self.stats.recorded + self.stats.failures < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.stats.failures == 0
        assert self.writer.flush(timeout)
        with Session(self.engine) as session:
            return list(session.scalars(select(UsageEventRow).order_by(UsageEventRow.id)))


@contextlib.contextmanager
def proxy_rig(engine: Engine, origin: str, *, timeout: float | None = None) -> Iterator[Rig]:
    settings = settings_from_dict({"vantage": "test-vantage"})
    stats = RecorderStats()
    with EventWriter(engine, flush_interval_s=0.05) as writer:
        app = build_app(settings, writer, stats=stats, timeout=timeout, providers=pointed(settings, origin))
        with ProxyServer(app) as proxy:
            yield Rig(proxy, writer, stats, engine)


@pytest.fixture
def twins() -> Iterator[tuple[SimServer, SimServer]]:
    """(direct, upstream): two identical simulators."""
    with SimServer(sim_config()) as direct, SimServer(sim_config()) as upstream:
        yield direct, upstream


@pytest.fixture
def rig(engine: Engine, twins: tuple[SimServer, SimServer]) -> Iterator[Rig]:
    with proxy_rig(engine, twins[1].base_url) as r:
        yield r


def row_columns(row: UsageEventRow) -> dict[str, Any]:
    return {c.name: getattr(row, c.name) for c in UsageEventRow.__table__.columns}


def expect_tokens(row: UsageEventRow, *, reasoning: bool = True) -> None:
    assert row.input_tokens == PROMPT_TOKENS
    assert row.cached_input_tokens == PROMPT_TOKENS // 4
    assert row.output_tokens == PROFILE.output_tokens
    if reasoning:
        assert row.reasoning_tokens == PROFILE.output_tokens // 2
    assert row.model == MODEL
    assert row.complete is True


# -- real SDKs through the proxy -------------------------------------------------------------------------------


def test_openai_sync_nonstream_and_stream_equal_direct(rig: Rig, twins: tuple[SimServer, SimServer]) -> None:
    direct = openai.OpenAI(base_url=twins[0].base_url + "/api/paas/v4", api_key=API_KEY, max_retries=0)
    proxied = openai.OpenAI(
        base_url=rig.url + "/zai", api_key=API_KEY, max_retries=0, default_headers={"X-Monitor-App": "billing-bot"}
    )
    results = []
    for client in (direct, proxied):
        plain = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        chunks = [c.model_dump() for c in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)]
        results.append((plain.model_dump(), chunks))
    assert results[1] == results[0]
    assert results[0][0]["usage"]["prompt_tokens"] == PROMPT_TOKENS

    rows = rig.rows(2)
    assert len(rows) == 2
    for row, stream in zip(rows, (False, True), strict=True):
        expect_tokens(row)
        assert (row.source, row.provider, row.outcome, row.http_status) == ("proxy", "zai", "ok", 200)
        assert (row.app, row.vantage, row.stream, row.finish_reason) == ("billing-bot", "test-vantage", stream, "stop")
        assert row.latency_ms is not None and row.latency_ms > 0
        assert (row.ttft_ms is not None) is stream
        assert row.cost_currency == "USD"


def test_openai_async_streams_equal_direct(rig: Rig, twins: tuple[SimServer, SimServer]) -> None:
    async def run(base_url: str) -> list[Any]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
        out: list[Any] = []
        plain = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        out.append(plain.model_dump())
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        out.append([c.model_dump() async for c in stream])
        await client.close()
        return out

    async def both() -> tuple[list[Any], list[Any]]:
        direct = await run(twins[0].base_url + "/api/paas/v4")
        proxied = await run(rig.url + "/zai")
        return direct, proxied

    direct, proxied = asyncio.run(both())
    assert proxied == direct
    rows = rig.rows(2)
    assert len(rows) == 2
    for row in rows:
        expect_tokens(row)
        assert row.app is None


def test_dashscope_compat_stream_hides_the_added_usage_chunk(rig: Rig, twins: tuple[SimServer, SimServer]) -> None:
    direct = openai.OpenAI(base_url=twins[0].base_url + "/compatible-mode/v1", api_key=API_KEY, max_retries=0)
    proxied = openai.OpenAI(base_url=rig.url + "/dashscope", api_key=API_KEY, max_retries=0)
    runs = []
    for client in (direct, proxied):
        chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        runs.append([c.model_dump() for c in chunks])
    assert runs[1] == runs[0]
    assert all(chunk["choices"] for chunk in runs[1])  # no usage-only chunk reached the client
    assert all(chunk["usage"] is None for chunk in runs[1])
    # A client that asks for usage gets the usage chunk, through the proxy as directly.
    asked = []
    for client in (direct, proxied):
        stream = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        asked.append([c.model_dump() for c in stream])
    assert asked[1] == asked[0]
    assert asked[1][-1]["choices"] == [] and asked[1][-1]["usage"]["prompt_tokens"] == PROMPT_TOKENS

    rows = rig.rows(2)
    assert len(rows) == 2
    for row in rows:
        assert (row.provider, row.outcome, row.stream) == ("dashscope", "ok", True)
        expect_tokens(row, reasoning=False)
        assert row.cost_currency == "CNY"


def test_anthropic_stream_equals_direct(rig: Rig, twins: tuple[SimServer, SimServer]) -> None:
    results = []
    for base_url in (twins[0].base_url + "/api/anthropic", rig.url + "/zai-anthropic"):
        client = anthropic.Anthropic(
            base_url=base_url, api_key=API_KEY, max_retries=0, default_headers={"X-Monitor-App": "claude-code"}
        )
        with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
            events = [e.model_dump() for e in stream]
            final = stream.get_final_message().model_dump()
        results.append((events, final))
    assert results[1] == results[0]

    (row,) = rig.rows(1)
    assert (row.provider, row.outcome, row.app, row.stream) == ("zai-coding", "ok", "claude-code", True)
    final = results[0][1]["usage"]
    assert row.input_tokens == final["input_tokens"] + (final["cache_read_input_tokens"] or 0)
    assert row.cached_input_tokens == (final["cache_read_input_tokens"] or 0)
    assert row.output_tokens == final["output_tokens"] == PROFILE.output_tokens
    assert row.input_tokens == PROMPT_TOKENS


@pytest.mark.parametrize(("kind", "outcome"), [("1302", "concurrency_limited"), ("1305", "overloaded")])
def test_429_reaches_the_client_unchanged_and_is_recorded(
    rig: Rig, twins: tuple[SimServer, SimServer], kind: str, outcome: str
) -> None:
    errors = []
    for base_url in (twins[0].base_url + "/api/paas/v4", rig.url + "/zai"):
        client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_headers={"X-Sim-Fail": kind})
        errors.append((info.value.status_code, info.value.response.content, info.value.body))
    assert errors[1] == errors[0]
    assert errors[1][0] == 429

    (row,) = rig.rows(1)
    assert (row.outcome, row.http_status, row.error_code, row.model) == (outcome, 429, kind, MODEL)
    assert row.input_tokens is None


def test_get_requests_pass_through_and_are_not_recorded(rig: Rig, twins: tuple[SimServer, SimServer]) -> None:
    direct = httpx.get(twins[0].base_url + "/api/paas/v4/models", headers={"Authorization": f"Bearer {API_KEY}"})
    proxied = httpx.get(rig.url + "/zai/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content) == (200, direct.content)
    assert rig.rows(0) == []


def test_unknown_route_lists_the_routes(rig: Rig) -> None:
    answer = httpx.post(rig.url + "/nope/chat/completions", json={})
    assert answer.status_code == 404
    body = answer.json()
    assert "/nope/chat/completions" in body["error"]["message"]
    assert {"/zai", "/zai-coding", "/zai-anthropic", "/bigmodel", "/dashscope", "/openrouter"} <= set(body["routes"])
    assert body["routes"]["/zai-anthropic"]["dialect"] == "anthropic"
    assert rig.rows(0) == []


# -- outgoing proxies ------------------------------------------------------------------------------------------

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _environment_proxy(monkeypatch: pytest.MonkeyPatch, http: str, no: str = "") -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", http)
    if no:
        monkeypatch.setenv("NO_PROXY", no)


def test_upstream_requests_go_through_the_environment_proxy(
    engine: Engine, twins: tuple[SimServer, SimServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = twins[1]
    with run_forward_proxy() as forward:
        # Credentials in the proxy URL go to the proxy as Proxy-Authorization, never upstream.
        _environment_proxy(monkeypatch, forward.url.replace("http://", "http://corp:s3cret@"))
        with proxy_rig(engine, upstream.base_url) as rig:
            # The client itself talks to the recording proxy directly (its httpx would honour HTTP_PROXY too).
            client = openai.OpenAI(
                base_url=f"{rig.url}/zai", api_key=API_KEY, max_retries=0, http_client=httpx.Client(trust_env=False)
            )
            chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
            (row,) = rig.rows(1)
    (line,) = forward.seen  # the one upstream request, in absolute form, as a proxy receives it
    assert line.startswith(f"POST {upstream.base_url}/") and line.endswith("/chat/completions")
    assert [name.lower() for name, _ in forward.proxy_headers] == ["proxy-authorization"]
    assert chunks and chunks[-1].choices[0].finish_reason == "stop"
    assert (row.outcome, row.http_status) == ("ok", 200)
    expect_tokens(row)


def test_no_proxy_hosts_are_reached_directly(
    engine: Engine, twins: tuple[SimServer, SimServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = twins[1]
    with run_forward_proxy() as forward:
        _environment_proxy(monkeypatch, forward.url, no="localhost,127.0.0.1")
        with proxy_rig(engine, upstream.base_url) as rig:
            client = openai.OpenAI(
                base_url=f"{rig.url}/zai", api_key=API_KEY, max_retries=0, http_client=httpx.Client(trust_env=False)
            )
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
            (row,) = rig.rows(1)
    assert forward.seen == []
    assert row.outcome == "ok"


@pytest.mark.parametrize(
    ("url", "no_proxy", "expected"),
    [
        ("https://api.z.ai/api/paas/v4", "", "https-proxy"),
        ("http://vllm.lan:8000/v1", "", "http-proxy"),
        ("https://api.z.ai/api/paas/v4", "z.ai", None),
        ("https://api.z.ai/api/paas/v4", ".z.ai", None),
        ("https://api.z.ai/api/paas/v4", "bigmodel.cn, api.z.ai:443", None),
        ("https://api.z.ai/api/paas/v4", "api.z.ai:8443", "https-proxy"),
        ("https://api.z.ai/api/paas/v4", "xz.ai", "https-proxy"),
        ("https://openrouter.ai/api/v1", "*", None),
    ],
)
def test_which_upstreams_use_a_proxy(url: str, no_proxy: str, expected: str | None) -> None:
    client = UpstreamClient(proxies={"https": "https-proxy", "http": "http-proxy", "no": no_proxy})
    assert client.proxy_for(URL(url)) == expected
    assert UpstreamClient(proxies={"all": "socks-or-any"}).proxy_for(URL(url)) == "socks-or-any"
    assert UpstreamClient(proxies={}).proxy_for(URL(url)) is None


# -- byte-identical streams from the recorded fixtures ---------------------------------------------------------

STREAM_CASES = [c for c in load_cases() if c.response.headers.get("content-type", "").startswith("text/event-stream")]
ROUTES = {("openai", "zai"): "zai", ("openai", "dashscope"): "dashscope", ("openai", "openrouter"): "openrouter"}


def _route(dialect: str, provider: str) -> str:
    if dialect == "anthropic":
        return "zai-anthropic"
    if dialect == "dashscope":
        return "dashscope-native"
    return ROUTES[(dialect, provider)]


def _request(dialect: str, model: str, include_usage: bool) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(path after the base URL, JSON body, extra headers) of a streaming request in ``dialect``."""
    if dialect == "anthropic":
        return "/v1/messages", {"model": model, "max_tokens": 64, "messages": MESSAGES, "stream": True}, {}
    if dialect == "dashscope":
        body = {"model": model, "input": {"messages": MESSAGES}, "parameters": {"incremental_output": True}}
        return "/services/aigc/text-generation/generation", body, {"X-DashScope-SSE": "enable"}
    body = {"model": model, "messages": MESSAGES, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return "/chat/completions", body, {}


def _fetch(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str, bytes]:
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", url, content=json.dumps(body).encode(), headers=headers) as response,
    ):
        raw = b"".join(response.iter_raw())
        return response.status_code, response.headers.get("content-type", ""), raw


# stream_options is an OpenAI-dialect option: the other dialects are requested one way only.
FIXTURE_RUNS = [(c, False) for c in STREAM_CASES] + [(c, True) for c in STREAM_CASES if c.dialect == "openai"]


@pytest.mark.parametrize(
    ("case", "include_usage"),
    FIXTURE_RUNS,
    ids=[f"{c.name}-{'usage-asked' if asked else 'usage-not-asked'}" for c, asked in FIXTURE_RUNS],
)
def test_fixture_streams_are_byte_identical(engine: Engine, case: Any, include_usage: bool) -> None:
    with run_fixture_server() as upstream, proxy_rig(engine, upstream.url) as rig:
        path, body, extra = _request(case.dialect, case.request_model, include_usage)
        headers = {"Authorization": f"Bearer {API_KEY}", "X-Fixture": case.name, "Content-Type": "application/json"}
        headers.update(extra)
        direct = _fetch(upstream.url + "/direct" + path, body, headers)
        proxied = _fetch(f"{rig.url}/{_route(case.dialect, case.provider)}{path}", body, headers)
        assert proxied[:2] == direct[:2]
        assert hashlib.sha256(proxied[2]).hexdigest() == hashlib.sha256(direct[2]).hexdigest()
        full = load_http(case.name).body
        if case.name == "dashscope_compat_stream_include_usage_cached":
            # The proxy asked for usage either way; the client gets the usage chunk only when it asked.
            assert json.loads(upstream.app.requests[1].body)["stream_options"] == {"include_usage": True}
            assert direct[2] == (full if include_usage else without_usage_event(full))
            assert direct[2] != full or include_usage
        else:
            assert direct[2] == full

        (row,) = rig.rows(1)
        expect = case.expect
        assert row.outcome == expect["outcome"]
        assert row.http_status == expect["http_status"]
        for key in ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens"):
            assert getattr(row, key) == expect[key], key
        assert row.model == (expect["model"] or case.request_model)
        assert row.complete is expect.get("complete", True)
        assert row.stream is True
        charged = _charged(full)
        if case.provider == "openrouter" and charged is not None:
            # Recorded at what OpenRouter says it charged, whatever model it was.
            assert (row.cost_amount, row.cost_currency, row.price_source) == (
                charged,
                "USD",
                "openrouter usage.cost",
            )


def _charged(stream: bytes) -> Decimal | None:
    """The last ``usage.cost`` of an SSE body, read plainly (every ``data:`` line that is JSON)."""
    cost = None
    for line in stream.splitlines():
        if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
            usage = json.loads(line[5:]).get("usage")
            if isinstance(usage, dict) and "cost" in usage:
                cost = Decimal(str(usage["cost"]))
    return cost


def test_compressed_body_is_forwarded_compressed_and_recorded_decoded(engine: Engine) -> None:
    with run_fixture_server() as upstream, proxy_rig(engine, upstream.url) as rig:
        headers = {
            "Authorization": f"Bearer {API_KEY}",
            "X-Fixture": "zai_nonstream_cached_reasoning",
            "X-Fixture-Gzip": "1",
            "Accept-Encoding": "gzip",
        }
        body = {"model": "glm-4.6", "messages": MESSAGES}
        direct = _fetch(upstream.url + "/api/paas/v4/chat/completions", body, headers)
        proxied = _fetch(rig.url + "/zai/chat/completions", body, headers)
        assert proxied == direct
        assert gzip.decompress(proxied[2]) == load_http("zai_nonstream_cached_reasoning").body
        (row,) = rig.rows(1)
        assert (row.input_tokens, row.cached_input_tokens, row.output_tokens, row.reasoning_tokens) == (9, 4, 329, 253)
        assert (row.model, row.outcome, row.stream) == ("glm-4.6", "ok", False)


# -- headers and secrets ----------------------------------------------------------------------------------------


def test_headers_forwarded_except_app_and_hop_by_hop_and_key_never_stored(engine: Engine) -> None:
    with run_fixture_server() as upstream, proxy_rig(engine, upstream.url) as rig:
        client = openai.OpenAI(base_url=rig.url + "/zai", api_key=API_KEY, max_retries=0)
        stream = client.chat.completions.create(
            model="glm-4.6",
            messages=MESSAGES,
            stream=True,
            extra_headers={"X-Monitor-App": "nightly-batch", "X-Fixture": "zai_stream_usage_final_chunk"},
            extra_query={"trace": "a b/é"},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream)
        assert text == "\nHi! How can I help you today?"
        raw = httpx.post(
            rig.url + "/zai/chat/completions?x=1&x=2",
            content=b'{"model":"glm-4.6","messages":[]}',
            headers={
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "secret-hop",
                "TE": "trailers",
                "Proxy-Authorization": "Basic abc",
                "X-Fixture": "zai_nonstream_cached_reasoning",
                "x-api-key": API_KEY,
            },
        )
        assert raw.status_code == 200
        host = upstream.url.removeprefix("http://")

        first, second = upstream.app.requests
        assert first.path == "/api/paas/v4/chat/completions"
        assert first.query == httpx.URL("http://x/", params={"trace": "a b/é"}).query
        assert first.header("authorization") == f"Bearer {API_KEY}"
        assert first.header("x-monitor-app") is None
        assert first.header("host") == host
        assert json.loads(first.body)["stream_options"] == {"include_usage": True}
        assert second.query == b"x=1&x=2"
        assert second.body == b'{"model":"glm-4.6","messages":[]}'
        assert second.header("x-api-key") == API_KEY
        assert second.header("content-length") == str(len(second.body))
        for hop in ("x-hop", "te", "proxy-authorization"):
            assert second.header(hop) is None, hop
        assert second.header("connection") in (None, "keep-alive")

        rows = rig.rows(2)
        assert [r.app for r in rows] == ["nightly-batch", None]
        assert rows[0].input_tokens == 3859
        for row in rows:
            for name, value in row_columns(row).items():
                assert API_KEY not in str(value), name
                assert "proxytest" not in str(value), name


# -- the request filter and rewrite on their own ------------------------------------------------------------------


def _chunkings(data: bytes, seed: int) -> Iterator[list[bytes]]:
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    for _ in range(20):
        pieces, i = [], 0
        while i < len(data):
            n = rng.randint(1, 40)
            pieces.append(data[i : i + n])
            i += n
        yield pieces


SSE_OPENAI = [c.name for c in STREAM_CASES if c.dialect == "openai"]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("name", SSE_OPENAI)
def test_usage_filter_removes_only_the_usage_event_however_the_stream_is_cut(name: str, line_end: bytes) -> None:
    body = load_http(name).body
    expected = without_usage_event(body)
    body, expected = body.replace(b"\n", line_end), expected.replace(b"\n", line_end)
    for pieces in _chunkings(body, seed=len(name)):
        f = UsageChunkFilter()
        out = b"".join(f.feed(p) for p in pieces) + f.finish()
        assert out == expected
        assert f.withheld == len(body) - len(expected)


def test_usage_filter_passes_events_as_soon_as_their_data_line_is_complete() -> None:
    f = UsageChunkFilter()
    assert f.feed(b": keep-alive\n") == b""  # undecided until the event ends
    assert f.feed(b"\n") == b": keep-alive\n\n"
    assert f.feed(b'data: {"choices":[{"delta":{}}]}') == b""
    assert f.feed(b"\n") == b'data: {"choices":[{"delta":{}}]}\n'
    assert f.feed(b"\n") == b"\n"
    assert f.feed(b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n') == b""
    assert f.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert f.feed(b'data: {"choices":[],"usage":nu') == b""
    assert f.finish() == b'data: {"choices":[],"usage":nu'  # a cut event is the client's


def test_ask_for_usage_keeps_the_body_otherwise_unchanged() -> None:
    body = b'{ "model": "glm-4.7",\n  "messages": [{"role":"user","content":"\xe3\x81\x82"}], "stream": true }\n'
    changed = ask_for_usage(body)
    assert changed is not None
    assert changed.startswith(body.strip()[:-1].rstrip())
    assert json.loads(changed) == {**json.loads(body), "stream_options": {"include_usage": True}}
    both = ask_for_usage(b'{"stream":true,"stream_options":{"include_usage":false,"x":1}}')
    assert both is not None and json.loads(both)["stream_options"] == {"include_usage": True, "x": 1}
    assert ask_for_usage(b"[1]") is None
    assert ask_for_usage(b'{"stream_options": 3}') is None


# -- failures ------------------------------------------------------------------------------------------------------


def test_client_disconnect_closes_the_upstream_and_records_an_incomplete_event(
    rig: Rig, twins: tuple[SimServer, SimServer]
) -> None:
    upstream = twins[1]
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST",
            rig.url + "/zai/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}", "X-Sim-Token-Ms": "2000"},
        ) as response,
    ):
        # Keep the iterator: a dropped one is closed at once, which closes the connection early.
        raw = response.iter_raw()
        first = next(raw)
        assert first.startswith(b"data: ")
        assert upstream.stats()["models"][MODEL]["in_flight"] == 1
    deadline = time.monotonic() + 5
    while upstream.stats()["models"][MODEL]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert upstream.stats()["models"][MODEL]["in_flight"] == 0  # the upstream request was closed
    (row,) = rig.rows(1)
    assert row.complete is False
    assert row.outcome == "ok"
    assert row.output_tokens is None or row.output_tokens < PROFILE.output_tokens
    assert row.ttft_ms is not None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_upstream_down_gives_502_and_a_network_error_event(engine: Engine) -> None:
    with proxy_rig(engine, f"http://127.0.0.1:{_closed_port()}") as rig:
        client = openai.OpenAI(base_url=rig.url + "/zai", api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert info.value.status_code == 502
        assert info.value.response.json()["error"]["type"] == "upstream_unreachable"
        assert API_KEY not in info.value.response.text
        (row,) = rig.rows(1)
        assert (row.outcome, row.http_status, row.model, row.provider) == ("network_error", None, MODEL, "zai")


def test_upstream_stall_gives_504_and_a_timeout_event(engine: Engine) -> None:
    with SimServer(sim_config()) as sim, proxy_rig(engine, sim.base_url, timeout=0.3) as rig:
        client = openai.OpenAI(base_url=rig.url + "/zai", api_key=API_KEY, max_retries=0)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES, extra_headers={"X-Sim-Fail": "stall", "X-Sim-Stall-Ms": "5000"}
            )
        assert time.monotonic() - started < 3
        assert info.value.status_code == 504
        assert info.value.response.json()["error"]["type"] == "upstream_timeout"
        (row,) = rig.rows(1)
        assert (row.outcome, row.http_status) == ("timeout", None)


def test_upstream_reset_mid_stream_breaks_the_client_connection(rig: Rig) -> None:
    client = openai.OpenAI(base_url=rig.url + "/zai", api_key=API_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, extra_headers={"X-Sim-Fail": "reset", "X-Sim-Cut-After": "3"}
    )
    got = []
    with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
        for chunk in stream:
            got.append(chunk)
    assert len(got) >= 1
    (row,) = rig.rows(1)
    assert row.complete is False


def test_many_concurrent_streams_are_each_recorded_once(rig: Rig) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, extra_headers={"X-Monitor-App": f"app-{i % 3}"}
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    async def run() -> list[str]:
        clients = [openai.AsyncOpenAI(base_url=rig.url + "/zai", api_key=API_KEY, max_retries=0) for _ in range(8)]
        texts = await asyncio.gather(*(one(clients[i % 8], i) for i in range(40)))
        for c in clients:
            await c.close()
        return list(texts)

    texts = asyncio.run(run())
    assert len(texts) == 40 and all(texts)
    rows = rig.rows(40)
    assert len(rows) == 40
    assert {r.outcome for r in rows} == {"ok"}
    assert sorted(r.app or "" for r in rows).count("app-0") == 14
    assert all(r.output_tokens == PROFILE.output_tokens for r in rows)
    assert threading.active_count() < 50


def test_a_client_that_gives_up_before_the_answer_starts_is_recorded_as_cancelled(engine: Engine) -> None:
    """Not as a complete network_error: the upstream did nothing wrong, the client left (issue 13)."""
    import asyncio

    from tests.fixture_server import serve_asgi

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await asyncio.sleep(2)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    with serve_asgi(slow) as origin, proxy_rig(engine, origin) as rig:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                rig.url + "/zai/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=httpx.Timeout(5, read=0.3),
            )
        (row,) = rig.rows(1)
    assert (row.outcome, row.http_status, row.complete) == ("cancelled", None, False)
    assert "before any answer" in row.error_message


def test_an_upstream_that_compresses_anyway_never_passes_the_usage_chunk_the_client_did_not_ask_for(
    engine: Engine,
) -> None:
    """The proxy asks for usage with Accept-Encoding: identity; an upstream that gzips all the same used to make the
    proxy give up filtering, and the added `choices: []` chunk reached clients that index choices[0] (issue 13)."""
    import gzip

    import openai

    case = next(c for c in STREAM_CASES if c.name == "dashscope_compat_stream_include_usage_cached")
    with run_fixture_server() as upstream, proxy_rig(engine, upstream.url) as rig:
        path, body, _ = _request(case.dialect, case.request_model, include_usage=False)
        headers = {"Authorization": f"Bearer {API_KEY}", "X-Fixture": case.name, "X-Fixture-Gzip": "force"}
        status, _, raw = _fetch(f"{rig.url}/{_route(case.dialect, case.provider)}{path}", body, headers)
        client = openai.OpenAI(
            base_url=f"{rig.url}/{_route(case.dialect, case.provider)}",
            api_key=API_KEY,
            max_retries=0,
            default_headers={"X-Fixture": case.name, "X-Fixture-Gzip": "force"},
        )
        chunks = list(client.chat.completions.create(model=case.request_model, messages=MESSAGES, stream=True))
        rows = rig.rows(2)
    full = load_http(case.name).body
    assert upstream.app.requests[0].header("accept-encoding") == "identity"  # asked for, and ignored
    assert status == 200
    assert raw == without_usage_event(full)  # decoded for the client: what it gets from an upstream asked plainly
    assert raw != gzip.compress(full, mtime=0)
    assert all(c.choices for c in chunks)  # every chunk has a choice: chunk.choices[0] is safe
    for row in rows:
        assert (row.input_tokens, row.output_tokens) == (case.expect["input_tokens"], case.expect["output_tokens"])
