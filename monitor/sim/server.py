"""Running the simulator: :func:`serve` (blocking, for ``glm-monitor sim``) and :class:`SimServer` /
:func:`run_in_thread` (a background thread, for tests, benchmarks and the demo).

``SimServer`` binds its socket itself, so ``port=0`` gets an ephemeral port that is known before the server
starts and stays the same across :meth:`SimServer.restart`. A non-graceful stop drops every open connection
at once, as a provider that vanishes would: clients see network errors, not HTTP answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal

import uvicorn

from monitor.sim.app import SimApp
from monitor.sim.profiles import SimConfig, demo_config

__all__ = ["SimServer", "run_in_thread", "serve"]

HttpImpl = Literal["h11", "httptools"]


class SimServer:
    """One simulator served by uvicorn in a daemon thread.

    ``start()`` returns once the server accepts connections; ``stop()`` returns once it is gone;
    ``restart()`` does both on the same port. The :class:`SimApp` (and so its counters and clock) survives
    restarts. Usable as a context manager.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        http: HttpImpl = "h11",
        log_level: str = "warning",
    ) -> None:
        self.config = config if config is not None else SimConfig()
        self.app = SimApp(self.config)
        self.host = host
        self._port = port
        self._http = http
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        """The bound port (after the first start; before it, the requested one)."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port`` without a trailing slash; append a dialect's path prefix."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """True between a successful start and the matching stop."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> SimServer:
        """Bind, start serving in a background thread, and wait until the server is ready."""
        if self.running:
            return self
        sock = self._bind()
        config = uvicorn.Config(
            self.app,
            log_level=self._log_level,
            log_config=None,  # leave the host process's logging alone
            lifespan="off",
            loop="asyncio",
            http=self._http,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"glm-sim-{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the simulator on {self.base_url} failed to start")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the simulator on {self.base_url} did not start within {timeout} s")
            time.sleep(0.002)
        return self

    def _bind(self) -> socket.socket:
        family, kind, proto, _, address = socket.getaddrinfo(self.host, self._port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        # Lets a restart take the same port while old connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        return sock

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        try:
            asyncio.run(main())
        finally:
            sock.close()

    def stop(self, *, graceful: bool = False, timeout: float = 10.0) -> None:
        """Stop serving. ``graceful``: let answers in progress finish (up to uvicorn's 1 s grace);
        otherwise drop every connection now. Idempotent."""
        server, thread, loop = self._server, self._thread, self._loop
        if server is None or thread is None:
            return
        if not graceful and loop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop may have closed meanwhile
                loop.call_soon_threadsafe(_drop_connections, server)
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = self._thread = self._loop = None

    def restart(self, timeout: float = 10.0) -> SimServer:
        """Stop (dropping connections) and start again on the same port."""
        self.stop()
        return self.start(timeout)

    def stats(self) -> dict[str, Any]:
        """Same as ``GET /_sim/stats``."""
        return self.app.state.stats()

    def reset(self) -> None:
        """Same as ``POST /_sim/reset``."""
        self.app.state.reset()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _drop_connections(server: uvicorn.Server) -> None:
    for connection in list(server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if isinstance(transport, asyncio.Transport):
            transport.abort()


@contextmanager
def run_in_thread(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0, *, http: HttpImpl = "h11"
) -> Iterator[SimServer]:
    """A started :class:`SimServer` for the duration of the ``with`` block (``port=0``: ephemeral)."""
    server = SimServer(config, host, port, http=http)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def serve(
    host: str = "127.0.0.1", port: int = 8900, config: SimConfig | None = None, *, log_level: str = "info"
) -> None:
    """Serve the simulator in the foreground until interrupted (``glm-monitor sim``); ``config`` None means
    :func:`~monitor.sim.profiles.demo_config`."""
    app = SimApp(config if config is not None else demo_config())
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        # The fastest parsers installed: the simulator's own overhead is part of every timing measured against it.
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(uvicorn_config).run()
