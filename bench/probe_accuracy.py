"""How close run_probe's measured TTFT and total time are to the truth injected into the simulator.

    python bench/probe_accuracy.py [--probes 40]

The simulator runs in its own process; each probe asks it (X-Sim-TTFT-Ms / X-Sim-Token-Ms) for an exact time to
first token and per-token delay, so the truth is known. Prints the error (measured - injected) per setting:
median and p95, in milliseconds. Goal: median TTFT error <= 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sim_process import sim_process

from monitor.outcomes import Outcome
from monitor.probe import Target, run_probe
from monitor.providers import BUILTIN_PROVIDERS, with_base_url

SETTINGS = [(0, 0), (50, 5), (300, 10), (1000, 20)]  # (TTFT ms, per-token ms)
MAX_TOKENS = 16


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def measure(base: str, probes: int) -> list[tuple[int, int, list[float], list[float]]]:
    provider = with_base_url(BUILTIN_PROVIDERS["zai"], f"{base}/api/paas/v4")
    target = Target(provider, "glm-4.7", "bench", api_key="bench", max_tokens=MAX_TOKENS)
    out = []
    async with httpx.AsyncClient() as client:
        for ttft, tok in SETTINGS:
            client.headers.update({"X-Sim-TTFT-Ms": str(ttft), "X-Sim-Token-Ms": str(tok)})
            await run_probe(target, client, deadline=30)  # warm-up
            ttft_err, total_err = [], []
            while len(ttft_err) < probes:
                r = await run_probe(target, client, deadline=30)
                if r.outcome != Outcome.OK or not r.usage.complete:
                    continue  # the demo models fail now and then by design; only answers are timed
                ttft_err.append(r.ttft_ms - ttft)
                # The simulator sends token i at ttft + i*tok and its closing usage chunk at ttft + n*tok.
                total_err.append(r.total_ms - (ttft + MAX_TOKENS * tok))
            out.append((ttft, tok, ttft_err, total_err))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=40)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {platform.machine()}, probes per setting: {args.probes}")
    with sim_process() as base:
        rows = asyncio.run(measure(base, args.probes))
    print(f"{'TTFT ms':>8} {'tok ms':>7} | {'TTFT err p50':>12} {'p95':>7} | {'total err p50':>13} {'p95':>7}")
    for ttft, tok, te, toe in rows:
        print(
            f"{ttft:>8} {tok:>7} | {statistics.median(te):>12.2f} {pct(te, 0.95):>7.2f} |"
            f" {statistics.median(toe):>13.2f} {pct(toe, 0.95):>7.2f}"
        )
    worst = max(abs(statistics.median(te)) for _, _, te, _ in rows)
    print(f"worst median TTFT error: {worst:.2f} ms (goal <= 2 ms)")


if __name__ == "__main__":
    main()
