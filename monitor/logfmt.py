"""Structured log lines: ``event key=value key="with space"`` (logfmt), one line per fact."""

from __future__ import annotations

from typing import Any


def _value(v: Any) -> str:
    if v is None:
        return ""
    text = f"{v:.1f}" if isinstance(v, float) else str(v)
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def kv(event: str, **fields: Any) -> str:
    """``kv("probe", target="zai/glm-4.7", ttft_ms=312.44)`` -> ``probe target=zai/glm-4.7 ttft_ms=312.4``."""
    return " ".join([event, *(f"{k}={_value(v)}" for k, v in fields.items())])
