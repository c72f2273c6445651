"""Reversal-curse tasks (Berglund et al., arXiv 2309.12288): N2D, D2N and their reverses on fictitious people.

Given a directory in the public format (``probekit.data.reversal``) and a model trained on its training facts
(``train_reversal``: every training row ``[EOS] + ids(prompt + completion)`` through the trainer with any
objective), ``evaluate_reversal`` scores every test task two ways:

- exact match: the greedy completion (causal for NTP/BICO models, a Part B span for ABI models) starts with the
  target, case-insensitively and whitespace-normalised (both sides decoded by the same tokenizer);
- log-probability: the summed log-probability of the correct completion versus that of a random other completion
  of the same task (seeded; a different target), with a paired significance test (Wilcoxon signed-rank by
  default; ``probekit.evaluate.scoring.paired_test``) whose p-value is reported.

Metrics per task: ``exact_match``, ``logprob_correct``, ``logprob_random`` (means), ``logprob_diff`` (mean of
correct - random), ``correct_preferred`` (share of items where the correct completion is more likely), ``p_value``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from probekit.data.reversal import TASK_FILES, ReversalData, load_reversal_dir
from probekit.data.tokenizer import EOS_ID
from probekit.data.tokens import tokenizer_record
from probekit.errors import UserError
from probekit.evaluate.qa import default_model_name, generate_answers, model_objective
from probekit.evaluate.scoring import completion_logprobs, normalize_text, paired_test, text_exact_match
from probekit.io import atomic_write_json, atomic_write_jsonl, prepare_output_dir
from probekit.objectives import as_objective, get_objective
from probekit.objectives.base import Objective
from probekit.probes.activations import model_dims
from probekit.reporting.evaluation import results_frame, write_results
from probekit.stats import DEFAULT_N_BOOT, person_bootstrap

DEFAULT_TASKS: tuple[str, ...] = ("N2D", "D2N", "N2D-reverse", "D2N-reverse")


@dataclass
class ReversalResult:
    table: pd.DataFrame
    records: list[dict[str, Any]]
    paths: list[Path] = field(default_factory=list)


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def random_others(completions: Sequence[str], seed: int | str) -> list[int | None]:
    """For each row, the index of a random row with a different (normalised) completion; None if there is none.

    ``seed``: an int or a string (``random.Random`` hashes strings deterministically)."""
    rng = random.Random(seed)
    keys = [normalize_text(c) for c in completions]
    out: list[int | None] = []
    for k in keys:
        choices = [j for j, other in enumerate(keys) if other != k]
        out.append(rng.choice(choices) if choices else None)
    return out


def check_tasks_fit(
    data: ReversalData, tasks: Sequence[str], tokenizer: Any, n_ctx: int, objective: Objective | str
) -> None:
    """Raise ``ValueError`` before any work if a prompt plus its longest task completion exceeds the context."""
    extra = 1 + as_objective(objective).inference_extra_tokens()  # EOS (+ [MASK], [START] for ABI)
    for task in tasks:
        rows = data.task(task)
        prompts, comps = _encode(tokenizer, [r.prompt for r in rows]), _encode(tokenizer, [r.completion for r in rows])
        longest = max(len(c) for c in comps)
        for k, (r, p, c) in enumerate(zip(rows, prompts, comps), start=1):
            if not c:
                raise UserError(f"{task} ({TASK_FILES[task]}.jsonl) record {k}: the completion has no tokens")
            if len(p) + longest + extra > n_ctx:
                raise UserError(
                    f"{task} ({TASK_FILES[task]}.jsonl) record {k}: the prompt needs {len(p) + longest + extra} "
                    f"tokens with its completion, over the model's context n_ctx={n_ctx}: {r.prompt[:80]!r}"
                )


def evaluate_reversal(
    model: torch.nn.Module,
    tokenizer: Any,
    objective: Objective | str,
    data: ReversalData,
    tasks: Sequence[str] | None = None,
    model_name: str = "model",
    seed: int = 0,
    test: str = "wilcoxon",
    batch_size: int = 64,
    progress: bool = False,
    n_boot: int = DEFAULT_N_BOOT,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Score ``tasks`` (default: the four of the paper that the data has). Returns (per-item records, rows).
    Rates (exact match, correct preferred) carry person-clustered bootstrap intervals (``ci_low``/``ci_high``)."""
    tasks = list(tasks) if tasks is not None else [t for t in DEFAULT_TASKS if t in data.tasks]
    objective = as_objective(objective)
    check_tasks_fit(data, tasks, tokenizer, model_dims(model).n_ctx, objective)
    records: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for task in tqdm(tasks, desc="reversal tasks", disable=not progress):
        items = data.task(task)
        prompts = _encode(tokenizer, [r.prompt for r in items])
        targets = _encode(tokenizer, [r.completion for r in items])
        gen = generate_answers(model, objective, prompts, max(len(c) for c in targets), batch_size, abi_suffix=())
        exact = [text_exact_match(tokenizer.decode(g), tokenizer.decode(c)) for g, c in zip(gen, targets)]
        others = random_others([r.completion for r in items], f"{seed}-{task}")  # same draw whatever the task list
        have = [k for k, j in enumerate(others) if j is not None]
        lp_correct = completion_logprobs(model, prompts, targets, objective, batch_size)
        lp_random = [float("nan")] * len(items)
        if have:
            other_targets = [targets[j] for j in others if j is not None]
            scored = completion_logprobs(model, [prompts[k] for k in have], other_targets, objective, batch_size)
            for k, v in zip(have, scored):
                lp_random[k] = v
        for k, r in enumerate(items):
            records.append({
                "task": task, "prompt": r.prompt, "target": r.completion, "generated": tokenizer.decode(gen[k]),
                "exact_match": exact[k], "logprob_correct": lp_correct[k], "logprob_random": lp_random[k],
                "random_completion": items[o].completion if (o := others[k]) is not None else None,
            })  # fmt: skip
        a, b = np.array([lp_correct[k] for k in have]), np.array([lp_random[k] for k in have])
        res = paired_test(a, b, method=test, seed=seed)
        base = {"model": model_name, "objective": objective.name, "task": task}
        # intervals resample people: a fictitious person is identified by their completion (a unique name or
        # description), so all paraphrased prompts of one person travel together
        person = np.array([r.completion for r in items])
        em_ci = person_bootstrap(np.asarray(exact, dtype=np.float64), person, n_boot, seed=seed)
        pref_ci = (person_bootstrap((a > b).astype(np.float64), person[have], n_boot, seed=seed) if have
                   else None)  # fmt: skip
        metrics = [
            ("exact_match", float(np.mean(exact)), len(items), em_ci),
            ("logprob_correct", float(np.mean(lp_correct)), len(items), None),
            ("logprob_random", float(b.mean()) if have else float("nan"), len(have), None),
            ("logprob_diff", float((a - b).mean()) if have else float("nan"), len(have), None),
            ("correct_preferred", float((a > b).mean()) if have else float("nan"), len(have), pref_ci),
            ("p_value", res.p_value, len(have), None),
        ]
        rows += [
            {
                **base,
                "metric": m,
                "value": v,
                "n": n,
                "test": res.method,
                "ci_low": float(ci.low[0]) if ci is not None else float("nan"),
                "ci_high": float(ci.high[0]) if ci is not None else float("nan"),
            }
            for m, v, n, ci in metrics
        ]
    return records, rows


