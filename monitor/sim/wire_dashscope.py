"""DashScope's native text-generation protocol (tests/fixtures/dashscope_native_*).

SSE events are ``id:N`` / ``event:result`` / ``:HTTP_STATUS/200`` / ``data:{...}`` with no space after the
colons; every event carries the cumulative usage; ``finish_reason`` is the string ``"null"`` until the last
event; there is no ``model`` field and no ``[DONE]``. ``incremental_output`` false (DashScope's default) makes
each event repeat the whole text so far. ``result_format`` ``message`` (the default here) puts the text in
``output.choices[0].message``; ``text`` in ``output.text``. A content-filter stop is an ``event:error`` with
``DataInspectionFailed``.
"""

from __future__ import annotations

from typing import Any

from monitor.sim.failures import Header, Reply, dumps, render_error
from monitor.sim.plan import Plan

__all__ = ["DashScopeWire"]


def _usage(plan: Plan, emitted: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "total_tokens": plan.prompt_tokens + emitted,
        "input_tokens": plan.prompt_tokens,
        "output_tokens": emitted,
    }
    if plan.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": plan.cached_tokens}
    if plan.thinking:
        usage["output_tokens_details"] = {"reasoning_tokens": plan.emitted_reasoning(emitted)}
    return usage


def _output(plan: Plan, reasoning: str | None, content: str, finish: str) -> dict[str, Any]:
    if plan.text_format:
        return {"finish_reason": finish, "text": content}
    message: dict[str, Any] = {"content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    message["role"] = "assistant"
    return {"choices": [{"message": message, "finish_reason": finish}]}


class DashScopeWire:
    """``POST /api/v1/services/aigc/text-generation/generation``."""

    stream_type = b"text/event-stream;charset=UTF-8"

    def headers(self, plan: Plan) -> list[Header]:
        return [(b"x-request-id", plan.rid.encode()), (b"x-dashscope-call-gateway", b"true")]

    def head(self, plan: Plan) -> bytes:
        return b""

    def _event(self, number: int, data: dict[str, Any], status: int = 200, name: str = "result") -> bytes:
        head = f"id:{number}\nevent:{name}\n:HTTP_STATUS/{status}\ndata:".encode()
        return head + dumps(data) + b"\n\n"

    def token(self, plan: Plan, i: int) -> bytes:
        is_reasoning, text = plan.token(i)
        if plan.incremental:
            reasoning: str | None = text if is_reasoning else ""
            content = "" if is_reasoning else text
        else:
            reasoning, content = plan.text(i + 1)
        if not plan.thinking:
            reasoning = None
        data: dict[str, Any] = {"output": _output(plan, reasoning, content, "null"), "usage": _usage(plan, i + 1)}
        data["request_id"] = plan.rid
        return self._event(i + 1, data)

    def end(self, plan: Plan, emitted: int) -> bytes:
        if plan.finish == "sensitive":
            error = {
                "code": "DataInspectionFailed",
                "message": "Output data may contain inappropriate content.",
                "request_id": plan.rid,
            }
            return self._event(emitted + 1, error, status=400, name="error")
        if plan.incremental:
            reasoning: str | None = ""
            content = ""
        else:
            reasoning, content = plan.text(emitted)
        if not plan.thinking:
            reasoning = None
        data: dict[str, Any] = {
            "output": _output(plan, reasoning, content, plan.finish),
            "usage": _usage(plan, emitted),
            "request_id": plan.rid,
        }
        return self._event(emitted + 1, data)

    def body(self, plan: Plan, emitted: int) -> Reply:
        if plan.finish == "sensitive":
            return render_error("dashscope", "sensitive", rid=plan.rid)
        reasoning, content = plan.text(emitted)
        output = _output(plan, reasoning if plan.thinking else None, content, plan.finish)
        answer = {"output": output, "usage": _usage(plan, emitted), "request_id": plan.rid}
        return Reply(200, dumps(answer), headers=self.headers(plan))
