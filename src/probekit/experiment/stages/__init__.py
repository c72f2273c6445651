"""The experiment's stages, in the order ``probekit run`` walks them (the registry).

A new stage: one module here with a ``Stage`` subclass (``probekit.experiment.stage``), added to ``STAGES`` below
at the place its inputs are ready; or, from outside the package, ``register_stage(MyStage(), after="patch")``.
"""

from __future__ import annotations

from probekit.errors import UserError
from probekit.experiment.stage import Stage
from probekit.experiment.stages.data import DataStage
from probekit.experiment.stages.evaluate import InverseStage, QAStage
from probekit.experiment.stages.patch import PatchStage
from probekit.experiment.stages.probe import ProbeStage
from probekit.experiment.stages.recall import RecallStage
from probekit.experiment.stages.reversal import ReversalStage
from probekit.experiment.stages.train import TrainStage

STAGES: list[Stage] = [DataStage(), TrainStage(), RecallStage(), ProbeStage(), QAStage(), InverseStage(),
                       ReversalStage(), PatchStage()]  # fmt: skip
BUILTIN: frozenset[str] = frozenset(s.name for s in STAGES)


def register_stage(stage: Stage, after: str | None = None) -> None:
    """Add ``stage`` to the registry, after the stage named ``after`` (default: last); a name already registered
    is replaced in place."""
    names = [s.name for s in STAGES]
    if stage.name in names:
        STAGES[names.index(stage.name)] = stage
        return
    if after is not None and after not in names:
        raise UserError(f"register_stage: no stage {after!r} to follow; stages: {', '.join(names)}")
    STAGES.insert(names.index(after) + 1 if after is not None else len(STAGES), stage)


def unregister_stage(name: str) -> None:
    """Remove a stage added with ``register_stage`` (the built-in ones stay)."""
    if name in BUILTIN:
        raise UserError(f"stage {name!r} is built in and cannot be removed")
    STAGES[:] = [s for s in STAGES if s.name != name]
