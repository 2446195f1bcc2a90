"""Merging the rollups' latency histograms and reading percentiles from them, vectorised with numpy.

A histogram is packed (bucket, count) int32 pairs on the fixed log-spaced buckets of ``monitor.rollup``.
Histograms of many rows are merged per group by adding counts bucket by bucket; a quantile ``q`` of ``n``
values is read in the first bucket whose cumulative count reaches ``q * n``, interpolated log-linearly inside
that bucket. The result lies in the same bucket as the exact sample quantile (the smallest value with at least
``q * n`` values at or below it), so the two differ by less than one bucket width (``BUCKET_RATIO``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from monitor.rollup import BUCKET_MAX, BUCKET_MIN, BUCKETS_PER_DECADE

Metric = Literal["ttft_ms", "total_ms", "tokens_per_s"]
METRICS: tuple[Metric, ...] = ("ttft_ms", "total_ms", "tokens_per_s")
# metric -> (count column, sum column, histogram column) in rollup_probe_hourly
METRIC_COLUMNS: dict[Metric, tuple[str, str, str]] = {
    "ttft_ms": ("ttft_count", "ttft_sum_ms", "ttft_hist"),
    "total_ms": ("total_count", "total_sum_ms", "total_hist"),
    "tokens_per_s": ("tps_count", "tps_sum", "tps_hist"),
}

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def decode(hists: Sequence[bytes]) -> tuple[IntArray, IntArray, IntArray]:
    """(row index, bucket, count) of every entry of the given packed histograms (``monitor.rollup.pack_hist``)."""
    lengths = np.asarray(list(map(len, hists)), dtype=np.int64) // 8
    # One buffer for the whole batch: decoding costs the same for one row or a hundred thousand.
    flat = np.frombuffer(b"".join(hists), dtype="<i4").astype(np.int64).reshape(-1, 2)
    rows = np.repeat(np.arange(len(hists), dtype=np.int64), lengths)
    return rows, flat[:, 0].copy(), flat[:, 1].copy()


_DENSE_CELLS = 4_000_000  # groups x bucket span up to which the dense method is used (32 MB of float64)


def quantiles(groups: IntArray, buckets: IntArray, counts: IntArray, n_groups: int, qs: Sequence[float]) -> FloatArray:
    """Quantiles ``qs`` of each group's merged histogram: shape (len(qs), n_groups); NaN for an empty group."""
    out = np.full((len(qs), n_groups), np.nan)
    keep = counts > 0
    groups, buckets, counts = groups[keep], buckets[keep], counts[keep]
    if not len(groups):
        return out
    low = int(buckets.min())
    span = int(buckets.max()) - low + 1
    if n_groups * span <= _DENSE_CELLS:
        _dense_quantiles(out, groups, buckets - low, counts, n_groups, span, low, qs)
    else:
        _sparse_quantiles(out, groups, buckets, counts, n_groups, qs)
    return out


def _value(bucket: FloatArray | IntArray, fraction: FloatArray) -> FloatArray:
    """The value a fraction of the way (in log space) through a bucket."""
    return np.asarray(10 ** ((bucket + fraction) / BUCKETS_PER_DECADE), dtype=np.float64)


def _dense_quantiles(
    out: FloatArray,
    groups: IntArray,
    offsets: IntArray,
    counts: IntArray,
    n_groups: int,
    span: int,
    low: int,
    qs: Sequence[float],
) -> None:
    # One row of bucket counts per group; the cumulative counts locate each quantile's bucket.
    dense = np.bincount(groups * span + offsets, weights=counts, minlength=n_groups * span).reshape(n_groups, span)
    cum_all = dense.cumsum(axis=1)
    rows = np.flatnonzero(cum_all[:, -1] > 0)
    cum, counts_of = cum_all[rows], dense[rows]
    totals = cum[:, -1]
    index = np.arange(len(rows))
    for qi, q in enumerate(qs):
        target = q * totals  # never above the row's last cumulative count, so every row has a hit
        # argmax on booleans stops at the first True: the first bucket reaching the target, 5x faster than
        # counting the buckets below it.
        at = (cum >= target[:, None]).argmax(axis=1)
        before = np.where(at > 0, cum[index, np.maximum(at - 1, 0)], 0.0)
        fraction = (target - before) / counts_of[index, at]
        out[qi, rows] = _value(low + at, fraction)


def _sparse_quantiles(
    out: FloatArray, groups: IntArray, buckets: IntArray, counts: IntArray, n_groups: int, qs: Sequence[float]
) -> None:
    order = np.argsort(groups * (BUCKET_MAX - BUCKET_MIN + 1) + (buckets - BUCKET_MIN), kind="stable")
    groups, buckets, counts = groups[order], buckets[order], counts[order]
    # Merge repeated (group, bucket) entries into one.
    first = np.ones(len(groups), dtype=bool)
    first[1:] = (groups[1:] != groups[:-1]) | (buckets[1:] != buckets[:-1])
    starts = np.flatnonzero(first)
    groups, buckets = groups[starts], buckets[starts]
    counts = np.add.reduceat(counts, starts)
    totals = np.bincount(groups, weights=counts, minlength=n_groups)
    running = np.cumsum(counts)
    group_start = np.ones(len(groups), dtype=bool)
    group_start[1:] = groups[1:] != groups[:-1]
    base = (running - counts)[group_start]  # cumulative count before each group's first bucket
    cum = running - base[np.cumsum(group_start) - 1]
    for qi, q in enumerate(qs):
        target = q * totals[groups]
        hit = np.flatnonzero((cum >= target) & (target > 0))
        hit_groups, first_hit = np.unique(groups[hit], return_index=True)
        at = hit[first_hit]
        fraction = (target[at] - (cum[at] - counts[at])) / counts[at]
        out[qi, hit_groups] = _value(buckets[at], fraction)


def summarize(
    frame: pd.DataFrame, keys: Sequence[str], metric: Metric, qs: Sequence[float] = (0.5, 0.95, 0.99)
) -> pd.DataFrame:
    """Per group of ``keys``: samples, mean and the quantiles ``qs`` (columns ``p50``...) of ``metric``.

    ``frame`` holds rollup_probe_hourly rows (with the metric's count, sum and histogram columns) and ``keys``.
    Groups come out sorted by ``keys``; a group without samples has NaN statistics.
    """
    count_col, sum_col, hist_col = METRIC_COLUMNS[metric]
    names = [f"p{round(q * 100):d}" for q in qs]
    if frame.empty:
        return pd.DataFrame(columns=[*keys, "samples", "mean", *names])
    grouped = frame.groupby(list(keys), sort=True, dropna=False)
    gid: IntArray = np.asarray(grouped.ngroup(), dtype=np.int64)
    n_groups = int(grouped.ngroups)
    rows, buckets, counts = decode(frame[hist_col].tolist())
    qv = quantiles(gid[rows], buckets, counts, n_groups, qs)
    samples = np.bincount(gid, weights=frame[count_col].to_numpy(dtype=np.float64), minlength=n_groups)
    sums = np.bincount(gid, weights=frame[sum_col].to_numpy(dtype=np.float64), minlength=n_groups)
    out = grouped.size().reset_index()[list(keys)]
    out["samples"] = samples.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean"] = np.where(samples > 0, sums / np.where(samples > 0, samples, 1), np.nan)
    for i, name in enumerate(names):
        out[name] = qv[i]
    return out
