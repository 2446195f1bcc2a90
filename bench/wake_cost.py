"""What one wake-up from an idle wait costs in CPU on this machine: the floor under a per-chunk relay's CPU.

    python bench/wake_cost.py [--n 300] [--interval-ms 20]

A streaming relay (proxy or upstream) sleeps between chunks and wakes for each one; at a few concurrent streams
every chunk is its own wake-up. This prints the CPU time (user + system, ``getrusage``) per wake-up of a process
that waits ``--interval-ms`` each time, in C (``epoll_wait``, compiled with gcc when it is installed), in Python
with a bare ``select.epoll``, and in an asyncio loop (stdlib and uvloop) doing ``await asyncio.sleep``; and, for
contrast, the same loop with no wait at all. Multiply by the chunks of a stream (32 in bench/proxy_overhead.py) for
the CPU any relay that wakes per chunk spends per stream, before it does any work of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

C_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
static double cpu(void) {
    struct rusage r; getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}
int main(int argc, char **argv) {
    int n = atoi(argv[1]), ms = atoi(argv[2]);
    int ep = epoll_create1(0); struct epoll_event ev;
    double c0 = cpu();
    for (int i = 0; i < n; i++) epoll_wait(ep, &ev, 1, ms);
    printf("%.1f\n", (cpu() - c0) / n * 1e6);
    return 0;
}
"""


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def per_wake_us(run: Callable[[], None], n: int) -> float:
    c0 = _cpu()
    run()
    return (_cpu() - c0) / n * 1e6


def c_epoll(n: int, ms: int) -> float | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "wake.c", Path(tmp) / "wake"
        src.write_text(C_SOURCE)
        subprocess.run([gcc, "-O2", str(src), "-o", str(exe)], check=True)
        out = subprocess.run([str(exe), str(n), str(ms)], check=True, capture_output=True, text=True).stdout
    return float(out)


def py_epoll(n: int, seconds: float) -> float:
    ep = select.epoll()

    def run() -> None:
        for _ in range(n):
            ep.poll(seconds)

    return per_wake_us(run, n)


def py_asyncio(n: int, seconds: float, *, uvloop: bool) -> float:
    async def sleeps() -> None:
        for _ in range(n):
            await asyncio.sleep(seconds)

    def run() -> None:
        if uvloop:
            import uvloop as uv

            uv.run(sleeps())
        else:
            asyncio.run(sleeps())

    return per_wake_us(run, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--interval-ms", type=int, default=20)
    args = parser.parse_args()
    n, ms = args.n, args.interval_ms
    s = ms / 1000
    print(f"CPU per wake-up after an idle wait of {ms} ms, µs ({n} waits each; Python {sys.version.split()[0]}):")
    c = c_epoll(n, ms)
    print(f"  C epoll_wait              {c:8.1f}" if c is not None else "  C epoll_wait              (no gcc)")
    print(f"  Python select.epoll       {py_epoll(n, s):8.1f}")
    print(f"  asyncio.sleep (stdlib)    {py_asyncio(n, s, uvloop=False):8.1f}")
    print(f"  asyncio.sleep (uvloop)    {py_asyncio(n, s, uvloop=True):8.1f}")
    print(f"  asyncio.sleep(0), no wait {py_asyncio(n * 10, 0.0, uvloop=False):8.1f}   (the same loop kept busy)")


if __name__ == "__main__":
    main()