def reversal_source(data: ReversalData, seed: int = 0) -> Any:
    """The training facts as trainer items: ``[EOS] + ids(prompt + completion)`` per row, loss on every token."""
    from probekit.model.batch import TrainItem
    from probekit.training.data import ItemSource

    texts = data.train_texts()
    if not texts:
        raise UserError(f"{data.root} has no training rows (*_prompts_train.jsonl)")
    ids = _encode(data.tokenizer, texts)
    name = f"reversal:{Path(str(data.root)).name}" if data.root else "reversal"
    return ItemSource([TrainItem([EOS_ID, *s]) for s in ids], seed=seed, name=name)


def _load(data: str | Path | ReversalData) -> ReversalData:
    return data if isinstance(data, ReversalData) else load_reversal_dir(data)


def train_reversal(
    data_dir: str | Path | ReversalData,
    train_cfg: Any,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
) -> Any:
    """Train a model from scratch (or from ``train_cfg.init_from``) on the directory's training facts.

    ``data_dir``: the directory (or its loaded ``ReversalData``). ``train_cfg`` is a ``TrainConfig`` (its ``data``
    is set to the directory; ``objective`` picks NTP, ABI or BICO); ``resume`` continues from the run's last
    checkpoint. Returns the trainer's ``TrainResult``; its checkpoint carries the data's tokenizer.
    """
    import copy

    from probekit.training.trainer import train

    data = _load(data_dir)
    cfg = copy.deepcopy(train_cfg)
    cfg.data = str(data.root)
    return train(cfg, reversal_source(data, cfg.seed), tokenizer=data.tokenizer, progress=progress, overwrite=overwrite,
                 resume=resume)  # fmt: skip


def run_reversal(
    checkpoint: str | Path,
    data_dir: str | Path | ReversalData,
    out: str | Path,
    tasks: Sequence[str] | None = None,
    model_name: str | None = None,
    objective: str | None = None,
    seed: int = 0,
    test: str = "wilcoxon",
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    png: bool = True,
) -> ReversalResult:
    """Evaluate a checkpoint on a reversal data directory; write predictions, the results table and figures.

    Checked before any work: the output directory, the data files, the tokenizer match, the tasks, the lengths.
    """
    from probekit.model.checkpoint import load_checkpoint

    out = prepare_output_dir(out, overwrite)
    data = _load(data_dir)
    unknown = [t for t in tasks or () if t not in data.tasks]
    if unknown:
        raise UserError(f"task(s) {unknown} not available in {data.root}; available: {data.tasks}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, meta = load_checkpoint(checkpoint, device=device)
    obj = get_objective(model_objective(meta, objective))
    if tokenizer.get_vocab() != data.tokenizer.get_vocab():  # the model's own tokens: its tokenizer must fit the text
        from probekit.data.tokens import check_tokenizer_fits

        texts = [r.text for rows in data.files.values() for r in rows]
        try:
            check_tokenizer_fits(tokenizer, texts, f"the reversal data {data.root}")
        except UserError as e:  # the other way out: train a model on this data first
            raise UserError(f"{e}; or train one on it first: `probekit eval reversal --data DIR --train-config "
                            "CFG.yaml --out OUT`") from None  # fmt: skip
    name = model_name or default_model_name(meta)
    records, rows = evaluate_reversal(model, tokenizer, obj, data, tasks, name, seed, test, batch_size, progress)
    table = results_frame(rows)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / "predictions.jsonl", records)
    atomic_write_json(out / "eval_config.json", {
        "kind": "reversal", "checkpoint": str(meta["path"]), "data": str(data.root), "model": name,
        "objective": obj.name,
        "tasks": sorted({r["task"] for r in records}), "seed": seed, "test": test,
        "tokenizer": tokenizer_record(tokenizer),
    })  # fmt: skip
    paths = write_results(table, out, "results", metrics=("exact_match", "correct_preferred"), png=png)
    return ReversalResult(table, records, paths)
