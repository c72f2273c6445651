"""Activation patching (causal tracing): which (layer, position) states carry the information an answer uses.

Every experiment compares two runs of one prompt template that differ only in the person named in it:

- the **clean** run, whose answer is measured, and
- the **corrupted** run, into which the clean run's state at one hook point (layer) and one position is copied,
  one (layer, position) at a time.

Modes (``PatchConfig.modes``):

- ``patch`` (name swap; Heimersheim & Nanda 2024): clean = the *source* person A's prompt, corrupted = the *target*
  person B's prompt of the same template. The metrics are about A's answer: its probability in B's run with
  A's state patched in, and whether the greedy answer *flips* to A's. ``p_other`` is B's own answer's
  probability.
- ``restore`` (Meng et al. 2022): clean = person B's prompt; corrupted = the same prompt with Gaussian noise
  (``noise_scale`` x the standard deviation of the clean name-token embeddings, seeded) added to the input
  embeddings of B's name tokens (``corruption="noise"``), or with another person's name (``corruption="swap"``:
  numerically the same computation as ``patch`` with the roles named the other way round). Restoring one clean
  state shows how much of B's answer it brings back.

Metrics per pair and patched state (the clean run's answer ``a``; the answer is read at the last prompt token):

- ``p_answer``: probability of ``a``'s first token; ``greedy_first``: the greedy next token is ``a``'s first
  token (the flip rate in ``patch`` mode, the recovery rate in ``restore`` mode);
- with ``whole_answer``: ``logp_answer``, the summed log-probability of all of ``a`` under teacher forcing
  (``prompt + a`` is run, patched at prompt positions only), and ``greedy_answer``: greedy decoding would write
  exactly ``a`` and then stop (every teacher-forced argmax equals the next answer token, then the stop token);
- in ``patch`` mode ``p_other``: probability of the corrupted (target) person's own answer's first token.

Positions are every prompt position (the sequence start token included), aligned between the two runs by *role*,
not by raw index, so prompts of different lengths pair up: the start token; each template token before the name
(counted from the start) and after it (counted from the end; the prompt's last token, the one before the answer,
is ``last``); each name part's last token (``name_first``, ``name_middle``, ``name_last``); and a name part's
earlier subwords (``name_first_sub``..., counted back from the part's last token). Name parts are the model's
subwords grouped by the characters of each part of the name. A clean state is patched into the corrupted run at
the position with the same role; a role the corrupted prompt lacks (a name part of fewer subwords) is left out
for that pair, and ``n_pairs`` says how many pairs each map cell covers. With probekit's word-level tokenizer a
name is three tokens and roles coincide with positions.

Prompts (``PatchConfig.prompts``): ``qa``, the dataset's QA questions (``What is the birth city of X? Answer:``;
one template per attribute, so a position index means the same token for every pair), or ``bio``, biography
prefixes: the first sentence of a source person's entry up to its attribute value (``X was born on``), with the
target's name put in place of the source's (only entries whose first sentence names the person before the value
qualify; in un-permuted data that sentence is always the birth date). Bio templates differ in length, so bio maps
are drawn over position *labels* (``bos``, ``name_first``, ``name_middle``, ``name_last``, ``template``: the mean
over the template tokens, ``last``, and under a subword tokenizer ``name_subword``: the mean over the name
parts' earlier subwords). Every map also has a ``name_all`` row: all name tokens patched at once
(``TracePair.groups``; pairs whose names have as many tokens per part), which shows whether the name's states at
a layer carry everything the answer needs.

Models are read causally (``attn_mode="causal"``; right for NTP and BICO, whose inference is causal): an ABI model
answers with a Part B span after a bidirectional Part A, so its maps describe its causal reading only (``probekit
probe``'s ``abi`` reading has no patching counterpart yet).

``run_patching(model, dataset, cfg)`` returns the tidy table (``COLUMNS``): one row per (attribute, mode, hook,
layer, position, metric) with the mean over pairs, a person-clustered bootstrap interval (clusters: the clean
run's person), ``n_pairs`` and the clean-run and unpatched corrupted-run means of the same metric over the same
pairs. ``patch_figures(table)`` draws a position x layer heatmap per (prompts, mode, hook, attribute).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from probekit.data.qa import ANSWER_MARK, QUESTIONS
from probekit.data.tokenizer import EOS_ID, PAD_ID
from probekit.data.tokens import TokenView, tokenizer_record
from probekit.errors import UserError
from probekit.patching.config import PatchConfig
from probekit.probes.activations import HookPoint, hook_points, model_dims
from probekit.stats import person_bootstrap

if TYPE_CHECKING:
    from probekit.reporting.report import SummaryPart

log = logging.getLogger(__name__)

BIO_SLOTS: tuple[str, ...] = ("bos", "name_first", "name_middle", "name_last", "template", "last")
SUBWORD_SLOT = "name_subword"  # a bio map slot only where a subword tokenizer splits name parts
NAME_PARTS: tuple[str, ...] = ("name_first", "name_middle", "name_last")
COLUMNS: tuple[str, ...] = (
    "model", "objective", "dataset", "prompts", "mode", "corruption", "attribute", "hook", "layer", "position",
    "position_label", "token", "metric", "value", "ci_low", "ci_high", "n_pairs", "clean", "corrupt",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The core: trace a batch of aligned pairs of token sequences


@dataclass
class TracePair:
    """Two runs of one template. ``clean`` and ``corrupt`` are token ids including the start token; ``answer`` is
    the clean run's answer (ids, no specials). ``align[q]`` is the corrupted-run position that clean position q is
    patched into (-1: none); empty means the identity (then both runs must have the same length)."""

    clean: list[int]
    corrupt: list[int]
    answer: list[int]
    other: list[int] | None = None  # the corrupted run's own answer (name swap): scored as p_other
    noise: tuple[int, ...] = ()  # positions whose input embeddings get Gaussian noise in the corrupted run
    cluster: int = 0  # bootstrap cluster: the clean run's person id
    labels: list[str] = field(default_factory=list)  # P position labels (bos, name_first, ...)
    tokens: list[str] = field(default_factory=list)  # P token strings shown on the map (names as labels)
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)  # patched together, e.g. {"name": (5, 6, 7)}
    align: list[int] = field(default_factory=list)  # clean position -> corrupted position (-1: none); [] identity
    roles: list[str] = field(default_factory=list)  # P role keys (``encode_prompt``): what each position is

    def target(self, q: int) -> int:
        """The corrupted-run position clean position ``q`` is patched into (-1: none)."""
        return self.align[q] if self.align else q


@dataclass
class TraceResult:
    """Per-pair metrics: ``patched[m]`` [N pairs, K points, T positions] (one position patched; NaN beyond a
    pair's prompt length), ``grouped[m]`` [N, K, G] (all positions of group g patched at once; NaN for a pair
    without it), ``clean[m]`` / ``corrupt[m]`` [N] in the clean run and the unpatched corrupted run."""

    points: list[HookPoint]
    patched: dict[str, np.ndarray]
    clean: dict[str, np.ndarray]
    corrupt: dict[str, np.ndarray]
    noise_std: float | None = None
    groups: list[str] = field(default_factory=list)
    grouped: dict[str, np.ndarray] = field(default_factory=dict)


def _is_hooked_lm(model: Any) -> bool:
    from probekit.model.transformer import HookedLM

    return isinstance(model, HookedLM)


def _logits(model: Any, ids: Tensor, key_mask: Tensor, hooks: list[tuple[str, Callable[..., Any]]]) -> Tensor:
    """Logits [B, T, V] of a ``HookedLM`` (causal reading, pads never keys) or a ``TransformerBridge``."""
    if _is_hooked_lm(model):
        return model.run_with_hooks(ids, fwd_hooks=hooks, attn_mode="causal", key_mask=key_mask)
    return model.run_with_hooks(ids, fwd_hooks=hooks)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def check_aligned(pairs: Sequence[TracePair]) -> None:
    """Refuse pairs whose clean and corrupted runs do not align token by token (same length)."""
    for i, p in enumerate(pairs):
        if not p.align and len(p.clean) != len(p.corrupt):
            raise UserError(
                f"pair {i}: the clean prompt has {len(p.clean)} tokens but the corrupted one {len(p.corrupt)}; "
                "give the pair an alignment (TracePair.align) or prompts of equal length"
            )
        if p.align and (len(p.align) != len(p.clean) or any(not -1 <= a < len(p.corrupt) for a in p.align)):
            raise ValueError(f"pair {i}: align must map each of {len(p.clean)} clean positions to -1 or a "
                             f"corrupted position (0..{len(p.corrupt) - 1})")  # fmt: skip
        if not p.answer:
            raise UserError(f"pair {i}: empty answer; every answer needs at least one token")
        if p.labels and len(p.labels) != len(p.clean):
            raise ValueError(f"pair {i}: {len(p.labels)} position labels for {len(p.clean)} positions")
        if any(not 0 <= q < len(p.corrupt) for q in p.noise):
            raise ValueError(f"pair {i}: noise positions {list(p.noise)} outside the corrupted prompt")
        for what, qs in ((f"group {g!r}", q) for g, q in p.groups.items()):
            if any(not 0 <= q < len(p.clean) for q in qs):
                raise ValueError(f"pair {i}: {what} positions {list(qs)} outside the prompt (0..{len(p.clean) - 1})")


class _Scorer:
    """Scores logits against each pair's answer; rows of a batch are (pair index, patch) combinations."""

    def __init__(self, pairs: Sequence[TracePair], whole: bool, stop_id: int | None, device: torch.device) -> None:
        n = len(pairs)
        A = max(len(p.answer) for p in pairs) + 1 if whole else 1  # answer targets (+ stop) per pair
        self.whole = whole
        self.prompt_len = {  # [N] per run: the answer is read after each run's own prompt
            "clean": torch.tensor([len(p.clean) for p in pairs], device=device),
            "corrupt": torch.tensor([len(p.corrupt) for p in pairs], device=device),
        }
        targets = torch.full((n, A), PAD_ID, dtype=torch.long)  # [N, A]
        mask = torch.zeros((n, A), dtype=torch.bool)  # [N, A] real targets
        is_answer = torch.zeros((n, A), dtype=torch.bool)  # [N, A] answer tokens (not the stop)
        for i, p in enumerate(pairs):
            seq = (list(p.answer) + ([stop_id] if stop_id is not None else [])) if whole else list(p.answer[:1])
            targets[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = True
            is_answer[i, : min(len(p.answer), len(seq))] = True
        self.targets, self.mask, self.is_answer = targets.to(device), mask.to(device), is_answer.to(device)
        self.other = torch.tensor([(p.other or [-1])[0] for p in pairs], device=device)  # [N], -1: none
        self.offsets = torch.arange(A, device=device)  # [A]

    def __call__(self, logits: Tensor, pair_idx: Tensor, run: str = "clean") -> dict[str, Tensor]:
        """Metrics [R] for logits [R, T, V] of rows belonging to pairs ``pair_idx`` [R] in ``run``."""
        R, T, _ = logits.shape
        pos = (self.prompt_len[run][pair_idx, None] - 1 + self.offsets[None]).clamp(max=T - 1)  # [R, A]
        picked = logits.gather(1, pos[..., None].expand(R, pos.shape[1], logits.shape[-1])).float()  # [R, A, V]
        logp = torch.log_softmax(picked, dim=-1)  # [R, A, V]
        tgt, mask, is_ans = self.targets[pair_idx], self.mask[pair_idx], self.is_answer[pair_idx]  # [R, A]
        tok_logp = logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]  # [R, A]
        hit = logp.argmax(-1) == tgt  # [R, A]
        out = {"p_answer": tok_logp[:, 0].exp(), "greedy_first": hit[:, 0].float()}
        if self.whole:
            out["logp_answer"] = (tok_logp * is_ans).sum(-1)
            out["greedy_answer"] = (hit | ~mask).all(-1).float()
        other = self.other[pair_idx]  # [R]
        if bool((other >= 0).any()):
            p_other = logp[:, 0].gather(-1, other.clamp(min=0)[:, None])[:, 0].exp()  # [R]
            out["p_other"] = torch.where(other >= 0, p_other, torch.full_like(p_other, float("nan")))
        return out


