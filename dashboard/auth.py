"""The password gate: nothing is shown until the reader gives the configured password.

A password is configured by ``dashboard.password_env`` (the environment variable holding it) or ``password`` in
Streamlit's ``secrets.toml``. With one, every session must enter it; without one, the app serves only a loopback
address and refuses to show anything when it listens anywhere else (``streamlit run`` started by hand with
another ``--server.address``). Passwords are compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hmac
import os

import streamlit as st
from monitor.dashboard.i18n import t

from monitor.config import Settings
from monitor.dashboard_cmd import SECRETS_PASSWORD_KEY, is_loopback

_OK = "_auth_ok"


def password(settings: Settings) -> str | None:
    """The configured password: the environment variable first, then Streamlit secrets; None without one."""
    var = settings.dashboard.password_env
    if var and os.environ.get(var):
        return os.environ[var]
    try:
        value = st.secrets.get(SECRETS_PASSWORD_KEY)
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return None  # no secrets.toml at all
    return value if isinstance(value, str) and value else None


def listening_address() -> str:
    """The address the server listens on ("" when unset, which Streamlit takes as every interface)."""
    value = st.get_option("server.address")
    return str(value) if value else ""


def matches(given: str, expected: str) -> bool:
    """Constant-time comparison of two passwords."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def gate(settings: Settings) -> None:
    """Stop the run (``st.stop``) until this session has given the right password, or when none exists but the
    server listens beyond loopback."""
    expected = password(settings)
    if expected is None:
        address = listening_address()
        if address and is_loopback(address):
            return
        st.title(t("auth.title"))
        st.error(t("auth.refused", address=address or "0.0.0.0"))
        st.stop()
        return
    if st.session_state.get(_OK):
        return
    st.title(t("auth.title"))
    with st.form("login"):
        given = st.text_input(t("auth.password"), type="password", key="auth_password")
        submitted = st.form_submit_button(t("auth.submit"))
    if submitted:
        if matches(given or "", expected):
            st.session_state[_OK] = True
            st.rerun()
        st.error(t("auth.wrong"))
    st.stop()
