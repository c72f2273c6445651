"""Scoring rules shared by every evaluation: exact match, first-token accuracy, completion log-probabilities and a
paired significance test.

Exact match comes in two forms:

- on token ids (QA, inverse search; CONTRACTS): the generated ids up to the first stop token (``<|endoftext|>``,
  or ``[END]`` for an ABI span) must equal the answer's ids exactly;
- on text (reversal tasks; Berglund et al.): the greedy completion must *start with* the target, compared
  case-insensitively after collapsing whitespace, so "  Greta   blackwood is..." matches " Greta Blackwood".

``completion_logprobs`` is the summed log-probability of a completion given a prompt under a model's own
inference mode (``Objective.score_completion``): an NTP or BICO model is scored causally on ``[EOS] + prompt +
completion``; an ABI model scores the completion as a Part B span after ``[EOS] + prompt + [MASK]``, the way
``probekit.objectives.generate.abi_generate`` asks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probekit.data.tokenizer import END_ID, EOS_ID
from probekit.errors import UserError
from probekit.objectives import as_objective
from probekit.objectives.base import Objective, causal_inputs

__all__ = [
    "STOP_IDS",
    "PairedTest",
    "causal_inputs",
    "completion_logprobs",
    "first_token_match",
    "ids_exact_match",
    "normalize_text",
    "paired_test",
    "text_exact_match",
    "truncate_at_stop",
]

STOP_IDS: frozenset[int] = frozenset({EOS_ID, END_ID})


# ---------------------------------------------------------------------------------------------------------------
# Exact match


def truncate_at_stop(ids: Sequence[int], stop_ids: frozenset[int] = STOP_IDS) -> list[int]:
    """``ids`` up to (not including) the first stop token."""
    out: list[int] = []
    for t in ids:
        if int(t) in stop_ids:
            break
        out.append(int(t))
    return out


def ids_exact_match(generated: Sequence[int], target: Sequence[int], stop_ids: frozenset[int] = STOP_IDS) -> bool:
    """Whole-answer exact match on token ids: generated ids up to the first stop token == ``target``."""
    if len(target) == 0:
        raise UserError("empty target: an answer must have at least one token")
    return truncate_at_stop(generated, stop_ids) == [int(t) for t in target]


def first_token_match(generated: Sequence[int], target: Sequence[int]) -> bool:
    """The first generated token equals the answer's first token."""
    if len(target) == 0:
        raise UserError("empty target: an answer must have at least one token")
    return len(generated) > 0 and int(generated[0]) == int(target[0])


def normalize_text(s: str) -> str:
    """Lower-case and collapse every run of whitespace to one space (stripped at both ends)."""
    return " ".join(s.split()).lower()


def text_exact_match(generated: str, target: str) -> bool:
    """Reversal-curse rule: the completion starts with the target (case-insensitive, whitespace-normalised)."""
    t = normalize_text(target)
    if not t:
        raise UserError("empty target: a completion to match must contain non-whitespace text")
    return normalize_text(generated).startswith(t)


# ---------------------------------------------------------------------------------------------------------------
# Log-probabilities


@torch.no_grad()
def completion_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    objective: Objective | str = "ntp",
    batch_size: int = 64,
    abi_suffix: Sequence[int] = (),
) -> list[float]:
    """Summed log-probability of each completion (token ids) given its prompt (token ids, no specials).

    ``objective`` (or its name): the model's training objective, whose ``score_completion`` scores the way it
    generates: ABI scores a Part B span after Part A = ``[EOS] + prompt + [MASK] + abi_suffix`` (the layout of
    ``abi_generate``), NTP and BICO causally. Raises ``ValueError`` for an empty completion or a sequence longer
    than the model's context.
    """
    obj = as_objective(objective)
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    extra = 1 + obj.inference_extra_tokens(len(abi_suffix))  # [EOS] + the objective's layout
    for k, (p, c) in enumerate(zip(prompts, completions)):
        if len(c) == 0:
            raise UserError(f"item {k}: empty completion; every item needs at least one target token")
        need = len(p) + len(c) + extra
        if n_ctx is not None and need > n_ctx:
            raise UserError(f"item {k}: prompt + completion is {need} tokens, over the model's context n_ctx={n_ctx}")
    was_training = model.training
    model.eval()
    try:
        return obj.score_completion(model, prompts, completions, batch_size=batch_size, suffix=abi_suffix)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------------------------
# Paired significance test


@dataclass(frozen=True)
class PairedTest:
    method: str  # "wilcoxon" | "ttest" | "permutation"
    statistic: float
    p_value: float
    n: int
    mean_diff: float  # mean of a - b


def _permutation_p(d: np.ndarray, alternative: str, n_permutations: int, seed: int) -> tuple[float, float]:
    """Sign-flip permutation test on paired differences ``d``; statistic = mean. Exact for n <= 16."""
    obs = float(d.mean())
    n = len(d)
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # [2^n, n]
        count_extra = 0
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(n_permutations, n))
        count_extra = 1  # include the observed labelling (valid Monte Carlo p-value)
    null = (signs * d).mean(1)
    eps = 1e-12 * max(1.0, abs(obs))
    if alternative == "greater":
        hits = int((null >= obs - eps).sum())
    elif alternative == "less":
        hits = int((null <= obs + eps).sum())
    else:
        hits = int((np.abs(null) >= abs(obs) - eps).sum())
    return obs, (hits + count_extra) / (len(null) + count_extra)


def paired_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    method: str = "wilcoxon",
    alternative: str = "two-sided",
    n_permutations: int = 10000,
    seed: int = 0,
) -> PairedTest:
    """Is ``a`` (e.g. log p(correct)) different from the paired ``b`` (log p(random other))?

    ``method``: ``"wilcoxon"`` (signed-rank) or ``"ttest"`` (paired t) via scipy, falling back to a seeded
    sign-flip ``"permutation"`` test (implemented here) when scipy is unavailable; ``"permutation"`` forces it.
    ``alternative``: ``"two-sided"``, ``"greater"`` (a > b) or ``"less"``. All-zero differences give p = 1;
    fewer than two pairs give p = nan.
    """
    if method not in ("wilcoxon", "ttest", "permutation"):
        raise UserError(f"unknown test {method!r}; choose wilcoxon, ttest or permutation")
    if alternative not in ("two-sided", "greater", "less"):
        raise UserError(f"unknown alternative {alternative!r}; choose two-sided, greater or less")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise UserError(f"paired samples differ in length: {len(x)} vs {len(y)}")
    d = x - y
    n = len(d)
    if n < 2:
        return PairedTest(method, math.nan, math.nan, n, float(d.mean()) if n else math.nan)
    if np.all(d == 0):
        return PairedTest(method, 0.0, 1.0, n, 0.0)
    if method != "permutation":
        try:
            from scipy import stats
        except ImportError:
            method = "permutation"
    if method == "wilcoxon":
        res = stats.wilcoxon(x, y, alternative=alternative)
        return PairedTest(method, float(res.statistic), float(res.pvalue), n, float(d.mean()))
    if method == "ttest":
        if np.all(d == d[0]):  # zero variance, non-zero mean: the difference is certain
            p = 0.0 if alternative == "two-sided" or (alternative == "greater") == (d[0] > 0) else 1.0
            return PairedTest(method, math.copysign(math.inf, d[0]), p, n, float(d.mean()))
        res = stats.ttest_rel(x, y, alternative=alternative)
        return PairedTest(method, float(res.statistic), float(res.pvalue), n, float(d.mean()))
    stat, p = _permutation_p(d, alternative, n_permutations, seed)
    return PairedTest("permutation", stat, p, n, stat)