@torch.no_grad()
def trace_pairs(
    model: Any,
    pairs: Sequence[TracePair],
    points: Sequence[HookPoint],
    whole_answer: bool = False,
    noise_std: float | None = None,
    noise_scale: float = 3.0,
    stop_id: int | None = EOS_ID,
    seed: int = 0,
    batch_size: int = 256,
) -> TraceResult:
    """Patch every clean state at ``points`` x prompt positions into the corrupted run of each pair, and each
    pair's position ``groups`` (e.g. the whole name) at once.

    ``noise_std``: the std of the embedding noise for pairs with ``noise`` positions (None: ``noise_scale`` x the
    std of the clean run's embeddings at those positions). The noise of a pair is drawn once (seeded) and is the
    same in all of its patched runs. ``stop_id``: the token greedy decoding must end the answer with
    (``greedy_answer``; None: not checked). Works for a ``HookedLM`` and a ``TransformerBridge``.
    """
    if not pairs:
        raise UserError("no pairs to trace")
    if not points:
        raise UserError("no hook points to patch")
    check_aligned(pairs)
    device = _device(model)
    n_ctx = model_dims(model).n_ctx
    N = len(pairs)
    P = [len(p.clean) for p in pairs]
    extra = [len(p.answer) if whole_answer else 0 for p in pairs]
    T = max(max(len(p.clean), len(p.corrupt)) + e for p, e in zip(pairs, extra))  # one padded width for all runs
    if n_ctx < T:
        raise UserError(f"prompt plus answer needs {T} tokens, over the model's context n_ctx={n_ctx}")

    def rows(which: str) -> tuple[Tensor, Tensor]:  # token ids [N, T] and key mask [N, T]
        ids = torch.full((N, T), PAD_ID, dtype=torch.long)
        for i, p in enumerate(pairs):
            seq = list(getattr(p, which)) + (list(p.answer) if whole_answer else [])
            ids[i, : len(seq)] = torch.tensor(seq)
        lengths = torch.tensor([len(getattr(p, which)) + e for p, e in zip(pairs, extra)])  # [N]
        key_mask = torch.arange(T)[None] < lengths[:, None]  # [N, T] True on real tokens
        return ids.to(device), key_mask.to(device)

    clean_ids, mask = rows("clean")  # [N, T]
    corrupt_ids, corrupt_mask = rows("corrupt")  # [N, T]
    scorer = _Scorer(pairs, whole_answer, stop_id, device)
    Pmax = max(P)  # clean prompt positions (map columns)
    Qmax = max(len(p.corrupt) for p in pairs)  # corrupted prompt positions (patched)

    # 1. The clean run: every point's states at the prompt positions, the embeddings, and the clean metrics.
    names = list(dict.fromkeys([pt.name for pt in points] + ["hook_embed"]))
    cache: dict[str, Tensor] = {}  # name -> [N, Pmax, d]
    clean_metrics: dict[str, list[Tensor]] = {}
    for lo in range(0, N, batch_size):
        idx = torch.arange(lo, min(lo + batch_size, N), device=device)
        parts: dict[str, Tensor] = {}

        def keeper(name: str, parts: dict[str, Tensor] = parts) -> Callable[..., None]:
            def keep(x: Tensor, hook: Any) -> None:  # stored by our name: a bridge reports its alias targets
                parts[name] = x[:, :Pmax].detach().clone()  # [B, Pmax, d]

            return keep

        logits = _logits(model, clean_ids[idx], mask[idx], [(n, keeper(n)) for n in names])
        for n in names:
            cache.setdefault(n, torch.empty((N, Pmax, parts[n].shape[-1]), dtype=parts[n].dtype, device=device))
            cache[n][idx] = parts[n]
        for k, v in scorer(logits, idx, "clean").items():
            clean_metrics.setdefault(k, []).append(v)

    # 2. The corruption: Gaussian noise on the name embeddings of pairs that ask for it (one draw per pair).
    noisy = [i for i, p in enumerate(pairs) if p.noise]
    add: Tensor | None = None  # [N, T, d] added to the corrupted run's embeddings
    if noisy:
        emb = cache["hook_embed"]  # [N, Pmax, d]
        if noise_std is None:
            rows_emb = torch.cat([emb[i, list(pairs[i].noise)] for i in noisy])  # [M, d] (noise pairs: clean = corrupt)
            noise_std = noise_scale * float(rows_emb.float().std())
        gen = torch.Generator().manual_seed(seed)
        add = torch.zeros((N, T, emb.shape[-1]), dtype=emb.dtype)
        for i in noisy:
            q = list(pairs[i].noise)
            add[i, q] = (torch.randn((len(q), emb.shape[-1]), generator=gen) * noise_std).to(emb.dtype)
        add = add.to(device)

    def run(pair_idx: Tensor, patch_name: str | None, where: Tensor | None, src_pos: Tensor | None = None
            ) -> dict[str, Tensor]:  # fmt: skip
        """The corrupted runs of ``pair_idx`` [R], row r patched at its positions ``where[r]`` [R, Qmax] (bool) of
        hook ``patch_name`` with the clean run's states at the clean positions ``src_pos[r]`` [R, Qmax]."""
        hooks: list[tuple[str, Callable[..., Any]]] = []
        if add is not None:
            hooks.append(("hook_embed", lambda x, hook: x + add[pair_idx, : x.shape[1]]))
        if patch_name is not None and where is not None and src_pos is not None:
            src = cache[patch_name][pair_idx]  # [R, Pmax, d]
            moved = src.gather(1, src_pos[..., None].expand(-1, -1, src.shape[-1]))  # [R, Qmax, d]

            def patch(x: Tensor, hook: Any) -> Tensor:  # x [R, T, d], T >= Qmax
                x = x.clone()
                x[:, :Qmax] = torch.where(where[..., None], moved.to(x.dtype), x[:, :Qmax])
                return x

            hooks.append((patch_name, patch))
        return scorer(_logits(model, corrupt_ids[pair_idx], corrupt_mask[pair_idx], hooks), pair_idx, "corrupt")

    # 3. The unpatched corrupted run.
    corrupt_metrics: dict[str, list[Tensor]] = {}
    for lo in range(0, N, batch_size):
        idx = torch.arange(lo, min(lo + batch_size, N), device=device)
        for k, v in run(idx, None, None).items():
            corrupt_metrics.setdefault(k, []).append(v)

    # 4. One patched run per (pair, point, position or group), batched over (pair, position/group) per point: each
    # clean position goes to the corrupted position with its role; a group only where all its positions have one.
    groups = list(dict.fromkeys(g for p in pairs for g in p.groups))
    specs: list[tuple[int, int, tuple[tuple[int, int], ...]]] = [  # (pair, column, (corrupted, clean) moves)
        (i, q, ((pairs[i].target(q), q),)) for i in range(N) for q in range(P[i]) if pairs[i].target(q) >= 0
    ]
    for i in range(N):
        for j, g in enumerate(groups):
            moves = tuple((pairs[i].target(q), q) for q in pairs[i].groups.get(g, ()))
            if moves and all(t >= 0 for t, _ in moves):
                specs.append((i, Pmax + j, moves))
    all_pair = torch.tensor([i for i, _, _ in specs], device=device)  # [R_all]
    all_col = np.array([c for _, c, _ in specs])  # [R_all]: a clean position, or Pmax + group index
    all_where = torch.zeros((len(specs), Qmax), dtype=torch.bool)  # [R_all, Qmax] corrupted positions patched
    all_src = torch.zeros((len(specs), Qmax), dtype=torch.long)  # [R_all, Qmax] the clean position each takes
    for r, (_, _, moves) in enumerate(specs):
        for dst, src_q in moves:
            all_where[r, dst] = True
            all_src[r, dst] = src_q
    all_where, all_src = all_where.to(device), all_src.to(device)
    metric_names = list(clean_metrics)
    out = {k: np.full((N, len(points), Pmax + len(groups)), np.nan) for k in metric_names}  # [N, K, Pmax + G]
    for k_pt, pt in enumerate(points):
        for lo in range(0, len(specs), batch_size):
            pi, cols = all_pair[lo : lo + batch_size], all_col[lo : lo + batch_size]
            sl = slice(lo, lo + batch_size)
            for k, v in run(pi, pt.name, all_where[sl], all_src[sl]).items():
                out[k][pi.cpu().numpy(), k_pt, cols] = v.double().cpu().numpy()

    def cat(d: dict[str, list[Tensor]]) -> dict[str, np.ndarray]:
        return {k: torch.cat(v).double().cpu().numpy() for k, v in d.items()}

    patched = {k: v[:, :, :Pmax] for k, v in out.items()}
    grouped = {k: v[:, :, Pmax:] for k, v in out.items()}
    return TraceResult(list(points), patched, cat(clean_metrics), cat(corrupt_metrics), noise_std, groups, grouped)


