"""Linear probes: the batched engine, P-/Q-probe task builders and probe specifications."""

from probekit.probes.engine import EngineConfig, ProbeFit, Split, TensorFeatures, run_probes

__all__ = ["EngineConfig", "ProbeFit", "Split", "TensorFeatures", "run_probes"]
