"""The daemon under load: 200 targets at 10-second intervals against the simulator, for a few minutes.

    python bench/daemon.py [--targets 200] [--interval 10] [--minutes 3]

The simulator and the daemon run in processes of their own (the daemon exactly as `glm-monitor run`, into a
scratch SQLite file). Prints the scheduling lag (how late each job started versus its scheduled time) p50/p99
from the daemon's per-minute summary lines (the first minute, the start-up burst, is left out), the daemon's CPU
time and peak RSS, and how many probes were stored. Goal: lag p99 <= 100 ms, RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sim_process import sim_process

MODELS = ("glm-4.7", "glm-4.6", "glm-5", "glm-4.7-flash")


def config_text(sim: str, db: str, targets: int, interval: float) -> str:
    providers = (targets + len(MODELS) - 1) // len(MODELS)
    lines = [f'vantage = "bench"\n[database]\nurl = "sqlite:///{db}"\n']
    lines.append(f'[prober]\ninterval = {interval}\njitter = "1s"\ndeadline = "8s"\ndefault_concurrency = 4\n')
    for p in range(providers):
        lines.append(f'[custom.sim{p}]\nbase_url = "{sim}/api/paas/v4"\n')
    n = 0
    for p in range(providers):
        for m in MODELS:
            if n == targets:
                break
            lines.append(f'[[targets]]\nprovider = "custom:sim{p}"\nmodel = "{m}"\n')
            n += 1
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--minutes", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sim_process() as sim:
        db = os.path.join(tmp, "bench.db")
        cfg = Path(tmp, "bench.toml")
        cfg.write_text(config_text(sim, db, args.targets, args.interval))
        log = Path(tmp, "daemon.log")
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "monitor.cli", "--config", str(cfg), "run", "--no-dashboard"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            ps = psutil.Process(proc.pid)
            peak_rss = 0
            end = time.monotonic() + args.minutes * 60 + 5
            while time.monotonic() < end and proc.poll() is None:
                peak_rss = max(peak_rss, ps.memory_info().rss)
                time.sleep(0.5)
            cpu = ps.cpu_times()
            wall = time.monotonic() - (end - args.minutes * 60 - 5)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        text = log.read_text()
    summaries = [dict(re.findall(r"(\w+)=([\d.]+)", line)) for line in text.splitlines() if "summary" in line]
    steady = summaries[1:-1] or summaries
    p50s = [float(s["lag_p50_ms"]) for s in steady if "lag_p50_ms" in s]
    p99s = [float(s["lag_p99_ms"]) for s in steady if "lag_p99_ms" in s]
    probes = sum(int(float(s.get("probes", 0))) for s in summaries)
    stopped = re.search(r"stopped after (\d+) probes", text)
    print(f"targets {args.targets}, interval {args.interval:g}s, {args.minutes:g} min, {psutil.cpu_count()} CPUs")
    print(
        f"probes run: {probes} ({probes / wall:.1f}/s); stored per the daemon: {stopped.group(1) if stopped else '?'}"
    )
    if p50s:
        print(
            f"scheduling lag: p50 {statistics.median(p50s):.1f} ms (median of minutes), "
            f"p99 {max(p99s):.1f} ms (worst minute)"
        )
    print(
        f"daemon CPU: {cpu.user + cpu.system:.1f} s over {wall:.0f} s "
        f"({(cpu.user + cpu.system) / wall:.1%} of one core)"
    )
    print(f"daemon peak RSS: {peak_rss / 2**20:.0f} MB")
    print(f"exit code after SIGTERM: {proc.returncode}")


if __name__ == "__main__":
    main()
