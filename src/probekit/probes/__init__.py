"""Linear probes: the batched engine, P-/Q-probe task builders and probe specifications.

The names below are loaded on first use, so that ``probekit.probes.config`` and ``probekit.probes.spec`` (read by
``probekit probe --help``) do not import torch through this package."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probekit.probes.config import EngineConfig
    from probekit.probes.engine import ProbeFit, Split, TensorFeatures, run_probes

__all__ = ["EngineConfig", "ProbeFit", "Split", "TensorFeatures", "run_probes"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from probekit.probes import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
