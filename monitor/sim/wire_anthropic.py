"""The anthropic dialect as Z.ai's Anthropic-compatible endpoint speaks it (tests/fixtures/zai_anthropic_*).

``message_start`` always reports zero usage; the real counts (``input_tokens`` without cache reads,
``cache_read_input_tokens``, ``output_tokens`` with thinking included) come only in the final
``message_delta``. Thinking is a ``thinking`` content block before the text block. A content-filter stop
ends with ``stop_reason: "refusal"``.
"""

from __future__ import annotations

from typing import Any

from monitor.sim.failures import Header, Reply, dumps
from monitor.sim.plan import Plan

__all__ = ["AnthropicWire"]

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "sensitive": "refusal"}
_SIGNATURE = "c2ltdWxhdGVkLXNpZ25hdHVyZQ=="  # opaque to clients; a fixed value keeps answers reproducible


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def _usage(plan: Plan, emitted: int) -> dict[str, Any]:
    return {
        "input_tokens": plan.prompt_tokens - plan.cached_tokens,
        "output_tokens": emitted,
        "cache_read_input_tokens": plan.cached_tokens,
        "server_tool_use": {"web_search_requests": 0},
        "service_tier": "standard",
    }


class AnthropicWire:
    """Messages API (``/api/anthropic/v1/messages``, ``/v1/messages``)."""

    stream_type = b"text/event-stream"

    def headers(self, plan: Plan) -> list[Header]:
        return []

    def head(self, plan: Plan) -> bytes:
        message: dict[str, Any] = {
            "id": f"msg_{plan.zid}",
            "type": "message",
            "role": "assistant",
            "model": plan.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message}) + _event("ping", {"type": "ping"})

    def _close_thinking(self) -> bytes:
        delta = {"type": "signature_delta", "signature": _SIGNATURE}
        return _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})

    def _stop(self, index: int) -> bytes:
        return _event("content_block_stop", {"type": "content_block_stop", "index": index})

    def token(self, plan: Plan, i: int) -> bytes:
        reasoning, text = plan.token(i)
        out = b""
        index = 0 if reasoning or not plan.reasoning else 1
        if i == 0 or (not reasoning and i == len(plan.reasoning)):
            if index == 1:
                out += self._close_thinking() + self._stop(0)
            block = {"type": "thinking", "thinking": "", "signature": ""} if reasoning else {"type": "text", "text": ""}
            out += _event(
                "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
            )
        delta = {"type": "thinking_delta", "thinking": text} if reasoning else {"type": "text_delta", "text": text}
        return out + _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def end(self, plan: Plan, emitted: int) -> bytes:
        out = b""
        if emitted > 0:
            in_thinking = emitted <= len(plan.reasoning)
            if in_thinking:
                out += self._close_thinking()
            out += self._stop(0 if in_thinking or not plan.reasoning else 1)
        delta = {"stop_reason": _STOP_REASONS[plan.finish], "stop_sequence": None}
        out += _event("message_delta", {"type": "message_delta", "delta": delta, "usage": _usage(plan, emitted)})
        return out + _event("message_stop", {"type": "message_stop"})

    def body(self, plan: Plan, emitted: int) -> Reply:
        reasoning, text = plan.text(emitted)
        content: list[dict[str, Any]] = []
        if plan.emitted_reasoning(emitted):
            content.append({"type": "thinking", "thinking": reasoning, "signature": _SIGNATURE})
        content.append({"type": "text", "text": text})
        answer = {
            "id": f"msg_{plan.zid}",
            "type": "message",
            "role": "assistant",
            "model": plan.model,
            "content": content,
            "stop_reason": _STOP_REASONS[plan.finish],
            "stop_sequence": None,
            "usage": _usage(plan, emitted),
        }
        return Reply(200, dumps(answer))
