"""The same model across providers, side by side: probe latency, 429 rate and list price."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pandas as pd

from monitor.analytics._base import Db, Filters, connect, empty, ratio
from monitor.analytics._hist import summarize
from monitor.analytics.latency import load_probe_hours
from monitor.pricing import PriceCatalog, PriceQuote, default_catalog
from monitor.usage import Usage

__all__ = ["COMPARE_COLUMNS", "compare_providers", "model_family"]

COMPARE_COLUMNS = (
    "model_family",
    "provider",
    "model",
    "samples",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "total_p50_ms",
    "total_p95_ms",
    "tokens_per_s_p50",
    "requests",
    "rate_429",
    "throttled_rate",
    "currency",
    "input_per_mtok",
    "cached_input_per_mtok",
    "output_per_mtok",
    "price_source",
)
_MILLION = Decimal(1_000_000)


def model_family(model: str) -> str:
    """The model's name without a vendor prefix or variant (``z-ai/glm-4.5-air:free`` -> ``glm-4.5-air``)."""
    return model.strip().lower().rsplit("/", 1)[-1].split(":", 1)[0]


def _per_mtok(quote: PriceQuote | None) -> Decimal | None:
    return None if quote is None else quote.cost.amount * _MILLION


def compare_providers(db: Db, filters: Filters, *, catalog: PriceCatalog | None = None) -> pd.DataFrame:
    """One row per (provider, model) probed in ``filters``, grouped by model family for side-by-side reading.

    Columns ``COMPARE_COLUMNS``: probe latency percentiles (vantages merged), probe requests, 429 and throttled
    rates, and the prices in force at the end of the range (per 1M tokens in ``currency``; a size-tiered price
    shows its lowest tier; None when the model has no known price). ``model_family`` (``model_family()``) lines
    up e.g. ``glm-4.7`` at Z.ai with ``z-ai/glm-4.7`` at OpenRouter. Sorted by family, then provider.
    """
    with connect(db) as conn:
        frame = load_probe_hours(
            conn, filters, ["ttft_ms", "total_ms", "tokens_per_s"], "requests", "http_429", "throttled", days="any"
        )
    if frame.empty:
        return empty(COMPARE_COLUMNS)
    keys = ["provider", "model"]
    out = frame.groupby(keys, sort=True)[["requests", "http_429", "throttled"]].sum().reset_index()
    ttft = summarize(frame, keys, "ttft_ms", qs=(0.5, 0.95))
    total = summarize(frame, keys, "total_ms", qs=(0.5, 0.95))
    tps = summarize(frame, keys, "tokens_per_s", qs=(0.5,))
    out["samples"] = ttft["samples"].to_numpy()
    out["ttft_p50_ms"] = ttft["p50"].to_numpy()
    out["ttft_p95_ms"] = ttft["p95"].to_numpy()
    out["total_p50_ms"] = total["p50"].to_numpy()
    out["total_p95_ms"] = total["p95"].to_numpy()
    out["tokens_per_s_p50"] = tps["p50"].to_numpy()
    out["rate_429"] = ratio(out["http_429"], out["requests"])
    out["throttled_rate"] = ratio(out["throttled"], out["requests"])
    out["model_family"] = out["model"].map(model_family)
    catalog = catalog or default_catalog()
    at = max(filters.start, filters.end - timedelta(microseconds=1))
    prices = []
    for provider, model in zip(out["provider"], out["model"], strict=True):
        full = catalog.quote(provider, model, Usage(input_tokens=1), at)
        cached = catalog.quote(provider, model, Usage(input_tokens=1, cached_input_tokens=1), at)
        output = catalog.quote(provider, model, Usage(output_tokens=1), at)
        known = full or output
        prices.append(
            {
                "currency": known.cost.currency if known else None,
                "input_per_mtok": _per_mtok(full),
                "cached_input_per_mtok": _per_mtok(cached),
                "output_per_mtok": _per_mtok(output),
                "price_source": known.source if known else None,
            }
        )
    out = pd.concat([out, pd.DataFrame.from_records(prices, index=out.index)], axis=1)
    out = out.sort_values(["model_family", "provider", "model"], kind="stable")
    return out[list(COMPARE_COLUMNS)].reset_index(drop=True)