# ---------------------------------------------------------------------------------------------------------------
# Aggregation: mean over pairs per (point, position slot) and a person-clustered bootstrap


def cluster_bootstrap(
    values: np.ndarray, clusters: Sequence[int], n_boot: int, seed: int, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals of column means of ``values`` [N, F] (NaN = missing), resampling clusters (people) with
    replacement, all rows of a drawn cluster together (``probekit.stats.person_bootstrap`` on the columns).
    Returns (low [F], high [F]); NaN when ``n_boot`` is 0."""
    iv = person_bootstrap(np.asarray(values, dtype=np.float64).T, np.asarray(clusters), n_boot, level, seed)
    return iv.low, iv.high


def role_order(role: str) -> tuple[int, int, int]:
    """Sort key of a role key (``encode_prompt``): start, template before the name, name (by part, subwords
    before the part's last token), template after the name (by distance from the end), last."""
    kind, _, rest = role.partition(":")
    if kind == "bos":
        return (0, int(rest or 0), 0)
    if kind == "pre":
        return (1, int(rest), 0)
    if kind == "name":
        part, back = rest.split(":")
        return (2, int(part), -int(back))
    if kind == "post":
        return (3, -int(rest), 0)
    if kind == "last":
        return (4, 0, 0)
    return (5, 0, 0)


def slot_layout(pairs: Sequence[TracePair], by: str) -> tuple[list[list[int]], list[tuple[str, str]]]:
    """Which map column ("slot") each clean prompt position of each pair falls in, and each slot's (label, token).

    ``by="position"``: a slot per role (``TracePair.roles``: the same token of one template for every pair, in
    prompt order; a slot per position index for pairs without roles); ``by="label"``: the ``BIO_SLOTS``."""
    if by == "position":
        if not all(p.roles for p in pairs):
            P = max(len(p.clean) for p in pairs)
            ref = max(pairs, key=lambda p: len(p.clean))
            info = [(ref.labels[q] if ref.labels else "", ref.tokens[q] if ref.tokens else str(q)) for q in range(P)]
            return [list(range(len(p.clean))) for p in pairs], info
        order = sorted({r for p in pairs for r in p.roles}, key=role_order)
        index = {r: i for i, r in enumerate(order)}
        first: dict[str, tuple[str, str]] = {}
        for p in pairs:
            for q, r in enumerate(p.roles):
                first.setdefault(r, (p.labels[q] if p.labels else "", p.tokens[q] if p.tokens else r))
        return [[index[r] for r in p.roles] for p in pairs], [first[r] for r in order]
    if by == "label":
        slot = {lab: lab for lab in BIO_SLOTS} | {f"{n}_sub": SUBWORD_SLOT for n in NAME_PARTS}
        bad = {lab for p in pairs for lab in p.labels if lab not in slot}
        if bad:
            raise UserError(f"position labels {sorted(bad)} have no bio map slot; slots are {list(BIO_SLOTS)}")
        used = {slot[lab] for p in pairs for lab in p.labels}
        names = [*BIO_SLOTS, *([SUBWORD_SLOT] if SUBWORD_SLOT in used else [])]
        index = {s: i for i, s in enumerate(names)}
        return [[index[slot[lab]] for lab in p.labels] for p in pairs], [(s, s) for s in names]
    raise UserError(f"slot layout {by!r}: use 'position' or 'label'")


def summarize(
    result: TraceResult,
    pairs: Sequence[TracePair],
    by: str = "position",
    n_boot: int = 1000,
    seed: int = 0,
    **columns: Any,
) -> pd.DataFrame:
    """Tidy rows (``COLUMNS``; ``columns`` fills model, attribute, mode...): per point, slot and metric the mean
    over pairs (a pair's positions in one slot are averaged first), a clustered bootstrap interval, n_pairs.
    Position groups (``TracePair.groups``) follow the position slots, labelled ``<group>_all``."""
    slots, info = slot_layout(pairs, by)
    info = info + [(f"{g}_all", f"[whole {g}]") for g in result.groups]
    S0, S, K, N = len(info) - len(result.groups), len(info), len(result.points), len(pairs)
    clusters = [p.cluster for p in pairs]
    rows = []
    for metric, arr in result.patched.items():  # arr [N, K, Pmax]
        per_pair = np.full((N, K, S), np.nan)  # [N, K, S]
        for i, sl in enumerate(slots):
            for s in set(sl):
                qs = [q for q, v in enumerate(sl) if v == s]
                per_pair[i, :, s] = arr[i, :, qs].mean(axis=0)
        if result.groups:
            per_pair[:, :, S0:] = result.grouped[metric]  # [N, K, G]
        flat = per_pair.reshape(N, K * S)
        n_have = (~np.isnan(flat)).sum(axis=0)  # [K*S]
        mean = np.where(n_have > 0, np.nansum(flat, axis=0) / np.maximum(n_have, 1), np.nan)  # [K*S]
        low, high = cluster_bootstrap(flat, clusters, n_boot, seed)
        clean, corrupt = result.clean[metric], result.corrupt[metric]
        for k, pt in enumerate(result.points):
            for s, (label, token) in enumerate(info):
                f = k * S + s
                if n_have[f] == 0:
                    continue
                have = ~np.isnan(per_pair[:, k, s])
                rows.append({
                    **columns, "hook": pt.hook, "layer": pt.layer, "position": s, "position_label": label,
                    "token": token, "metric": metric, "value": float(mean[f]), "ci_low": float(low[f]),
                    "ci_high": float(high[f]), "n_pairs": int(n_have[f]),
                    "clean": float(np.nanmean(clean[have])), "corrupt": float(np.nanmean(corrupt[have])),
                })  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS)) if not rows else pd.DataFrame(rows)[list(COLUMNS)]


