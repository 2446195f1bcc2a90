"""Outcome of one request to a provider, classified from status, headers and body.

``classify(status, headers, body)`` turns one HTTP response into a :class:`Classification`: the
:class:`Outcome`, the provider's business code (always a string), how long to wait before retrying, and a
short message with secrets removed. ``classify_exception(exc)`` does the same for a request that got no
response, and ``classify_stream_end(...)`` finishes the verdict on a stream. None of them raises: a provider's
garbage is data.

Streams. A streaming 200 is classified in two steps, because its outcome is only known at the end::

    verdict = classify(response.status_code, response.headers, b"")     # headers only -> ok
    ...read the stream, keep the last finish_reason (monitor.usage gives it)...
    verdict = classify_stream_end(verdict, finish_reason)               # "sensitive" -> content_filtered

A caller that holds the whole SSE body (a recording) may pass it to ``classify`` instead: an error event in
the stream (Zhipu ``{"error":{"code":"1305"}}``, Anthropic ``event: error``, DashScope ``:HTTP_STATUS/429``)
and a filtering ``finish_reason`` are found there too. A non-stream 200 whose ``choices`` end with
``finish_reason: "sensitive"`` is content_filtered directly.

Decisions (where the providers leave room):

- A business error inside an HTTP 200 body is an error: the code decides; a code we do not know gives
  server_error (the provider reported a failure we cannot attribute), never ok.
- Zhipu 1113 (arrears), 1304 (daily cap, resets daily), 1308 (5-hour cap), 1309 (Coding Plan expired: the
  key is valid but no paid quota is left), 1310 (weekly/monthly cap) and 1313 (fair-use block: an account-level
  restriction lifted by the provider on request, so it never clears in seconds) are quota_exhausted even when
  they arrive with HTTP 429. 1302 is concurrency_limited even when its message says "Rate limit reached";
  1305 and 1312 are overloaded whatever the HTTP status (429, 200 and 503 were all seen).
- DashScope ``insufficient_quota`` (compatible mode) whose message links ``#token-limit``/``#rate-limit`` is
  the rendering of Throttling.AllocationQuota, a transient TPM/RPM throttle: rate_limited. Without that
  link it means what OpenAI means by it: quota_exhausted.
- HTTP status when nothing better is known: 2xx ok; 401/403/407 auth_error; 402 quota_exhausted; 429
  rate_limited; 408/504/522/524 timeout (the server side gave up waiting); 503 and 529 overloaded (on these
  providers 503 means no capacity, the same condition Anthropic reports as 529); other 4xx and 3xx
  (a redirect means a wrong base URL) client_error; other 5xx and anything else server_error.
- A generic code (``invalid_request_error``, ``api_error``, ``InternalError``...) only says client or server;
  when the HTTP status says something more specific (429, 401, 503...) the status wins.
- ``retry_after_s``: ``Retry-After-Ms``/``Retry-After`` headers (seconds or HTTP-date), else the body: the
  reset time in a Zhipu quota message (Beijing time, UTC+8, unless it carries an offset) or an OpenAI-style
  "try again in 6m0s". Dates are measured from the response's ``Date`` header, else from now; never negative.
  Only set when the outcome is not ok.
"""

from __future__ import annotations

import email.utils
import enum
import html
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any

import httpx

from monitor.redact import redact
from monitor.usage import Usage


class Outcome(enum.StrEnum):
    """What happened to one request. *Throttled* = rate_limited | concurrency_limited | overloaded."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    CONCURRENCY_LIMITED = "concurrency_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    OVERLOADED = "overloaded"
    AUTH_ERROR = "auth_error"
    CONTENT_FILTERED = "content_filtered"
    CLIENT_ERROR = "client_error"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    NETWORK_ERROR = "network_error"
    CANCELLED = "cancelled"
    """The client gave up before the response started: nothing was answered to anyone."""
    INVALID_USAGE = "invalid_usage"
    """The provider answered but reported a token count no response can have: recorded without a price."""

    @property
    def throttled(self) -> bool:
        """True for the outcomes that mean "slow down": rate, concurrency and overload limits."""
        return self in THROTTLED


THROTTLED = frozenset({Outcome.RATE_LIMITED, Outcome.CONCURRENCY_LIMITED, Outcome.OVERLOADED})


@dataclass(frozen=True, slots=True)
class Classification:
    """The verdict on one response: outcome, the provider's business code, how long to wait, a safe message."""

    outcome: Outcome
    error_code: str | None = None
    retry_after_s: float | None = None
    message: str | None = None


