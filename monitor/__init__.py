"""GLM Monitor: watch the APIs serving Zhipu's GLM models (latency, throttling, usage, cost, quota)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