# ---------------------------------------------------------------------------------------------------------------
# Prompts of a bioS dataset


@dataclass(frozen=True)
class Template:
    """A prompt around a name slot: ``before + name + after``; ``answer_from`` marks where the answer cue begins
    in ``after`` (``Answer:``; -1: none)."""

    before: str
    after: str
    answer_from: int = -1

    def fill(self, name: str) -> str:
        return f"{self.before}{name}{self.after}"


def qa_template(attr: str) -> Template:
    """The dataset's QA question for ``attr`` around the name (``What is the birth city of {name}? Answer:``)."""
    before, _, rest = QUESTIONS[attr].partition("{name}")
    after = f"{rest} {ANSWER_MARK}"
    return Template(before, after, after.rfind(ANSWER_MARK))


def bio_template(entry: Any, attr: str) -> Template | None:
    """The first sentence of ``entry`` up to its ``attr`` value, around the name; None unless that sentence is
    ``attr``'s and names the person before the value."""
    if not entry.order or entry.order[0] != attr:
        return None
    value = next((s for s in entry.spans if s.kind == attr), None)
    name = next((s for s in entry.spans if s.kind == "name"), None)
    if value is None or name is None or name.end > value.start:
        return None
    prefix = entry.text[: value.start].rstrip()
    return Template(prefix[: name.start], prefix[name.end :])