__all__ = [
    "MAX_MESSAGE_CHARS",
    "THROTTLED",
    "Classification",
    "Outcome",
    "classify",
    "classify_exception",
    "classify_stream_end",
    "invalid_usage",
    "outcome_for_status",
]

MAX_MESSAGE_CHARS = 500


def invalid_usage(verdict: Classification, usage: Usage) -> tuple[Classification, Usage]:
    """For an answer whose usage reports an impossible count: the ``invalid_usage`` verdict saying which, and the
    usage without its counts (none of them can be trusted, so none is summed or priced). Else both unchanged."""
    if usage.invalid is None or verdict.outcome != Outcome.OK:
        return verdict, usage
    message = f"the response reported an impossible token count ({usage.invalid}): recorded without tokens or price"
    kept = Usage(
        model=usage.model,
        request_id=usage.request_id,
        finish_reason=usage.finish_reason,
        complete=usage.complete,
        invalid=usage.invalid,
    )
    return Classification(Outcome.INVALID_USAGE, message=redact(message)), kept


# Zhipu states reset times as naive Beijing wall-clock times.
_BEIJING = timezone(timedelta(hours=8), "UTC+8")
_MAX_CODE_CHARS = 64
# Enough text to find every secret in the first MAX_MESSAGE_CHARS after redaction shrinks it.
_REDACT_WINDOW = 8000

_O = Outcome

