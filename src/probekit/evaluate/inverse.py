"""Inverse search on biographies (Allen-Zhu & Li, Physics of LMs Part 3.2): given attributes, name the person.

A prompt lists a subset of a person's attributes and asks for the name (``probekit.data.qa.inverse_prompt``,
ending in ``Answer:``); the answer is the full name, scored by exact match on its token ids (and first-token
accuracy: the first name). Training for inverse search is the extraction pipeline with these items: finetune on
P_train inverse prompts, test on P_test (``run_inverse``); ``method="none"`` evaluates a model as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probekit.data.pools import ATTRIBUTES
from probekit.data.qa import inverse_prompt
from probekit.errors import UserError
from probekit.evaluate.qa import ExtractionResult, check_pids, run_extraction
from probekit.training.config import FinetuneConfig
from probekit.training.finetune import EvalItem


def inverse_task_name(attrs: Sequence[str]) -> str:
    """The task label of an attribute subset: ``all`` for the six, else ``birth_city+company``."""
    return "all" if tuple(attrs) == ATTRIBUTES else "+".join(attrs)


def inverse_items(dataset: Any, pids: Sequence[int], attrs: Sequence[str] = ATTRIBUTES) -> list[EvalItem]:
    """One attributes -> name item per person in ``pids`` (unknown pids or attributes raise ``ValueError``)."""
    bad = [a for a in attrs if a not in ATTRIBUTES]
    if bad or not attrs or len(set(attrs)) != len(attrs):
        raise UserError(f"inverse attributes {list(attrs)}: choose distinct attributes from {', '.join(ATTRIBUTES)}")
    check_pids(dataset, pids)
    task = inverse_task_name(attrs)
    people = [dataset.person(pid) for pid in pids]
    return [EvalItem(p.pid, task, inverse_prompt(p, attrs), p.full_name) for p in people]


def run_inverse(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    finetune_cfg: FinetuneConfig | None = None,
    attrs: Sequence[str] = ATTRIBUTES,
    **kwargs: Any,
) -> ExtractionResult:
    """Inverse search: finetune on P_train inverse prompts over ``attrs`` (per ``finetune_cfg``), test on P_test.

    Keyword arguments are those of ``probekit.evaluate.qa.run_extraction`` (model_name, eval_train, batch_size,
    device, progress, overwrite, png).
    """
    attrs = tuple(attrs)
    return run_extraction(
        checkpoint, data, out, lambda ds, pids: inverse_items(ds, pids, attrs), finetune_cfg or FinetuneConfig(),
        kind="inverse", **kwargs,
    )  # fmt: skip


def name_preference(
    model: Any, objective: Any, tokenizer: Any, items: Sequence[EvalItem], seed: int = 0, batch_size: int = 64
) -> list[dict[str, Any]]:
    """Does the model prefer the right name to another test person's? Each item's log-probability of its own
    answer (the full name) against that of a name drawn from the other items (seeded), scored the way the
    objective generates (``probekit.evaluate.scoring.completion_logprobs``; ABI as a Part B span). A reversal that
    exact generation misses can still show here as a preference above 50%."""
    import numpy as np

    from probekit.evaluate.qa import QA_ABI_SUFFIX
    from probekit.evaluate.scoring import completion_logprobs
    from probekit.training.finetune import encode_items

    if len(items) < 2:
        raise UserError("a name preference needs at least two items (one's name is the other's foil)")
    prompts, answers = encode_items(tokenizer, items)
    rng = np.random.default_rng(seed)
    shift = rng.integers(1, len(items), size=len(items))  # never the item itself
    foils = [answers[(k + int(s)) % len(items)] for k, s in enumerate(shift)]
    right = completion_logprobs(model, prompts, answers, objective, batch_size, abi_suffix=QA_ABI_SUFFIX)
    other = completion_logprobs(model, prompts, foils, objective, batch_size, abi_suffix=QA_ABI_SUFFIX)
    return [{"pid": it.pid, "logprob_right": r, "logprob_other": o, "preferred": r > o}
            for it, r, o in zip(items, right, other)]  # fmt: skip
