"""Training objectives: each turns token sequences into a ``ModelBatch`` (inputs, positions, mask spec, labels).

``get_objective("ntp" | "abi" | "bico", tokenizer=None, **settings)`` picks one by name; ``compute_loss(model,
batch)`` is the shared loss (mean cross-entropy over labels != -100).

* ``ntp``: next-token prediction, causal attention. No settings.
* ``abi``: GLM autoregressive blank infilling. Settings: ``mask_ratio`` (0.15), ``span_lambda`` (3.0).
* ``bico``: BICO. Settings: ``bico_prob`` (0.5), ``mask_ratio`` (0.15).

Every objective also has ``max_input_len(seq_len)``: the longest input its ``build`` makes from sequences of
``seq_len`` tokens (ABI inserts two tokens per span), so a trainer can keep inputs within the model's ``n_ctx``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from probekit.config import from_dict
from probekit.errors import UserError
from probekit.objectives.abi import ABIObjective, abi_generation_inputs, reconstruct
from probekit.objectives.bico import BICOObjective
from probekit.objectives.ntp import SPECIAL_IDS, NTPObjective, Objective, compute_loss

OBJECTIVES: tuple[str, ...] = ("ntp", "abi", "bico")
_CLASSES: dict[str, type] = {"ntp": NTPObjective, "abi": ABIObjective, "bico": BICOObjective}
_SPECIAL_NAMES = ("<pad>", "<|endoftext|>", "<unk>", "[MASK]", "[START]", "[END]")


def get_objective(name: str, tokenizer: Any = None, **settings: Any) -> Objective:
    """The objective ``name`` with ``settings``; unknown names or settings raise ``ValueError``.

    ``tokenizer`` (optional): a tokenizer or a ``{token: id}`` mapping whose special tokens are checked against
    the fixed ids the objectives use (PAD 0, EOS 1, UNK 2, MASK 3, START 4, END 5).
    """
    if name not in _CLASSES:
        raise UserError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")
    if tokenizer is not None:
        check_special_ids(tokenizer)
    valid = sorted(f.name for f in fields(_CLASSES[name]) if f.name != "name")
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise UserError(f"objective {name!r}: unknown setting(s) {unknown}; valid settings are {valid}")
    return from_dict(_CLASSES[name], dict(settings))


def check_special_ids(tokenizer: Any) -> None:
    """Raise ``ValueError`` if the tokenizer's special tokens are not at probekit's fixed ids."""
    for expected, tok in zip(SPECIAL_IDS, _SPECIAL_NAMES):
        got = tokenizer.get(tok) if isinstance(tokenizer, Mapping) else tokenizer.convert_tokens_to_ids(tok)
        if got != expected:
            raise UserError(
                f"tokenizer has {tok!r} at id {got}, but the objectives need it at {expected}; "
                "build the tokenizer with probekit.data.tokenizer.build_tokenizer"
            )


__all__ = [
    "OBJECTIVES",
    "ABIObjective",
    "BICOObjective",
    "NTPObjective",
    "Objective",
    "abi_generation_inputs",
    "check_special_ids",
    "compute_loss",
    "get_objective",
    "reconstruct",
]