# Business codes (compared lower-cased). Zhipu: docs.z.ai/api-reference/api-code and
# docs.bigmodel.cn/cn/api/api-code; DashScope: Model Studio error codes; Anthropic / OpenAI: their error docs.
_CODES: dict[str, Outcome] = {
    # Zhipu / Z.ai: authentication and account
    **dict.fromkeys(("1000", "1001", "1002", "1003", "1004"), _O.AUTH_ERROR),
    # account inactive / missing / locked (1121: locked for violations): no retry helps until a human acts
    **dict.fromkeys(("1110", "1111", "1112", "1121"), _O.AUTH_ERROR),
    "1113": _O.QUOTA_EXHAUSTED,
    "1120": _O.SERVER_ERROR,  # "could not access your account, try again later"
    # Zhipu: request errors
    **dict.fromkeys(
        ("1200", "1210", "1211", "1212", "1213", "1214", "1215", "1221", "1222", "1230", "1231", "1261"),
        _O.CLIENT_ERROR,
    ),
    "1220": _O.AUTH_ERROR,  # no permission for this API
    "1234": _O.SERVER_ERROR,  # "network error, contact support": theirs
    # Zhipu: policy blocks
    "1301": _O.CONTENT_FILTERED,
    "1302": _O.CONCURRENCY_LIMITED,
    "1303": _O.RATE_LIMITED,
    "1304": _O.QUOTA_EXHAUSTED,
    "1305": _O.OVERLOADED,
    "1308": _O.QUOTA_EXHAUSTED,
    "1309": _O.QUOTA_EXHAUSTED,
    "1310": _O.QUOTA_EXHAUSTED,
    "1311": _O.AUTH_ERROR,  # the subscription does not include this model
    "1312": _O.OVERLOADED,  # "this model is busy, try later or switch model"
    "1313": _O.QUOTA_EXHAUSTED,
    # DashScope (native and compatible mode)
    "throttling": _O.RATE_LIMITED,
    "throttling.ratequota": _O.RATE_LIMITED,
    "throttling.allocationquota": _O.RATE_LIMITED,
    "throttling.burstrate": _O.RATE_LIMITED,
    "limit_requests": _O.RATE_LIMITED,
    "arrearage": _O.QUOTA_EXHAUSTED,
    "prepaidbilloverdue": _O.QUOTA_EXHAUSTED,
    "postpaidbilloverdue": _O.QUOTA_EXHAUSTED,
    "allocationquota.freetieronly": _O.QUOTA_EXHAUSTED,
    "invalidapikey": _O.AUTH_ERROR,
    "invalid_api_key": _O.AUTH_ERROR,
    "modelnotfound": _O.CLIENT_ERROR,
    "model_not_found": _O.CLIENT_ERROR,
    "requesttimeout": _O.TIMEOUT,
    "requesttimedout": _O.TIMEOUT,
    "serviceunavailable": _O.OVERLOADED,
    "systemerror": _O.SERVER_ERROR,
    # Anthropic error types (also used by Anthropic-compatible endpoints)
    "rate_limit_error": _O.RATE_LIMITED,
    "overloaded_error": _O.OVERLOADED,
    "authentication_error": _O.AUTH_ERROR,
    "permission_error": _O.AUTH_ERROR,
    "billing_error": _O.QUOTA_EXHAUSTED,
    "invalid_request_error": _O.CLIENT_ERROR,
    "not_found_error": _O.CLIENT_ERROR,
    "request_too_large": _O.CLIENT_ERROR,
    "timeout_error": _O.TIMEOUT,
    "api_error": _O.SERVER_ERROR,
    # OpenAI codes (OpenAI-compatible servers copy them)
    "rate_limit_exceeded": _O.RATE_LIMITED,
    "billing_hard_limit_reached": _O.QUOTA_EXHAUSTED,
    "account_deactivated": _O.AUTH_ERROR,
    "unsupported_country_region_territory": _O.AUTH_ERROR,
    "context_length_exceeded": _O.CLIENT_ERROR,
    "content_filter": _O.CONTENT_FILTERED,
    "content_policy_violation": _O.CONTENT_FILTERED,
    "engine_overloaded": _O.OVERLOADED,
    "server_error": _O.SERVER_ERROR,
    "internal_error": _O.SERVER_ERROR,
}
# Code families recognised by shape, checked in order after the exact table.
_CODE_PATTERNS: tuple[tuple[re.Pattern[str], Outcome], ...] = (
    # DataInspectionFailed, data_inspection_failed, InternalError.Algo.DataInspectionFailed, ...
    (re.compile(r"data_?inspection_?failed"), _O.CONTENT_FILTERED),
    (re.compile(r"^throttling\b"), _O.RATE_LIMITED),
    (re.compile(r"(^|\.)accessdenied\b"), _O.AUTH_ERROR),
    (re.compile(r"^invalidparameter\b"), _O.CLIENT_ERROR),
    (re.compile(r"^internalerror\b"), _O.SERVER_ERROR),
)
# DashScope's compatible-mode insufficient_quota links one of these anchors when it is a TPM/RPM throttle.
_TRANSIENT_QUOTA_HINT = re.compile(r"#(?:token|rate)-limit\b", re.IGNORECASE)
# finish_reason / stop_reason values that end an otherwise successful response abnormally.
_FINISH_OUTCOMES: dict[str, Outcome] = {
    "sensitive": _O.CONTENT_FILTERED,  # Zhipu mid-stream moderation
    "content_filter": _O.CONTENT_FILTERED,  # OpenAI / Azure
    "refusal": _O.CONTENT_FILTERED,  # Anthropic streaming classifiers
    "network_error": _O.SERVER_ERROR,  # Zhipu: "model inference exception", their side
}
_VAGUE = frozenset({Outcome.OK, Outcome.CLIENT_ERROR, Outcome.SERVER_ERROR})

_RESET_AT = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?\s*(Z|[+-]\d{2}:?\d{2})?"
)
_UNIT = r"(?:ms|milliseconds?|seconds?|secs?|s|minutes?|mins?|m|hours?|h)"
_TRY_AGAIN = re.compile(rf"(?i)(?:try again|retry)\s+(?:in|after)\s+((?:\d+(?:\.\d+)?\s*{_UNIT}(?![a-z])\s*)+)")
_DURATION_PART = re.compile(rf"(?i)(\d+(?:\.\d+)?)\s*({_UNIT})(?![a-z])")
_SECONDS = re.compile(r"\s*(\d{1,12}(?:\.\d{1,9})?)\s*")
_TITLE = re.compile(r"(?is)<title[^>]*>(.*?)</title>")
_H1 = re.compile(r"(?is)<h1[^>]*>(.*?)</h1>")
_TAG = re.compile(r"<[^>]*>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\s]+")
_SSE_START = re.compile(r"(?:data|event|id|retry)\s*:|:")
_SSE_STATUS = re.compile(r":HTTP_STATUS/(\d{3})")
# Only SSE events containing one of these are parsed: the rest are ordinary content chunks.
_SSE_HINTS = ('"error"', '"code"', *(f'"{reason}"' for reason in _FINISH_OUTCOMES))