@dataclass
class Encoded:
    ids: list[int]  # start tokens + prompt
    labels: list[str]  # one per position
    tokens: list[str]  # map tick text per position
    name: tuple[int, int]  # token span of the name [start, end)
    roles: list[str] = field(default_factory=list)  # one role key per position (``encode_prompt``)
    text: str = ""  # the prompt text


def name_part_labels(n_parts: int) -> list[str]:
    """``name_first``, ``name_middle``..., ``name_last`` for a name of ``n_parts`` words."""
    if n_parts == 1:
        return ["name_last"]
    return ["name_first", *["name_middle"] * (n_parts - 2), "name_last"]


def encode_prompt(view: TokenView, tpl: Template, name: str, qa: bool, span: str = "name") -> Encoded:
    """Token ids (the view's start tokens first) of ``tpl`` filled with ``name``, with a label and a role key per
    position. Roles: ``bos:i`` (start tokens), ``pre:k`` (template token k before the name), ``name:j:b`` (the
    b-th subword back from the end of name part j; b = 0 is the part's last token), ``post:k`` (template token k
    from the end after the name) and ``last`` (the prompt's last token). ``span="description"`` (reversal prompts)
    treats the swapped text as one part, labelled ``description_last`` / ``description_last_sub``."""
    text = tpl.fill(name)
    ids, offsets = view.encode(text)
    n0, n1 = len(tpl.before), len(tpl.before) + len(name)
    in_name = [q for q, (a, b) in enumerate(offsets) if a < n1 and b > n0]
    if not in_name:
        raise UserError(f"the name {name!r} maps to no token in {text!r}")
    first, last = in_name[0], in_name[-1]
    parts, pos = [], n0  # character span of each name part (a description is one part)
    for word in name.split(" ") if span == "name" else [name]:
        parts.append((pos, pos + len(word)))
        pos += len(word) + 1
    # a name token belongs to the part its last character is in (or ends right after: a metaspace "o?")
    part_of = {q: next((j for j, (a, b) in enumerate(parts) if a < offsets[q][1] <= b + 1), len(parts) - 1)
               for q in in_name}  # fmt: skip
    plabels = name_part_labels(len(parts)) if span == "name" else [f"{span}_last"]
    back = {q: sum(1 for r in in_name if r > q and part_of[r] == part_of[q]) for q in in_name}
    answer_at = n1 + tpl.answer_from if tpl.answer_from >= 0 else None
    shift = len(view.start_ids)
    labels, tokens, roles = ["bos"] * shift, ["<start>"] * shift, [f"bos:{i}" for i in range(shift)]
    words = view.tokenizer.convert_ids_to_tokens(ids)
    n_after = len(ids) - 1 - last
    for q, (a, _) in enumerate(offsets):
        if first <= q <= last:
            lab = plabels[part_of[q]] + ("_sub" if back[q] else "")
            tok = f"[{lab}]"
            roles.append(f"name:{part_of[q]}:{back[q]}")
        else:
            lab = ("question" if q < first else "answer_prefix" if answer_at is not None and a >= answer_at
                   else "question_end") if qa else "template"  # fmt: skip
            tok = str(words[q])
            roles.append(f"pre:{q}" if q < first else f"post:{n_after - (q - last - 1)}")
        labels.append(lab)
        tokens.append(tok)
    labels[-1], roles[-1] = "last", "last"
    return Encoded([*view.start_ids, *ids], labels, tokens, (first + shift, last + shift + 1), roles, text)


def align_roles(clean: Encoded, corrupt: Encoded) -> list[int]:
    """For each clean position, the corrupted position with the same role (-1 where the corrupted prompt has none)."""
    where = {r: q for q, r in enumerate(corrupt.roles)}
    return [where.get(r, -1) for r in clean.roles]


def _people(dataset: Any, split: str, groups: Sequence[str] = ()) -> list[int]:
    pids = [p.pid for p in dataset.people] if split == "all" else list(dataset.split[split])
    if groups:  # sources and targets both from these dataset groups
        chosen = dataset.group_pids(groups)
        pids = [p for p in pids if p in chosen]
    return pids


@dataclass
class Candidate:
    """A source person with their template and the seeded order in which partners (targets) are tried."""

    tpl: Template
    source: int
    targets: list[int]


