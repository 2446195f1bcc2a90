"""`glm-monitor proxy` as a user runs it, in its own process, for the tests that drive it from outside."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    """``glm-monitor --config CONFIG proxy --host HOST --port PORT``; its output goes to ``CONFIG.log``.

    ``start()`` returns once the port answers (and may be called again after a stop or a kill); ``signal()``
    sends a signal and returns the exit code; ``stop()`` is SIGTERM if it still runs."""

    def __init__(
        self,
        config: Path,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config, self.port, self.host = config, port or free_port(), host
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[str] | None = None
        self.log = config.with_suffix(".log")
        self.returncodes: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ProxyProcess:
        command = [sys.executable, "-m", "monitor.cli", "--config", str(self.config), "proxy"]
        command += ["--host", self.host, "--port", str(self.port)]
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                time.sleep(0.1)
        raise AssertionError("the proxy did not start")

    def signal(self, sig: int, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.returncodes.append(code)
        return code

    def stop(self) -> str:
        """SIGTERM (if it still runs), which must end it with exit code 0; returns the log so far."""
        if self.proc is not None and self.proc.poll() is None:
            assert self.signal(signal.SIGTERM) == 0, self.log.read_text()
        return self.log.read_text()
