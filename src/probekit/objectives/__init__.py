"""Training objectives: each is an ``Objective`` (``probekit.objectives.base``) that builds training and answer
batches, generates, scores completions and says how much context it needs.

``get_objective("ntp" | "abi" | "bico", tokenizer=None, **settings)`` picks one by name from ``REGISTRY``;
``compute_loss(model, batch)`` is the shared loss (mean cross-entropy over labels != -100, ``probekit.model.batch``).

* ``ntp``: next-token prediction, causal attention. No settings.
* ``abi``: GLM autoregressive blank infilling. Settings: ``mask_ratio`` (0.15), ``span_lambda`` (3.0).
* ``bico``: BICO. Settings: ``bico_prob`` (0.5), ``mask_ratio`` (0.15).

Every objective also has ``max_input_len(seq_len)``: the longest input its ``build`` makes from sequences of
``seq_len`` tokens (ABI inserts two tokens per span), so a trainer can keep inputs within the model's ``n_ctx``.

Adding an objective: subclass ``Objective`` in a new module (a dataclass whose fields are its settings, with a
``name`` class variable) and add the class to ``REGISTRY`` below; see the README's contributor notes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from probekit.errors import UserError
from probekit.model.batch import check_special_ids
from probekit.objectives.abi import ABIObjective
from probekit.objectives.base import Objective
from probekit.objectives.bico import BICOObjective
from probekit.objectives.ntp import NTPObjective
from probekit.serde import from_dict

# The registry: name -> class, the names coming from each class's ``name``. Add a new objective here.
REGISTRY: dict[str, type[Objective]] = {cls.name: cls for cls in (NTPObjective, ABIObjective, BICOObjective)}
OBJECTIVES: tuple[str, ...] = tuple(REGISTRY)  # the built-in names, in registry order


def objective_names() -> tuple[str, ...]:
    """Every registered name, including objectives registered after import (e.g. by a test)."""
    return tuple(REGISTRY)


def get_objective(name: str, tokenizer: Any = None, **settings: Any) -> Objective:
    """The objective ``name`` with ``settings``; unknown names or settings raise ``ValueError``.

    ``tokenizer`` (optional): a tokenizer or a ``{token: id}`` mapping whose special tokens are checked against
    the fixed ids the objectives use (PAD 0, EOS 1, UNK 2, MASK 3, START 4, END 5).
    """
    if name not in REGISTRY:
        raise UserError(f"unknown objective {name!r}; choose one of {objective_names()}")
    if tokenizer is not None:
        check_special_ids(tokenizer)
    cls = REGISTRY[name]
    valid: list[str] = sorted(f.name for f in fields(cls)) if is_dataclass(cls) else []
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise UserError(f"objective {name!r}: unknown setting(s) {unknown}; valid settings are {valid}")
    return from_dict(cls, dict(settings)) if is_dataclass(cls) else cls()


def as_objective(objective: Objective | str) -> Objective:
    """``objective`` itself, or the registered objective of that name with default settings."""
    return get_objective(objective) if isinstance(objective, str) else objective


def generate(
    model: torch.nn.Module,
    objective: Objective | str,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 64,
    suffix: Sequence[int] = (),
) -> list[list[int]]:
    """Greedy answers to ``prompts`` (each ``[EOS] + ids``) the way ``objective`` (or its name) answers; ``suffix``:
    the tokens that followed the answer in training (an infilling objective keeps them after the blank)."""
    return as_objective(objective).generate(model, prompts, max_new_tokens, batch_size=batch_size, suffix=suffix)
