"""Outcome classification: every recorded provider response, each provider's code family, retry hints,
transport failures, and garbage that must never raise."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.outcomes import (
    MAX_MESSAGE_CHARS,
    Classification,
    Outcome,
    classify,
    classify_exception,
    classify_stream_end,
    outcome_for_status,
)
from monitor.usage import parse_response
from tests.casefiles import Case, load_cases, load_http

CASES = load_cases()
BEIJING = timezone(timedelta(hours=8))


def _body(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _zhipu(code: str, message: str = "msg") -> bytes:
    return _body({"error": {"code": code, "message": message}})


# --- every recorded case ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_recorded_case_classifies_as_expected(case: Case) -> None:
    response = case.response
    assert response.status == case.expect["http_status"]
    if not case.stream:
        verdict = classify(response.status, response.headers, response.body)
    else:
        # A streaming response is classified from its headers, then finished with its last finish_reason.
        head = classify(response.status, response.headers, b"")
        assert head == Classification(Outcome.OK)
        verdict = classify_stream_end(head, parse_response(case.dialect, response.body, stream=True).finish_reason)
    assert verdict.outcome == case.expect["outcome"]
    assert verdict.error_code == case.expect["error_code"]
    assert verdict.message is None or len(verdict.message) <= MAX_MESSAGE_CHARS
    if verdict.outcome is not Outcome.OK:
        assert verdict.message  # a failure always says something


@pytest.mark.parametrize("case", [c for c in CASES if c.stream], ids=[c.name for c in CASES if c.stream])
def test_whole_recorded_stream_body_classifies_like_the_two_step_way(case: Case) -> None:
    response = case.response
    verdict = classify(response.status, response.headers, response.body)
    assert verdict.outcome == case.expect["outcome"]
    assert verdict.error_code == case.expect["error_code"]


def test_quota_api_answers_classify_as_ok_and_as_auth_error_despite_http_200() -> None:
    ok = load_http("quota_limit")
    assert classify(ok.status, ok.headers, ok.body) == Classification(Outcome.OK)
    auth = load_http("quota_limit_auth_error")
    verdict = classify(auth.status, auth.headers, auth.body)
    assert verdict.outcome is Outcome.AUTH_ERROR
    assert verdict.error_code == "401"
    assert verdict.message == "token expired or incorrect"


# --- Zhipu / Z.ai business codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("1000", 401, Outcome.AUTH_ERROR),
        ("1001", 401, Outcome.AUTH_ERROR),
        ("1002", 401, Outcome.AUTH_ERROR),
        ("1003", 401, Outcome.AUTH_ERROR),
        ("1004", 401, Outcome.AUTH_ERROR),
        ("1113", 429, Outcome.QUOTA_EXHAUSTED),
        ("1211", 400, Outcome.CLIENT_ERROR),
        ("1301", 400, Outcome.CONTENT_FILTERED),
        ("1302", 429, Outcome.CONCURRENCY_LIMITED),
        ("1303", 429, Outcome.RATE_LIMITED),
        ("1304", 429, Outcome.QUOTA_EXHAUSTED),
        ("1305", 429, Outcome.OVERLOADED),
        ("1305", 200, Outcome.OVERLOADED),
        ("1305", 503, Outcome.OVERLOADED),
        ("1308", 429, Outcome.QUOTA_EXHAUSTED),
        ("1309", 429, Outcome.QUOTA_EXHAUSTED),
        ("1310", 429, Outcome.QUOTA_EXHAUSTED),
        ("1312", 429, Outcome.OVERLOADED),
        ("1313", 429, Outcome.QUOTA_EXHAUSTED),
        # Unknown codes fall back to the HTTP status; inside a 200 they are still failures.
        ("1999", 400, Outcome.CLIENT_ERROR),
        ("1999", 429, Outcome.RATE_LIMITED),
        ("1999", 503, Outcome.OVERLOADED),
        ("1999", 200, Outcome.SERVER_ERROR),
    ],
)
def test_zhipu_business_codes(code: str, status: int, expected: Outcome) -> None:
    verdict = classify(status, {"content-type": "application/json"}, _zhipu(code))
    assert verdict.outcome is expected
    assert verdict.error_code == code


def test_1302_is_concurrency_even_when_the_message_says_rate_limit() -> None:
    verdict = classify(429, {}, _zhipu("1302", "Rate limit reached for requests"))
    assert verdict.outcome is Outcome.CONCURRENCY_LIMITED
    assert verdict.outcome.throttled


def test_zhipu_code_as_integer_in_the_old_envelope() -> None:
    verdict = classify(200, {}, _body({"code": 1302, "msg": "并发数过高", "success": False}))
    assert verdict == Classification(Outcome.CONCURRENCY_LIMITED, error_code="1302", message="并发数过高")


def test_zhipu_code_in_anthropic_error_type() -> None:
    body = _body({"type": "error", "error": {"type": "1302", "message": "High concurrency"}, "request_id": "x"})
    verdict = classify(429, {}, body)
    assert (verdict.outcome, verdict.error_code) == (Outcome.CONCURRENCY_LIMITED, "1302")


# --- business errors inside HTTP 200 ------------------------------------------------------------------------


def test_business_error_inside_http_200_is_not_ok() -> None:
    verdict = classify(200, {"content-type": "application/json"}, _zhipu("1305", "该模型当前访问量过大，请您稍后再试"))
    assert verdict.outcome is Outcome.OVERLOADED
    assert verdict.error_code == "1305"
    assert verdict.message == "该模型当前访问量过大，请您稍后再试"


def test_success_false_with_http_like_code_inside_http_200() -> None:
    verdict = classify(200, {}, _body({"code": 401, "msg": "token expired or incorrect", "success": False}))
    assert (verdict.outcome, verdict.error_code) == (Outcome.AUTH_ERROR, "401")


def test_unreadable_error_inside_http_200_is_a_server_error() -> None:
    verdict = classify(200, {}, _body({"error": "upstream exploded"}))
    assert verdict.outcome is Outcome.SERVER_ERROR
    assert verdict.error_code is None
    assert verdict.message == "upstream exploded"


@pytest.mark.parametrize(
    "body", [{"error": None}, {"code": 0, "data": {}}, {"code": "", "output": {}}, {"code": "success"}, [1, 2], "hi"]
)
def test_http_200_bodies_without_an_error_are_ok(body: Any) -> None:
    assert classify(200, {}, _body(body)) == Classification(Outcome.OK)


@pytest.mark.parametrize("reason", ["sensitive", "content_filter"])
def test_non_stream_200_ending_in_a_filter_finish_reason_is_content_filtered(reason: str) -> None:
    body = _body({"choices": [{"index": 0, "finish_reason": reason, "message": {"content": ""}}], "model": "glm-4.6"})
    verdict = classify(200, {}, body)
    assert verdict.outcome is Outcome.CONTENT_FILTERED
    assert verdict.error_code is None
    assert verdict.message is not None and reason in verdict.message


def test_non_stream_200_with_ordinary_finish_reason_is_ok() -> None:
    body = _body({"choices": [{"finish_reason": "length", "message": {"content": "x"}}]})
    assert classify(200, {}, body).outcome is Outcome.OK


# --- DashScope ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("Throttling", 429, Outcome.RATE_LIMITED),
        ("Throttling.RateQuota", 429, Outcome.RATE_LIMITED),
        ("Throttling.AllocationQuota", 429, Outcome.RATE_LIMITED),
        ("Throttling.SomethingNew", 429, Outcome.RATE_LIMITED),
        ("Arrearage", 400, Outcome.QUOTA_EXHAUSTED),
        ("AllocationQuota.FreeTierOnly", 403, Outcome.QUOTA_EXHAUSTED),
        ("DataInspectionFailed", 400, Outcome.CONTENT_FILTERED),
        ("InternalError.Algo.DataInspectionFailed", 400, Outcome.CONTENT_FILTERED),
        ("InvalidApiKey", 401, Outcome.AUTH_ERROR),
        ("InvalidParameter", 400, Outcome.CLIENT_ERROR),
        ("InternalError", 500, Outcome.SERVER_ERROR),
    ],
)
def test_dashscope_native_codes(code: str, status: int, expected: Outcome) -> None:
    body = _body({"code": code, "message": "text", "request_id": "8f0e2d1c-5b7a-9e33-a1c4-6d2b0f9e7a15"})
    verdict = classify(status, {}, body)
    assert (verdict.outcome, verdict.error_code) == (expected, code)


@pytest.mark.parametrize(
    ("code", "message", "status", "expected"),
    [
        ("data_inspection_failed", "Input data may contain inappropriate content.", 400, Outcome.CONTENT_FILTERED),
        ("invalid_api_key", "Incorrect API key provided. ", 401, Outcome.AUTH_ERROR),
        (
            "Arrearage",
            "Access denied, please make sure your account is in good standing.",
            400,
            Outcome.QUOTA_EXHAUSTED,
        ),
        (
            "insufficient_quota",
            "You exceeded your current quota. For details, see: https://help.aliyun.com/zh/model-studio/error-code#token-limit",
            429,
            Outcome.RATE_LIMITED,
        ),
        (
            "insufficient_quota",
            "You exceeded your current quota, please check your plan and billing details.",
            429,
            Outcome.QUOTA_EXHAUSTED,
        ),
    ],
)
def test_dashscope_compatible_mode_codes(code: str, message: str, status: int, expected: Outcome) -> None:
    body = _body({"error": {"code": code, "message": message, "type": code, "param": None}, "request_id": "r"})
    verdict = classify(status, {}, body)
    assert (verdict.outcome, verdict.error_code) == (expected, code)


# --- OpenRouter ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (402, Outcome.QUOTA_EXHAUSTED),
        (429, Outcome.RATE_LIMITED),
        (401, Outcome.AUTH_ERROR),
        (502, Outcome.SERVER_ERROR),
    ],
)
def test_openrouter_integer_codes_are_stringified(code: int, expected: Outcome) -> None:
    verdict = classify(code, {}, _body({"error": {"message": "m", "code": code}, "user_id": "user_x"}))
    assert (verdict.outcome, verdict.error_code) == (expected, str(code))


def test_openrouter_code_inside_http_200_stream_error() -> None:
    verdict = classify(200, {}, _body({"error": {"message": "Provider returned error", "code": 502}}))
    assert (verdict.outcome, verdict.error_code) == (Outcome.SERVER_ERROR, "502")


def test_openrouter_message_includes_the_upstream_reason() -> None:
    fixture = load_http("openrouter_429_upstream_rate_limited")
    verdict = classify(fixture.status, fixture.headers, fixture.body)
    assert verdict.message is not None
    assert verdict.message.startswith(
        "Provider returned error: z-ai/glm-5.3-flash is temporarily rate-limited upstream"
    )


def test_openrouter_moderation_is_content_filtered_without_keeping_the_flagged_input() -> None:
    body = _body(
        {
            "error": {
                "code": 403,
                "message": "z-ai/glm-4.6 requires moderation. Your input was flagged for harassment",
                "metadata": {"reasons": ["harassment"], "flagged_input": "the user's private prompt"},
            }
        }
    )
    verdict = classify(403, {}, body)
    assert (verdict.outcome, verdict.error_code) == (Outcome.CONTENT_FILTERED, "403")
    assert verdict.message is not None and "private prompt" not in verdict.message


# --- Anthropic- and OpenAI-style errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "status", "expected"),
    [
        ("rate_limit_error", 429, Outcome.RATE_LIMITED),
        ("overloaded_error", 529, Outcome.OVERLOADED),
        ("authentication_error", 401, Outcome.AUTH_ERROR),
        ("permission_error", 403, Outcome.AUTH_ERROR),
        ("invalid_request_error", 400, Outcome.CLIENT_ERROR),
        ("not_found_error", 404, Outcome.CLIENT_ERROR),
        ("api_error", 500, Outcome.SERVER_ERROR),
    ],
)
def test_anthropic_error_types(type_: str, status: int, expected: Outcome) -> None:
    verdict = classify(status, {}, _body({"type": "error", "error": {"type": type_, "message": "m"}}))
    assert (verdict.outcome, verdict.error_code) == (expected, type_)


def test_overloaded_error_is_overloaded_even_without_529() -> None:
    verdict = classify(
        200, {}, _body({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    )
    assert verdict.outcome is Outcome.OVERLOADED


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("rate_limit_exceeded", 429, Outcome.RATE_LIMITED),
        ("insufficient_quota", 429, Outcome.QUOTA_EXHAUSTED),
        ("invalid_api_key", 401, Outcome.AUTH_ERROR),
        ("model_not_found", 404, Outcome.CLIENT_ERROR),
        ("context_length_exceeded", 400, Outcome.CLIENT_ERROR),
        ("content_policy_violation", 400, Outcome.CONTENT_FILTERED),
    ],
)
def test_openai_codes(code: str, status: int, expected: Outcome) -> None:
    body = _body({"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": code}})
    verdict = classify(status, {}, body)
    assert (verdict.outcome, verdict.error_code) == (expected, code)


def test_generic_type_yields_to_a_more_specific_status() -> None:
    body = _body({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": None}})
    verdict = classify(401, {}, body)
    assert (verdict.outcome, verdict.error_code) == (Outcome.AUTH_ERROR, "invalid_request_error")


def test_odd_codes_are_kept_as_sent_and_fall_back_to_status() -> None:
    # Unicode digits pass str.isdigit() but not int(): they must not derail the classifier.
    for code in ("²", "١٣٠٨", "E-42"):
        verdict = classify(400, {}, _body({"error": {"code": code, "message": "m"}}))
        assert verdict == Classification(Outcome.CLIENT_ERROR, error_code=code, message="m")


def test_vllm_style_error_object() -> None:
    body = _body({"object": "error", "message": "max_tokens is too large", "type": "BadRequestError", "code": 400})
    verdict = classify(400, {}, body)
    assert (verdict.outcome, verdict.error_code) == (Outcome.CLIENT_ERROR, "400")


# --- whole SSE bodies with an error inside -------------------------------------------------------------------


def test_zhipu_stream_with_an_error_event() -> None:
    body = (
        b'data: {"id":"1","model":"glm-4.6","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        b'data: {"error":{"code":"1305","message":"The service may be temporarily overloaded"}}\n\n'
    )
    verdict = classify(200, {"content-type": "text/event-stream"}, body)
    assert (verdict.outcome, verdict.error_code) == (Outcome.OVERLOADED, "1305")


def test_dashscope_native_stream_with_an_error_event_takes_its_announced_status() -> None:
    body = (
        b"id:1\nevent:error\n:HTTP_STATUS/429\n"
        b'data:{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded","request_id":"r"}\n\n'
    )
    verdict = classify(200, {"content-type": "text/event-stream"}, body)
    assert (verdict.outcome, verdict.error_code) == (Outcome.RATE_LIMITED, "Throttling.RateQuota")


def test_anthropic_stream_with_an_error_event() -> None:
    body = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1"}}\n\n'
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    verdict = classify(200, {"content-type": "text/event-stream"}, body)
    assert (verdict.outcome, verdict.error_code) == (Outcome.OVERLOADED, "overloaded_error")


# --- stream end ---------------------------------------------------------------------------------------------


def test_stream_end_sensitive_turns_ok_into_content_filtered() -> None:
    verdict = classify_stream_end(classify(200, {}, b""), "sensitive")
    assert verdict.outcome is Outcome.CONTENT_FILTERED
    assert verdict.error_code is None
    assert verdict.message is not None and "sensitive" in verdict.message


def test_stream_end_zhipu_network_error_is_a_server_error() -> None:
    assert classify_stream_end(Classification(Outcome.OK), "network_error").outcome is Outcome.SERVER_ERROR


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "end_turn", "null", None])
def test_stream_end_ordinary_or_missing_finish_keeps_ok(reason: str | None) -> None:
    ok = Classification(Outcome.OK)
    assert classify_stream_end(ok, reason) is ok


def test_stream_end_does_not_override_a_failure() -> None:
    throttled = Classification(Outcome.RATE_LIMITED, error_code="1303")
    assert classify_stream_end(throttled, "sensitive") is throttled


# --- retry-after --------------------------------------------------------------------------------------------


def test_retry_after_seconds_header_with_any_name_case() -> None:
    assert classify(429, {"Retry-After": "30"}, b"").retry_after_s == 30.0
    assert classify(503, {"retry-after": " 1.5 "}, b"").retry_after_s == 1.5


def test_retry_after_ms_header() -> None:
    assert classify(429, {"retry-after-ms": "250"}, b"").retry_after_s == 0.25


def test_retry_after_http_date_is_measured_from_the_date_header() -> None:
    headers = {"Date": "Wed, 21 Oct 2026 07:28:00 GMT", "Retry-After": "Wed, 21 Oct 2026 07:30:00 GMT"}
    assert classify(503, headers, b"").retry_after_s == 120.0


def test_retry_after_http_date_without_date_header_is_measured_from_now() -> None:
    now = datetime(2026, 10, 21, 7, 29, 0, tzinfo=UTC)
    verdict = classify(503, {"retry-after": "Wed, 21 Oct 2026 07:30:00 GMT"}, b"", now=now)
    assert verdict.retry_after_s == 60.0


def test_retry_after_in_the_past_is_zero_not_negative() -> None:
    headers = {"date": "Wed, 21 Oct 2026 07:28:00 GMT", "retry-after": "Wed, 21 Oct 2026 07:00:00 GMT"}
    assert classify(429, headers, b"").retry_after_s == 0.0


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "inf", "", "1e400", "Wed, 99 Foo 2026"])
def test_unusable_retry_after_is_ignored(value: str) -> None:
    assert classify(429, {"retry-after": value}, b"").retry_after_s is None


def test_no_retry_hint_on_ok() -> None:
    assert classify(200, {"retry-after": "30"}, b"").retry_after_s is None


def test_1308_reset_time_against_the_date_header() -> None:
    fixture = load_http("zai_429_1308_usage_limit")
    verdict = classify(fixture.status, fixture.headers, fixture.body)
    # Date: Mon, 08 Sep 2025 16:38:28 GMT; reset 2026-09-09 05:38:28 Beijing = 2026-09-08 21:38:28 UTC.
    reset = datetime(2026, 9, 9, 5, 38, 28, tzinfo=BEIJING)
    date = datetime(2025, 9, 8, 16, 38, 28, tzinfo=UTC)
    assert verdict.retry_after_s == (reset - date).total_seconds() == 365 * 86400 + 5 * 3600


def test_1308_reset_time_on_the_anthropic_endpoint() -> None:
    fixture = load_http("zai_anthropic_429_1308_usage_limit")
    verdict = classify(fixture.status, fixture.headers, fixture.body)
    # 2025-11-10 15:47:02 UTC+8 = 07:47:02 UTC; Date 05:11:06 UTC.
    assert verdict.retry_after_s == 9356.0


def test_1308_reset_time_without_date_header_uses_now_and_never_goes_negative() -> None:
    body = _zhipu("1308", "Usage limit reached for 5 hour. Your limit will reset at 2026-01-01 09:00:00")
    before = classify(429, {}, body, now=datetime(2026, 1, 1, 0, 30, tzinfo=UTC))
    assert before.retry_after_s == 30 * 60
    after = classify(429, {}, body, now=datetime(2026, 1, 1, 2, 0, tzinfo=UTC))
    assert after.retry_after_s == 0.0


def test_1308_chinese_message_and_1310_weekly_cap() -> None:
    headers = {"date": "Tue, 09 Dec 2025 07:53:04 GMT"}
    zh = classify(429, headers, _zhipu("1308", "已达到 5 小时的使用上限。您的限额将在 2025-12-09 20:53:04 重置。"))
    assert zh.retry_after_s == 5 * 3600
    weekly = classify(
        429, headers, _zhipu("1310", "您已达到每周/每月使用上限，您的限额将在 2025-12-10 15:53:04 重置。")
    )
    assert weekly.outcome is Outcome.QUOTA_EXHAUSTED
    assert weekly.retry_after_s == 24 * 3600


def test_retry_after_header_wins_over_the_body() -> None:
    body = _zhipu("1308", "Your limit will reset at 2026-01-01 09:00:00")
    assert classify(429, {"retry-after": "7"}, body).retry_after_s == 7.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Rate limit reached for glm-4.7. Please try again in 6m0s.", 360.0),
        ("Please try again in 20ms.", 0.02),
        ("Please try again in 1.5s. Visit https://platform.openai.com/account/rate-limits", 1.5),
        ("Please retry after 30 seconds", 30.0),
    ],
)
def test_retry_hint_in_an_openai_style_message(text: str, seconds: float) -> None:
    verdict = classify(429, {}, _body({"error": {"code": "rate_limit_exceeded", "message": text}}))
    assert verdict.retry_after_s is not None
    assert math.isclose(verdict.retry_after_s, seconds)


# --- HTML, empty, garbage, messages -------------------------------------------------------------------------


def test_nginx_html_page_gives_its_title_not_the_page() -> None:
    fixture = load_http("zai_502_nginx_html")
    verdict = classify(fixture.status, fixture.headers, fixture.body)
    assert verdict == Classification(Outcome.SERVER_ERROR, message="502 Bad Gateway")


def test_cloudflare_timeout_page() -> None:
    page = (
        b"<!DOCTYPE html><html><head><title>api.z.ai | 524: A timeout occurred</title></head>"
        + b"<body>"
        + b"x" * 5000
        + b"</body></html>"
    )
    verdict = classify(524, {"content-type": "text/html; charset=UTF-8"}, page)
    assert verdict == Classification(Outcome.TIMEOUT, message="api.z.ai | 524: A timeout occurred")


def test_html_page_without_title_is_summarised_briefly() -> None:
    verdict = classify(503, {"content-type": "text/html"}, b"<html><body>" + b"<p>busy</p>" * 1000 + b"</body></html>")
    assert verdict.outcome is Outcome.OVERLOADED
    assert verdict.message is not None and "<" not in verdict.message and len(verdict.message) < 100


@pytest.mark.parametrize(
    ("status", "expected"),
    [(429, Outcome.RATE_LIMITED), (500, Outcome.SERVER_ERROR), (503, Outcome.OVERLOADED), (401, Outcome.AUTH_ERROR)],
)
def test_empty_body_is_classified_by_status(status: int, expected: Outcome) -> None:
    verdict = classify(status, {}, b"")
    assert verdict.outcome is expected
    assert verdict.error_code is None
    assert verdict.message is not None and str(status) in verdict.message and "empty" in verdict.message


def test_empty_200_is_ok_without_message() -> None:
    assert classify(200, {}, b"") == Classification(Outcome.OK)


def test_plain_text_error_body_becomes_the_message() -> None:
    verdict = classify(
        503, {"content-type": "text/plain"}, b"upstream connect error or disconnect/reset before headers"
    )
    assert verdict.outcome is Outcome.OVERLOADED
    assert verdict.message == "upstream connect error or disconnect/reset before headers"


def test_truncated_json_falls_back_to_status() -> None:
    verdict = classify(429, {}, b'{"error":{"code":"1302","message":"High conc')
    assert verdict.outcome is Outcome.RATE_LIMITED
    assert verdict.error_code is None


def test_garbage_bytes_do_not_raise() -> None:
    garbage = bytes(range(256)) * 40
    verdict = classify(500, {"content-type": "application/octet-stream"}, garbage)
    assert verdict.outcome is Outcome.SERVER_ERROR
    assert verdict.message is not None and len(verdict.message) <= MAX_MESSAGE_CHARS
    assert "\x00" not in verdict.message


def test_long_message_is_truncated_to_500_characters() -> None:
    verdict = classify(400, {}, _zhipu("1214", "messages 参数非法。" + "x" * 5000))
    assert verdict.message is not None
    assert len(verdict.message) == MAX_MESSAGE_CHARS


def test_message_echoing_a_key_is_redacted() -> None:
    key = "sk-abc123def456ghi789jkl012mno345pq"
    zhipu_key = "3f9a1c7e5b2d8f4a6c0e9b1d7f3a5c2e.Xq8Lm1Vb6Tn3Kp9W"
    message = f"Invalid header Authorization: Bearer {key}; tried key {zhipu_key}"
    verdict = classify(401, {}, _body({"error": {"code": "1002", "message": message}}))
    assert verdict.outcome is Outcome.AUTH_ERROR
    assert verdict.message is not None
    assert key not in verdict.message and "abc123def456" not in verdict.message
    assert zhipu_key not in verdict.message
    plain = classify(401, {"content-type": "text/plain"}, f"bad key Bearer {key}".encode())
    assert plain.message is not None and key not in plain.message


def test_secret_straddling_the_500_character_cut_does_not_leak_a_prefix() -> None:
    key = "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"
    verdict = classify(400, {}, _zhipu("1214", "y" * 480 + " " + key))
    assert verdict.message is not None and "sk-or" not in verdict.message


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Outcome.OK),
        (204, Outcome.OK),
        (301, Outcome.CLIENT_ERROR),
        (400, Outcome.CLIENT_ERROR),
        (401, Outcome.AUTH_ERROR),
        (402, Outcome.QUOTA_EXHAUSTED),
        (403, Outcome.AUTH_ERROR),
        (404, Outcome.CLIENT_ERROR),
        (408, Outcome.TIMEOUT),
        (409, Outcome.CLIENT_ERROR),
        (413, Outcome.CLIENT_ERROR),
        (422, Outcome.CLIENT_ERROR),
        (429, Outcome.RATE_LIMITED),
        (500, Outcome.SERVER_ERROR),
        (502, Outcome.SERVER_ERROR),
        (503, Outcome.OVERLOADED),
        (504, Outcome.TIMEOUT),
        (524, Outcome.TIMEOUT),
        (529, Outcome.OVERLOADED),
        (100, Outcome.SERVER_ERROR),
    ],
)
def test_status_alone(status: int, expected: Outcome) -> None:
    assert outcome_for_status(status) is expected
    assert classify(status, {}, b"").outcome is expected


# --- exceptions ---------------------------------------------------------------------------------------------

REQUEST = httpx.Request("POST", "https://api.z.ai/api/paas/v4/chat/completions")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectTimeout("timed out", request=REQUEST), Outcome.TIMEOUT),
        (httpx.ReadTimeout("timed out", request=REQUEST), Outcome.TIMEOUT),
        (httpx.WriteTimeout("timed out", request=REQUEST), Outcome.TIMEOUT),
        (httpx.PoolTimeout("timed out", request=REQUEST), Outcome.TIMEOUT),
        (TimeoutError(), Outcome.TIMEOUT),
        (httpx.ConnectError("[Errno 111] Connection refused", request=REQUEST), Outcome.NETWORK_ERROR),
        (httpx.ReadError("connection reset", request=REQUEST), Outcome.NETWORK_ERROR),
        (
            httpx.RemoteProtocolError("peer closed connection without sending complete message body", request=REQUEST),
            Outcome.NETWORK_ERROR,
        ),
        (httpx.ProxyError("407", request=REQUEST), Outcome.NETWORK_ERROR),
        (ConnectionResetError(104, "Connection reset by peer"), Outcome.NETWORK_ERROR),
        (OSError("Network is unreachable"), Outcome.NETWORK_ERROR),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_transport_failures(exc: BaseException, expected: Outcome) -> None:
    verdict = classify_exception(exc)
    assert verdict.outcome is expected
    assert verdict.error_code is None
    assert verdict.message is not None and type(exc).__name__ in verdict.message


def test_asyncio_wait_for_timeout() -> None:
    async def slow() -> None:
        await asyncio.wait_for(asyncio.sleep(1), timeout=0.001)

    with pytest.raises(TimeoutError) as caught:
        asyncio.run(slow())
    assert classify_exception(caught.value).outcome is Outcome.TIMEOUT


def test_wrapped_transport_failure_is_found_through_the_cause_chain() -> None:
    try:
        try:
            raise httpx.ReadTimeout("timed out", request=REQUEST)
        except httpx.ReadTimeout as inner:
            raise RuntimeError("probe failed") from inner
    except RuntimeError as outer:
        assert classify_exception(outer).outcome is Outcome.TIMEOUT


def test_openai_sdk_errors() -> None:
    assert classify_exception(openai.APITimeoutError(request=REQUEST)).outcome is Outcome.TIMEOUT
    assert classify_exception(openai.APIConnectionError(request=REQUEST)).outcome is Outcome.NETWORK_ERROR
    response = httpx.Response(
        429, json={"error": {"code": "1302", "message": "High concurrency usage of this API"}}, request=REQUEST
    )
    error = openai.RateLimitError("Error code: 429", response=response, body=None)
    assert classify_exception(error) == Classification(
        Outcome.CONCURRENCY_LIMITED, error_code="1302", message="High concurrency usage of this API"
    )


def test_http_status_error_is_classified_from_its_response() -> None:
    response = httpx.Response(402, json={"error": {"message": "Insufficient credits", "code": 402}}, request=REQUEST)
    exc = httpx.HTTPStatusError("402 Payment Required", request=REQUEST, response=response)
    assert classify_exception(exc) == Classification(
        Outcome.QUOTA_EXHAUSTED, error_code="402", message="Insufficient credits"
    )


def test_exception_message_is_redacted() -> None:
    key = "sk-8d2f6a1c9e4b7d3f0a5c2e8b6d1f4a9c"
    exc = httpx.ConnectError(f"cannot reach https://proxy.invalid/?api_key={key}", request=REQUEST)
    verdict = classify_exception(exc)
    assert verdict.message is not None and key not in verdict.message


def test_unknown_exception_is_a_network_error_naming_its_type() -> None:
    verdict = classify_exception(ValueError("weird"))
    assert verdict == Classification(Outcome.NETWORK_ERROR, message="ValueError: weird")


# --- properties: nothing raises, invariants hold ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
codes = st.one_of(
    st.sampled_from(["1302", "1308", "1305", "insufficient_quota", "Throttling.RateQuota", "overloaded_error"]),
    st.integers(-1000, 100_000),
    json_values,
)
messages = st.one_of(
    st.text(),
    st.just("Your limit will reset at 2026-09-09 05:38:28"),
    st.just("Please try again in 6m0s"),
    st.just("see https://help.aliyun.com/zh/model-studio/error-code#token-limit"),
    json_values,
)
envelopes = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"error": st.fixed_dictionaries({"code": codes, "type": codes, "message": messages, "metadata": json_values})}
    ),
    st.fixed_dictionaries({"code": codes, "message": messages, "success": json_values}),
    st.fixed_dictionaries(
        {
            "choices": st.lists(
                st.fixed_dictionaries({"finish_reason": st.sampled_from(["sensitive", "stop"]) | json_values})
            )
        }
    ),
)
header_dicts = st.dictionaries(st.text(max_size=20), st.text(max_size=60), max_size=6) | st.fixed_dictionaries(
    {},
    optional={
        "Date": st.sampled_from(["Mon, 08 Sep 2025 16:38:28 GMT", "garbage", "Mon, 01 Jan 0001 00:00:00 GMT"])
        | st.text(),
        "retry-after": st.sampled_from(["30", "Fri, 31 Dec 9999 23:59:59 GMT", "-1", "1.5"]) | st.text(),
        "retry-after-ms": st.text(max_size=20),
        "content-type": st.sampled_from(["application/json", "text/html", "text/event-stream"]),
    },
)
statuses = st.integers(min_value=100, max_value=599)


def _check(verdict: Classification) -> None:
    assert isinstance(verdict, Classification)
    assert isinstance(verdict.outcome, Outcome)
    assert verdict.error_code is None or (isinstance(verdict.error_code, str) and verdict.error_code)
    assert verdict.message is None or (isinstance(verdict.message, str) and len(verdict.message) <= MAX_MESSAGE_CHARS)
    if verdict.retry_after_s is not None:
        assert math.isfinite(verdict.retry_after_s) and verdict.retry_after_s >= 0
    if verdict.outcome is Outcome.OK:
        assert verdict.error_code is None and verdict.retry_after_s is None


@given(status=statuses, headers=header_dicts, body=st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(status: int, headers: dict[str, str], body: bytes) -> None:
    _check(classify(status, headers, body))


@settings(max_examples=300)
@given(status=statuses, headers=header_dicts, value=envelopes)
def test_arbitrary_json_never_raises(status: int, headers: dict[str, str], value: Any) -> None:
    _check(classify(status, headers, json.dumps(value).encode()))


@given(status=statuses, headers=header_dicts, events=st.lists(envelopes, max_size=5))
def test_arbitrary_sse_never_raises(status: int, headers: dict[str, str], events: list[Any]) -> None:
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events).encode()
    _check(classify(status, headers, body))


@given(st.text() | st.none(), st.sampled_from(list(Outcome)))
def test_stream_end_never_raises(reason: str | None, outcome: Outcome) -> None:
    _check(classify_stream_end(Classification(outcome), reason))


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "text/html; charset=utf-8"}, {"content-type": "application/json"}, {}],
    ids=["html-type", "mislabelled", "no-type"],
)
def test_a_200_with_an_html_page_is_not_ok(headers):
    page = b"<!DOCTYPE html><html><head><title>Sign in to the corporate network</title></head><body>...</body></html>"
    verdict = classify(200, headers, page)
    assert verdict.outcome == Outcome.SERVER_ERROR
    assert "HTML page" in verdict.message and "Sign in to the corporate network" in verdict.message


def test_a_200_html_content_type_with_no_body_kept_is_not_ok_either():
    # bodies larger than the recorder keeps reach classify empty: the content type alone tells
    assert classify(200, {"content-type": "text/html"}, b"").outcome == Outcome.SERVER_ERROR
    assert classify(200, {"content-type": "text/event-stream"}, b"").outcome == Outcome.OK
