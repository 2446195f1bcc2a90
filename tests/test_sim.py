"""The simulated provider, exercised over real HTTP on 127.0.0.1 with httpx and the real openai / anthropic SDKs.

Each answer is compared with the recorded fixtures (status, body shape, codes, messages) and parsed with the
project's own usage parser and outcome classifier, so the simulator stays interchangeable with a provider.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest

from monitor.outcomes import Outcome, classify, classify_stream_end
from monitor.sim import (
    CST,
    FAILURE_KINDS,
    CodingPlan,
    ModelProfile,
    SimConfig,
    SimServer,
    demo_config,
    estimate_prompt_tokens,
    run_in_thread,
)
from monitor.usage import parse_response
from tests.casefiles import load_cases, load_http

ZHIPU = "/api/paas/v4/chat/completions"
CODING = "/api/coding/paas/v4/chat/completions"
COMPAT = "/compatible-mode/v1/chat/completions"
ANTHROPIC = "/api/anthropic/v1/messages"
NATIVE = "/api/v1/services/aigc/text-generation/generation"
AUTH = {"Authorization": "Bearer test-key"}
OFF_PEAK = "2026-11-24T10:00:00+08:00"  # a Tuesday morning in Beijing
PEAK = "2026-11-24T15:30:00+08:00"
ZHIPU_ID = re.compile(r"^\d{14}[0-9a-f]{16}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
EXPECTED_OUTCOME = {case.name: case.expect["outcome"] for case in load_cases()}

# Fast, exact profiles: ttft 20 ms, 1 ms per token, 12 output tokens; a 100-token prompt, half cached; half
# of the output is reasoning when thinking is on. No peak slowdown except glm-5.
FAST: dict[str, Any] = {"ttft_s": 0.02, "token_s": 0.001, "peak_factor": 1.0, "output_tokens": 12, "prompt_tokens": 100}
PROFILES = {
    "glm-4.7": ModelProfile(**FAST, cached_share=0.5, reasoning_share=0.5),
    "glm-4.7-flash": ModelProfile(**FAST, concurrency=1),
    "rpm-model": ModelProfile(**FAST, rpm=3),
    "rpd-model": ModelProfile(**FAST, rpd=2),
    "glm-5": ModelProfile(ttft_s=0.05, token_s=0.001, peak_factor=3.0, output_tokens=4),
    "flaky": ModelProfile(
        ttft_s=0,
        token_s=0,
        output_tokens=2,
        failure_rates={"1302": 0.2, "1305": 0.2, "1113": 0.1, "500": 0.1},
    ),
}


# One pooled client for the whole module: a new httpx client per request costs tens of milliseconds (it loads
# the TLS bundle), which would swamp the timings measured here.
HTTP = httpx.Client(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _close_http() -> Iterator[None]:
    yield
    HTTP.close()


def config(seed: int = 7) -> SimConfig:
    return SimConfig(models=dict(PROFILES), seed=seed, fixed_now=datetime.fromisoformat(OFF_PEAK))


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with run_in_thread(config()) as sim:
        yield sim


@pytest.fixture
def sim(server: SimServer) -> SimServer:
    """The shared simulator with fresh counters and its configured (off-peak, frozen) clock."""
    server.reset()
    server.app.state.clock.reset()
    return server


def chat(model: str = "glm-4.7", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hello, who are you?"}], **extra}


def post(sim: SimServer, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return HTTP.post(sim.base_url + path, json=body, headers={**AUTH, **headers})


def sse_data(body: bytes) -> list[str]:
    """The payloads of the ``data: `` lines of an SSE body, in order."""
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]


def chunks(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(data) for data in sse_data(body) if data != "[DONE]"]


def fixture_json(name: str) -> Any:
    return json.loads(load_http(name).body)


def shape(obj: Any) -> Any:
    """The key structure of a JSON value (dict keys, recursively), for comparing with recorded bodies."""
    if isinstance(obj, dict):
        return {key: shape(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [shape(item) for item in obj[:1]]
    return type(obj).__name__


def openai_client(sim: SimServer, prefix: str = "/api/paas/v4") -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url + prefix, api_key="test-key", max_retries=0, http_client=HTTP)


def anthropic_client(sim: SimServer) -> anthropic.Anthropic:
    # One client per server: the SDK builds its own HTTP client (httpx2), costly to create per test.
    url = sim.base_url + "/api/anthropic"
    if url not in _ANTHROPIC_CLIENTS:
        _ANTHROPIC_CLIENTS[url] = anthropic.Anthropic(base_url=url, api_key="test-key", max_retries=0)
    return _ANTHROPIC_CLIENTS[url]


_ANTHROPIC_CLIENTS: dict[str, anthropic.Anthropic] = {}


# -- openai dialect, Zhipu shape ------------------------------------------------------------------------------


def test_openai_sdk_non_stream_reports_profile_usage(sim: SimServer) -> None:
    completion = openai_client(sim).chat.completions.create(
        model="glm-4.7", messages=[{"role": "user", "content": "Hello"}], max_tokens=100
    )
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (100, 12, 112)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 50
    assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 6
    assert ZHIPU_ID.match(completion.id) and completion.id.startswith("20261124100000")
    assert completion.created == int(datetime.fromisoformat(OFF_PEAK).timestamp())
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert message.content and (message.model_extra or {}).get("reasoning_content")  # thinking is Zhipu's default


def test_openai_sdk_stream_with_include_usage_uses_zhipu_shape(sim: SimServer) -> None:
    stream = openai_client(sim).chat.completions.create(
        model="glm-4.7",
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    received = list(stream)
    reasoning = [c for c in received if c.choices and (c.choices[0].delta.model_extra or {}).get("reasoning_content")]
    content = [c for c in received if c.choices and c.choices[0].delta.content]
    assert (len(reasoning), len(content)) == (6, 6)  # one token per chunk, reasoning first
    assert received.index(reasoning[-1]) < received.index(content[0])
    assert all(c.choices for c in received)  # Zhipu never sends a separate choices: [] usage chunk
    last = received[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (100, 12)
    assert last.usage.prompt_tokens_details is not None and last.usage.prompt_tokens_details.cached_tokens == 50
    details = last.usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == 6


def test_zhipu_stream_has_the_recorded_shape(sim: SimServer) -> None:
    recorded = load_http("zai_stream_usage_final_chunk")
    response = post(sim, ZHIPU, chat(stream=True, thinking={"type": "disabled"}))
    assert response.status_code == 200
    assert response.headers["content-type"] == recorded.headers["content-type"]
    assert response.content.endswith(b"}\n\ndata: [DONE]\n\n")
    ours, theirs = chunks(response.content), chunks(recorded.body)
    # Content chunks: same keys everywhere (no "object", no finish_reason key), role repeated in every delta.
    assert shape(ours[1]) == shape(theirs[1])
    assert all(c["choices"][0]["delta"]["role"] == "assistant" for c in ours)
    assert len({c["id"] for c in ours}) == 1 and ZHIPU_ID.match(ours[0]["id"])
    # The last chunk carries finish_reason and usage together.
    assert list(ours[-1]) == list(theirs[-1])
    assert list(ours[-1]["choices"][0]) == list(theirs[-1]["choices"][0])
    assert ours[-1]["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 12,
        "total_tokens": 112,
        "prompt_tokens_details": {"cached_tokens": 50},
    }
    assert [c for c in ours if "usage" in c] == [ours[-1]]


def test_max_tokens_is_honoured_exactly(sim: SimServer) -> None:
    stream = openai_client(sim).chat.completions.create(
        model="glm-4.7", messages=[{"role": "user", "content": "Hi"}], stream=True, max_tokens=5
    )
    received = list(stream)
    tokens = [
        c
        for c in received
        if (c.choices[0].delta.content or (c.choices[0].delta.model_extra or {}).get("reasoning_content"))
    ]
    assert len(tokens) == 5
    assert received[-1].choices[0].finish_reason == "length"
    assert received[-1].usage is not None and received[-1].usage.completion_tokens == 5
    details = received[-1].usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == 2  # floor(5 * 0.5)


def test_thinking_disabled_means_no_reasoning(sim: SimServer) -> None:
    body = post(sim, ZHIPU, chat(thinking={"type": "disabled"})).json()
    assert "reasoning_content" not in body["choices"][0]["message"]
    assert "completion_tokens_details" not in body["usage"]
    assert body["usage"]["completion_tokens"] == 12


def test_non_stream_has_the_recorded_shape(sim: SimServer) -> None:
    ours = post(sim, ZHIPU, chat()).json()
    assert shape(ours) == shape(fixture_json("zai_nonstream_cached_reasoning"))
    assert ours["id"] == ours["request_id"]


def test_prompt_tokens_follow_the_message_text_when_the_profile_does_not_fix_them() -> None:
    profile = ModelProfile(ttft_s=0.0, token_s=0.0, output_tokens=3, peak_factor=1.0)
    with run_in_thread(SimConfig(models={"m": profile})) as sim:
        text = "x" * 301
        body = post(sim, ZHIPU, {"model": "m", "messages": [{"role": "user", "content": text}]}).json()
    assert body["usage"]["prompt_tokens"] == estimate_prompt_tokens(301) == 4 + 101


# -- other dialects --------------------------------------------------------------------------------------------


def test_compat_stream_puts_usage_in_a_separate_chunk(sim: SimServer) -> None:
    recorded = load_http("dashscope_compat_stream_include_usage_cached")
    body = chat(stream=True, stream_options={"include_usage": True}, max_tokens=4)
    response = post(sim, COMPAT, body)
    ours, theirs = chunks(response.content), chunks(recorded.body)
    assert shape(ours[0]) == shape(theirs[0]) and shape(ours[1]) == shape(theirs[1])
    assert ours[-1]["choices"] == [] and ours[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 50}
    assert ours[-2]["choices"][0]["finish_reason"] == "length"
    assert sse_data(response.content)[-1] == "[DONE]"
    assert response.headers["x-request-id"] == ours[0]["id"].removeprefix("chatcmpl-")
    # Through the SDK: the usage chunk arrives last with choices [].
    stream = openai_client(sim, "/compatible-mode/v1").chat.completions.create(
        model="glm-4.7",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    last = list(stream)[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 12


def test_anthropic_sdk_stream_reports_usage_in_message_delta(sim: SimServer) -> None:
    client = anthropic_client(sim)
    with client.messages.stream(
        model="glm-4.7",
        max_tokens=50,
        messages=[{"role": "user", "content": "Hello"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        events = list(stream)
        message = stream.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    assert (start.message.usage.input_tokens, start.message.usage.output_tokens) == (0, 0)  # as Z.ai sends it
    assert message.usage.input_tokens == 50  # without the cache reads
    assert message.usage.cache_read_input_tokens == 50
    assert message.usage.output_tokens == 12
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.stop_reason == "end_turn"
    assert message.id.startswith("msg_") and ZHIPU_ID.match(message.id[4:])


def test_anthropic_stream_has_the_recorded_event_sequence(sim: SimServer) -> None:
    recorded = load_http("zai_anthropic_stream_recorded")
    response = post(sim, ANTHROPIC, chat(max_tokens=3, stream=True))
    names = [line[7:] for line in response.text.split("\n") if line.startswith("event: ")]
    deltas = ["content_block_delta"] * 3
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    ours, theirs = chunks(response.content), chunks(recorded.body)
    assert shape(ours[0]) == shape(theirs[0])
    assert shape(ours[-2]) == shape(theirs[-2])
    assert ours[-2]["delta"]["stop_reason"] == "max_tokens"
    assert ours[-2]["usage"]["output_tokens"] == 3


def test_anthropic_sdk_non_stream(sim: SimServer) -> None:
    message = anthropic_client(sim).messages.create(
        model="glm-4.7", max_tokens=7, messages=[{"role": "user", "content": "Hello"}]
    )
    assert message.stop_reason == "max_tokens"
    assert [block.type for block in message.content] == ["text"]  # thinking is off unless asked for
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        50,
        50,
        7,
    )


def native_body(**parameters: Any) -> dict[str, Any]:
    return {"model": "glm-4.7", "input": {"messages": [{"role": "user", "content": "你好"}]}, "parameters": parameters}


def native_events(body: bytes) -> list[list[str]]:
    return [block.split("\n") for block in body.decode().split("\n\n") if block]


def test_dashscope_native_sse_has_the_recorded_framing(sim: SimServer) -> None:
    recorded = native_events(load_http("dashscope_native_sse").body)
    response = post(sim, NATIVE, native_body(incremental_output=True), **{"X-DashScope-SSE": "enable"})
    events = native_events(response.content)
    assert len(events) == 13  # 12 tokens and the closing event; no [DONE]
    for number, event in enumerate(events, start=1):
        assert event[:3] == [f"id:{number}", "event:result", ":HTTP_STATUS/200"]
        assert event[3].startswith("data:{")
    datas = [json.loads(event[3][5:]) for event in events]
    assert shape(datas[0]) == shape(json.loads(recorded[0][3][5:])) | {
        "usage": shape(datas[0]["usage"])  # ours also reports the cached tokens
    }
    assert not any("model" in d for d in datas)
    assert [d["output"]["choices"][0]["finish_reason"] for d in datas] == ["null"] * 12 + ["stop"]
    assert [d["usage"]["output_tokens"] for d in datas] == [*range(1, 13), 12]  # cumulative
    assert datas[-1]["usage"] == {
        "total_tokens": 112,
        "input_tokens": 100,
        "output_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 50},
    }
    assert {d["request_id"] for d in datas} == {response.headers["x-request-id"]}
    assert UUID.match(response.headers["x-request-id"])


def test_dashscope_native_accept_header_streams_and_default_is_json(sim: SimServer) -> None:
    streamed = post(sim, NATIVE, native_body(max_tokens=2), Accept="text/event-stream")
    assert streamed.headers["content-type"].startswith("text/event-stream")
    # incremental_output false (DashScope's default): every event holds the whole text so far.
    contents = [
        json.loads(e[3][5:])["output"]["choices"][0]["message"]["content"] for e in native_events(streamed.content)
    ]
    assert contents[1].startswith(contents[0]) and contents[2] == contents[1]
    whole = post(sim, NATIVE, native_body(max_tokens=2)).json()
    assert whole["output"]["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["output_tokens"] == 2 and "model" not in whole


# -- the project's own parser and classifier agree ----------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "path", "body", "headers", "stream", "expected"),
    [
        ("openai", ZHIPU, chat(stream=True), {}, True, (100, 50, 12, 6)),
        ("openai", ZHIPU, chat(), {}, False, (100, 50, 12, 6)),
        ("openai", COMPAT, chat(stream=True, stream_options={"include_usage": True}), {}, True, (100, 50, 12, None)),
        ("openai", COMPAT, chat(enable_thinking=True), {}, False, (100, 50, 12, 6)),
        ("anthropic", ANTHROPIC, chat(max_tokens=99, stream=True), {}, True, (100, 50, 12, None)),
        ("anthropic", ANTHROPIC, chat(max_tokens=99), {}, False, (100, 50, 12, None)),
        ("dashscope", NATIVE, native_body(), {"X-DashScope-SSE": "enable"}, True, (100, 50, 12, None)),
        ("dashscope", NATIVE, native_body(enable_thinking=True), {}, False, (100, 50, 12, 6)),
    ],
)
def test_usage_parser_reads_complete_usage_from_every_dialect(
    sim: SimServer,
    dialect: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    stream: bool,
    expected: tuple,
) -> None:
    response = post(sim, path, body, **headers)
    usage = parse_response(dialect, response.content, stream=stream)
    assert usage.complete
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.reasoning_tokens) == expected
    assert classify(response.status_code, response.headers, response.content).outcome is Outcome.OK


# -- failures ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "fixture"),
    [
        (ZHIPU, "1302", "zai_429_1302_concurrency"),
        (ZHIPU, "1303", "zai_429_1303_frequency"),
        (ZHIPU, "1305", "zai_429_1305_overloaded"),
        (ZHIPU, "1113", "zai_429_1113_insufficient_balance"),
        (ZHIPU, "1301", "bigmodel_400_1301_content_filter"),
        (ZHIPU, "auth", "zai_401_1000_auth_failure"),
    ],
)
def test_forced_zhipu_errors_equal_the_recordings(sim: SimServer, path: str, kind: str, fixture: str) -> None:
    recorded = load_http(fixture)
    response = post(sim, path, chat(), **{"X-Sim-Fail": kind})
    assert response.status_code == recorded.status
    assert response.headers["content-type"] == recorded.headers["content-type"]
    assert response.json() == json.loads(recorded.body)
    assert classify(response.status_code, response.headers, response.content).outcome == EXPECTED_OUTCOME[fixture]


@pytest.mark.parametrize(
    ("path", "kind", "fixture", "same_message"),
    [
        (ZHIPU, "1308", "zai_429_1308_usage_limit", False),
        (ANTHROPIC, "1308", "zai_anthropic_429_1308_usage_limit", False),
        (NATIVE, "1303", "dashscope_native_429_throttling_ratequota", True),
        (NATIVE, "auth", "dashscope_native_401_invalid_api_key", True),
        (COMPAT, "1301", "dashscope_compat_400_data_inspection_failed", True),
    ],
)
def test_forced_errors_have_the_recorded_shape(
    sim: SimServer, path: str, kind: str, fixture: str, same_message: bool
) -> None:
    recorded = load_http(fixture)
    theirs = json.loads(recorded.body)
    body = native_body() if path == NATIVE else chat(max_tokens=10)
    response = post(sim, path, body, **{"X-Sim-Fail": kind})
    ours = response.json()
    assert response.status_code == recorded.status
    error_ours, error_theirs = ours.get("error", ours), theirs.get("error", theirs)
    assert set(error_ours) == set(error_theirs)
    assert set(ours) <= set(theirs)
    for key in ("code", "type"):
        assert error_ours.get(key) == error_theirs.get(key)
    if same_message:
        assert error_ours["message"] == error_theirs["message"]
    if "request_id" in theirs:
        pattern = UUID if UUID.match(theirs["request_id"]) else ZHIPU_ID
        assert pattern.match(ours["request_id"])
    assert classify(response.status_code, response.headers, response.content).outcome == EXPECTED_OUTCOME[fixture]


def test_forced_1308_names_the_reset_time_in_beijing_time(sim: SimServer) -> None:
    message = post(sim, ZHIPU, chat(), **{"X-Sim-Fail": "1308"}).json()["error"]["message"]
    assert message == "Usage limit reached for 5 hour. Your limit will reset at 2026-11-24 15:00:00"


@pytest.mark.parametrize("path", [ZHIPU, ANTHROPIC, COMPAT, NATIVE])
def test_forced_502_is_nginx_html(sim: SimServer, path: str) -> None:
    recorded = load_http("zai_502_nginx_html")
    body = native_body() if path == NATIVE else chat(max_tokens=5)
    response = post(sim, path, body, **{"X-Sim-Fail": "502"})
    assert (response.status_code, response.content) == (502, recorded.body)
    assert response.headers["content-type"] == "text/html"


EXPECTED_KIND_OUTCOMES = {
    "1302": Outcome.CONCURRENCY_LIMITED,
    "1303": Outcome.RATE_LIMITED,
    "1304": Outcome.QUOTA_EXHAUSTED,
    "1305": Outcome.OVERLOADED,
    "1113": Outcome.QUOTA_EXHAUSTED,
    "1301": Outcome.CONTENT_FILTERED,
    "1308": Outcome.QUOTA_EXHAUSTED,
    "auth": Outcome.AUTH_ERROR,
    "500": Outcome.SERVER_ERROR,
    "502": Outcome.SERVER_ERROR,
    "429-anthropic-rate_limit_error": Outcome.RATE_LIMITED,
    "529": Outcome.OVERLOADED,
}


@pytest.mark.parametrize("path", [ZHIPU, ANTHROPIC])
@pytest.mark.parametrize("kind", sorted(EXPECTED_KIND_OUTCOMES))
def test_every_immediate_failure_classifies_as_intended(sim: SimServer, path: str, kind: str) -> None:
    response = post(sim, path, chat(max_tokens=5), **{"X-Sim-Fail": kind})
    assert response.status_code >= 400
    assert response.headers["x-sim-outcome"] == kind
    assert classify(response.status_code, response.headers, response.content).outcome is EXPECTED_KIND_OUTCOMES[kind]


def test_anthropic_specific_failures(sim: SimServer) -> None:
    rate = post(sim, ANTHROPIC, chat(max_tokens=5), **{"X-Sim-Fail": "429-anthropic-rate_limit_error"})
    assert rate.status_code == 429 and rate.json()["error"]["type"] == "rate_limit_error"
    overloaded = post(sim, ANTHROPIC, chat(max_tokens=5), **{"X-Sim-Fail": "529"})
    assert overloaded.status_code == 529 and overloaded.json()["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.RateLimitError):
        anthropic_client(sim).messages.create(
            model="glm-4.7",
            max_tokens=5,
            messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"X-Sim-Fail": "1302"},
        )


def test_missing_or_rejected_key_is_an_auth_error_in_every_dialect(sim: SimServer) -> None:
    no_key = HTTP.post(sim.base_url + ZHIPU, json=chat())
    assert no_key.status_code == 401 and no_key.json() == fixture_json("zai_401_1000_auth_failure")
    anth = HTTP.post(sim.base_url + ANTHROPIC, json=chat(max_tokens=5), headers={"x-api-key": "invalid-key"})
    assert anth.status_code == 401 and anth.json()["error"]["type"] == "authentication_error"
    native = HTTP.post(sim.base_url + NATIVE, json=native_body())
    assert native.status_code == 401 and native.json()["code"] == "InvalidApiKey"
    rejected = openai.OpenAI(base_url=sim.base_url + "/api/paas/v4", api_key="invalid", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        rejected.chat.completions.create(model="glm-4.7", messages=[{"role": "user", "content": "Hi"}])
    assert sim.stats()["rejected"]["auth"] >= 3


def test_unknown_model_is_1211(sim: SimServer) -> None:
    recorded = load_http("zai_400_1211_unknown_model")
    response = post(sim, ZHIPU, chat("glm-5.3v"))
    assert response.status_code == recorded.status and response.json() == json.loads(recorded.body)


def test_garbage_requests_are_answered_not_crashed(sim: SimServer) -> None:
    garbage = HTTP.post(sim.base_url + ZHIPU, content=b"\xff{not json", headers=AUTH)
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "1214"
    bad_kind = post(sim, ZHIPU, chat(), **{"X-Sim-Fail": "explode"})
    assert bad_kind.status_code == 400 and "X-Sim-Fail" in bad_kind.json()["error"]["message"]
    bad_max = post(sim, ANTHROPIC, chat(max_tokens=0))
    assert bad_max.status_code == 400 and bad_max.json()["error"]["type"] == "invalid_request_error"
    no_input = post(sim, NATIVE, {"model": "glm-4.7"})
    assert no_input.status_code == 400 and no_input.json()["code"] == "InvalidParameter"
    assert HTTP.get(sim.base_url + ZHIPU, headers=AUTH).status_code == 405
    assert HTTP.get(sim.base_url + "/nope").status_code == 404


def test_sensitive_stream_ends_like_the_recording(sim: SimServer) -> None:
    recorded = chunks(load_http("zai_stream_finish_sensitive").body)
    response = post(sim, ZHIPU, chat(stream=True), **{"X-Sim-Fail": "sensitive", "X-Sim-Cut-After": "2"})
    ours = chunks(response.content)
    assert len(ours) == 3 and sse_data(response.content)[-1] == "[DONE]"
    assert list(ours[-1]) == list(recorded[-1]) and ours[-1]["choices"][0]["finish_reason"] == "sensitive"
    usage = parse_response("openai", response.content, stream=True)
    verdict = classify_stream_end(classify(200, response.headers, b""), usage.finish_reason)
    assert verdict.outcome is Outcome.CONTENT_FILTERED
    refusal = post(sim, ANTHROPIC, chat(max_tokens=9, stream=True), **{"X-Sim-Fail": "sensitive"})
    assert parse_response("anthropic", refusal.content, stream=True).finish_reason == "refusal"
    native = post(sim, NATIVE, native_body(), **{"X-DashScope-SSE": "enable", "X-Sim-Fail": "sensitive"})
    last = native_events(native.content)[-1]
    assert last[1:3] == ["event:error", ":HTTP_STATUS/400"]
    assert json.loads(last[3][5:])["code"] == "DataInspectionFailed"
    assert classify(200, native.headers, native.content).outcome is Outcome.CONTENT_FILTERED


def test_cut_stream_ends_without_usage_or_done(sim: SimServer) -> None:
    response = post(sim, ZHIPU, chat(stream=True), **{"X-Sim-Fail": "cut", "X-Sim-Cut-After": "3"})
    assert response.status_code == 200  # the body ended cleanly, just early
    data = sse_data(response.content)
    assert len(data) == 3 and "[DONE]" not in data and b"usage" not in response.content
    usage = parse_response("openai", response.content, stream=True)
    assert not usage.complete and usage.output_tokens is None
    # The SDK sees a stream that simply stops.
    stream = openai_client(sim).chat.completions.create(
        model="glm-4.7", messages=[{"role": "user", "content": "Hi"}], stream=True, extra_headers={"X-Sim-Fail": "cut"}
    )
    received = list(stream)
    assert 1 <= len(received) < 12 and all(c.usage is None for c in received)
    native = post(sim, NATIVE, native_body(), **{"X-DashScope-SSE": "enable", "X-Sim-Fail": "cut"})
    assert not parse_response("dashscope", native.content, stream=True).complete
    claude = post(sim, ANTHROPIC, chat(max_tokens=50, stream=True), **{"X-Sim-Fail": "cut"})
    assert b"message_stop" not in claude.content
    assert not parse_response("anthropic", claude.content, stream=True).complete


def test_cut_non_stream_answer_breaks_off_mid_body(sim: SimServer) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        post(sim, ZHIPU, chat(), **{"X-Sim-Fail": "cut"})
    with pytest.raises(openai.APIConnectionError):
        openai_client(sim).chat.completions.create(
            model="glm-4.7", messages=[{"role": "user", "content": "Hi"}], extra_headers={"X-Sim-Fail": "reset"}
        )
    assert post(sim, ZHIPU, chat()).status_code == 200  # the simulator itself is fine


def test_reset_drops_the_connection_mid_stream(sim: SimServer) -> None:
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        HTTP.stream(
            "POST",
            sim.base_url + ZHIPU,
            json=chat(stream=True),
            headers={**AUTH, "X-Sim-Fail": "reset", "X-Sim-Cut-After": "4"},
        ) as response,
    ):
        for piece in response.iter_raw():
            received += piece
    assert len(sse_data(received)) == 4
    assert sim.stats()["models"]["glm-4.7"]["in_flight"] == 0


def test_stall_does_not_block_other_requests(sim: SimServer) -> None:
    result: dict[str, Any] = {}

    def stalled() -> None:
        try:
            post_timeout = httpx.Timeout(5.0, read=0.5)
            HTTP.post(sim.base_url + ZHIPU, json=chat(), headers={**AUTH, "X-Sim-Fail": "stall"}, timeout=post_timeout)
        except httpx.ReadTimeout as exc:
            result["error"] = exc

    thread = threading.Thread(target=stalled)
    thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert post(sim, ZHIPU, chat()).status_code == 200
    assert time.monotonic() - started < 0.4
    thread.join()
    assert isinstance(result.get("error"), httpx.ReadTimeout)
    # The client gave up; the simulator notices and frees the slot instead of sleeping on for an hour.
    deadline = time.monotonic() + 2
    while sim.stats()["models"]["glm-4.7"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.stats()["models"]["glm-4.7"]["in_flight"] == 0


def test_short_stall_then_answers(sim: SimServer) -> None:
    started = time.monotonic()
    response = post(sim, ZHIPU, chat(), **{"X-Sim-Fail": "stall", "X-Sim-Stall-Ms": "150"})
    assert response.status_code == 200 and response.headers["x-sim-outcome"] == "stall"
    assert time.monotonic() - started >= 0.15


# -- limits, clock, determinism ------------------------------------------------------------------------------


def test_concurrency_limit_gives_1302_to_the_second_request(sim: SimServer) -> None:
    first: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: first.update(r=post(sim, ZHIPU, chat("glm-4.7-flash"), **{"X-Sim-TTFT-Ms": "400"}))
    )
    thread.start()
    deadline = time.monotonic() + 2
    while not sim.stats()["models"].get("glm-4.7-flash", {}).get("in_flight") and time.monotonic() < deadline:
        time.sleep(0.005)
    second = post(sim, ZHIPU, chat("glm-4.7-flash"))
    thread.join()
    assert first["r"].status_code == 200
    assert second.status_code == 429 and second.json() == fixture_json("zai_429_1302_concurrency")
    assert post(sim, ZHIPU, chat("glm-4.7-flash")).status_code == 200  # the slot is free again


def test_rpm_limit_gives_1303_until_the_minute_passes(sim: SimServer) -> None:
    codes = [post(sim, ZHIPU, chat("rpm-model")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert post(sim, ZHIPU, chat("rpm-model")).json() == fixture_json("zai_429_1303_frequency")
    later = post(sim, ZHIPU, chat("rpm-model"), **{"X-Sim-Time": "2026-11-24T10:01:01+08:00"})
    assert later.status_code == 200


def test_rpd_limit_gives_1304_until_the_next_beijing_day(sim: SimServer) -> None:
    codes = [post(sim, ZHIPU, chat("rpd-model")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    error = post(sim, ZHIPU, chat("rpd-model")).json()["error"]
    assert error["code"] == "1304"
    late_evening = post(sim, ZHIPU, chat("rpd-model"), **{"X-Sim-Time": "2026-11-24T23:59:00+08:00"})
    assert late_evening.status_code == 429
    next_day = post(sim, ZHIPU, chat("rpd-model"), **{"X-Sim-Time": "2026-11-25T00:00:01+08:00"})
    assert next_day.status_code == 200


def first_chunk_after(sim: SimServer, model: str, **headers: str) -> float:
    started = time.perf_counter()
    with HTTP.stream("POST", sim.base_url + ZHIPU, json=chat(model, stream=True), headers={**AUTH, **headers}) as r:
        pieces = r.iter_raw()
        next(pieces)
        elapsed = time.perf_counter() - started
        for _ in pieces:
            pass
    return elapsed


def test_x_sim_time_in_peak_hours_triples_the_ttft(sim: SimServer) -> None:
    off_peak = min(first_chunk_after(sim, "glm-5", **{"X-Sim-Time": OFF_PEAK}) for _ in range(3))
    peak = min(first_chunk_after(sim, "glm-5", **{"X-Sim-Time": PEAK}) for _ in range(3))
    assert 0.05 <= off_peak < 0.09
    assert 0.15 <= peak < 0.20
    assert 2.4 < peak / off_peak < 3.3


def test_clock_endpoint_moves_the_simulated_time(sim: SimServer) -> None:
    answer = HTTP.post(sim.base_url + "/_sim/clock", json={"now": PEAK, "frozen": True}).json()
    assert answer == {"now": "2026-11-24T15:30:00+08:00", "offset_s": None, "frozen": True}
    assert post(sim, ZHIPU, chat()).json()["id"].startswith("20261124153000")
    assert first_chunk_after(sim, "glm-5") >= 0.15
    HTTP.post(sim.base_url + "/_sim/clock", json={"offset_s": -3600})
    moving = HTTP.get(sim.base_url + "/_sim/clock").json()
    assert moving["frozen"] is False and moving["offset_s"] == -3600
    reset = HTTP.delete(sim.base_url + "/_sim/clock").json()
    assert reset["now"] == "2026-11-24T10:00:00+08:00"
    assert HTTP.post(sim.base_url + "/_sim/clock", json={"now": "yesterday"}).status_code == 400


def test_timing_headers_set_exact_ttft_and_token_pace(sim: SimServer) -> None:
    arrivals: list[float] = []
    HTTP.get(sim.base_url + "/healthz")  # a warm connection, so only the simulator's timing is measured
    started = time.perf_counter()
    with HTTP.stream(
        "POST",
        sim.base_url + ZHIPU,
        json=chat(stream=True, max_tokens=6),
        headers={**AUTH, "X-Sim-TTFT-Ms": "60", "X-Sim-Token-Ms": "20"},
    ) as response:
        for _ in response.iter_raw():
            arrivals.append(time.perf_counter() - started)
    assert 0.06 <= arrivals[0] < 0.09
    assert 0.06 + 6 * 0.02 <= arrivals[-1] < 0.06 + 6 * 0.02 + 0.04  # the closing chunk one period after the last token


def outcomes(sim: SimServer, count: int = 40) -> list[str]:
    return [post(sim, ZHIPU, chat("flaky")).headers["x-sim-outcome"] for _ in range(count)]


def test_same_seed_same_outcomes(sim: SimServer) -> None:
    first = outcomes(sim)
    assert {"ok", "1302", "1305"} <= set(first)
    sim.reset()
    assert outcomes(sim) == first
    with run_in_thread(config(seed=7)) as twin:
        assert outcomes(twin) == first
    with run_in_thread(config(seed=8)) as other:
        assert outcomes(other) != first
    stats = sim.stats()["models"]["flaky"]
    assert stats["requests"] == 40 and sum(stats["outcomes"].values()) == 40


# -- side endpoints and the server helper --------------------------------------------------------------------


def test_quota_endpoint_has_the_recorded_shape(sim: SimServer) -> None:
    recorded = fixture_json("quota_limit")
    ours = HTTP.get(sim.base_url + "/api/monitor/usage/quota/limit", headers={"Authorization": "test-key"}).json()
    assert list(ours) == list(recorded) and ours["success"] is True
    assert [(lim["type"], lim["unit"], lim["number"]) for lim in ours["data"]["limits"]] == [
        (lim["type"], lim["unit"], lim["number"]) for lim in recorded["data"]["limits"]
    ]
    assert shape(ours["data"]["limits"][2]) == shape(recorded["data"]["limits"][2])
    missing = HTTP.get(sim.base_url + "/api/monitor/usage/quota/limit")
    assert missing.status_code == 200 and missing.json() == fixture_json("quota_limit_auth_error")


def test_coding_plan_usage_fills_the_5_hour_window_then_1308() -> None:
    cfg = SimConfig(
        models={"glm-4.7": ModelProfile(ttft_s=0, token_s=0, output_tokens=10, prompt_tokens=90, peak_factor=1)},
        fixed_now=datetime.fromisoformat(OFF_PEAK),
        coding_plan=CodingPlan(level="lite", five_hour_tokens=250),
    )
    with run_in_thread(cfg) as sim:
        assert [post(sim, CODING, chat()).status_code for _ in range(3)] == [200, 200, 200]
        paid = post(sim, ZHIPU, chat())  # the pay-as-you-go path does not touch the plan
        capped = post(sim, CODING, chat())
        quota = HTTP.get(sim.base_url + "/api/monitor/usage/quota/limit", headers=AUTH).json()["data"]
    assert paid.status_code == 200
    assert capped.status_code == 429
    assert capped.json()["error"]["message"].endswith("reset at 2026-11-24 15:00:00")
    assert quota["level"] == "lite" and quota["limits"][0]["percentage"] == 100
    assert (
        quota["limits"][0]["nextResetTime"]
        == int(datetime.fromisoformat("2026-11-24T15:00:00+08:00").timestamp()) * 1000
    )


def test_models_health_and_stats(sim: SimServer) -> None:
    models = openai_client(sim).models.list()
    assert {m.id for m in models} == set(PROFILES)
    assert HTTP.get(sim.base_url + "/healthz").json() == {"status": "ok"}
    post(sim, ZHIPU, chat())
    post(sim, ZHIPU, chat(), **{"X-Sim-Fail": "1305"})
    stats = HTTP.get(sim.base_url + "/_sim/stats").json()
    assert stats["models"]["glm-4.7"] == {"requests": 2, "in_flight": 0, "outcomes": {"1305": 1, "ok": 1}}
    assert HTTP.post(sim.base_url + "/_sim/reset").json() == {"ok": True}
    assert HTTP.get(sim.base_url + "/_sim/stats").json()["models"]["glm-4.7"]["requests"] == 0


def test_stop_and_restart_on_the_same_port() -> None:
    sim = SimServer(config()).start()
    try:
        port = sim.port
        assert port > 0 and sim.base_url == f"http://127.0.0.1:{port}"
        assert post(sim, ZHIPU, chat()).status_code == 200
        # A stream in flight when the provider vanishes ends with a network error, not an HTTP answer.
        errors: list[BaseException] = []

        def long_stream() -> None:
            try:
                post(sim, ZHIPU, chat(stream=True), **{"X-Sim-TTFT-Ms": "5000"})
            except httpx.HTTPError as exc:
                errors.append(exc)

        thread = threading.Thread(target=long_stream)
        thread.start()
        time.sleep(0.1)
        started = time.monotonic()
        sim.stop()
        thread.join()
        assert time.monotonic() - started < 1.0
        assert errors and isinstance(errors[0], httpx.RemoteProtocolError | httpx.ReadError)
        with pytest.raises(httpx.ConnectError):
            post(sim, ZHIPU, chat())
        sim.restart()
        assert sim.port == port
        assert post(sim, ZHIPU, chat()).status_code == 200
    finally:
        sim.stop()
    sim.stop()  # idempotent


def test_demo_config_models_have_distinct_characters() -> None:
    models = demo_config().models
    assert {"glm-4.7", "glm-4.7-flash", "glm-5", "glm-4.6"} <= set(models)
    flash, big, fast = models["glm-4.7-flash"], models["glm-5"], models["glm-4.7"]
    assert (flash.concurrency, flash.rpm, flash.rpd) == (1, 20, 250)
    assert big.peak_factor == 3.0 and big.peak_hours == frozenset({15, 16, 17})
    assert fast.ttft_s < big.ttft_s and 1 / fast.token_s == pytest.approx(60)
    assert set(FAILURE_KINDS) >= {k for m in models.values() for k in m.failure_rates}
    with pytest.raises(ValueError, match="unknown failure kinds"):
        ModelProfile(failure_rates={"boom": 0.1})
    assert CST.key == "Asia/Shanghai"