@dataclass(frozen=True, slots=True)
class _ErrorInfo:
    """An error envelope found in a body: code and type as sent, the message, and OpenRouter's moderation flag."""

    code: str | None
    type: str | None
    message: str | None
    flagged: bool = False


def classify(status: int, headers: Mapping[str, str], body: bytes, *, now: datetime | None = None) -> Classification:
    """Classify one HTTP response; never raises.

    ``headers`` names are matched case-insensitively. ``now`` (UTC) is the fallback reference for dates when
    the response has no usable ``Date`` header; it defaults to the current time.
    """
    try:
        return _classify(int(status), _lower_headers(headers), body, now)
    except Exception:
        # Defence in depth: one odd response must never take a probe loop or proxy down with it.
        return Classification(outcome_for_status(status), message=_clean_message(f"HTTP {status}"))


def classify_stream_end(classification: Classification, finish_reason: str | None) -> Classification:
    """Finish the verdict on a stream whose headers gave ``classification``, given its last finish_reason.

    An ok stream that ended with ``"sensitive"`` (Zhipu moderation), ``"content_filter"`` or ``"refusal"``
    becomes content_filtered; Zhipu's ``"network_error"`` (inference failed mid-stream) becomes server_error.
    Anything else, including a stream cut before its finish (finish_reason None), keeps ``classification``.
    """
    if classification.outcome is not Outcome.OK:
        return classification
    outcome = _finish_outcome(finish_reason)
    if outcome is None:
        return classification
    return Classification(outcome, message=_clean_message(_finish_message(finish_reason)))


def classify_exception(exc: BaseException) -> Classification:
    """Classify a request that produced no usable response; never raises.

    httpx timeouts and ``TimeoutError`` (= ``asyncio.TimeoutError``) give timeout; other httpx transport
    errors and ``OSError`` give network_error. An exception carrying an ``httpx.Response`` (``HTTPStatusError``,
    the openai/anthropic SDKs' status errors) is classified from that response. The cause chain is searched,
    so SDK wrappers around httpx errors are recognised. Anything unrecognised counts as network_error: the
    request got no answer, and the message names the exception.
    """
    try:
        return _classify_exception(exc)
    except Exception:
        return Classification(Outcome.NETWORK_ERROR, message=_clean_message(type(exc).__name__))


def outcome_for_status(status: int) -> Outcome:
    """The outcome an HTTP status means when nothing else is known (see the module docstring)."""
    if not isinstance(status, int):
        return Outcome.SERVER_ERROR
    if 200 <= status < 300:
        return Outcome.OK
    if status in (401, 403, 407):
        return Outcome.AUTH_ERROR
    if status == 402:
        return Outcome.QUOTA_EXHAUSTED
    if status == 429:
        return Outcome.RATE_LIMITED
    if status in (408, 504, 522, 524):
        return Outcome.TIMEOUT
    if status in (503, 529):
        return Outcome.OVERLOADED
    if 300 <= status < 500:
        return Outcome.CLIENT_ERROR
    return Outcome.SERVER_ERROR


# --- responses ---------------------------------------------------------------------------------------------


def _classify(status: int, headers: dict[str, str], body: bytes, now: datetime | None) -> Classification:
    text = _decode(body)
    stripped = text.strip()
    error: _ErrorInfo | None = None
    finish: str | None = None
    effective_status = status
    summary: str | None = None

    if not stripped:
        summary = None
    elif stripped[0] in "{[" and (value := _loads(stripped)) is not _INVALID:
        error = _error_in(value)
        if error is None:
            finish = _first_filtering_reason(value)
            summary = _loose_message(value)
    elif "text/event-stream" in headers.get("content-type", "").lower() or _SSE_START.match(stripped):
        # _scan_sse reads only events holding a hint: a stream with none anywhere has nothing for it (the
        # usual answer, and a whole-text search is far cheaper than a look at every line).
        if any(hint in stripped for hint in _SSE_HINTS):
            error, finish, event_status = _scan_sse(stripped)
        if event_status is not None and error is not None:
            effective_status = event_status
    else:
        summary = _text_summary(stripped, headers)

    if error is not None:
        outcome = _error_outcome(error, effective_status)
        code = _clean_code(error.code) or _clean_code(error.type)
        message = error.message or _status_summary(effective_status, body)
    elif 200 <= status < 300 and _is_html(stripped, headers):
        # A model API never answers with a page: a gateway, captive portal or login wall did, with a 200.
        return Classification(
            Outcome.SERVER_ERROR,
            message=_clean_message(
                f"HTTP {status} with an HTML page instead of an API answer: {summary or '(not kept)'}"
            ),
        )
    elif 200 <= status < 300:
        finish_outcome = _finish_outcome(finish)
        if finish_outcome is None:
            return Classification(Outcome.OK)
        return Classification(finish_outcome, message=_clean_message(_finish_message(finish)))
    else:
        outcome = outcome_for_status(status)
        code = None
        message = summary or _status_summary(status, body)

    safe_message = _clean_message(message)
    # The raw message, not the cleaned one: truncation must not cut off a reset time.
    retry_after = _retry_after(headers, message[:_REDACT_WINDOW], code, now) if outcome is not Outcome.OK else None
    return Classification(outcome, error_code=code, retry_after_s=retry_after, message=safe_message)


