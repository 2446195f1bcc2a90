"""What the simulator reads from a request: the body of each dialect, the API key and the ``X-Sim-*`` headers.

Everything malformed raises :class:`BadRequest` (or ValueError for a header), which the app answers with the
dialect's "invalid parameter" error; nothing here trusts its input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from monitor.sim.failures import Flavour
from monitor.sim.profiles import FAILURE_KINDS

__all__ = ["BadRequest", "Knobs", "SimRequest", "api_key", "parse_request"]


class BadRequest(Exception):
    """The request cannot be served; the message says why (sent back as a 1214 / InvalidParameter)."""


@dataclass
class SimRequest:
    """The parts of a request body the simulator acts on, whatever the dialect."""

    model: str
    stream: bool
    max_tokens: int | None
    thinking: bool | None  # None: the profile's default
    prompt_chars: int
    include_usage: bool = False
    incremental: bool = True
    text_format: bool = False


@dataclass(frozen=True)
class Knobs:
    """The X-Sim-* request headers."""

    fail: str | None = None
    ttft_ms: float | None = None
    token_ms: float | None = None
    cut_after: int | None = None
    stall_ms: float | None = None

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> Knobs:
        """Read the headers; raises ValueError for a malformed one."""
        fail = headers.get("x-sim-fail")
        if fail is not None:
            fail = fail.strip()
            if fail not in FAILURE_KINDS:
                raise ValueError(f"X-Sim-Fail {fail!r} is not one of {', '.join(FAILURE_KINDS)}")
        cut = headers.get("x-sim-cut-after")
        return cls(
            fail=fail,
            ttft_ms=_ms_header(headers, "x-sim-ttft-ms"),
            token_ms=_ms_header(headers, "x-sim-token-ms"),
            cut_after=None if cut is None else max(0, int(cut)),
            stall_ms=_ms_header(headers, "x-sim-stall-ms"),
        )


def _ms_header(headers: dict[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0")
    return value


def api_key(headers: dict[str, str]) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (or a bare ``Authorization: <token>``, which Zhipu also
    accepts), else of ``x-api-key``."""
    auth = headers.get("authorization", "").strip()
    scheme, _, rest = auth.partition(" ")
    if scheme.lower() == "bearer":
        auth = rest.strip()
    return auth or headers.get("x-api-key", "").strip() or None


def parse_request(flavour: Flavour, body: bytes, headers: dict[str, str]) -> SimRequest:
    """Read what the simulator needs from a request body; raises BadRequest when it cannot."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required")
    if flavour == "dashscope":
        return _parse_dashscope(model, data, headers)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    stream = data.get("stream", False) is True
    chars = _chars(messages)
    if flavour == "anthropic":
        return SimRequest(
            model=model,
            stream=stream,
            max_tokens=_max_tokens(data.get("max_tokens")),
            thinking=_thinking_type(data.get("thinking")) == "enabled",
            prompt_chars=chars + _chars_of(data.get("system")),
        )
    max_tokens = _max_tokens(data.get("max_tokens", data.get("max_completion_tokens")))
    options = data.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    if flavour == "compat":
        thinking: bool | None = data.get("enable_thinking") is True
    else:
        mode = _thinking_type(data.get("thinking"))
        thinking = None if mode is None else mode == "enabled"
    return SimRequest(model, stream, max_tokens, thinking, chars, include_usage=include_usage)


def _parse_dashscope(model: str, data: dict[str, Any], headers: dict[str, str]) -> SimRequest:
    input_ = data.get("input")
    if not isinstance(input_, dict):
        raise BadRequest("input is required")
    messages = input_.get("messages")
    if isinstance(messages, list) and messages:
        chars = _chars(messages)
    elif isinstance(input_.get("prompt"), str):
        chars = len(input_["prompt"])
    else:
        raise BadRequest("input.messages or input.prompt is required")
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("parameters must be an object")
    stream = headers.get("x-dashscope-sse", "").lower() == "enable" or "text/event-stream" in headers.get("accept", "")
    return SimRequest(
        model=model,
        stream=stream,
        max_tokens=_max_tokens(params.get("max_tokens")),
        thinking=params.get("enable_thinking") is True,
        prompt_chars=chars,
        incremental=params.get("incremental_output") is True,
        text_format=params.get("result_format", "message") == "text",
    )


def _max_tokens(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest("max_tokens must be an integer >= 1")
    return value


def _thinking_type(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return str(value["type"])
    return None


def _chars(messages: list[Any]) -> int:
    return sum(_chars_of(m.get("content")) for m in messages if isinstance(m, dict))


def _chars_of(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part["text"]) for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0