def candidates(dataset: Any, attr: str, prompts: str, pids: Sequence[int], seed: int) -> list[Candidate]:
    """Every person of ``pids`` with a template (QA: the attribute's question; bio: their first qualifying entry
    prefix), in seeded order, each with the other people whose answer starts with another word as targets (in a
    seeded order starting after the source, so different sources prefer different targets)."""
    rng = random.Random(f"{seed}-{attr}-{prompts}")
    order = list(pids)
    rng.shuffle(order)
    if prompts == "qa":
        templates = {pid: qa_template(attr) for pid in order}
    else:
        by_pid: dict[int, Template] = {}
        for e in dataset.entries:
            if e.pid not in by_pid:
                tpl = bio_template(e, attr)
                if tpl is not None:
                    by_pid[e.pid] = tpl
        templates = {pid: by_pid[pid] for pid in order if pid in by_pid}
    first = {pid: dataset.person(pid).attrs[attr].split()[0] for pid in order}
    out = []
    for k, src in enumerate(order):
        if src in templates:
            rest = order[k + 1 :] + order[:k]
            out.append(Candidate(templates[src], src, [t for t in rest if first[t] != first[src]]))
    return out


MAX_TARGET_TRIES = 20  # partners tried per source before it is given up (require_correct, patch/swap modes)


def build_pairs(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    attr: str,
    mode: str,
    cfg: PatchConfig,
    view: TokenView,
) -> tuple[list[TracePair], dict[str, int]]:
    """The pairs of one attribute and mode (at most ``cfg.n_pairs``) and counts of what was dropped and why.

    ``patch``: clean = source, corrupted = target. ``restore``/``noise``: clean = corrupted = source with noise on
    its name tokens; ``restore``/``swap``: clean = source, corrupted = the source's prompt with the target's name.
    With ``cfg.require_correct`` a source must answer its prompt right (greedy first token) and, when swapping,
    the target its version of the same prompt; a source tries up to ``MAX_TARGET_TRIES`` targets in its order.
    Prompts of different token lengths pair up by role (``align_roles``; a template token one run lacks, say a
    ``'s`` merged into the name's last token, is left unpatched); ``misaligned`` counts candidate pairs dropped
    because a template role holds different tokens in the two runs.
    """
    qa = cfg.prompts == "qa"
    cands = candidates(dataset, attr, cfg.prompts, _people(dataset, cfg.split, cfg.groups), cfg.seed)
    swap = mode == "patch" or cfg.corruption == "swap"
    answers: dict[tuple[int, str], list[int]] = {}

    def answer(pid: int, prompt: Encoded) -> list[int]:
        """``pid``'s answer as the model writes it after ``prompt``: the tokens ``prompt + " " + value`` has after
        the prompt's own (where the prompt's tokens are a prefix of them; else the tokens over the value)."""
        key = (pid, prompt.text)
        if key not in answers:
            value = dataset.person(pid).attrs[attr]
            ids, offsets = view.encode(f"{prompt.text} {value}")
            n = len(prompt.ids) - len(view.start_ids)
            if ids[:n] == prompt.ids[len(view.start_ids) :]:
                answers[key] = ids[n:]
            else:
                start = len(prompt.text) + 1
                answers[key] = ids[view.span(offsets, start, start + len(value))[0] :]
        return answers[key]

    def make(c: Candidate, clean: Encoded, tgt: int | None) -> TracePair | None:
        """The pair of ``c``'s source with target ``tgt`` (None: a noise pair); None when their templates differ."""
        b = clean if tgt is None else encode_prompt(view, c.tpl, dataset.person(tgt).full_name, qa)

        def template(e: Encoded) -> dict[str, int]:
            return {r: e.ids[q] for q, r in enumerate(e.roles) if not r.startswith("name:")}

        ta, tb = template(clean), template(b)  # a token that merges a name's end with "'s" is a name token
        if any(tb[r] != ta[r] for r in ta.keys() & tb.keys()):
            return None
        return TracePair(
            clean.ids, b.ids, answer(c.source, clean), None if tgt is None else answer(tgt, b),
            () if tgt is not None else tuple(range(*clean.name)), c.source, clean.labels, clean.tokens,
            {"name": tuple(range(*clean.name))}, [] if b.roles == clean.roles else align_roles(clean, b), clean.roles,
        )  # fmt: skip

    counts = {"candidates": len(cands), "misaligned": 0, "source_wrong": 0}
    todo = [(c, encode_prompt(view, c.tpl, dataset.person(c.source).full_name, qa)) for c in cands]
    if cfg.require_correct and todo:  # the source must answer its own prompt right
        probe = [TracePair(e.ids, e.ids, answer(c.source, e), labels=e.labels) for c, e in todo]
        ok = correct_mask(model, probe, "clean", cfg.batch_size)
        counts["source_wrong"] = int(len(todo) - sum(ok))
        todo = [t for t, good in zip(todo, ok) if good]
    pairs: list[TracePair | None] = [None] * len(todo)
    tries = [0] * len(todo)
    max_tries = MAX_TARGET_TRIES if cfg.require_correct else 1

    def exhausted(i: int) -> bool:
        return tries[i] >= min(max_tries, len(todo[i][0].targets))

    open_ = [i for i in range(len(todo)) if not (swap and exhausted(i))]  # sources still looking for a target
    while open_ and sum(p is not None for p in pairs) < cfg.n_pairs:
        trial: list[tuple[int, TracePair]] = []
        for i in open_:
            c, clean = todo[i]
            if not swap:
                pair = make(c, clean, None)
            else:
                pair = make(c, clean, c.targets[tries[i]])
                tries[i] += 1
            if pair is None:
                counts["misaligned"] += 1
            else:
                trial.append((i, pair))
        ok = correct_mask(model, [p for _, p in trial], "corrupt", cfg.batch_size) if cfg.require_correct and swap \
            else [True] * len(trial)  # fmt: skip
        for (i, pair), good in zip(trial, ok):
            if good:
                pairs[i] = pair
        open_ = [i for i in open_ if pairs[i] is None and swap and not exhausted(i)]
    counts["no_target"] = sum(1 for i in range(len(todo)) if pairs[i] is None and swap and exhausted(i))
    if counts["misaligned"]:
        log.warning("%s/%s: %d candidate pairs dropped: the template around the two names is tokenized "
                    "differently", attr, mode, counts["misaligned"])  # fmt: skip
        if not any(p is not None for p in pairs):
            raise UserError(f"no {attr} pair keeps its template tokens when the name is swapped under this "
                            "tokenizer (names merge with the text around them); patching cannot align the two "
                            "runs")  # fmt: skip
    used = [p for p in pairs if p is not None][: cfg.n_pairs]  # in the sources' seeded order
    counts["used"] = len(used)
    return used, counts