def _error_outcome(error: _ErrorInfo, status: int) -> Outcome:
    """Outcome of an error envelope: its code or type if known, else a numeric HTTP-like code, else status."""
    if error.flagged:
        return Outcome.CONTENT_FILTERED
    by_status = outcome_for_status(status)
    for key in (error.code, error.type):
        if not key:
            continue
        outcome = _code_outcome(key, error.message)
        if outcome is None and _is_number(key) and 100 <= int(key) <= 599 and not 200 <= int(key) < 300:
            # OpenRouter's integer codes, vLLM's {"object":"error","code":400}, the quota API's
            # {"code":401,"success":false}: an HTTP status written into the body.
            outcome = outcome_for_status(int(key))
        if outcome is not None:
            if outcome in _VAGUE and by_status not in _VAGUE:
                return by_status
            return outcome
    # An error we cannot read, even inside an HTTP 200, is still a failure.
    return Outcome.SERVER_ERROR if by_status is Outcome.OK else by_status


def _code_outcome(code: str, message: str | None) -> Outcome | None:
    key = code.strip().lower()
    if key == "insufficient_quota":
        if message and _TRANSIENT_QUOTA_HINT.search(message):
            return Outcome.RATE_LIMITED
        return Outcome.QUOTA_EXHAUSTED
    outcome = _CODES.get(key)
    if outcome is not None:
        return outcome
    for pattern, family in _CODE_PATTERNS:
        if pattern.search(key):
            return family
    return None


def _error_in(value: Any) -> _ErrorInfo | None:
    """The error envelope in a parsed body, or None when the body does not report an error."""
    if not isinstance(value, dict):
        return None
    err = value.get("error")
    if isinstance(err, dict) and err:
        message = _text(err.get("message"))
        metadata = err.get("metadata")
        flagged = False
        if isinstance(metadata, dict):
            # OpenRouter's "Provider returned error" hides the real reason in metadata.raw.
            raw = _text(metadata.get("raw"))
            if raw:
                message = f"{message}: {raw}" if message else raw
            # OpenRouter moderation (403) lists what was flagged; the flagged input itself is never kept.
            flagged = "flagged_input" in metadata or "reasons" in metadata
        return _ErrorInfo(_code_text(err.get("code")), _code_text(err.get("type")), message, flagged)
    if isinstance(err, str) and err.strip():
        return _ErrorInfo(None, None, err)
    if value.get("success") is True:
        return None
    message = _first_text(value, ("message", "msg", "error_msg", "errmsg"))
    code = _code_text(value.get("code"))
    if code is None:
        code = _code_text(value.get("error_code"))
    if code is not None:
        # {"code":200,"msg":"Operation successful","success":true}, {"code":0} and gateways' "success".
        if code.lower() in ("0", "200", "ok", "success") and value.get("success") is not False:
            return None
        return _ErrorInfo(code, None, message)
    if value.get("success") is False or value.get("object") == "error" or value.get("type") == "error":
        return _ErrorInfo(None, _code_text(value.get("type")) if value.get("object") == "error" else None, message)
    return None


def _first_filtering_reason(value: Any) -> str | None:
    for reason in _finish_reasons(value):
        if _finish_outcome(reason) is not None:
            return reason
    return None


