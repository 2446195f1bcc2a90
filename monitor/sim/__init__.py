"""Simulated GLM provider: one ASGI app speaking Zhipu's openai dialect, DashScope compatible mode, the
anthropic dialect and DashScope's native protocol, with timing, failures, limits and a clock that tests
control. Used by the demo, the test suite and the benchmarks.

Typical use::

    from monitor.sim import SimConfig, ModelProfile, run_in_thread

    config = SimConfig(models={"glm-4.7": ModelProfile(ttft_s=0.05, output_tokens=20)})
    with run_in_thread(config) as sim:
        client = openai.OpenAI(base_url=sim.base_url + "/api/paas/v4", api_key="test")

Routes, ``X-Sim-*`` headers and admin endpoints: ``monitor.sim.app``; failure kinds: ``monitor.sim.profiles``.
"""

from __future__ import annotations

from monitor.sim.app import SimApp
from monitor.sim.profiles import (
    FAILURE_KINDS,
    CodingPlan,
    ModelProfile,
    SimConfig,
    default_profiles,
    demo_config,
    estimate_prompt_tokens,
)
from monitor.sim.server import SimServer, run_in_thread, serve
from monitor.sim.state import CST, SimClock

__all__ = [
    "CST",
    "FAILURE_KINDS",
    "CodingPlan",
    "ModelProfile",
    "SimApp",
    "SimClock",
    "SimConfig",
    "SimServer",
    "default_profiles",
    "demo_config",
    "estimate_prompt_tokens",
    "run_in_thread",
    "serve",
]
