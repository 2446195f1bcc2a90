"""Whether a server listens beyond this machine, and the secret it then requires.

Everything binds 127.0.0.1 unless configured; anything that listens elsewhere needs a password or token from an
environment variable (the dashboard, the proxy, the metrics endpoints)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from monitor.errors import ConfigError


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, ``localhost``)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def required_token(
    what: str, host: str, env_name: str | None, *, how: str, environ: Mapping[str, str] | None = None
) -> str | None:
    """The token ``$env_name`` holds (None when unset or empty); ConfigError when ``host`` is not a loopback
    address and there is none. ``what`` names the server, ``how`` says how clients send the token."""
    env = os.environ if environ is None else environ
    token = env.get(env_name, "") if env_name else ""
    if token:
        return token
    if is_loopback(host):
        return None
    var = env_name or "an environment variable"
    raise ConfigError(
        f"{what} would listen on {host}, beyond this machine, without a token: anyone who can reach it could use "
        f"it. Set {var} to a long random secret ({how}), or listen on 127.0.0.1."
    )
