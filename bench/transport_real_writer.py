"""The recording transport's added time with the real ``EventWriter`` (a SQLite file) as its sink.

    python bench/transport_real_writer.py [httpx2|httpx] [stream|nonstream] [-n 2000]

``bench/transport_overhead.py`` measures with a sink that only counts; here the sink is the writer an application
gets (``open_writer``: the row is built and appended to the journal as the response ends, then the writer's thread
stores it), so its work lands where it does in an application. Rounds alternate
plain and recording clients against the same local upstream; prints the added median, p90 and p99 (microseconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from typing import Any

import transport_overhead as base

from monitor.store import make_engine, upgrade
from monitor.writer import open_writer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("flavour", nargs="?", default="httpx2", choices=("httpx2", "httpx"))
    p.add_argument("kind", nargs="?", default="stream", choices=("stream", "nonstream"))
    p.add_argument("-n", type=int, default=2000)
    args = p.parse_args()
    stream = args.kind == "stream"
    url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    upgrade(url)
    writer = open_writer(make_engine(url), url)

    class Sink:
        def submit(self, event: Any) -> None:
            writer.submit(event)

    with base.upstream() as origin:
        direct, wrapped = base._clients(origin, args.flavour, Sink(), record=True)  # type: ignore[arg-type]
        target = origin + base.PATH
        body = json.dumps(
            {"model": base.MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream},
            separators=(",", ":"),
        ).encode()
        for _ in range(100):  # warm up both clients and the writer
            base._timed_request(direct, target, body, stream)
            base._timed_request(wrapped, target, body, stream)
        writer.flush()
        plain: list[float] = []
        recorded: list[float] = []
        for i in range(args.n):
            pair = (direct, wrapped) if i % 2 else (wrapped, direct)
            first = base._timed_request(pair[0], target, body, stream)[0]
            second = base._timed_request(pair[1], target, body, stream)[0]
            (plain if pair[0] is direct else recorded).append(first)
            (recorded if pair[0] is direct else plain).append(second)
    writer.close()

    def q(values: list[float], at: float) -> float:
        return sorted(values)[int(at * (len(values) - 1))]

    print(
        f"{args.flavour} {args.kind}, real writer, {args.n} rounds: added median "
        f"{(statistics.median(recorded) - statistics.median(plain)) * 1e6:.1f} us, "
        f"p90 {(q(recorded, 0.9) - q(plain, 0.9)) * 1e6:.1f} us, "
        f"p99 {(q(recorded, 0.99) - q(plain, 0.99)) * 1e6:.1f} us"
    )


if __name__ == "__main__":
    main()