def _finish_reasons(value: Any) -> Iterator[str]:
    """finish_reason / stop_reason values in an OpenAI, DashScope native or Anthropic body or chunk."""
    if not isinstance(value, dict):
        return
    holders: list[Any] = [value, value.get("delta")]
    output = value.get("output")
    if isinstance(output, dict):
        holders.append(output)
        choices = output.get("choices")
        if isinstance(choices, list):
            holders.extend(choices)
    choices = value.get("choices")
    if isinstance(choices, list):
        holders.extend(choices)
    for holder in holders:
        if isinstance(holder, dict):
            for key in ("finish_reason", "stop_reason"):
                reason = holder.get(key)
                if isinstance(reason, str):
                    yield reason


def _scan_sse(text: str) -> tuple[_ErrorInfo | None, str | None, int | None]:
    """First error event, first filtering finish_reason, and the status the error event announced."""
    finish: str | None = None
    event_status: int | None = None
    for line in text.splitlines():
        if line.startswith(":"):
            # DashScope native streams announce each event's status as ":HTTP_STATUS/429".
            if match := _SSE_STATUS.match(line):
                event_status = int(match.group(1))
            continue
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if not payload.startswith("{") or not any(hint in payload for hint in _SSE_HINTS):
            continue
        value = _loads(payload)
        error = _error_in(value)
        if error is not None:
            return error, finish, event_status
        if finish is None:
            finish = _first_filtering_reason(value)
    return None, finish, None


def _finish_outcome(reason: str | None) -> Outcome | None:
    if not isinstance(reason, str):
        return None
    return _FINISH_OUTCOMES.get(reason.strip().lower())


def _finish_message(reason: str | None) -> str:
    outcome = _finish_outcome(reason)
    if outcome is Outcome.CONTENT_FILTERED:
        return f"finish_reason {reason!r}: the provider's content filter stopped the response"
    return f"finish_reason {reason!r}: the provider stopped the response abnormally"


# --- retry-after -------------------------------------------------------------------------------------------


def _retry_after(headers: dict[str, str], message: str | None, code: str | None, now: datetime | None) -> float | None:
    """Seconds to wait, from headers first, then from what the body says; None when nothing says."""
    if (ms := _seconds(headers.get("retry-after-ms"))) is not None:
        return _non_negative(ms / 1000)
    value = headers.get("retry-after")
    if value is not None:
        if (seconds := _seconds(value)) is not None:
            return _non_negative(seconds)
        at = _http_date(value)
        if at is not None:
            return _non_negative((at - _reference_time(headers, now)).total_seconds())
    if not message:
        return None
    if code is not None and _is_zhipu_code(code) and (reset := _reset_time(message)) is not None:
        return _non_negative((reset - _reference_time(headers, now)).total_seconds())
    if match := _TRY_AGAIN.search(message):
        return _non_negative(_duration(match.group(1)))
    return None


def _is_number(code: str) -> bool:
    # str.isdigit() alone accepts "²" and other Unicode digits that int() rejects.
    return code.isascii() and code.isdigit()


def _is_zhipu_code(code: str) -> bool:
    return len(code) == 4 and _is_number(code) and code.startswith("1")


def _reset_time(message: str) -> datetime | None:
    """The reset time a Zhipu quota message names ("...will reset at 2026-09-09 05:38:28"), as aware UTC."""
    match = _RESET_AT.search(message)
    if match is None:
        return None
    year, month, day, hour, minute = (int(match.group(i)) for i in range(1, 6))
    second = int(match.group(6) or 0)
    zone: timezone = _BEIJING
    if offset := match.group(7):
        if offset == "Z":
            zone = UTC
        else:
            digits = offset[1:].replace(":", "")
            delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
            zone = timezone(-delta if offset[0] == "-" else delta)
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError:
        return None


def _duration(text: str) -> float:
    total = 0.0
    for number, unit in _DURATION_PART.findall(text):
        total += float(number) * _unit_seconds(unit.lower())
    return total


def _unit_seconds(unit: str) -> float:
    if unit == "ms" or unit.startswith("mil"):
        return 0.001
    if unit.startswith("s"):
        return 1.0
    if unit.startswith("m"):
        return 60.0
    return 3600.0


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    match = _SECONDS.fullmatch(value)
    return float(match.group(1)) if match else None


def _http_date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except Exception:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _reference_time(headers: dict[str, str], now: datetime | None) -> datetime:
    """The response's own Date when it has a usable one (the provider's clock, not ours), else now."""
    date = headers.get("date")
    if date is not None and (at := _http_date(date)) is not None:
        return at
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _non_negative(seconds: float) -> float | None:
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


# --- exceptions --------------------------------------------------------------------------------------------


