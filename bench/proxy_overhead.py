"""What the recording proxy adds to a streaming request, next to a bare pass-through proxy.

    python bench/proxy_overhead.py [--levels 1,10,100] [--rounds 8,6,4] [--per-worker 8,4,3] [--tokens 30]
                                   [--token-ms 20]

Four processes besides this one: a minimal streaming upstream (uvicorn; 50 ms to the first token, then a token
every 20 ms, an OpenAI-style usage chunk only when asked), the GLM Monitor proxy exactly as ``glm-monitor proxy``
serves it (recording into a scratch SQLite file), and two bare pass-throughs that record nothing: starlette +
httpx (single-connection clients from a free-list, as the issue's floor) and plain ASGI + aiohttp (the client
library the proxy uses: the practical floor for a Python proxy here). The load generator
(this process) speaks HTTP/1.1 on raw asyncio streams, one kept-alive connection per concurrent stream, so it
adds no pool of its own. N concurrent streams: N connections each running requests back to back, their starts
staggered over one stream's length, so N streams are in flight and arrive spread out as steady traffic does.
Rounds alternate direct / proxy / bare / bare-aiohttp (rotating the order) so machine drift cancels.

Prints per concurrency level the time to first body byte (TTFB) and the total time, p50 and p99, and what the
proxies add over direct; the CPU time each proxy process spent per stream (psutil) and the proxy's peak RSS; and
the transport's per-request overhead from bench/transport_overhead.py when that file exists.
Goals: added TTFB p50 <= 2 ms at 1 and 10 streams, p99 <= 10 ms at 10; at 100 streams <= 1.5x the bare proxy's
added time; <= 4 ms CPU per stream; peak RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("direct", "proxy", "bare", "bare-aiohttp")
TTFT_S = 0.05
TOKEN_S = 0.02  # 50 tokens/s per stream, about what GLM-4.7 streams at (--token-ms changes it)


# -- the three servers (each runs in its own process: python bench/proxy_overhead.py --role ...) ----------------


def run_upstream(port: int, tokens: int, token_s: float) -> None:
    import uvicorn

    def chunk(i: int, content: str, finish: str | None = None) -> bytes:
        obj = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": "glm-bench",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
    usage_chunk = (
        b"data: "
        + json.dumps(
            {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "choices": [], "usage": usage},
            separators=(",", ":"),
        ).encode()
        + b"\n\n"
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        asked = b'"include_usage":true' in body.replace(b" ", b"")
        loop = asyncio.get_running_loop()
        start = loop.time() + TTFT_S
        await asyncio.sleep(TTFT_S)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(tokens):
            if i:
                await asyncio.sleep(max(0.0, start + i * token_s - loop.time()))
            await send({"type": "http.response.body", "body": chunk(i, f" tok{i}"), "more_body": True})
        tail = chunk(tokens, "", "stop") + (usage_chunk if asked else b"") + b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


def run_proxy(port: int, upstream: str, db: str) -> None:
    from monitor.capture.proxy import serve
    from monitor.config import settings_from_dict
    from monitor.store import make_engine, upgrade
    from monitor.writer import open_writer

    url = f"sqlite:///{db}"
    upgrade(url)
    settings = settings_from_dict({"vantage": "bench", "custom": {"bench": {"base_url": upstream + "/v1"}}})
    # The writer `glm-monitor proxy` uses: every request journaled before its response ends.
    writer = open_writer(make_engine(url), url)
    try:
        serve(settings, writer, "127.0.0.1", port)
    finally:
        writer.close()


def run_bare_aiohttp(port: int, upstream: str) -> None:
    import aiohttp
    import uvicorn

    hop = {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
        b"host",
    }
    session: aiohttp.ClientSession | None = None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] != "http":
            return
        if session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0), auto_decompress=False
            )
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"].removeprefix("/bench")
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k not in hop}
        async with session.request(
            scope["method"], upstream + "/v1" + path, headers=headers, data=body, skip_auto_headers=("User-Agent",)
        ) as response:
            out = [(k, v) for k, v in response.raw_headers if k.lower() not in hop]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            async for part in response.content.iter_any():
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


def run_bare(port: int, upstream: str) -> None:
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    free: list[httpx.AsyncClient] = []
    hop = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length", "host"}

    async def forward(request: Request) -> StreamingResponse:
        client = (
            free.pop()
            if free
            else httpx.AsyncClient(limits=httpx.Limits(max_connections=1, keepalive_expiry=2.0), timeout=None)
        )
        path = request.url.path.removeprefix("/bench")
        headers = [(k, v) for k, v in request.headers.raw if k.decode() not in hop]
        upstream_request = client.build_request(
            request.method, upstream + "/v1" + path, headers=headers, content=await request.body()
        )
        response = await client.send(upstream_request, stream=True)

        async def body() -> Any:
            try:
                async for part in response.aiter_raw():
                    yield part
            finally:
                await response.aclose()
                free.append(client)

        out = {k: v for k, v in response.headers.items() if k not in hop}
        return StreamingResponse(body(), status_code=response.status_code, headers=out)

    app = Starlette(routes=[Route("/bench/{path:path}", forward, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- orchestration ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def process(*args: str, port: int) -> Iterator[psutil.Process]:
    proc = subprocess.Popen([sys.executable, __file__, *args, "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{args} did not start") from None
                time.sleep(0.05)
        yield psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


class RssSampler:
    """Peak RSS of a process, sampled every 20 ms (and the kernel's high-water mark where it is readable)."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        return self.peak


class Conn:
    """One kept-alive HTTP/1.1 connection speaking just enough of the protocol for the measurement."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: bytes, body: bytes) -> tuple[float, float, int]:
        """(time to first body byte, total time, body bytes) of one POST."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.reader, self.writer
        assert reader is not None
        head = (
            b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer sk-bench\r\nX-Monitor-App: bench\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        t0 = time.perf_counter()
        writer.write(head + body)
        response_head = await reader.readuntil(b"\r\n\r\n")
        assert response_head.startswith(b"HTTP/1.1 200"), response_head[:80]
        lower = response_head.lower()
        first = 0.0
        size = 0
        if b"transfer-encoding: chunked" in lower:
            while True:
                line = await reader.readline()
                if not first:
                    first = time.perf_counter()
                n = int(line.split(b";")[0], 16)
                await reader.readexactly(n + 2)
                size += n
                if n == 0:
                    break
        else:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            data = await reader.readexactly(length)
            first, size = time.perf_counter(), len(data)
        return first - t0, time.perf_counter() - t0, size


REQUEST = json.dumps(
    {"model": "glm-bench", "messages": [{"role": "user", "content": "Count to thirty."}], "stream": True}
).encode()


async def round_(conns: list[Conn], path: bytes, per_worker: int, stream_s: float) -> list[tuple[float, float, int]]:
    """Each connection runs ``per_worker`` requests back to back, the starts staggered over one stream's
    duration, so ``len(conns)`` streams are in flight at any time, arriving spread out (as steady traffic)."""

    async def worker(i: int, conn: Conn) -> list[tuple[float, float, int]]:
        await asyncio.sleep(i * stream_s / len(conns))
        out = []
        for _ in range(per_worker):
            try:
                out.append(await conn.request(path, REQUEST))
            except (OSError, asyncio.IncompleteReadError, AssertionError) as exc:
                print(f"  a request on port {conn.port} failed: {exc!r}", file=sys.stderr)
                if conn.writer is not None:
                    conn.writer.close()
                conn.writer = None
        return out

    results = await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    return [r for group in results for r in group]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure_level(
    n: int,
    rounds: int,
    per_worker: int,
    tokens: int,
    token_s: float,
    ports: dict[str, int],
    procs: dict[str, psutil.Process],
) -> dict[str, Any]:
    paths = {name: b"/v1/chat/completions" if name == "direct" else b"/bench/chat/completions" for name in TARGETS}
    conns = {name: [Conn(ports[name]) for _ in range(n)] for name in paths}
    stream_s = TTFT_S + tokens * token_s
    for name in paths:  # warm-up: open the connections, fill the proxies' upstream pools
        await round_(conns[name], paths[name], 1, 0.0)
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in paths}
    # "direct": the upstream's own CPU while serving the direct rounds, the cost of the stream itself here.
    cpu: dict[str, float] = dict.fromkeys(TARGETS, 0.0)
    order = list(TARGETS)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            for c in conns[name]:  # fresh connections each round: servers close idle ones after 5 s
                if c.writer is not None:
                    c.writer.close()
                    c.writer = None
            before = _cpu(procs[name]) if name in cpu else 0.0
            got = await round_(conns[name], paths[name], per_worker, stream_s)
            if name in cpu:
                cpu[name] += _cpu(procs[name]) - before
            samples[name].extend(got)
    for group in conns.values():
        for c in group:
            if c.writer is not None:
                c.writer.close()
    sizes = {name: {s[2] for s in v} for name, v in samples.items()}
    assert all(v == sizes["direct"] for v in sizes.values()), sizes
    out: dict[str, Any] = {"n": n, "streams": len(samples["proxy"])}
    for name, values in samples.items():
        out[name] = {
            "ttfb50": pct([v[0] for v in values], 0.5),
            "ttfb99": pct([v[0] for v in values], 0.99),
            "total50": pct([v[1] for v in values], 0.5),
            "total99": pct([v[1] for v in values], 0.99),
        }
    out["cpu_ms"] = {name: cpu[name] * 1000 / len(samples[name]) for name in cpu}
    return out


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["upstream", "proxy", "bare", "bare-aiohttp"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream")
    parser.add_argument("--db")
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--token-ms", type=float, default=TOKEN_S * 1000)
    parser.add_argument("--levels", default="1,10,100")
    parser.add_argument("--rounds", default="8,6,4", help="rounds per level (each round: every target once)")
    parser.add_argument("--per-worker", default="8,4,3", help="requests per concurrent stream in a round")
    args = parser.parse_args()
    if args.role == "upstream":
        return run_upstream(args.port, args.tokens, args.token_ms / 1000)
    if args.role == "proxy":
        return run_proxy(args.port, args.upstream, args.db)
    if args.role == "bare":
        return run_bare(args.port, args.upstream)
    if args.role == "bare-aiohttp":
        return run_bare_aiohttp(args.port, args.upstream)

    levels = [int(x) for x in args.levels.split(",")]
    rounds = [int(x) for x in args.rounds.split(",")]
    per = [int(x) for x in args.per_worker.split(",")]
    ports = {name: free_port() for name in TARGETS}
    upstream = f"http://127.0.0.1:{ports['direct']}"
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        with (
            process(
                "--role",
                "upstream",
                "--tokens",
                str(args.tokens),
                "--token-ms",
                str(args.token_ms),
                port=ports["direct"],
            ) as up,
            process("--role", "proxy", "--upstream", upstream, "--db", db, port=ports["proxy"]) as proxy,
            process("--role", "bare", "--upstream", upstream, port=ports["bare"]) as bare,
            process("--role", "bare-aiohttp", "--upstream", upstream, port=ports["bare-aiohttp"]) as bare_aiohttp,
        ):
            procs = {"direct": up, "proxy": proxy, "bare": bare, "bare-aiohttp": bare_aiohttp}
            sampler = RssSampler(proxy)
            results = [
                _run(measure_level(n, r, k, args.tokens, args.token_ms / 1000, ports, procs))
                for n, r, k in zip(levels, rounds, per, strict=True)
            ]
            peak = sampler.stop()
            stored = _stored(db)
    report(results, peak, stored, args.tokens, args.token_ms)


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _stored(db: str) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("select count(*) from usage_events").fetchone()[0])


def report(results: list[dict[str, Any]], peak: int, stored: int, tokens: int, token_ms: float) -> None:
    print(f"upstream: TTFT {TTFT_S * 1000:.0f} ms, {tokens} tokens {token_ms:g} ms apart; times in ms")
    print(
        f"{'streams':>7} {'samples':>7} {'who':>12} | {'TTFB p50':>9} {'p99':>7} | {'added TTFB p50':>14} "
        f"{'p99':>7} | {'added total p50':>15} {'p99':>7} | {'CPU/stream':>10}"
    )
    for res in results:
        d = res["direct"]
        for name in TARGETS:
            s = res[name]
            cpu = f"{res['cpu_ms'][name]:10.2f}" if name in res["cpu_ms"] else " " * 10
            added = (
                f"{(s['ttfb50'] - d['ttfb50']) * 1000:14.2f} {(s['ttfb99'] - d['ttfb99']) * 1000:7.2f} | "
                f"{(s['total50'] - d['total50']) * 1000:15.2f} {(s['total99'] - d['total99']) * 1000:7.2f}"
                if name != "direct"
                else " " * 22 + " | " + " " * 23
            )
            print(
                f"{res['n']:>7} {res['streams']:>7} {name:>12} | {s['ttfb50'] * 1000:9.2f} {s['ttfb99'] * 1000:7.2f} | "
                f"{added} | {cpu}"
            )
        p = res["proxy"]
        for bare in ("bare", "bare-aiohttp"):
            b = res[bare]
            ratio = (p["ttfb50"] - d["ttfb50"]) / max(1e-6, b["ttfb50"] - d["ttfb50"])
            print(f"{'':>7} {'':>7} {'':>12}   added TTFB p50 proxy / {bare} = {ratio:.2f}")
    print("CPU/stream of 'direct' is the upstream's own: what merely sending these chunks costs on this machine")
    print(f"proxy peak RSS: {peak / 2**20:.1f} MB; events stored: {stored}")
    transport = ROOT / "bench" / "transport_overhead.py"
    if transport.exists():
        spec = importlib.util.spec_from_file_location("transport_overhead", transport)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "measure"):
            print(f"transport overhead per request: {module.measure()}")
    else:
        print("transport overhead: bench/transport_overhead.py not found, skipped")


if __name__ == "__main__":
    main()
