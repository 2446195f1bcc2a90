"""Token usage of one request, parsed from a provider's response body or SSE stream.

``parse_response(dialect, body, stream=...)`` reads a whole body; ``UsageParser`` reads the same body chunk by
chunk as it arrives (chunk borders anywhere) in bounded memory and ends with the same ``Usage``. Garbage, error
bodies and cut streams are data: they give a ``Usage`` with None fields, never an exception.

Dialects: ``openai`` (chat completions, legacy completions, image generation; Z.ai, BigModel, DashScope
compatible mode, OpenRouter, vLLM, SGLang), ``anthropic`` (messages API) and ``dashscope`` (DashScope native
text-generation protocol).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

from monitor.sse import MAX_LINE_BYTES, LineSplitter

Dialect = Literal["openai", "anthropic", "dashscope"]


@dataclass(frozen=True, slots=True)
class Usage:
    """What one response says about its tokens. A field the provider did not send is None, never 0.

    ``input_tokens`` counts every prompt token, cached ones included (anthropic dialect: input + cache reads +
    cache writes). ``output_tokens`` includes reasoning tokens. ``complete`` is False when a stream ended
    before its usage or terminal event.

    ``reported_cost`` is what the response itself says the request was charged, in USD (OpenRouter's
    ``usage.cost``, in credits of one USD; with ``is_byok`` plus ``cost_details.upstream_inference_cost``, which
    the upstream provider charged to the reader's own key), else None.
    """

    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    model: str | None = None
    request_id: str | None = None
    finish_reason: str | None = None
    images: int | None = None
    complete: bool = True
    reported_cost: Decimal | None = None
    invalid: str | None = None
    """Set when the response reported a count no real response can have (negative, fractional, not a number,
    above ``MAX_TOKENS``): which one, e.g. ``"prompt_tokens=1e+300"``. Such usage is recorded, never priced."""


MAX_TOKENS: Final = 10**9
"""The most tokens (or images) one request can report; a larger count is taken as garbage, not as usage."""

MAX_BODY_BYTES: Final = 8 << 20
"""Default cap on a JSON (non-SSE) body, which must be buffered whole to be parsed: 8 MiB."""

DIALECTS: Final[tuple[Dialect, ...]] = ("openai", "anthropic", "dashscope")

_WHITESPACE: Final = b" \t\r\n"
_BOM: Final = b"\xef\xbb\xbf"
_FAIL: Final = object()

# Once the parser is past a stream's head (first token, model and id known), a data line holding none of
# these keys with a non-null value cannot change the result, so it is not JSON-decoded. Keys are matched as
# raw bytes: a key always appears verbatim (JSON escapes quotes inside strings, so content text cannot fake a
# quoted key), and a false match only costs a decode. Each pair is (key, the same key with a null value).
_OPENAI_NEEDLES: Final = (
    (b'"usage"', b'"usage":null'),
    (b'"finish_reason"', b'"finish_reason":null'),
    (b'"request_id"', b'"request_id":null'),
)
_ANTHROPIC_NEEDLES: Final = ((b"message_", b""), (b"usage", b""), (b"request_id", b""))
_ANTHROPIC_PASSIVE: Final = frozenset({"ping", "content_block_start", "content_block_stop", "error"})


def parse_response(dialect: Dialect, body: bytes, *, stream: bool) -> Usage:
    """Parse a whole response body (JSON document or SSE stream) of ``dialect`` into a ``Usage``.

    Never raises on any body; see ``UsageParser`` for what each field and ``complete`` mean.
    """
    parser = UsageParser(dialect, stream=stream)
    parser.feed(body)
    return parser.finish()


class UsageParser:
    """Incremental usage parser: ``feed`` it the body's chunks as they arrive, then call ``finish``.

    The body's first significant byte decides how it is read, whatever ``stream`` says: ``{`` or ``[`` is a JSON
    document (providers answer stream requests with JSON errors), anything else an SSE stream. A JSON body is
    buffered up to ``max_body_bytes`` and parsed at ``finish``; a bigger one is discarded (``complete`` False).
    An SSE stream is parsed line by line as it arrives, holding only the unfinished line (at most
    ``max_line_bytes``; a longer line is discarded) and the fields seen, so memory stays O(1) however long the
    stream. ``discarded`` counts the lines or bodies dropped for size.

    Fields: the latest non-null value of each count wins (cumulative usage repeated on every chunk is never
    summed; an anthropic ``message_delta`` overrides ``message_start``). ``finish_reason`` is the last non-null
    one, the string "null" (DashScope native) counting as null. ``request_id`` is the body's ``request_id``, else
    its ``id`` (anthropic: the message id). ``images`` counts the ``data[]`` items with ``url``/``b64_json`` of an
    openai-dialect image response (DashScope native: ``usage.image_count``), else None.

    ``complete``: a JSON body is complete when it parsed (an error body too: counts None, ``request_id`` if it
    names one); an empty, cut or non-JSON body (an HTML error page) is not. A stream is
    complete when its final numbers are known: openai ``data: [DONE]`` or usage plus a finish_reason;
    anthropic ``message_stop`` or a ``message_delta`` with stop_reason and usage; dashscope a finish_reason
    other than "null". When ``complete`` is False the counts are the last ones seen and may be partial.

    First token (for time-to-first-token): ``feed`` returns True on the one call whose chunk completed the first
    stream event carrying output: a non-empty openai ``delta.content`` / ``reasoning_content`` / ``reasoning`` /
    ``tool_calls`` (or legacy ``text``), an anthropic ``content_block_delta`` with text, thinking or partial_json,
    a dashscope ``output.text`` or message content / reasoning_content. An event is complete at its line end,
    so if that only comes with ``finish`` (no trailing newline) ``feed`` never returns True but
    ``first_token_seen`` does afterwards. JSON bodies have no first token.
    """

    __slots__ = (
        "_body",
        "_body_overflow",
        "_cache_write",
        "_cached",
        "_delta_usage",
        "_done",
        "_dropped",
        "_event",
        "_event_dropped",
        "_fast",
        "_finish_reason",
        "_first_token",
        "_head",
        "_images",
        "_input",
        "_invalid",
        "_lines",
        "_message_stop",
        "_mode",
        "_model",
        "_output",
        "_pending",
        "_pending_size",
        "_reasoning",
        "_reported_cost",
        "_result",
        "_rid",
        "_rid_id",
        "_usage_seen",
        "dialect",
        "max_body_bytes",
        "max_line_bytes",
        "stream",
    )

    def __init__(
        self,
        dialect: Dialect,
        *,
        stream: bool,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
        self.dialect: Dialect = dialect
        self.stream = stream
        self.max_line_bytes = max_line_bytes
        self.max_body_bytes = max_body_bytes
        self._dropped = 0
        self._mode: Literal["sniff", "sse", "json"] = "sniff"
        self._head = b""
        self._lines = LineSplitter(max_line_bytes)
        self._body = bytearray()
        self._body_overflow = False
        self._event = b""
        self._event_dropped = False
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._fast = False
        self._result: Usage | None = None
        # What the body said so far. Anthropic keeps its own meaning here: _input = input_tokens without the
        # cache, _cached = cache_read_input_tokens, _cache_write = cache_creation_input_tokens.
        self._input: int | None = None
        self._cached: int | None = None
        self._cache_write: int | None = None
        self._output: int | None = None
        self._reasoning: int | None = None
        self._model: str | None = None
        self._rid: str | None = None
        self._rid_id: str | None = None
        self._finish_reason: str | None = None
        self._images: int | None = None
        self._reported_cost: Decimal | None = None
        self._usage_seen = False
        self._delta_usage = False
        self._done = False
        self._message_stop = False
        self._first_token = False
        self._invalid: str | None = None

    @property
    def discarded(self) -> int:
        """How many SSE lines or events, or JSON bodies, were dropped for exceeding the size caps."""
        return self._dropped + self._lines.discarded

    @property
    def first_token_seen(self) -> bool:
        """True once a stream event carrying output (content, reasoning or a tool call) has been parsed."""
        return self._first_token

    def feed(self, chunk: bytes) -> bool:
        """Take the next chunk of the body; return True iff this chunk completed the first output token's event.

        Raises RuntimeError after ``finish`` (a caller bug); never raises on the chunk's content.
        """
        if self._result is not None:
            raise RuntimeError("UsageParser.feed() called after finish()")
        if not chunk:
            return False
        before = self._first_token
        if self._mode == "sniff":
            chunk = self._sniff(chunk)
            if not chunk:
                return False
        if self._mode == "sse":
            for line in self._lines.feed(chunk):
                self._line(line)
        elif not self._body_overflow:
            if len(self._body) + len(chunk) > self.max_body_bytes:
                self._body = bytearray()
                self._body_overflow = True
                self._dropped += 1
            else:
                self._body += chunk
        return self._first_token and not before

    def finish(self) -> Usage:
        """End of body: parse what is left and return the ``Usage``. Calling it again returns the same value."""
        if self._result is not None:
            return self._result
        if self._mode == "sse":
            for line in self._lines.finish():
                self._line(line)
            self._end_event()
            complete = self._stream_complete()
        elif self._mode == "json":
            complete = self._parse_body()
        else:  # empty or whitespace-only body
            complete = False
        input_tokens = self._input
        if self.dialect == "anthropic" and input_tokens is not None:
            input_tokens += (self._cached or 0) + (self._cache_write or 0)
        self._result = Usage(
            input_tokens=input_tokens,
            cached_input_tokens=self._cached,
            cache_write_tokens=self._cache_write,
            output_tokens=self._output,
            reasoning_tokens=self._reasoning,
            model=self._model,
            request_id=self._rid if self._rid is not None else self._rid_id,
            finish_reason=self._finish_reason,
            images=self._images,
            complete=complete,
            reported_cost=self._reported_cost,
            invalid=self._invalid,
        )
        return self._result

    # -- framing -------------------------------------------------------------------------------------------

    def _sniff(self, chunk: bytes) -> bytes:
        """Skip leading whitespace and BOM, then pick JSON or SSE mode; return the rest of the chunk."""
        head = self._head + chunk if self._head else chunk
        head = head.lstrip(_WHITESPACE)
        while head.startswith(_BOM):
            head = head[len(_BOM) :].lstrip(_WHITESPACE)
        if not head or _BOM.startswith(head):
            # Nothing significant yet, or a BOM cut by the chunk border: keep at most two bytes.
            self._head = head
            return b""
        self._head = b""
        self._mode = "json" if head[0] in b"{[" else "sse"
        return head

    def _line(self, line: bytes) -> None:
        """Handle one SSE line: ``data``, ``event``, blank (end of event); comments, ``id``, ``retry`` ignored."""
        if not line:
            self._end_event()
        elif line.startswith(b"data"):
            sep = line[4:5]
            if sep == b":":
                value = line[6:] if line[5:6] == b" " else line[5:]
            elif sep == b"":
                value = b""
            else:
                return
            self._data(value)
        elif line.startswith(b"event:"):
            self._event = line[7:] if line[6:7] == b" " else line[6:]

    def _data(self, value: bytes) -> None:
        """Handle one data line: decode it at once if it is a whole JSON document, else gather the event."""
        if self._event_dropped:
            return
        if self._pending:
            # A multi-line data field: SSE joins the lines with LF, decoded at the end of the event.
            self._pending_size += len(value) + 1
            if self._pending_size > self.max_line_bytes:
                self._pending = []
                self._event_dropped = True
                self._dropped += 1
            else:
                self._pending.append(value)
            return
        if value[:1] == b"[" and value.strip() == b"[DONE]":
            self._done = True
            return
        if self._fast and self._skippable(value):
            return
        obj = _loads(value)
        if obj is _FAIL:
            self._pending = [value]
            self._pending_size = len(value)
        else:
            self._handle(obj, True)

    def _end_event(self) -> None:
        """Blank line or end of stream: decode a gathered multi-line data field, then forget the event."""
        if self._pending:
            obj = _loads(b"\n".join(self._pending))
            self._pending = []
            self._pending_size = 0
            if obj is not _FAIL:
                self._handle(obj, True)
        self._event = b""
        self._event_dropped = False

    def _skippable(self, value: bytes) -> bool:
        """True when a standalone JSON object line holds none of the keys that still matter."""
        if value[:1] != b"{" or (not value.endswith(b"}") and value.rstrip()[-1:] != b"}"):
            return False
        if self.dialect == "openai":
            needles = _OPENAI_NEEDLES
        elif self._event.startswith(b"message"):
            return False  # a loose server may name the event only in its event: line
        else:
            needles = _ANTHROPIC_NEEDLES
        return not any(_holds(value, key, null) for key, null in needles)

    def _parse_body(self) -> bool:
        """Parse the buffered JSON body; True when it was one whole JSON document."""
        if self._body_overflow:
            return False
        obj = _loads(bytes(self._body))
        self._body = bytearray()
        if obj is _FAIL:
            return False
        self._handle(obj, False)
        return True

    def _stream_complete(self) -> bool:
        if self.dialect == "openai":
            return self._done or (self._usage_seen and self._finish_reason is not None)
        if self.dialect == "anthropic":
            return self._message_stop or (self._delta_usage and self._finish_reason is not None)
        return self._finish_reason is not None

    # -- dialects --------------------------------------------------------------------------------------------

    def _handle(self, obj: Any, in_stream: bool) -> None:
        """Take what one decoded JSON document (a whole body or one stream event) says."""
        if not isinstance(obj, dict):
            return
        if self.dialect == "openai":
            self._openai(obj, in_stream)
            self._fast = self._first_token and self._model is not None and self._has_id()
        elif self.dialect == "anthropic":
            self._anthropic(obj, in_stream)
            self._fast = self._first_token
        else:
            self._dashscope(obj, in_stream)

    def _has_id(self) -> bool:
        return self._rid is not None or self._rid_id is not None

    def _openai(self, obj: dict[str, Any], in_stream: bool) -> None:
        self._take_ids(obj)
        self._take_model(obj.get("model"))
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                self._take_finish(choice.get("finish_reason"))
                if in_stream and not self._first_token:
                    delta = choice.get("delta")
                    if (isinstance(delta, dict) and _openai_delta_has_token(delta)) or _text(choice.get("text")):
                        self._first_token = True
        usage = obj.get("usage")
        if isinstance(usage, dict):
            prompt = self._n(usage, "prompt_tokens")
            completion = self._n(usage, "completion_tokens")
            # Responses-API / image-API spelling, used by some openai-compatible servers.
            if prompt is None:
                prompt = self._n(usage, "input_tokens")
            if completion is None:
                completion = self._n(usage, "output_tokens")
            prompt_details = _first_dict(usage, "prompt_tokens_details", "input_tokens_details")
            output_details = _first_dict(usage, "completion_tokens_details", "output_tokens_details")
            self._take_counts(
                prompt,
                completion,
                self._n(prompt_details, "cached_tokens"),
                self._n(prompt_details, "cache_write_tokens"),
                self._n(output_details, "reasoning_tokens"),
            )
            cost = _amount(usage.get("cost"))
            if cost is not None:
                if usage.get("is_byok") is True:
                    upstream = _amount(_first_dict(usage, "cost_details").get("upstream_inference_cost"))
                    cost += upstream or 0
                self._reported_cost = cost
        data = obj.get("data")
        if isinstance(data, list):
            images = sum(1 for item in data if isinstance(item, dict) and ("url" in item or "b64_json" in item))
            if images:
                self._images = images

    def _anthropic(self, obj: dict[str, Any], in_stream: bool) -> None:
        rid = obj.get("request_id")
        if _text(rid):
            self._rid = rid
        kind = obj.get("type")
        if not isinstance(kind, str):
            kind = self._event.decode("utf-8", "replace")
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if (
                in_stream
                and isinstance(delta, dict)
                and (_text(delta.get("text")) or _text(delta.get("thinking")) or _text(delta.get("partial_json")))
            ):
                self._first_token = True
        elif kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self._anthropic_message(message)
        elif kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict):
                self._take_finish(delta.get("stop_reason"))
            usage = obj.get("usage")
            if isinstance(usage, dict) and self._anthropic_usage(usage):
                self._delta_usage = True
        elif kind == "message_stop":
            self._message_stop = True
        elif kind not in _ANTHROPIC_PASSIVE:
            # A non-stream message body (type "message", or no type from a loose compatible server).
            self._anthropic_message(obj)

    def _anthropic_message(self, message: dict[str, Any]) -> None:
        message_id = message.get("id")
        if _text(message_id):
            self._rid_id = message_id
        self._take_model(message.get("model"))
        self._take_finish(message.get("stop_reason"))
        usage = message.get("usage")
        if isinstance(usage, dict):
            self._anthropic_usage(usage)

    def _anthropic_usage(self, usage: dict[str, Any]) -> bool:
        """Take an anthropic usage object; True when it held a count."""
        return self._take_counts(
            self._n(usage, "input_tokens"),
            self._n(usage, "output_tokens"),
            self._n(usage, "cache_read_input_tokens"),
            self._n(usage, "cache_creation_input_tokens"),
            None,
        )

    def _dashscope(self, obj: dict[str, Any], in_stream: bool) -> None:
        rid = obj.get("request_id")
        if _text(rid):
            self._rid = rid
        self._take_model(obj.get("model"))
        output = obj.get("output")
        if isinstance(output, dict):
            self._take_finish(output.get("finish_reason"))
            token = _text(output.get("text"))
            choices = output.get("choices")
            if isinstance(choices, list):
                for choice in choices:
                    if not isinstance(choice, dict):
                        continue
                    self._take_finish(choice.get("finish_reason"))
                    message = choice.get("message")
                    if isinstance(message, dict) and (
                        _has_content(message.get("content")) or _text(message.get("reasoning_content"))
                    ):
                        token = True
            if in_stream and token:
                self._first_token = True
        usage = obj.get("usage")
        if isinstance(usage, dict):
            prompt_details = _first_dict(usage, "prompt_tokens_details", "input_tokens_details")
            output_details = _first_dict(usage, "output_tokens_details", "completion_tokens_details")
            self._take_counts(
                self._n(usage, "input_tokens"),
                self._n(usage, "output_tokens"),
                self._n(prompt_details, "cached_tokens"),
                None,
                self._n(output_details, "reasoning_tokens"),
            )
            images = self._n(usage, "image_count")
            if images is not None:
                self._images = images

    # -- field updates ---------------------------------------------------------------------------------------

    def _n(self, obj: dict[str, Any], key: str) -> int | None:
        """The count ``obj[key]``, or None; a value present but impossible is noted in ``invalid`` (the first)."""
        value = obj.get(key)
        count = _count(value)
        if count is None and value is not None and self._invalid is None:
            self._invalid = f"{key}={value!r}"[:80]
        return count

    def _take_counts(
        self,
        input_tokens: int | None,
        output_tokens: int | None,
        cached: int | None,
        cache_write: int | None,
        reasoning: int | None,
    ) -> bool:
        """Keep each count the provider sent (latest wins); True when at least one came."""
        if input_tokens is not None:
            self._input = input_tokens
        if output_tokens is not None:
            self._output = output_tokens
        if cached is not None:
            self._cached = cached
        if cache_write is not None:
            self._cache_write = cache_write
        if reasoning is not None:
            self._reasoning = reasoning
        seen = input_tokens is not None or output_tokens is not None
        if seen:
            self._usage_seen = True
        return seen

    def _take_ids(self, obj: dict[str, Any]) -> None:
        rid = obj.get("request_id")
        if _text(rid):
            self._rid = rid
        oid = obj.get("id")
        if _text(oid):
            self._rid_id = oid

    def _take_model(self, model: Any) -> None:
        if _text(model):
            self._model = model

    def _take_finish(self, reason: Any) -> None:
        if _text(reason) and reason != "null":
            self._finish_reason = reason


def _loads(raw: bytes) -> Any:
    """Decode JSON, or return ``_FAIL`` for anything that is not one valid document (never raises)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _FAIL


def _holds(line: bytes, key: bytes, null: bytes) -> bool:
    """True when ``key`` occurs in ``line`` other than as ``null`` (its null-valued form; empty: none)."""
    return key in line and (not null or line.count(key) > line.count(null))


def _count(value: Any) -> int | None:
    """A token count: an integer from 0 to ``MAX_TOKENS`` (an integral float is accepted), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_TOKENS else None
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_TOKENS:
        return int(value)
    return None


def _amount(value: Any) -> Decimal | None:
    """An amount of money: a finite, non-negative JSON number as the exact ``Decimal`` of its shortest repr."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return Decimal(repr(value)) if value >= 0 else None


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _has_content(value: Any) -> bool:
    """Non-empty message content: a string, or a multimodal list with a non-empty ``text`` part."""
    if isinstance(value, list):
        return any(isinstance(part, dict) and _text(part.get("text")) for part in value)
    return _text(value)


def _openai_delta_has_token(delta: dict[str, Any]) -> bool:
    tool_calls = delta.get("tool_calls")
    return (
        _text(delta.get("content"))
        or _text(delta.get("reasoning_content"))
        or _text(delta.get("reasoning"))
        or (isinstance(tool_calls, list) and len(tool_calls) > 0)
    )


def _first_dict(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The first of ``keys`` whose value is an object, else an empty dict."""
    for key in keys:
        value = obj.get(key)
        if isinstance(value, dict):
            return value
    return {}