@torch.no_grad()
def correct_mask(model: Any, pairs: Sequence[TracePair], run: str, batch_size: int) -> list[bool]:
    """Whether the model's greedy next token after each pair's prompt is right: in the ``clean`` run the clean
    answer's first token, in the ``corrupt`` run the corrupted run's own answer's (``other``) first token."""
    device = _device(model)
    seqs = [p.clean if run == "clean" else p.corrupt for p in pairs]
    want = [(p.answer if run == "clean" else (p.other or p.answer))[0] for p in pairs]
    out: list[bool] = []
    for lo in range(0, len(seqs), batch_size):
        chunk = seqs[lo : lo + batch_size]
        T = max(len(s) for s in chunk)
        ids = torch.tensor([s + [PAD_ID] * (T - len(s)) for s in chunk], device=device)  # [B, T]
        lens = torch.tensor([len(s) for s in chunk], device=device)  # [B]
        key_mask = torch.arange(T, device=device)[None] < lens[:, None]  # [B, T]
        logits = _logits(model, ids, key_mask, [])  # [B, T, V]
        pred = logits[torch.arange(len(chunk), device=device), lens - 1].argmax(-1)  # [B]
        out += (pred.cpu() == torch.tensor(want[lo : lo + batch_size])).tolist()
    return out


@dataclass
class PatchResult:
    table: pd.DataFrame  # tidy rows (COLUMNS)
    pairs: list[dict[str, Any]]  # one record per pair used: attribute, mode, source, target, prompts, answer
    counts: list[dict[str, Any]]  # per attribute and mode: candidates, source_wrong, misaligned, no_target, used
    noise_std: dict[str, float] = field(default_factory=dict)  # per attribute (restore/noise)
    tokenizer: dict[str, Any] = field(default_factory=dict)  # name, type, vocabulary size (``tokenizer_record``)


def run_patching(pm: Any, dataset: Any, cfg: PatchConfig, progress: bool = False) -> PatchResult:
    """Patching maps of a loaded model (``probekit.probes.runner.ProbeModel``) on ``dataset``'s prompts.

    Attributes without any usable pair are skipped with a warning; no usable pair at all is a ``ValueError``.
    """
    from tqdm.auto import tqdm

    model, tokenizer = pm.model, pm.tokenizer if pm.tokenizer is not None else dataset.tokenizer
    view = TokenView(tokenizer)
    dims = model_dims(model)
    points = hook_points(dims.n_layers, cfg.hooks, cfg.layers)
    stop = view.eos_id
    if pm.objective == "abi":
        log.warning("%s is an ABI model: patching reads it causally, which is not how it answers (Part B spans)",
                    pm.name)  # fmt: skip
    frames, records, counts, noise = [], [], [], {}
    jobs = [(a, m) for a in cfg.attributes for m in cfg.modes]
    for attr, mode in tqdm(jobs, desc="patch", unit="map", disable=not progress, leave=False):
        pairs, c = build_pairs(model, tokenizer, dataset, attr, mode, cfg, view)
        corruption = "swap" if mode == "patch" else cfg.corruption
        counts.append({"attribute": attr, "mode": mode, "corruption": corruption, **c})
        if not pairs:
            log.warning("%s/%s: no usable pair (%s); skipped", attr, mode, c)
            continue
        res = trace_pairs(model, pairs, points, cfg.whole_answer, None, cfg.noise_scale, stop, cfg.seed,
                          cfg.batch_size)  # fmt: skip
        if res.noise_std is not None:
            noise[attr] = res.noise_std
        frames.append(summarize(
            res, pairs, "position" if cfg.prompts == "qa" else "label", cfg.n_boot, cfg.seed, model=pm.name,
            objective=pm.objective, dataset=getattr(dataset, "name", "unknown"), prompts=cfg.prompts, mode=mode,
            corruption=corruption, attribute=attr,
        ))  # fmt: skip
        for p in pairs:
            records.append({
                "attribute": attr, "mode": mode, "source": p.cluster,
                "clean": tokenizer.decode(p.clean[len(view.start_ids) :]),
                "corrupt": tokenizer.decode(p.corrupt[len(view.start_ids) :]),
                "answer": tokenizer.decode(p.answer).strip(),
                "noise_positions": list(p.noise),
            })  # fmt: skip
    if not frames:
        raise UserError(
            f"no usable pairs for any attribute ({counts}); with require_correct the model must answer the clean "
            "prompts right (first token): patch a trained/finetuned model, or pass --all-pairs"
        )
    return PatchResult(pd.concat(frames, ignore_index=True), records, counts, noise, tokenizer_record(tokenizer))


# ---------------------------------------------------------------------------------------------------------------
# Figures


RATE_METRICS = ("p_answer", "greedy_first", "greedy_answer", "p_other")
METRIC_TITLES = {
    "p_answer": "P(clean answer, 1st token)", "greedy_first": "greedy 1st token = clean answer",
    "logp_answer": "log P(whole clean answer)", "greedy_answer": "greedy whole answer = clean answer",
    "p_other": "P(corrupted run's own answer)",
}  # fmt: skip


