"""Usage parsing: every recorded provider response, targeted edge cases, chunking invariance and O(1) memory."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.sse import LineSplitter
from monitor.usage import DIALECTS, Usage, UsageParser, parse_response
from tests.casefiles import Case, load_cases

CASES = load_cases()
STREAM_CASES = [case for case in CASES if case.stream and case.response.status == 200]
USAGE_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "model", "complete")


def sse(*events: object, end: bytes = b"\n") -> bytes:
    """An SSE body with one ``data:`` event per item (dicts are JSON-encoded, bytes/str are sent as they are)."""
    out = []
    for event in events:
        if isinstance(event, bytes):
            payload = event
        elif isinstance(event, str):
            payload = event.encode()
        else:
            payload = json.dumps(event, ensure_ascii=False).encode()
        out.append(b"data: " + payload + end + end)
    return b"".join(out)


def feed_pieces(dialect: str, body: bytes, cuts: list[int], *, stream: bool) -> Usage:
    parser = UsageParser(dialect, stream=stream)  # type: ignore[arg-type]
    start = 0
    for cut in [*sorted(set(cuts)), len(body)]:
        parser.feed(body[start:cut])
        start = cut
    return parser.finish()


def openai_chunk(content: str | None = None, *, finish: str | None = None, usage: object = None) -> dict:
    choice: dict = {"index": 0, "delta": {"content": content} if content is not None else {}}
    choice["finish_reason"] = finish
    chunk: dict = {"id": "chatcmpl-1", "model": "glm-4.7", "choices": [choice]}
    if usage is not None:
        chunk["usage"] = usage
    return chunk


# -- 1. every recorded response ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_recorded_response_usage(case: Case) -> None:
    usage = parse_response(case.dialect, case.response.body, stream=case.stream)  # type: ignore[arg-type]
    for field in USAGE_FIELDS:
        if field in case.expect:
            assert getattr(usage, field) == case.expect[field], field


def test_recorded_streams_are_complete_unless_cut() -> None:
    for case in STREAM_CASES:
        usage = parse_response(case.dialect, case.response.body, stream=True)  # type: ignore[arg-type]
        assert usage.complete is (case.name != "zai_stream_truncated_no_usage"), case.name


@pytest.mark.parametrize("case", STREAM_CASES, ids=[case.name for case in STREAM_CASES])
def test_recorded_stream_cut_before_its_last_two_events_is_incomplete(case: Case) -> None:
    # The last two events hold the usage and the terminal event in every recorded stream.
    events = case.response.body.split(b"\n\n")
    cut = b"\n\n".join(events[:-3]) + b"\n\n"
    usage = parse_response(case.dialect, cut, stream=True)  # type: ignore[arg-type]
    assert usage.complete is False


def test_recorded_ids_and_finish_reasons() -> None:
    by_name = {case.name: case for case in CASES}

    def parsed(name: str) -> Usage:
        case = by_name[name]
        return parse_response(case.dialect, case.response.body, stream=case.stream)  # type: ignore[arg-type]

    assert parsed("zai_nonstream_cached_reasoning").request_id == "2026020917585695a7e8be40254c7c"
    assert parsed("zai_stream_finish_sensitive").finish_reason == "sensitive"
    anthropic = parsed("zai_anthropic_stream_recorded")
    assert (anthropic.request_id, anthropic.finish_reason) == ("msg_202601031513181856df84e5504309", "end_turn")
    assert anthropic.cache_write_tokens is None
    native = parsed("dashscope_native_sse")
    assert (native.request_id, native.finish_reason) == ("71689cfc-1f42-9949-86e8-9563b7f832b1", "stop")
    assert parsed("zai_anthropic_429_1308_usage_limit").request_id == "20251110131106ad01ca8eb00144df"
    assert parsed("openrouter_nonstream_glm_cached_cost").cache_write_tokens == 0
    assert parsed("openrouter_stream_usage_last_chunk").finish_reason == "length"


# -- 2. targeted cases ------------------------------------------------------------------------------------


def test_anthropic_cache_read_and_creation_add_to_input() -> None:
    body = (
        b"event: message_start\n"
        + sse(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "model": "glm-4.7",
                    "usage": {
                        "input_tokens": 10,
                        "cache_read_input_tokens": 100,
                        "cache_creation_input_tokens": 20,
                        "output_tokens": 1,
                    },
                },
            }
        )
        + b"event: message_delta\n"
        + sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 50}})
        + b"event: message_stop\n"
        + sse({"type": "message_stop"})
    )
    usage = parse_response("anthropic", body, stream=True)
    assert usage == Usage(
        input_tokens=130,
        cached_input_tokens=100,
        cache_write_tokens=20,
        output_tokens=50,
        reasoning_tokens=None,
        model="glm-4.7",
        request_id="msg_1",
        finish_reason="end_turn",
        complete=True,
    )


def test_anthropic_nonstream_message_with_cache() -> None:
    body = json.dumps(
        {
            "id": "msg_2",
            "type": "message",
            "model": "glm-4.6",
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 7, "output_tokens": 9},
        }
    ).encode()
    usage = parse_response("anthropic", body, stream=False)
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (12, 7, None)
    assert (usage.output_tokens, usage.finish_reason, usage.request_id) == (9, "max_tokens", "msg_2")


def test_anthropic_message_delta_overrides_message_start_zeros() -> None:
    start = {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 0, "output_tokens": 0}}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"input_tokens": 40}}
    usage = parse_response("anthropic", sse(start, delta, {"type": "message_stop"}), stream=True)
    assert (usage.input_tokens, usage.output_tokens) == (40, 0)


def test_anthropic_stream_cut_before_message_delta_is_incomplete() -> None:
    start = {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}}
    text = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}
    usage = parse_response("anthropic", sse(start, text), stream=True)
    assert usage.complete is False
    assert usage.input_tokens == 3


def test_anthropic_stream_with_final_message_delta_but_no_message_stop_is_complete() -> None:
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}
    assert parse_response("anthropic", sse(delta), stream=True).complete is True


def test_anthropic_events_named_only_in_the_event_line() -> None:
    # A loose compatible server: the data carries no "type", the event: line names the event.
    body = (
        b"event: message_start\n"
        + sse({"message": {"id": "m", "model": "glm-4.7", "usage": {"input_tokens": 2}}})
        + b"event: content_block_delta\n"
        + sse({"index": 0, "delta": {"text": "a"}})
        + b"event: content_block_delta\n"
        + sse({"index": 0, "delta": {"text": "b"}})
        + b"event: message_delta\n"
        + sse({"delta": {"stop_reason": "end_turn"}})
        + b"event: message_stop\n"
        + sse({})
    )
    parser = UsageParser("anthropic", stream=True)
    assert parser.feed(body) is True
    usage = parser.finish()
    assert (usage.input_tokens, usage.model, usage.finish_reason, usage.complete) == (2, "glm-4.7", "end_turn", True)


def test_cumulative_usage_on_every_chunk_takes_the_last_value() -> None:
    # vLLM continuous_usage_stats: every chunk repeats the running totals.
    events = [
        openai_chunk(word, usage={"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n})
        for n, word in enumerate(["a", "b", "c", "d"], start=1)
    ]
    events.append(openai_chunk("", finish="stop", usage={"prompt_tokens": 12, "completion_tokens": 5}))
    usage = parse_response("openai", sse(*events, "[DONE]"), stream=True)
    assert (usage.input_tokens, usage.output_tokens, usage.finish_reason) == (12, 5, "stop")


def test_dashscope_native_cumulative_usage_and_null_string_finish_reason() -> None:
    def event(text: str, finish: str, out: int) -> dict:
        return {
            "output": {"choices": [{"message": {"content": text, "role": "assistant"}, "finish_reason": finish}]},
            "usage": {"input_tokens": 50, "output_tokens": out, "prompt_tokens_details": {"cached_tokens": 32}},
            "request_id": "rid-1",
        }

    cut = sse(event("一", "null", 1), event("二", "null", 2))
    partial = parse_response("dashscope", cut, stream=True)
    assert (partial.finish_reason, partial.complete, partial.output_tokens) == (None, False, 2)
    whole = parse_response("dashscope", cut + sse(event("", "stop", 3)), stream=True)
    assert (whole.input_tokens, whole.cached_input_tokens, whole.output_tokens) == (50, 32, 3)
    assert (whole.finish_reason, whole.request_id, whole.model, whole.complete) == ("stop", "rid-1", None, True)


def test_dashscope_native_text_format_nonstream() -> None:
    body = (
        b'{"output":{"text":"ok","finish_reason":"stop"},"usage":{"input_tokens":3,"output_tokens":1},"request_id":"r"}'
    )
    usage = parse_response("dashscope", body, stream=False)
    assert (usage.input_tokens, usage.output_tokens, usage.finish_reason, usage.request_id) == (3, 1, "stop", "r")


def test_usage_on_separate_empty_choices_chunk() -> None:
    body = sse(
        openai_chunk("x"),
        openai_chunk("", finish="stop"),
        {"id": "c", "model": "qwen-plus", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
        "[DONE]",
    )
    usage = parse_response("openai", body, stream=True)
    assert (usage.input_tokens, usage.output_tokens, usage.finish_reason, usage.complete) == (4, 2, "stop", True)


def test_crlf_and_lone_cr_line_ends_parse_like_lf() -> None:
    for case in STREAM_CASES:
        body = case.response.body
        expected = parse_response(case.dialect, body, stream=True)  # type: ignore[arg-type]
        for line_end in (b"\r\n", b"\r"):
            converted = body.replace(b"\n", line_end)
            assert parse_response(case.dialect, converted, stream=True) == expected, (case.name, line_end)  # type: ignore[arg-type]


def test_data_field_without_space_and_event_id_retry_lines() -> None:
    body = (
        b"retry: 3000\nid: 1\nevent: chunk\ndata:"
        + json.dumps(openai_chunk("hi")).encode()
        + b"\n\nid:2\ndata:"
        + json.dumps(openai_chunk("", finish="stop", usage={"prompt_tokens": 3, "completion_tokens": 1})).encode()
        + b"\n\ndata:[DONE]\n\n"
    )
    usage = parse_response("openai", body, stream=True)
    assert (usage.input_tokens, usage.output_tokens, usage.model, usage.complete) == (3, 1, "glm-4.7", True)


def test_comment_lines_are_ignored() -> None:
    final = openai_chunk("", finish="stop", usage={"prompt_tokens": 1, "completion_tokens": 1})
    body = b": OPENROUTER PROCESSING\n\n:keep-alive\n" + sse(final) + b': {"usage": {"prompt_tokens": 999}}\n\n'
    usage = parse_response("openai", body, stream=True)
    assert usage.input_tokens == 1
    assert usage.complete is True


def test_multi_line_data_field_is_joined() -> None:
    pretty = json.dumps(openai_chunk("", finish="stop", usage={"prompt_tokens": 6, "completion_tokens": 2}), indent=1)
    body = b"".join(b"data: " + line.encode() + b"\n" for line in pretty.splitlines()) + b"\n"
    usage = parse_response("openai", body, stream=True)
    assert (usage.input_tokens, usage.output_tokens, usage.finish_reason) == (6, 2, "stop")


def test_events_without_blank_lines_between_them_still_parse() -> None:
    lines = [openai_chunk("a"), openai_chunk("", finish="stop", usage={"prompt_tokens": 2, "completion_tokens": 1})]
    body = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n" for chunk in lines) + b"data: [DONE]\n"
    usage = parse_response("openai", body, stream=True)
    assert (usage.input_tokens, usage.output_tokens, usage.complete) == (2, 1, True)


def test_request_id_prefers_top_level_request_id_over_id() -> None:
    body = b'{"id":"chatcmpl-9","request_id":"req-9","model":"glm-4.7","choices":[]}'
    assert parse_response("openai", body, stream=False).request_id == "req-9"
    assert parse_response("openai", b'{"id":"chatcmpl-9","choices":[]}', stream=False).request_id == "chatcmpl-9"


def test_finish_reason_is_the_last_non_null_one() -> None:
    body = sse(openai_chunk("a", finish="length"), openai_chunk("b"), "[DONE]")
    assert parse_response("openai", body, stream=True).finish_reason == "length"


def test_image_generation_response_counts_images() -> None:
    body = b'{"created":1760000000,"data":[{"url":"https://x/1.png"},{"url":"https://x/2.png"}]}'
    usage = parse_response("openai", body, stream=False)
    assert usage.images == 2
    assert (usage.input_tokens, usage.output_tokens, usage.complete) == (None, None, True)
    b64 = b'{"created":1,"data":[{"b64_json":"aGk="}],"usage":{"input_tokens":50,"output_tokens":4160}}'
    assert parse_response("openai", b64, stream=False) == Usage(images=1, input_tokens=50, output_tokens=4160)
    chat = next(case for case in CASES if case.name == "zai_nonstream_cached_reasoning")
    assert parse_response("openai", chat.response.body, stream=False).images is None


def test_absent_fields_are_none_not_zero() -> None:
    body = sse(openai_chunk("x", finish="stop", usage={"prompt_tokens": 7, "completion_tokens": 3}), "[DONE]")
    usage = parse_response("openai", body, stream=True)
    assert (usage.input_tokens, usage.output_tokens) == (7, 3)
    assert usage.cached_input_tokens is None
    assert usage.cache_write_tokens is None
    assert usage.reasoning_tokens is None
    assert usage.images is None


def test_bad_count_values_are_none() -> None:
    usage_obj = {"prompt_tokens": "12", "completion_tokens": -1, "prompt_tokens_details": {"cached_tokens": True}}
    body = json.dumps({"choices": [], "usage": {**usage_obj, "completion_tokens_details": {"reasoning_tokens": 2.0}}})
    usage = parse_response("openai", body.encode(), stream=False)
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) == (None, None, None)
    assert usage.reasoning_tokens == 2


def test_openrouter_reported_cost_from_the_recorded_responses() -> None:
    by_name = {case.name: case for case in CASES}

    def cost(name: str) -> Decimal | None:
        case = by_name[name]
        return parse_response(case.dialect, case.response.body, stream=case.stream).reported_cost  # type: ignore[arg-type]

    assert cost("openrouter_nonstream_glm_cached_cost") == Decimal(0)  # a free variant: "cost":0
    assert cost("openrouter_stream_usage_last_chunk") == Decimal("0.000007765")
    assert cost("zai_nonstream_cached_reasoning") is None  # providers that do not report a cost


def test_reported_cost_with_byok_adds_what_the_upstream_charged() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "cost": 0.00001, "is_byok": True}
    details = {"upstream_inference_cost": 0.0002}
    byok = json.dumps({"choices": [], "usage": {**usage, "cost_details": details}}).encode()
    assert parse_response("openai", byok, stream=False).reported_cost == Decimal("0.00021")
    credits = json.dumps({"choices": [], "usage": {**usage, "is_byok": False, "cost_details": details}}).encode()
    assert parse_response("openai", credits, stream=False).reported_cost == Decimal("0.00001")


@pytest.mark.parametrize("value", ["0.1", -0.5, True, None, [1], {"usd": 1}])
def test_a_reported_cost_that_is_not_a_non_negative_number_is_none(value: object) -> None:
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": value}})
    assert parse_response("openai", body.encode(), stream=False).reported_cost is None


def test_a_non_finite_reported_cost_is_none() -> None:
    body = b'{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": NaN}}'
    assert parse_response("openai", body, stream=False).reported_cost is None


@pytest.mark.parametrize("dialect", DIALECTS)
def test_json_error_body_answering_a_stream_request(dialect: str) -> None:
    body = b'{"error":{"code":"1302","message":"High concurrency"},"request_id":"r-1"}'
    usage = parse_response(dialect, body, stream=True)  # type: ignore[arg-type]
    assert usage == Usage(request_id="r-1", complete=True)


@pytest.mark.parametrize("body", [b"", b"  \r\n", b"<html>502</html>", b'{"usage": {"prompt_tokens": 3', b"\xff\xfe"])
def test_empty_garbage_or_cut_json_body_is_incomplete(body: bytes) -> None:
    for dialect in DIALECTS:
        for stream in (False, True):
            assert parse_response(dialect, body, stream=stream) == Usage(complete=False)


def test_openai_stream_completeness() -> None:
    final = openai_chunk("", finish="stop", usage={"prompt_tokens": 1, "completion_tokens": 1})
    assert parse_response("openai", sse(openai_chunk("a"), final), stream=True).complete is True
    usage_cut = sse(openai_chunk("a"), openai_chunk("", finish="stop"))
    assert parse_response("openai", usage_cut, stream=True).complete is False
    assert parse_response("openai", usage_cut + sse("[DONE]"), stream=True).complete is True
    # vLLM continuous usage cut mid-stream: usage seen, but no finish_reason and no [DONE].
    running = openai_chunk("a", usage={"prompt_tokens": 1, "completion_tokens": 1})
    assert parse_response("openai", sse(running), stream=True).complete is False


def test_utf8_bom_before_body() -> None:
    case = next(case for case in CASES if case.name == "zai_stream_usage_final_chunk")
    expected = parse_response("openai", case.response.body, stream=True)
    assert parse_response("openai", b"\xef\xbb\xbf" + case.response.body, stream=True) == expected
    assert feed_pieces("openai", b"\xef\xbb\xbf" + case.response.body, [1, 2], stream=True) == expected


def test_oversized_line_is_discarded_and_the_stream_goes_on() -> None:
    final = openai_chunk("", finish="stop", usage={"prompt_tokens": 5, "completion_tokens": 2})
    huge = b"data: " + b'{"pad":"' + b"x" * (1 << 20) + b'"}\n\n'
    body = sse(openai_chunk("a")) + huge + sse(final, "[DONE]")
    for size in (len(body), 4096, 65536):
        parser = UsageParser("openai", stream=True)
        for start in range(0, len(body), size):
            parser.feed(body[start : start + size])
        usage = parser.finish()
        assert (usage.input_tokens, usage.output_tokens, usage.complete) == (5, 2, True)
        assert parser.discarded == 1


def test_line_at_the_cap_is_kept_and_one_byte_more_is_dropped() -> None:
    line = b'data: {"model":"m","choices":[]}'
    for cap, model in ((len(line), "m"), (len(line) - 1, None)):
        parser = UsageParser("openai", stream=True, max_line_bytes=cap)
        for byte in range(len(line) + 1):
            parser.feed((line + b"\n")[byte : byte + 1])
        assert parser.finish().model == model
        assert parser.discarded == (0 if model else 1)


def test_oversized_json_body_is_discarded() -> None:
    body = b'{"model":"glm-4.7","usage":{"prompt_tokens":1,"completion_tokens":1}}'
    parser = UsageParser("openai", stream=False, max_body_bytes=len(body) - 1)
    parser.feed(body[:10])
    parser.feed(body[10:])
    assert parser.finish() == Usage(complete=False)
    assert parser.discarded == 1


def test_finish_is_idempotent_and_feed_after_finish_is_a_caller_bug() -> None:
    parser = UsageParser("openai", stream=True)
    parser.feed(sse(openai_chunk("a")))
    first = parser.finish()
    assert parser.finish() is first
    with pytest.raises(RuntimeError):
        parser.feed(b"data: {}\n\n")


def test_unknown_dialect_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown dialect"):
        UsageParser("gemini", stream=True)  # type: ignore[arg-type]


# -- first token ------------------------------------------------------------------------------------------

FIRST_TOKEN_MARKERS = {
    "zai_stream_usage_final_chunk": b'"reasoning_content":"\\n"',
    "zai_stream_no_thinking_docs": b'"content":"Spring"',
    "zai_stream_truncated_no_usage": b'"reasoning_content":"\\n"',
    "zai_stream_finish_sensitive": '"content":"好的"'.encode(),
    "zai_anthropic_stream_recorded": b'"type":"text_delta"',
    "dashscope_compat_stream_include_usage_cached": b'"content":"I am"',
    "dashscope_native_sse": '"content":"你好！"'.encode(),
    "openrouter_stream_usage_last_chunk": b'"reasoning":"The"',
}


def test_first_token_markers_cover_every_recorded_stream() -> None:
    assert set(FIRST_TOKEN_MARKERS) == {case.name for case in STREAM_CASES}


@pytest.mark.parametrize("case", STREAM_CASES, ids=[case.name for case in STREAM_CASES])
def test_first_token_reported_once_at_the_end_of_its_event_line(case: Case) -> None:
    body = case.response.body
    marker_at = body.index(FIRST_TOKEN_MARKERS[case.name])
    line_end = body.index(b"\n", marker_at)
    parser = UsageParser(case.dialect, stream=True)  # type: ignore[arg-type]
    hits = [i for i in range(len(body)) if parser.feed(body[i : i + 1])]
    assert hits == [line_end]
    assert parser.first_token_seen


def test_first_token_not_reported_for_empty_content_or_usage_only() -> None:
    parser = UsageParser("openai", stream=True)
    assert parser.feed(sse(openai_chunk(""), openai_chunk(None, finish="stop"))) is False
    assert parser.first_token_seen is False
    assert parser.feed(sse(openai_chunk("x"))) is True
    assert parser.feed(sse(openai_chunk("y"))) is False


def test_first_token_in_unterminated_last_line_shows_after_finish() -> None:
    parser = UsageParser("openai", stream=True)
    assert parser.feed(b"data: " + json.dumps(openai_chunk("x")).encode()) is False
    parser.finish()
    assert parser.first_token_seen is True


def test_first_token_from_tool_call_and_anthropic_thinking() -> None:
    tool = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]}
    assert UsageParser("openai", stream=True).feed(sse(tool)) is True
    thinking = {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}}
    assert UsageParser("anthropic", stream=True).feed(sse(thinking)) is True


def test_json_bodies_have_no_first_token() -> None:
    case = next(case for case in CASES if case.name == "zai_nonstream_cached_reasoning")
    parser = UsageParser("openai", stream=False)
    assert parser.feed(case.response.body) is False
    parser.finish()
    assert parser.first_token_seen is False


# -- 3. properties ----------------------------------------------------------------------------------------

JSON_KEYS = st.sampled_from(
    [
        "usage",
        "choices",
        "delta",
        "message",
        "output",
        "content",
        "reasoning_content",
        "text",
        "type",
        "finish_reason",
        "stop_reason",
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "completion_tokens_details",
        "reasoning_tokens",
        "model",
        "id",
        "request_id",
        "data",
        "url",
        "image_count",
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_delta",
    ]
)
JSON_SCALARS = st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats() | st.text(max_size=8) | JSON_KEYS
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(JSON_KEYS | st.text(max_size=4), children, max_size=5)
    ),
    max_leaves=25,
)
SSE_LINE = st.one_of(
    JSON_VALUES.map(lambda value: b"data: " + json.dumps(value, ensure_ascii=False).encode()),
    JSON_VALUES.map(lambda value: b"data:" + json.dumps(value).encode()[:-1]),
    st.sampled_from(
        [b"", b"", b"data: [DONE]", b": comment", b"event: message_stop", b"event: message_delta", b"id: 7"]
    ),
    st.binary(max_size=20),
)
SSE_BODY = st.builds(
    lambda lines, end: end.join(lines), st.lists(SSE_LINE, max_size=12), st.sampled_from([b"\n", b"\r\n", b"\r"])
)
DIALECT = st.sampled_from(DIALECTS)


def cuts_for(body: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(body)), max_size=24)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=400), dialect=DIALECT, stream=st.booleans(), data=st.data())
def test_arbitrary_bytes_never_raise(body: bytes, dialect: str, stream: bool, data: st.DataObject) -> None:
    whole = parse_response(dialect, body, stream=stream)  # type: ignore[arg-type]
    assert isinstance(whole, Usage)
    assert feed_pieces(dialect, body, data.draw(cuts_for(body)), stream=stream) == whole


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(body=SSE_BODY, dialect=DIALECT, stream=st.booleans(), data=st.data())
def test_arbitrary_sse_and_json_shapes_never_raise(
    body: bytes, dialect: str, stream: bool, data: st.DataObject
) -> None:
    whole = parse_response(dialect, body, stream=stream)  # type: ignore[arg-type]
    assert feed_pieces(dialect, body, data.draw(cuts_for(body)), stream=stream) == whole
    as_json = parse_response(dialect, json.dumps(data.draw(JSON_VALUES)).encode(), stream=stream)  # type: ignore[arg-type]
    assert isinstance(as_json, Usage)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_split_of_a_recorded_body_gives_the_same_usage(case: Case, data: st.DataObject) -> None:
    body = case.response.body
    expected = parse_response(case.dialect, body, stream=case.stream)  # type: ignore[arg-type]
    # Bias some cuts towards the inside of multibyte UTF-8 characters (continuation bytes 0x80-0xBF).
    inside = [i for i, byte in enumerate(body) if 0x80 <= byte <= 0xBF] or [0]
    cuts = data.draw(cuts_for(body)) + data.draw(st.lists(st.sampled_from(inside), max_size=8))
    assert feed_pieces(case.dialect, body, cuts, stream=case.stream) == expected


@pytest.mark.parametrize("case", STREAM_CASES, ids=[case.name for case in STREAM_CASES])
def test_every_single_split_point_of_a_recorded_stream(case: Case) -> None:
    body = case.response.body
    expected = parse_response(case.dialect, body, stream=True)  # type: ignore[arg-type]
    for cut in range(len(body) + 1):
        assert feed_pieces(case.dialect, body, [cut], stream=True) == expected, cut


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_byte_by_byte_feeding(case: Case) -> None:
    body = case.response.body
    expected = parse_response(case.dialect, body, stream=case.stream)  # type: ignore[arg-type]
    assert feed_pieces(case.dialect, body, list(range(len(body))), stream=case.stream) == expected


@settings(max_examples=200)
@given(body=SSE_BODY, data=st.data())
def test_line_splitter_is_chunking_invariant(body: bytes, data: st.DataObject) -> None:
    def lines_of(pieces: list[bytes]) -> list[bytes]:
        splitter = LineSplitter(max_line=64)
        out = []
        for piece in pieces:
            out += splitter.feed(piece)
        return out + splitter.finish()

    cuts = sorted(set(data.draw(cuts_for(body))))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    expected = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if expected[-1] == b"":
        expected.pop()  # a final line end does not open another line
    expected = [line for line in expected if len(line) <= 64]
    assert lines_of([body]) == expected
    assert lines_of(pieces) == expected


# -- 4. memory ----------------------------------------------------------------------------------------------


def _long_stream(dialect: str, events: int) -> Iterator[bytes]:
    """A synthetic stream of ``events`` content events, each fed as two chunks cut inside a Chinese character."""
    if dialect == "openai":
        content = sse(openai_chunk("你好，世界"))
        tail = sse(openai_chunk("", finish="stop", usage={"prompt_tokens": 9, "completion_tokens": events}), "[DONE]")
    elif dialect == "anthropic":
        content = sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "你好"}})
        tail = sse(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": events}},
            {"type": "message_stop"},
        )
    else:
        content = sse(
            {
                "output": {"choices": [{"message": {"content": "你好"}, "finish_reason": "null"}]},
                "usage": {"input_tokens": 9, "output_tokens": 1},
            }
        )
        tail = sse(
            {"output": {"choices": [{"finish_reason": "stop"}]}, "usage": {"input_tokens": 9, "output_tokens": events}}
        )
    cut = content.index("好".encode()) + 1
    head, rest = content[:cut], content[cut:]
    for _ in range(events):
        yield head
        yield rest
    yield tail


@pytest.mark.parametrize("dialect", DIALECTS)
def test_memory_stays_constant_over_a_long_stream(dialect: str) -> None:
    events = 100_000  # 200,000 chunks
    chunks = _long_stream(dialect, events)
    parser = UsageParser(dialect, stream=True)  # type: ignore[arg-type]
    parser.feed(next(chunks))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for chunk in chunks:
            parser.feed(chunk)
        usage = parser.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert usage.output_tokens == events
    assert usage.complete is True
    assert peak < 1_000_000
