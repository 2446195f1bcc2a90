"""What kind of call a captured request was, read from its path: only generations (and images and embeddings,
in their own units) count toward quotas, throttling rates and spend."""

from __future__ import annotations

from typing import Final, Literal

RequestKind = Literal["generation", "token_count", "embedding", "image", "model_list", "other"]

COUNTED_KINDS: Final[tuple[RequestKind, ...]] = ("generation", "image", "embedding")
"""Kinds that burn quota, count in throttling rates and cost money; a row without a kind (recorded before kinds
were) is a generation."""

_GENERATION_ENDS: Final = (
    "/chat/completions",
    "/completions",
    "/messages",
    "/responses",
    "/text-generation/generation",
    "/multimodal-generation/generation",
)


def request_kind(path: str) -> RequestKind:
    """The kind of a POST to ``path`` (the URL path; a query string is ignored)."""
    p = path.split("?", 1)[0].rstrip("/").lower()
    if p.endswith(("/count_tokens", "/tokenize", "/tokenizer")):
        return "token_count"
    if p.endswith(_GENERATION_ENDS):
        return "generation"
    if p.endswith("/embeddings") or "/text-embedding" in p:
        return "embedding"
    if "/images/" in p or "image-synthesis" in p or p.endswith("/images"):
        return "image"
    if p.endswith("/models"):
        return "model_list"
    return "other"