def patch_figures(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> list[Any]:
    """One figure per (prompts, mode, hook, attribute): a position x layer heatmap per metric, side by side.

    Rows are prompt positions in order (top to bottom), columns layers; the title gives the clean-run and
    unpatched corrupted-run means of each metric. Returns ``probekit.reporting.plots.Figure`` objects."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from probekit.reporting.figures import Figure
    from probekit.reporting.plots import slug

    figs = []
    keys = ["prompts", "mode", "hook", "attribute"]
    for (prompts, mode, hook, attr), g in df.groupby(keys, sort=False):
        ms = [m for m in (metrics or dict.fromkeys(g["metric"])) if m in set(g["metric"])]
        titles = []
        for m in ms:
            s = g[g.metric == m].iloc[0]
            titles.append(f"{METRIC_TITLES.get(m, m)}<br>clean {s['clean']:.2f}, corrupted {s['corrupt']:.2f}")
        fig = make_subplots(rows=1, cols=len(ms), subplot_titles=titles, shared_yaxes=True, horizontal_spacing=0.08)
        ticks = g.drop_duplicates("position").sort_values("position")
        ylab = [f"{t} ({int(p)})" for t, p in zip(ticks["token"], ticks["position"])]
        layers = sorted(int(v) for v in g["layer"].unique())
        for j, m in enumerate(ms):
            piv = g[g.metric == m].pivot_table(index="position", columns="layer", values="value", aggfunc="mean")
            piv = piv.reindex(index=list(ticks["position"]), columns=layers)
            rate = m in RATE_METRICS
            text = [[("" if np.isnan(v) else f"{100 * v:.0f}" if rate else f"{v:.1f}") for v in r]
                    for r in piv.to_numpy()]  # fmt: skip
            fig.add_trace(go.Heatmap(
                z=piv.to_numpy(), x=[str(v) for v in layers], y=ylab, text=text, texttemplate="%{text}",
                colorscale="Blues" if rate else "Viridis", zmin=0 if rate else None, zmax=1 if rate else None,
                showscale=j == len(ms) - 1, hovertemplate="layer %{x}<br>%{y}<br>%{z:.3f}<extra>" + m + "</extra>",
            ), row=1, col=j + 1)  # fmt: skip
        n = int(g["n_pairs"].max())
        what = "source -> target (name swap)" if mode == "patch" else f"restore after {g['corruption'].iloc[0]}"
        fig.update_layout(
            title=f"Activation patching, {prompts} {attr}: {hook}, {what}, {n} pairs - {g['model'].iloc[0]}",
            width=max(520, 330 * len(ms) + 220), height=max(420, 26 * len(ylab) + 200),
        )  # fmt: skip
        fig.update_yaxes(autorange="reversed")
        fig.update_xaxes(title_text="layer")
        figs.append(Figure(f"{prompts}_{mode}_{hook}_{slug(attr)}", fig, g.reset_index(drop=True)))
    return figs


# ---------------------------------------------------------------------------------------------------------------
# Saving a run, and the route summary across models


def save_patching(res: PatchResult, cfg: PatchConfig, dest: Any, png: bool = True, **info: Any) -> Any:
    """Write a patching run into directory ``dest``: ``results.parquet``/``.csv`` (tidy rows), ``pairs.jsonl``,
    the heatmaps in ``figures/`` and ``run.json`` (settings, pair counts, noise std, ``info``). Returns the
    figure writer's report."""
    from pathlib import Path

    from probekit.io import atomic_write_json, atomic_write_jsonl
    from probekit.reporting.evaluation import write_table
    from probekit.reporting.figures import write_figures
    from probekit.serde import to_dict

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    write_table(res.table, dest, "results")
    atomic_write_jsonl(dest / "pairs.jsonl", res.pairs)
    report = write_figures(patch_figures(res.table), dest / "figures", png=png)
    atomic_write_json(dest / "run.json", {"config": to_dict(cfg), "counts": res.counts, "noise_std": res.noise_std,
                                          "tokenizer": res.tokenizer,
                                          **info, "png_error": report.png_error})  # fmt: skip
    return report


# where a name swap moves the answer: the whole name (all its tokens at once) or the answer position (``:``)
ROUTE_SLOTS: dict[str, str] = {"name_all": "whole name", "last": "answer position"}


def route_table(df: pd.DataFrame, metric: str = "greedy_first") -> pd.DataFrame:
    """Per model, attribute and layer: how often swapping the residual stream of the whole name, or of the answer
    position, at that layer makes the greedy answer the source person's (QA prompts, name-swap mode), with the
    person-bootstrap interval. Stored at the name: the whole name carries the answer into late layers;
    retrieved where needed: the answer position takes over after the first layers."""
    sel = df[(df["prompts"] == "qa") & (df["mode"] == "patch") & (df["hook"] == "resid") & (df["metric"] == metric)
             & df["position_label"].isin(list(ROUTE_SLOTS))]  # fmt: skip
    cols = ["model", "attribute", "layer", "position_label", "value", "ci_low", "ci_high", "n_pairs"]
    out = sel[cols].copy()
    out["state"] = out["position_label"].map(ROUTE_SLOTS)
    return out.drop(columns="position_label").reset_index(drop=True)


def route_summary(route: pd.DataFrame) -> list[SummaryPart]:
    """The route table as a summary table: per model and attribute, the flip % at each layer as ``name / answer``."""
    from probekit.reporting.report import SummaryTable

    if route.empty:
        return []
    rows = []
    for (model, attr), g in route.groupby(["model", "attribute"], sort=False):
        rec: dict[str, Any] = {"model": model, "attribute": attr, "pairs": int(g["n_pairs"].max())}
        for layer, h in g.groupby("layer"):
            v = {s: h.loc[h["state"] == s, "value"] for s in ROUTE_SLOTS.values()}
            name, ans = (f"{100 * x.iloc[0]:.0f}" if len(x) else "-" for x in v.values())
            rec[f"L{int(layer)}"] = f"{name} / {ans}"
        rows.append(rec)
    return [SummaryTable("Activation patching on QA prompts (name swap, residual stream): greedy answer becomes the "
                         "source person's, % when swapping the whole name / the answer position at layer L:",
                         pd.DataFrame(rows), name="patch_route")]  # fmt: skip


def route_figure(route: pd.DataFrame) -> Any:
    """Flip rate against layer, one panel per attribute: a line per model and state (whole name solid, answer
    position dashed), with 95% person-bootstrap bands. Returns a ``probekit.reporting.figures.Figure`` (None if
    empty)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    from probekit.reporting.figures import Figure

    if route.empty:
        return None
    attrs = list(dict.fromkeys(route["attribute"]))
    cols = min(3, len(attrs))
    rows = -(-len(attrs) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=attrs, shared_yaxes=True, vertical_spacing=0.12)
    models = list(dict.fromkeys(route["model"]))
    for i, attr in enumerate(attrs):
        r, c = divmod(i, cols)
        for j, model in enumerate(models):
            color = qualitative.Plotly[j % len(qualitative.Plotly)]
            for state, dash in zip(ROUTE_SLOTS.values(), ("solid", "dash")):
                g = route[(route["attribute"] == attr) & (route["model"] == model) & (route["state"] == state)]
                g = g.sort_values("layer")
                if g.empty:
                    continue
                fig.add_trace(go.Scatter(
                    x=g["layer"], y=100 * g["value"], mode="lines+markers", line={"color": color, "dash": dash},
                    name=f"{model}: {state}", legendgroup=f"{model}{state}", showlegend=i == 0,
                    error_y={"type": "data", "symmetric": False, "array": 100 * (g["ci_high"] - g["value"]),
                             "arrayminus": 100 * (g["value"] - g["ci_low"]), "thickness": 1},
                    hovertemplate=f"{model}<br>{state}, layer %{{x}}: %{{y:.0f}}%<extra>{attr}</extra>",
                ), row=r + 1, col=c + 1)  # fmt: skip
    fig.update_yaxes(range=[-3, 103], title_text="answer flips to the source's, %", col=1)
    fig.update_xaxes(title_text="layer (residual stream entering block l)", row=rows)
    fig.update_layout(title="Where the answer is carried: name swap at the whole name (solid) or the answer "
                            "position (dashed), QA prompts", width=1150, height=360 * rows + 160)  # fmt: skip
    return Figure("patch_route", fig, route)
