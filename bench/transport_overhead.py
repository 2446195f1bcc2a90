"""What the recording transport adds to each request, next to the plain default transport.

    python bench/transport_overhead.py [-n 400] [--flavour httpx|httpx2|both]

A minimal upstream runs in its own process (uvicorn, no delays): POST /api/paas/v4/chat/completions answers with
the recorded Z.ai bodies from tests/fixtures (a JSON answer, or the SSE stream sent one event per chunk when the
request asks for ``"stream": true``). This process sends the same request through a plain client and through a
recording client (``httpx_client`` / ``httpx2_client``) in alternating order, round after round, so machine drift
cancels; the recording client's sink only counts, so the database writer is not measured. Prints, for
non-streaming and streaming requests, the median and p99 of the added time per request (microseconds), then the
recorder's own CPU per request (the same bodies replayed through ``Recorder`` / ``Exchange`` without I/O) and
the part of it spent pricing. Goal: <= 50 us added per request.

``measure(n)`` returns the figures as a dict, for other benchmarks (bench/proxy_overhead.py).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
PATH = "/api/paas/v4/chat/completions"
MODEL = "glm-4.6"
KEY = "bench-key"


def _fixture_body(name: str) -> bytes:
    raw = (FIXTURES / f"{name}.http").read_bytes()
    return raw.partition(b"\r\n\r\n")[2]


def _bodies() -> tuple[bytes, list[bytes]]:
    """The JSON answer, and the SSE stream cut into its events (each sent as one chunk)."""
    json_body = _fixture_body("zai_nonstream_cached_reasoning")
    stream = _fixture_body("zai_stream_usage_final_chunk")
    events = [e + b"\n\n" for e in stream.split(b"\n\n") if e.strip()]
    return json_body, events


# -- the upstream (its own process: python bench/transport_overhead.py --serve PORT) -----------------------------


def serve(port: int) -> None:
    import uvicorn

    json_body, events = _bodies()
    json_head = [(b"content-type", b"application/json"), (b"content-length", str(len(json_body)).encode())]
    sse_head = [(b"content-type", b"text/event-stream;charset=UTF-8"), (b"cache-control", b"no-cache")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if b'"stream":true' in body.replace(b" ", b""):
            await send({"type": "http.response.start", "status": 200, "headers": sse_head})
            for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": json_head})
            await send({"type": "http.response.body", "body": json_body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def upstream() -> Iterator[str]:
    """Start the upstream in a subprocess; yield its base URL."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.post(base + PATH, content=b"{}", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        else:
            raise RuntimeError("the upstream did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


# -- measuring ---------------------------------------------------------------------------------------------------


class CountingSink:
    """A sink that only counts, so the database writer's cost stays out of the figures."""

    def __init__(self) -> None:
        self.count = 0

    def submit(self, event: object) -> None:
        self.count += 1


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _clients(base: str, flavour: str, sink: CountingSink, *, record: bool) -> tuple[Any, Any]:
    """A plain client and a recording one; ``record`` False: the recording client knows no provider on ``base``
    (every request passes through unrecorded), which measures the wrapping alone."""
    from monitor.capture import httpx2_client, httpx_client
    from monitor.config import Settings
    from monitor.providers import BUILTIN_PROVIDERS, with_base_url

    providers = [with_base_url(BUILTIN_PROVIDERS["zai"], base + "/api/paas/v4")] if record else []
    kw: dict[str, Any] = {"sink": sink, "providers": providers, "settings": Settings()}
    if flavour == "httpx2":
        import httpx2

        return httpx2.Client(), httpx2_client("bench", **kw)
    import httpx

    return httpx.Client(), httpx_client("bench", **kw)


def _timed_request(client: Any, url: str, body: bytes, stream: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) for one request read to its end."""
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    c0 = time.thread_time()
    t0 = time.perf_counter()
    if stream:
        with client.stream("POST", url, content=body, headers=headers) as response:
            for _ in response.iter_bytes():
                pass
    else:
        client.post(url, content=body, headers=headers).read()
    return time.perf_counter() - t0, time.thread_time() - c0


def _added(base: str, flavour: str, n: int, stream: bool, *, record: bool = True) -> dict[str, float]:
    sink = CountingSink()
    direct, wrapped = _clients(base, flavour, sink, record=record)
    url = base + PATH
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}, separators=(",", ":")
    ).encode()
    warmup = 30
    for _ in range(warmup):  # warm up connections, imports and caches
        _timed_request(direct, url, body, stream)
        _timed_request(wrapped, url, body, stream)
    plain: list[float] = []
    recorded: list[float] = []
    diffs: list[float] = []
    cpu_plain = cpu_recorded = 0.0
    for i in range(n):
        # Alternate which goes first, so neither always runs on a warmer cache.
        if i % 2:
            d, dc = _timed_request(direct, url, body, stream)
            w, wc = _timed_request(wrapped, url, body, stream)
        else:
            w, wc = _timed_request(wrapped, url, body, stream)
            d, dc = _timed_request(direct, url, body, stream)
        plain.append(d)
        recorded.append(w)
        diffs.append(w - d)
        cpu_plain += dc
        cpu_recorded += wc
    direct.close()
    wrapped.close()
    expected = n + warmup if record else 0
    assert sink.count == expected, f"expected {expected} events, got {sink.count}"
    us = 1e6
    return {
        "direct_median_us": statistics.median(plain) * us,
        "added_median_us": (statistics.median(recorded) - statistics.median(plain)) * us,
        "added_p99_us": (_percentile(recorded, 0.99) - _percentile(plain, 0.99)) * us,
        "paired_diff_median_us": statistics.median(diffs) * us,
        "added_cpu_us": (cpu_recorded - cpu_plain) / n * us,
    }


def recorder_cpu(n: int = 2000) -> dict[str, float]:
    """CPU per request of the recording alone: ``Recorder.start`` + ``Exchange`` over the fixture bodies."""
    import httpx

    from monitor.capture import Recorder
    from monitor.config import Settings
    from monitor.pricing import default_catalog
    from monitor.providers import BUILTIN_PROVIDERS
    from monitor.usage import parse_response

    json_body, events = _bodies()
    recorder = Recorder("bench", sink=CountingSink(), providers=[BUILTIN_PROVIDERS["zai"]], settings=Settings())
    headers = httpx.Headers({"content-type": "text/event-stream"})

    requests = {
        stream: httpx.Request(
            "POST",
            "https://api.z.ai" + PATH,
            content=b'{"model":"glm-4.6","messages":[{"role":"user","content":"hi"}],"stream":%s}'
            % (b"true" if stream else b"false"),
        )
        for stream in (False, True)
    }

    def one(stream: bool) -> None:
        exchange = recorder.start(requests[stream])
        assert exchange is not None
        exchange.response_started(200, headers)
        for chunk in events if stream else (json_body,):
            exchange.feed(chunk)
        exchange.finish()

    out: dict[str, float] = {}
    for stream in (False, True):
        for _ in range(100):
            one(stream)
        t0 = time.process_time()
        for _ in range(n):
            one(stream)
        out["recorder_cpu_stream_us" if stream else "recorder_cpu_json_us"] = (time.process_time() - t0) / n * 1e6
    catalog = default_catalog()
    usage = parse_response("openai", json_body, stream=False)
    now = datetime.now(UTC)
    t0 = time.process_time()
    for _ in range(n):
        catalog.quote("zai", MODEL, usage, now)
    out["pricing_cpu_us"] = (time.process_time() - t0) / n * 1e6
    return out


def measure(n: int = 300, flavour: str = "httpx2") -> dict[str, Any]:
    """Added time and CPU per request (us) for non-streaming and streaming requests, recorded and passed through
    unrecorded, and the recorder's own CPU per request with the part spent pricing."""
    with upstream() as base:
        figures: dict[str, Any] = {"flavour": flavour, "n": n}
        for stream in (False, True):
            label = "stream" if stream else "nonstream"
            for key, value in _added(base, flavour, n, stream).items():
                figures[f"{label}_{key}"] = round(value, 1)
            for key, value in _added(base, flavour, n, stream, record=False).items():
                figures[f"{label}_passthrough_{key}"] = round(value, 1)
    figures.update({k: round(v, 1) for k, v in recorder_cpu().items()})
    return figures


def _print(figures: dict[str, Any]) -> None:
    print(f"flavour {figures['flavour']}, {figures['n']} interleaved rounds (added = recording client - plain client)")
    for label in ("nonstream", "stream"):
        for kind, prefix in (("recorded", f"{label}_"), ("unrecorded", f"{label}_passthrough_")):
            print(
                f"  {label:9} {kind:10}: direct median {figures[prefix + 'direct_median_us']:7.1f} us; added "
                f"median {figures[prefix + 'added_median_us']:7.1f} us, "
                f"p99 {figures[prefix + 'added_p99_us']:7.1f} us, "
                f"paired median {figures[prefix + 'paired_diff_median_us']:6.1f} us; "
                f"added CPU {figures[prefix + 'added_cpu_us']:6.1f} us"
            )
    print(
        f"  recorder CPU per request (no I/O): JSON {figures['recorder_cpu_json_us']:.1f} us, "
        f"13-event stream {figures['recorder_cpu_stream_us']:.1f} us; "
        f"of which pricing {figures['pricing_cpu_us']:.1f} us"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=400, help="interleaved rounds per kind of request")
    parser.add_argument("--flavour", choices=["httpx", "httpx2", "both"], default="both")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return
    flavours: list[str] = ["httpx", "httpx2"] if args.flavour == "both" else [args.flavour]
    run: Callable[[str], dict[str, Any]] = lambda f: measure(args.n, f)  # noqa: E731
    for flavour in flavours:
        _print(run(flavour))


if __name__ == "__main__":
    main()