def _classify_exception(exc: BaseException) -> Classification:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, httpx.Response):
            return classify(response.status_code, response.headers, _response_body(response))
        outcome = _exception_outcome(current)
        if outcome is not None:
            return Classification(outcome, message=_clean_message(_describe(current)))
        current = current.__cause__ or current.__context__
    # SDK timeouts raised without a chained cause still say so in their names.
    outcome = Outcome.TIMEOUT if "timeout" in type(exc).__name__.lower() else Outcome.NETWORK_ERROR
    return Classification(outcome, message=_clean_message(_describe(exc)))


def _exception_outcome(exc: BaseException) -> Outcome | None:
    # TimeoutError is asyncio.TimeoutError and socket.timeout on 3.11, and an OSError: test it first.
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, httpx.DecodingError):
        return Outcome.SERVER_ERROR  # the body arrived but its encoding is broken
    if isinstance(exc, httpx.TooManyRedirects):
        return Outcome.CLIENT_ERROR
    if isinstance(exc, httpx.RequestError | OSError):
        return Outcome.NETWORK_ERROR
    return None


def _response_body(response: httpx.Response) -> bytes:
    try:
        return response.content
    except Exception:  # httpx.ResponseNotRead for an unread stream
        return b""


def _describe(exc: BaseException) -> str:
    try:
        detail = str(exc).strip()
    except Exception:
        detail = ""
    name = type(exc).__name__
    return f"{name}: {detail}" if detail else name


# --- bodies and messages -----------------------------------------------------------------------------------

_INVALID = object()


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _INVALID


def _decode(body: bytes) -> str:
    if isinstance(body, str):
        return body
    try:
        return bytes(body).decode("utf-8", errors="replace").lstrip("\ufeff")
    except Exception:
        return ""


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    try:
        return {str(name).lower(): str(value) for name, value in headers.items()}
    except Exception:
        return {}


def _code_text(value: Any) -> str | None:
    """A business code as a string: "1302" stays, OpenRouter's integer 429 becomes "429"."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _clean_code(code: str | None) -> str | None:
    if code is None:
        return None
    cleaned = redact(_CONTROL.sub(" ", code).strip())[:_MAX_CODE_CHARS]
    return cleaned or None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))[:_REDACT_WINDOW]
    except Exception:
        return None


def _first_text(value: dict[Any, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if (text := _text(value.get(key))) is not None:
            return text
    return None


def _loose_message(value: Any) -> str | None:
    """A message from a body that is not an error envelope ({"detail": ...}, {"message": ...})."""
    if not isinstance(value, dict):
        return None
    return _first_text(value, ("message", "msg", "detail", "error_description", "title"))


def _is_html(text: str, headers: dict[str, str]) -> bool:
    """Whether a body is an HTML page (by its content type, or by how it starts)."""
    if "text/html" in headers.get("content-type", "").lower():
        return True
    head = text[:15].lower()
    return head.startswith(("<!doctype html", "<html"))


def _text_summary(text: str, headers: dict[str, str]) -> str:
    """A short description of a non-JSON body: an HTML page's title, or the start of plain text."""
    if "html" in headers.get("content-type", "").lower() or text.startswith("<"):
        for pattern in (_TITLE, _H1):
            if (match := pattern.search(text[:_REDACT_WINDOW])) is not None:
                title = html.unescape(_TAG.sub(" ", match.group(1))).strip()
                if title:
                    return title
        return "HTML error page"
    sample = text[:_REDACT_WINDOW]
    unreadable = sum(1 for char in sample if char == "\ufffd" or (char < " " and char not in "\r\n\t"))
    if unreadable > len(sample) // 10:
        return f"undecodable body ({len(text)} characters)"
    return sample


def _status_summary(status: int, body: bytes) -> str:
    try:
        phrase = f" {HTTPStatus(status).phrase}"
    except ValueError:
        phrase = ""
    empty = " (empty body)" if not body or not _decode(body).strip() else ""
    return f"HTTP {status}{phrase}{empty}"


def _clean_message(message: str | None) -> str | None:
    """One line, no control characters or lone surrogates, secrets redacted, at most MAX_MESSAGE_CHARS."""
    if message is None:
        return None
    text = message[:_REDACT_WINDOW]
    # Lone surrogates (from JSON "\ud800") cannot be stored as UTF-8; NUL cannot be stored by Postgres.
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    text = redact(_CONTROL.sub(" ", text).strip())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text or None
