"""Distraction and System 2 Attention on biography QA (Weston & Sukhbaatar, arXiv 2311.11829).

``run_distract(checkpoint, data, out, DistractEvalConfig(...))``:

1. **A model that can be distracted.** The pretrained model is finetuned (``probekit.training.finetune.finetune``) on
   P_train questions whose prompts often carry a context that is usually helpful (``probekit.data.distract``:
   a hint right ``hint_accuracy`` of the time, plus irrelevant sentences; ``context_ratio`` of prompts).
2. **A learned S2A regenerator** (``s2a`` holds ``learned``): a copy of the same pretrained model finetuned on the
   rewrite task of P_train people (input: distracted prompt + ``Rewrite:``; target: relevant context + question).
3. **Evaluation on P_test** for every distractor kind (clean, irrelevant, hint_right, hint_wrong, refute_right) and
   regime: ``baseline`` (the distracted prompt), ``s2a_rule`` (rule-based regeneration), ``s2a_learned`` (the
   regenerator's output, parsed; malformed output falls back by a stated rule and is counted) and ``oracle`` (the
   prompt with every distractor removed). Greedy answers, whole-answer exact match, first-token accuracy, and the
   rate of outputting the value a distractor suggests (``follows_suggested``: the wrong hint's value, or the
   same-attribute value of an irrelevant sentence).
4. **Gap closed**: ``(S2A - baseline) / (oracle - baseline)`` per kind and regenerator (the issue's target: at least
   0.8 on ``hint_wrong``).
5. **What probes see** (``probes``): frozen linear probes at the queried name and at the answer position, every layer,
   fit on P_train clean prompts and read on P_test prompts of each kind (the true value, and the suggested one).
6. **Where a wrong hint acts** (``patching``): ``probekit.patching.patch.trace_pairs`` patches the right-hint run's
state
   into the wrong-hint run of the same prompt at every layer x position slot (context, hint value, question, name
   tokens, answer position) and measures the true answer's probability.

Intervals: every accuracy has a person-clustered bootstrap interval (``ci_low``, ``ci_high``: test people resampled
with replacement, all of a person's items together, ``n_boot`` times, percentile interval; ``probekit.stats``); the
gap closed is bootstrapped the same way with baseline, S2A and oracle computed on the same resamples (paired).

Outputs in ``out``: ``finetune_qa/`` and ``finetune_rewrite/`` (trainer runs; a finished one is reused when the
run is repeated with ``resume``), ``items.jsonl`` (test items with their contexts), ``regenerations.jsonl``,
``predictions.jsonl`` (one row per item and regime), ``results.parquet/.csv`` (model, objective, task = kind,
metric, value, n, regime, attr, ci_low, ci_high), ``gap``, ``regen`` (regeneration status counts), ``probes`` and
``patch_hint`` tables (Parquet + CSV), figures (HTML + PNG + CSV) and ``eval_config.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from probekit.data.distract import (
    DistractItem,
    Regeneration,
    builder_for,
    eval_items,
    parse_regeneration,
    rewrite_train_items,
    rule_regenerate,
    train_items,
    unknown_words,
    unseen_people,
    unseen_train_items,
)
from probekit.errors import UserError, UserFileNotFoundError
from probekit.evaluate.config import DistractEvalConfig
from probekit.evaluate.qa import default_model_name, generate_answers, model_objective
from probekit.evaluate.scoring import first_token_match, ids_exact_match
from probekit.io import atomic_write_json, atomic_write_jsonl, prepare_output_dir
from probekit.objectives import get_objective
from probekit.objectives.base import Objective
from probekit.probes.activations import model_dims
from probekit.reporting.evaluation import results_frame, write_figure, write_table
from probekit.serde import to_dict
from probekit.stats import bootstrap_means, person_bootstrap
from probekit.training.config import FinetuneConfig
from probekit.training.finetune import EvalItem, check_fits, encode_items, finetune

log = logging.getLogger(__name__)

REGIMES: tuple[str, ...] = ("baseline", "s2a_rule", "s2a_learned", "oracle")
RATE_METRICS: tuple[str, ...] = ("exact_match", "first_token", "follows_suggested")
STAGE_FILE = "stage_config.json"


@dataclass
class DistractResult:
    table: pd.DataFrame  # accuracy rows with intervals
    gap: pd.DataFrame  # gap closed per kind and regenerator
    records: list[dict[str, Any]]
    paths: list[Path]
    qa_model: torch.nn.Module
    tokenizer: Any
    items: list[DistractItem]


# ---------------------------------------------------------------------------------------------------------------
# Intervals (person-clustered bootstrap: probekit.stats)


def percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``samples`` (NaNs dropped; NaN if none remain)."""
    s = samples[~np.isnan(samples)]
    if s.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(s, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------------------
# Stages


def stage_record(cfg: FinetuneConfig, items: Sequence[EvalItem], meta: dict[str, Any]) -> dict[str, Any]:
    """What a finetuning stage depends on: its settings, the base checkpoint and a digest of every item."""
    digest = hashlib.sha256("\n".join(f"{it.prompt}\t{it.answer}" for it in items).encode("utf-8")).hexdigest()
    return {"finetune": to_dict(cfg), "n_items": len(items), "items_sha256": digest, "base": str(meta.get("path"))}


def _finetune_stage(model: torch.nn.Module, tokenizer: Any, objective: Objective | str, items: list[EvalItem],
                    cfg: FinetuneConfig, run_dir: Path, meta: dict[str, Any], progress: bool, resume: bool,
                    ) -> torch.nn.Module:  # fmt: skip
    """Finetune (or, with ``resume``, reuse the finished run in ``run_dir`` made with the same settings)."""
    from probekit.model.checkpoint import latest_checkpoint, load_checkpoint

    stage = stage_record(cfg, items, meta)
    stage_file = run_dir / STAGE_FILE
    finished = resume and stage_file.exists() and (run_dir / "summary.json").exists()
    if finished and json.loads(stage_file.read_text(encoding="utf-8")) == json.loads(json.dumps(stage)):
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None:
            log.info("reusing finished finetuning run %s", run_dir)
            m, _, _ = load_checkpoint(ckpt, device=next(model.parameters()).device)
            return m
    ft = finetune(model, tokenizer, objective, items, cfg, run_dir, progress, overwrite=True, base_meta=meta)
    atomic_write_json(stage_file, stage)
    return ft.model


def _answer(model: torch.nn.Module, tokenizer: Any, objective: Objective | str, prompts: Sequence[str],
            answers: Sequence[str], batch_size: int, progress: bool, desc: str) -> list[list[int]]:  # fmt: skip
    """Greedy answer ids for unique (prompt, answer) pairs (generation runs for the longest answer + 1)."""
    items = [EvalItem(-1, "", p, a) for p, a in zip(prompts, answers)]
    ids, ans = encode_items(tokenizer, items)
    return generate_answers(model, objective, ids, max(map(len, ans)) + 1, batch_size, progress, desc=desc)


def regenerate_learned(model: torch.nn.Module, tokenizer: Any, objective: Objective | str,
                       items: Sequence[DistractItem], fallback: str, batch_size: int = 64,
                       progress: bool = False) -> list[Regeneration]:  # fmt: skip
    """The learned regenerator's output for every item, parsed (malformed output falls back, never raises).

    Generation runs for at most the prompt's own length + 2 tokens (a regeneration only removes sentences); output
    that reaches that bound without an end-of-text is malformed ("no end of text")."""
    prompts = tokenizer([it.rewrite_prompt for it in items], add_special_tokens=False)["input_ids"]
    limit = max(len(p) for p in prompts) + 2
    n_ctx = model_dims(model).n_ctx
    limit = min(limit, n_ctx - 1 - max(len(p) for p in prompts))
    if limit < 1:
        raise UserError(f"rewrite prompts of {max(len(p) for p in prompts)} tokens leave no room to generate "
                        f"in the model's context n_ctx={n_ctx}")  # fmt: skip
    gen = generate_answers(model, objective, prompts, limit, batch_size, progress, desc="regenerate")
    out = []
    for it, g in zip(items, gen):
        text = tokenizer.decode(g, skip_special_tokens=False)
        r = parse_regeneration(text, it.prompt, fallback)
        if len(g) >= limit and r.status != "fallback":  # ran into the bound: the output may be cut short
            fb = parse_regeneration("", it.prompt, fallback)
            r = Regeneration(fb.context, fb.question, "fallback", "no end of text", text)
        out.append(r)
    return out


def reuse_regenerations(run_dir: str | Path, items: Sequence[DistractItem], fallback: str) -> list[Regeneration]:
    """The learned regenerations of an earlier ``run_distract`` output directory, re-parsed for ``items``.

    Every item must have been regenerated there from exactly the same prompt (the same distractor settings, seed
    and people); the regenerator is the earlier run's. Output cut at the length bound stays a fallback."""
    from probekit.io import read_jsonl

    run_dir = Path(run_dir)
    for f in ("items.jsonl", "regenerations.jsonl"):
        if not (run_dir / f).exists():
            raise UserFileNotFoundError(
                f"{run_dir} holds no {f}; reuse the output directory of an earlier eval distract"
            )
    prompts = {(r["pid"], r["attr"], r["kind"]): r["prompt"] for r in read_jsonl(run_dir / "items.jsonl")}
    raw = {(r["pid"], r["attr"], r["kind"]): r for r in read_jsonl(run_dir / "regenerations.jsonl")
           if r["regime"] == "s2a_learned"}  # fmt: skip
    out = []
    for it in items:
        key = (it.pid, it.attr, it.kind)
        if key not in raw or prompts.get(key) != it.prompt:
            raise UserError(f"{run_dir} has no learned regeneration of the prompt of person {it.pid} ({it.attr}, "
                            f"{it.kind}); reuse a run made with the same distractor settings and seed")  # fmt: skip
        r = parse_regeneration(raw[key]["raw"], it.prompt, fallback)
        if raw[key]["reason"] == "no end of text":
            r = Regeneration(parse_regeneration("", it.prompt, fallback).context, r.question, "fallback",
                             "no end of text", raw[key]["raw"])  # fmt: skip
        out.append(r)
    return out


def _check_items(
    tokenizer: Any, items: Sequence[DistractItem], n_ctx: int, objective: Objective | str, dataset: Any
) -> None:
    texts = [it.rewrite_prompt + " " + it.rewrite_target for it in items]
    unknown = unknown_words(tokenizer, texts)
    if unknown:
        raise UserError(
            f"the tokenizer of {dataset.root} does not know the distractor words {unknown[:8]}; build the dataset "
            "with `probekit data bios --distract-vocab` (build_dataset(extra_vocab=DISTRACT_VOCAB))"
        )
    check_fits([EvalItem(it.pid, it.attr, it.prompt, it.answer) for it in items], tokenizer, n_ctx, objective)


# ---------------------------------------------------------------------------------------------------------------
# Tables


def summarize(records: pd.DataFrame, cfg: DistractEvalConfig, model_name: str, objective: str,
              ) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Accuracy rows (kind x regime x attribute, 'overall' too) with person-clustered intervals, and the gap-closed
    table (kind x S2A regime, paired bootstrap)."""
    rows: list[dict[str, Any]] = []
    gap_rows: list[dict[str, Any]] = []
    base = {"model": model_name, "objective": objective}
    for kind, kd in records.groupby("kind", sort=False):
        for attr, ad in [("overall", kd), *((str(a), g) for a, g in kd.groupby("attr", sort=False))]:
            vals: dict[str, np.ndarray] = {}
            for regime, rd in ad.groupby("regime", sort=False):
                rd = rd.sort_values(["pid", "attr"])
                for m in RATE_METRICS:
                    vals[f"{regime}|{m}"] = rd[m].to_numpy(dtype=float)  # [N items] (NaN: no suggested value)
            pids = ad[ad["regime"] == "baseline"].sort_values(["pid", "attr"])["pid"].to_numpy()  # [N]
            keys = list(vals)
            V = np.stack([vals[k] for k in keys])  # [F, N]
            boot = (bootstrap_means(V, pids, cfg.n_boot, cfg.seed)  # [F, B]; NaN values are left out
                    if cfg.n_boot else None)  # fmt: skip
            for i, key in enumerate(keys):
                regime, metric = key.split("|")
                n = int((~np.isnan(V[i])).sum())
                if n == 0:
                    continue
                lo, hi = percentile_ci(boot[i], cfg.ci_level) if boot is not None else (np.nan, np.nan)
                rows.append({**base, "task": kind, "metric": metric, "value": float(np.nanmean(V[i])), "n": n,
                             "regime": regime, "attr": attr, "ci_low": lo, "ci_high": hi})  # fmt: skip
            if attr != "overall":
                continue
            for regime in cfg.regimes:
                if not regime.startswith("s2a_"):
                    continue
                acc = {r: float(np.mean(vals[f"{r}|exact_match"])) for r in ("baseline", regime, "oracle")}
                gap = acc["oracle"] - acc["baseline"]
                # only a distractor that lowers accuracy leaves a gap to close; otherwise the share is undefined
                closed = (acc[regime] - acc["baseline"]) / gap if gap > 0 else float("nan")
                lo = hi = float("nan")
                if boot is not None and gap > 0:  # paired: baseline, S2A and oracle on the same resamples of people
                    b, s, o = (boot[keys.index(f"{r}|exact_match")] for r in ("baseline", regime, "oracle"))
                    with np.errstate(invalid="ignore", divide="ignore"):
                        samples = np.where(o - b > 0, (s - b) / (o - b), np.nan)
                    lo, hi = percentile_ci(samples, cfg.ci_level)
                gap_rows.append({**base, "task": kind, "regime": regime, "baseline": acc["baseline"],
                                 "s2a": acc[regime], "oracle": acc["oracle"], "gap": gap, "gap_closed": closed,
                                 "ci_low": lo, "ci_high": hi, "n": len(vals[f"{regime}|exact_match"]),
                                 "target_met": bool(closed >= 0.8) if gap > 0 else None})  # fmt: skip
    return results_frame(rows), pd.DataFrame(gap_rows)


def distract_figure(table: pd.DataFrame, metric: str = "exact_match", title: str | None = None
                    ) -> tuple[Any, pd.DataFrame]:  # fmt: skip
    """Grouped bars of ``metric`` (overall) by distractor kind, one bar per regime, with bootstrap error bars."""
    import plotly.graph_objects as go

    data = table[(table["metric"] == metric) & (table["attr"] == "overall")].copy()
    if data.empty:
        raise UserError(f"no overall rows with metric {metric!r} to plot")
    kinds = list(dict.fromkeys(data["task"]))
    fig = go.Figure()
    for regime, g in data.groupby("regime", sort=False):
        g = g.set_index("task").reindex(kinds)
        fig.add_trace(go.Bar(
            name=str(regime), x=kinds, y=g["value"], customdata=g["n"],
            error_y={"type": "data", "symmetric": False, "array": g["ci_high"] - g["value"],
                     "arrayminus": g["value"] - g["ci_low"]},
            hovertemplate="%{x}: %{y:.3f} (n=%{customdata})<extra>" + str(regime) + "</extra>",
        ))  # fmt: skip
    fig.update_layout(barmode="group", title=title or f"{metric} by distractor kind", xaxis_title="distractor kind",
                      yaxis_title=metric, template="plotly_white", legend_title="regime")  # fmt: skip
    fig.update_yaxes(range=[0, 1])
    return fig, data


# ---------------------------------------------------------------------------------------------------------------
# Pipeline


def run_distract(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    cfg: DistractEvalConfig | None = None,
    model_name: str | None = None,
    objective: str | None = None,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    png: bool = True,
) -> DistractResult:
    """Finetune a distractable QA model (and a learned regenerator), evaluate every distractor kind under baseline,
    S2A and oracle prompts on P_test, and write tables and figures to ``out`` (see the module docstring).

    Every input is checked before any training: output directory, checkpoint, dataset, tokenizer match, the
    distractor vocabulary, and that every prompt fits the model's context. ``resume`` continues in a non-empty
    ``out``, reusing finetuning runs that finished with the same settings.
    """
    from probekit.data.store import load_dataset
    from probekit.model.checkpoint import load_checkpoint

    cfg = cfg or DistractEvalConfig()
    out = prepare_output_dir(out, overwrite or resume)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, meta = load_checkpoint(checkpoint, device=device)
    obj = get_objective(model_objective(meta, objective))
    if getattr(model.cfg, "foreign", False) and (cfg.probes or cfg.patching):
        raise UserError(f"the probes and patching of `eval distract` read hook points, which a {model.cfg.model_type} "
                        "checkpoint lacks here; pass --no-probes --no-patching (probe and patch it with `probekit "
                        "probe` / `probekit patch`, which read it through TransformerBridge)")  # fmt: skip
    if obj.infilling:
        raise UserError("distraction evaluation needs a causal reading (ntp or bico checkpoints); ABI answers as a "
                        "blank span and has no prompt-prefix context")  # fmt: skip
    dataset = load_dataset(data)
    if dataset.tokenizer.get_vocab() != tokenizer.get_vocab():  # the model's own tokens: they must fit the text
        from probekit.data.tokens import check_tokenizer_fits

        check_tokenizer_fits(tokenizer, [e.text for e in dataset.entries], f"dataset {dataset.root}")
    builder = builder_for(dataset, cfg.distract)
    train = train_items(builder, dataset.split["train"], cfg.attrs)
    test = eval_items(builder, dataset.split["test"], cfg.attrs, cfg.kinds)
    # people outside the dataset: the first unseen_people join the finetuning regime, the next unseen_test are asked
    n_unseen = cfg.distract.unseen_people
    ghosts = unseen_people(dataset.people, builder.values, n_unseen + cfg.unseen_test, cfg.distract.seed)
    builder.by_pid.update({g.pid: g for g in ghosts})
    train += unseen_train_items(builder, ghosts[:n_unseen], cfg.attrs)
    unseen_test = eval_items(builder, [g.pid for g in ghosts[n_unseen:]], cfg.attrs, cfg.kinds)
    train_rewriter = "learned" in cfg.s2a and cfg.regenerator is None and cfg.reuse_regenerations is None
    rewrite = rewrite_train_items(builder, dataset.split["train"], cfg.attrs) if train_rewriter else []
    _check_items(tokenizer, train + test + unseen_test + rewrite, model.cfg.n_ctx, obj, dataset)
    if rewrite:
        check_fits([EvalItem(it.pid, it.attr, it.rewrite_prompt, it.rewrite_target) for it in rewrite], tokenizer,
                   model.cfg.n_ctx, obj)  # fmt: skip
    name = model_name or default_model_name(meta)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    # 1. the distractable QA model
    qa_model = model
    if cfg.finetune.method != "none":
        qa_items = [EvalItem(it.pid, it.attr, it.prompt, it.answer) for it in train]
        qa_model = _finetune_stage(model, tokenizer, obj, qa_items, cfg.finetune, out / "finetune_qa", meta,
                                   progress, resume)  # fmt: skip
    # 2. the learned regenerator
    regens: dict[str, list[Regeneration]] = {"s2a_rule": [rule_regenerate(it.prompt) for it in test]}
    if "learned" in cfg.s2a and cfg.reuse_regenerations is not None:
        regens["s2a_learned"] = reuse_regenerations(cfg.reuse_regenerations, test, cfg.fallback)
    elif "learned" in cfg.s2a:
        if cfg.regenerator is not None:
            rw_model, rw_tok, _ = load_checkpoint(cfg.regenerator, device=device)
            if rw_tok.get_vocab() != tokenizer.get_vocab():
                raise UserError(f"regenerator {cfg.regenerator} has another tokenizer than {meta['path']}")
        else:
            rw_items = [EvalItem(it.pid, it.attr, it.rewrite_prompt, it.rewrite_target) for it in rewrite]
            rw_model = _finetune_stage(model, tokenizer, obj, rw_items, cfg.rewrite_finetune,
                                       out / "finetune_rewrite", meta, progress, resume)  # fmt: skip
        regens["s2a_learned"] = regenerate_learned(rw_model, tokenizer, obj, test, cfg.fallback,
                                                   cfg.batch_size, progress)  # fmt: skip
        del rw_model
    if "rule" not in cfg.s2a:
        del regens["s2a_rule"]

    # 3. answers for every (item, regime) prompt
    prompts: dict[str, list[str]] = {
        "baseline": [it.prompt for it in test],
        "oracle": [it.oracle_prompt for it in test],
    }
    prompts.update({r: [g.prompt for g in gs] for r, gs in regens.items()})
    unique = list(dict.fromkeys((p, it.answer) for ps in prompts.values() for p, it in zip(ps, test)))
    gen = _answer(qa_model, tokenizer, obj, [p for p, _ in unique], [a for _, a in unique], cfg.batch_size,
                  progress, "answer")  # fmt: skip
    by_prompt = dict(zip(unique, gen))
    answer_ids = {a: tokenizer(a, add_special_tokens=False)["input_ids"] for a in
                  {it.answer for it in test} | {it.suggested for it in test if it.suggested}}  # fmt: skip

    def same_tokens(a: str, b: str) -> bool:  # the QA model reads token ids: compare regenerations as such
        return bool(tokenizer(a, add_special_tokens=False)["input_ids"] == tokenizer(b, add_special_tokens=False)[
            "input_ids"])  # fmt: skip

    records: list[dict[str, Any]] = []
    for regime in cfg.regimes:
        for k, it in enumerate(test):
            p = prompts[regime][k]
            g = by_prompt[(p, it.answer)]
            rec = {
                "pid": it.pid, "attr": it.attr, "kind": it.kind, "regime": regime, "prompt": p, "answer": it.answer,
                "generated": tokenizer.decode(g), "exact_match": float(ids_exact_match(g, answer_ids[it.answer])),
                "first_token": float(first_token_match(g, answer_ids[it.answer])), "suggested": it.suggested,
                "follows_suggested": float(ids_exact_match(g, answer_ids[it.suggested])) if it.suggested else np.nan,
                "regen_status": None, "regen_reason": None, "regen_exact": None,
            }  # fmt: skip
            if regime in regens:
                r = regens[regime][k]
                rec.update(regen_status=r.status, regen_reason=r.reason or None,
                           regen_exact=same_tokens(r.prompt, it.oracle_prompt))  # fmt: skip
            records.append(rec)
    df = pd.DataFrame(records)
    table, gap = summarize(df, cfg, name, obj.name)
    regen_rows = []
    for regime, gs in regens.items():
        for kind in cfg.kinds:
            sel = [g for g, it in zip(gs, test) if it.kind == kind]
            exact = [same_tokens(g.prompt, it.oracle_prompt) for g, it in zip(gs, test) if it.kind == kind]
            regen_rows.append({"regime": regime, "task": kind, "n": len(sel),
                               "ok": sum(g.status == "ok" for g in sel),
                               "question_changed": sum(g.status == "question_changed" for g in sel),
                               "fallback": sum(g.status == "fallback" for g in sel),
                               "exact_oracle": sum(exact)})  # fmt: skip
    regen_table = pd.DataFrame(regen_rows)

    # 4. outputs
    atomic_write_jsonl(out / "items.jsonl", ({
        "pid": it.pid, "attr": it.attr, "kind": it.kind, "question": it.question, "answer": it.answer,
        "prompt": it.prompt, "oracle_prompt": it.oracle_prompt, "suggested": it.suggested,
        "context": [[s.role, s.text] for s in it.context]} for it in test))  # fmt: skip
    atomic_write_jsonl(out / "regenerations.jsonl", (
        {"regime": r, "pid": it.pid, "attr": it.attr, "kind": it.kind, "status": g.status, "reason": g.reason,
         "raw": g.raw, "prompt": g.prompt, "exact_oracle": same_tokens(g.prompt, it.oracle_prompt)}
        for r, gs in regens.items() for g, it in zip(gs, test)))  # fmt: skip
    atomic_write_jsonl(
        out / "predictions.jsonl",
        ({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in records),
    )
    figures = [(f"distract_{m}", *distract_figure(table, m, f"{name}: {m} by distractor kind (P_test, "
                                                             f"{cfg.ci_level:.0%} CI)"))
               for m in ("exact_match", "follows_suggested") if (table["metric"] == m).any()]  # fmt: skip
    paths = write_table(table, out, "results") + write_table(gap, out, "gap") + write_table(regen_table, out, "regen")
    if unseen_test:
        unseen = answer_unseen(qa_model, tokenizer, obj, unseen_test, cfg, progress)
        unseen.insert(0, "model", name)
        paths += write_table(unseen, out, "unseen")
    if cfg.probes:
        probes = probe_distraction(qa_model, tokenizer, dataset, cfg, batch_size=cfg.batch_size)
        probes.insert(0, "model", name)
        paths += write_table(probes, out, "probes")
        figures.append(("probes_by_layer", *probe_figure(probes)))
    n_pairs = 0
    if cfg.patching and {"hint_right", "hint_wrong"} <= set(cfg.kinds):
        patch, n_pairs = patch_hints(qa_model, tokenizer, test, cfg.n_boot, cfg.seed, max(cfg.batch_size, 64))
        patch.insert(0, "model", name)
        paths += write_table(patch, out, "patch_hint")
        figures += [(f"patch_hint_{m}", *patch_figure(patch, m)) for m in ("p_answer", "p_other")]
    for stem, fig, fdata in figures:
        paths += write_figure(fig, fdata, out, stem, png=png)
    atomic_write_json(out / "eval_config.json", {
        "checkpoint": str(meta["path"]), "data": str(dataset.root), "model": name, "objective": obj.name,
        "config": to_dict(cfg), "n_train_items": len(train), "n_rewrite_items": len(rewrite),
        "n_test_items": len(test), "n_unseen_train_people": n_unseen, "n_unseen_test_items": len(unseen_test),
        "n_patch_pairs": n_pairs, "elapsed_s": round(time.perf_counter() - t0, 1),
    })  # fmt: skip
    return DistractResult(table, gap, records, paths, qa_model, tokenizer, test)


def answer_unseen(model: torch.nn.Module, tokenizer: Any, objective: Objective | str, items: Sequence[DistractItem],
                  cfg: DistractEvalConfig, progress: bool = False) -> pd.DataFrame:  # fmt: skip
    """People the model never read about, asked under each distractor kind (the distracted prompt only): exact match
    of the true value and ``follows_suggested`` per kind, with person-clustered bootstrap intervals. Without a hint
    the answer is unknowable (chance); a model that learned to use hints answers right hints and copies wrong ones."""
    gen = _answer(model, tokenizer, objective, [it.prompt for it in items], [it.answer for it in items],
                  cfg.batch_size, progress, "answer unseen")  # fmt: skip
    ids = {v: tokenizer(v, add_special_tokens=False)["input_ids"]
           for v in {it.answer for it in items} | {it.suggested for it in items if it.suggested}}  # fmt: skip
    V = np.array([[float(ids_exact_match(g, ids[it.answer])) for g, it in zip(gen, items)],
                  [float(ids_exact_match(g, ids[it.suggested])) if it.suggested else np.nan
                   for g, it in zip(gen, items)]])  # fmt: skip  # [2 = exact_match, follows_suggested; N]
    kinds = np.array([it.kind for it in items])
    pids = np.array([it.pid for it in items])
    rows: list[dict[str, Any]] = []
    for kind in dict.fromkeys(kinds):
        sel = kinds == kind
        ci = person_bootstrap(V[:, sel], pids[sel], cfg.n_boot, cfg.ci_level, cfg.seed)  # [2] each
        for f, metric in enumerate(("exact_match", "follows_suggested")):
            v = V[f, sel]
            if np.isnan(v).all():
                continue
            rows.append({"task": str(kind), "metric": metric, "value": float(np.nanmean(v)),
                         "n": int((~np.isnan(v)).sum()), "ci_low": float(ci.low[f]),
                         "ci_high": float(ci.high[f])})  # fmt: skip
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# Probes under distraction (frozen linear probes on the residual stream)

PROBE_POSITIONS: tuple[str, ...] = ("name", "answer")


def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k successes out of n independent rows (NaN for n = 0)."""
    from statistics import NormalDist

    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def prompt_positions(tokenizer: Any, prompt: str, question: str) -> tuple[list[int], int, int]:
    """``([EOS] + prompt ids, position of the queried name's last token, answer position)``: the name is read in
    the question (its last occurrence in the prompt), the answer position is the prompt's last token (the one that
    predicts the answer's first token)."""
    from probekit.data.distract import split_question
    from probekit.data.tokenizer import EOS_ID, char_span_to_token_span, encode_with_offsets

    parts = split_question(question)
    if parts is None:
        raise ValueError(f"not a bioS question: {question!r}")
    name = parts[3]
    ids, offsets = encode_with_offsets(tokenizer, prompt)
    start = prompt.rfind(name)
    _, end = char_span_to_token_span(offsets, start, start + len(name))
    return [EOS_ID, *ids], end, len(ids)  # +1 for the leading EOS: token i of the prompt sits at position i + 1


def probe_distraction(model: torch.nn.Module, tokenizer: Any, dataset: Any, cfg: DistractEvalConfig,
                      engine: Any = None, batch_size: int = 64) -> pd.DataFrame:  # fmt: skip
    """Frozen linear probes at the queried name's last token and at the answer position, every layer boundary.

    Per attribute, probes (first token of the value) are fit on P_train people's clean prompts (relevant context +
    question; L2 chosen on a validation subset of P_train) and read on P_test prompts of every distractor kind.
    Targets: the person's true value (``target=true``) and, for kinds that suggest a value, the suggested one
    (``target=suggested``, on the rows whose suggested first token differs from the true one). One row per person
    per attribute, so the rows are independent people: Wilson intervals.
    """
    from probekit.probes.activations import collect_activations, hook_points
    from probekit.probes.config import EngineConfig
    from probekit.probes.engine import Split, run_probes

    engine = engine or EngineConfig(l2_grid=(1e-3, 1e-2, 1e-1), max_iter=80)
    builder = builder_for(dataset, cfg.distract)
    train_pids = list(dataset.split["train"])
    val_pids = set(random.Random(f"probe-val-{cfg.seed}").sample(train_pids, max(1, len(train_pids) // 5)))
    points = hook_points(model_dims(model).n_layers)
    rows: list[dict[str, Any]] = []

    def first(v: str) -> int:
        return int(tokenizer(v, add_special_tokens=False)["input_ids"][0])

    for attr in cfg.attrs:
        train = eval_items(builder, train_pids, (attr,), ("clean",))
        test = eval_items(builder, dataset.split["test"], (attr,), cfg.kinds)
        allit = train + test
        enc = [prompt_positions(tokenizer, it.prompt, it.question) for it in allit]
        acts = collect_activations(model, [e[0] for e in enc], [[e[1], e[2]] for e in enc], points,
                                   position_names=list(PROBE_POSITIONS), batch_size=batch_size)  # fmt: skip
        X = torch.stack([acts.get(i, p) for i in range(len(points)) for p in range(2)])  # [G = points x 2, N, d]
        true = np.array([first(it.answer) for it in allit])  # [N]
        sug = np.array([first(it.suggested) if it.suggested else -1 for it in allit])  # [N]
        tr = np.array([i for i, it in enumerate(train) if it.pid not in val_pids])
        va = np.array([i for i, it in enumerate(train) if it.pid in val_pids])
        train_rows = np.concatenate([tr, va])
        for kind in cfg.kinds:
            idx = np.array([len(train) + j for j, it in enumerate(test) if it.kind == kind])
            targets = [("true", true, idx)]
            if kind in ("hint_wrong", "irrelevant"):
                targets.append(("suggested", sug, idx[(sug[idx] != true[idx]) & (sug[idx] >= 0)]))
            for target, labels, test_rows in targets:
                if not len(test_rows):
                    continue
                lab = labels.copy()
                lab[train_rows] = true[train_rows]  # probes always learn the true value on P_train
                fits = run_probes(X, lab[None], Split(train_rows, test_rows, va), engine)
                for f in fits:
                    point, pos = points[f.group // 2], PROBE_POSITIONS[f.group % 2]
                    k = round(f.accuracy * f.n_test) if f.status == "ok" else 0
                    lo, hi = wilson_ci(k, f.n_test, cfg.ci_level) if f.status == "ok" else (np.nan, np.nan)
                    rows.append({"attr": attr, "kind": kind, "position": pos, "layer": point.layer,
                                 "target": target, "accuracy": f.accuracy, "baseline": f.baseline, "n": f.n_test,
                                 "n_train": len(train_rows), "n_classes": f.n_classes, "ci_low": lo, "ci_high": hi,
                                 "status": f.status})  # fmt: skip
    return pd.DataFrame(rows)


def probe_figure(df: pd.DataFrame) -> tuple[Any, pd.DataFrame]:
    """Probe accuracy (mean over attributes) by layer: one panel per position, a line per kind and target."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    data = df[df["status"] == "ok"].groupby(["position", "kind", "target", "layer"], sort=False, as_index=False)[
        ["accuracy", "baseline"]].mean()  # fmt: skip
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"at the {p}" for p in PROBE_POSITIONS], shared_yaxes=True)
    for c, pos in enumerate(PROBE_POSITIONS, start=1):
        for (kind, target), g in data[data["position"] == pos].groupby(["kind", "target"], sort=False):
            fig.add_trace(go.Scatter(x=g["layer"], y=g["accuracy"], mode="lines+markers", name=f"{kind} ({target})",
                                     line={"dash": "dot" if target == "suggested" else "solid"},
                                     legendgroup=f"{kind}{target}", showlegend=c == 1), row=1, col=c)  # fmt: skip
    fig.update_layout(title="frozen linear probes (first token), mean over attributes: reads the true value, or the "
                            "suggested one (dotted)", template="plotly_white")  # fmt: skip
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(range=[0, 1], title_text="P_test accuracy", col=1)
    return fig, data


# ---------------------------------------------------------------------------------------------------------------
# Patching under distraction: where does a wrong hint act?

HINT_SLOTS: tuple[str, ...] = ("bos", "context", "hint_prefix", "hint_value", "hint_suffix", "question", "name_first",
                               "name_middle", "name_last", "question_rest", "last")  # fmt: skip


def hint_pair(tokenizer: Any, right: DistractItem, wrong: DistractItem) -> Any:
    """A ``probekit.patching.patch.TracePair``: clean = the prompt whose hint suggests the true value, corrupted = the
    same prompt suggesting the wrong value (same person, context and question), labelled by ``HINT_SLOTS``; None when
    the two values differ in token count (the runs would not align) or share their first token (the first-token
    metrics could not tell them apart)."""
    from probekit.data.distract import split_question
    from probekit.data.tokenizer import EOS_ID, encode_with_offsets
    from probekit.patching.patch import TracePair

    ans = tokenizer([right.answer, wrong.suggested], add_special_tokens=False)["input_ids"]
    if len(ans[0]) != len(ans[1]) or ans[0][0] == ans[1][0]:
        return None
    ids_r, off = encode_with_offsets(tokenizer, right.prompt)
    ids_w, _ = encode_with_offsets(tokenizer, wrong.prompt)
    if len(ids_r) != len(ids_w):
        return None
    hint = right.context[-1].text
    h0 = right.prompt.rindex(hint)
    v0 = h0 + hint.index(right.answer)
    v1 = v0 + len(right.answer)
    q0 = len(right.prompt) - len(right.question)
    name = split_question(right.question)[3]  # type: ignore[index]
    n0 = right.prompt.rindex(name)
    name_ends = [n0 + len(w) for w in (name.split()[0], " ".join(name.split()[:2]), name)]
    labels = ["bos"]
    for k, (a, _) in enumerate(off):
        if k == len(off) - 1:
            lab = "last"
        elif a < h0:
            lab = "context"
        elif a < v0:
            lab = "hint_prefix"
        elif a < v1:
            lab = "hint_value"
        elif a < q0:
            lab = "hint_suffix"
        elif a < n0:
            lab = "question"
        elif a < name_ends[0]:
            lab = "name_first"
        elif a < name_ends[1]:
            lab = "name_middle"
        elif a < name_ends[2]:
            lab = "name_last"
        else:
            lab = "question_rest"
        labels.append(lab)
    return TracePair([EOS_ID, *ids_r], [EOS_ID, *ids_w], list(ans[0]), list(ans[1]), cluster=right.pid,
                     labels=labels)  # fmt: skip


def patch_hints(model: torch.nn.Module, tokenizer: Any, items: Sequence[DistractItem], n_boot: int = 1000,
                seed: int = 0, batch_size: int = 128) -> tuple[pd.DataFrame, int]:  # fmt: skip
    """Activation patching from the right-hint run into the wrong-hint run of the same prompt, every residual layer
    boundary x position slot (``HINT_SLOTS``; a pair's positions in one slot averaged), all attributes pooled.
    Metrics (``probekit.patching.patch``): ``p_answer`` (probability of the true answer's first token), ``greedy_first``
    (the greedy first token becomes the true one), ``p_other`` (the wrong hint's first token). Returns the tidy
    table (mean over pairs, person-clustered interval, the unpatched right/wrong-hint means) and the pair count."""
    from probekit.patching.patch import cluster_bootstrap, trace_pairs
    from probekit.probes.activations import hook_points

    by_key: dict[tuple[int, str], dict[str, DistractItem]] = {}
    for it in items:
        if it.kind in ("hint_right", "hint_wrong"):
            by_key.setdefault((it.pid, it.attr), {})[it.kind] = it
    pairs = [p for d in by_key.values() if len(d) == 2
             for p in [hint_pair(tokenizer, d["hint_right"], d["hint_wrong"])] if p is not None]  # fmt: skip
    if not pairs:
        raise UserError("no aligned right/wrong hint pairs to patch (values of equal token length are needed)")
    points = hook_points(model_dims(model).n_layers)
    res = trace_pairs(model, pairs, points, seed=seed, batch_size=batch_size)
    index = {s: i for i, s in enumerate(HINT_SLOTS)}
    rows = []
    for metric, arr in res.patched.items():  # arr [N pairs, K points, P positions]
        per = np.full((len(pairs), len(points), len(HINT_SLOTS)), np.nan)  # [N, K, S]
        for i, p in enumerate(pairs):
            lab = np.array([index[x] for x in p.labels])
            for s in set(lab.tolist()):
                per[i, :, s] = arr[i][:, : len(lab)][:, lab == s].mean(axis=1)
        flat = per.reshape(len(pairs), -1)  # [N, K * S]
        lo, hi = cluster_bootstrap(flat, [p.cluster for p in pairs], n_boot, seed)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(flat, axis=0)
        for k, pt in enumerate(points):
            for s, slot in enumerate(HINT_SLOTS):
                f = k * len(HINT_SLOTS) + s
                rows.append({"layer": pt.layer, "slot": slot, "metric": metric, "value": float(mean[f]),
                             "ci_low": float(lo[f]), "ci_high": float(hi[f]),
                             "n_pairs": int((~np.isnan(flat[:, f])).sum()),
                             "right_hint": float(np.nanmean(res.clean[metric])),
                             "wrong_hint": float(np.nanmean(res.corrupt[metric]))})  # fmt: skip
    return pd.DataFrame(rows), len(pairs)


def patch_figure(df: pd.DataFrame, metric: str = "p_answer") -> tuple[Any, pd.DataFrame]:
    """Heatmap layer x slot of ``metric`` when the right-hint state is patched into the wrong-hint run."""
    import plotly.graph_objects as go

    data = df[df["metric"] == metric]
    grid = data.pivot(index="layer", columns="slot", values="value").reindex(columns=list(HINT_SLOTS))
    ref = data.iloc[0]
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=list(HINT_SLOTS), y=grid.index.tolist(), colorscale="Viridis",
                               zmin=0, zmax=1, colorbar={"title": metric}))  # fmt: skip
    fig.update_layout(
        title=f"patch right-hint state into the wrong-hint run: {metric} of the true answer "
              f"(unpatched: right {ref['right_hint']:.2f}, wrong {ref['wrong_hint']:.2f}; {ref['n_pairs']} pairs)",
        xaxis_title="position slot", yaxis_title="layer (residual stream)", template="plotly_white",
    )  # fmt: skip
    return fig, data
