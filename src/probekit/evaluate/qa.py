"""Knowledge extraction (Allen-Zhu & Li, Physics of LMs 3.1): finetune on P_train questions, answer P_test questions.

Regimes:

- pretrain -> finetune: a pretrained checkpoint is finetuned on P_train items, fully or with LoRA, by the
  finetuning stage ``probekit.training.finetune`` (the loss covers the answer only; ABI models learn the answer as their
  blank span). ``method="none"`` evaluates as is. ``FinetuneConfig``, ``finetune``, ``EvalItem`` and friends are
  re-exported here from ``probekit.training.finetune``.
- mixed training: ``mixed_train`` trains from scratch on every biography plus P_train QA sequences in one run
  (``bio_qa_ratio`` e.g. "2:8" of tokens), then evaluation runs with ``method="none"``.

Evaluation: greedy generation from ``[EOS_ID] + ids(prompt)`` by the model's objective (``Objective.generate``:
causal for NTP and BICO models, a Part B span for ABI models), scored by whole-answer exact match on token ids
and first-token accuracy, per task (attribute) and overall. ``run_extraction`` is the whole pipeline for any item
builder: QA here, inverse search in ``probekit.evaluate.inverse``.

Outputs of ``run_extraction(out=...)``: ``finetune/`` (the trainer's run directory; its checkpoint holds the
finetuned, merged model), ``adapter/`` (LoRA adapter in peft format, when kept), ``predictions.jsonl`` (one row per
item), ``results.parquet``/``results.csv`` (model, objective, task, metric, value, n, split) and figures.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from probekit.data.pools import ATTRIBUTES
from probekit.data.tokenizer import EOS_ID
from probekit.data.tokens import check_tokenizer_fits, tokenizer_record
from probekit.errors import UserError
from probekit.evaluate.scoring import first_token_match, ids_exact_match
from probekit.io import atomic_path, atomic_write_json, atomic_write_jsonl, prepare_output_dir, read_jsonl
from probekit.objectives import REGISTRY, as_objective, get_objective, objective_names
from probekit.objectives.base import Objective
from probekit.probes.activations import model_dims
from probekit.reporting.evaluation import results_frame, write_results
from probekit.serde import to_dict
from probekit.stats import DEFAULT_LEVEL, DEFAULT_N_BOOT, person_bootstrap
from probekit.training.config import FinetuneConfig
from probekit.training.finetune import (
    ANSWER_SUFFIX,
    EvalItem,
    FinetuneResult,
    check_fits,
    encode_items,
    finetune,
)

log = logging.getLogger(__name__)

# QA training sequences end with EOS after the answer (answer_item), so an ABI model's blank sits before an EOS:
# its Part A at inference is [EOS] + prompt + [MASK] + [EOS], as in ABIObjective.answer_batch.
QA_ABI_SUFFIX: tuple[int, ...] = ANSWER_SUFFIX


# ---------------------------------------------------------------------------------------------------------------
# Items


def qa_eval_items(dataset: Any, pids: Sequence[int], attrs: Sequence[str] = ATTRIBUTES) -> list[EvalItem]:
    """The QA items of ``pids`` for ``attrs`` (dataset order). Unknown pids or attributes raise ``ValueError``."""
    bad_attrs = [a for a in attrs if a not in ATTRIBUTES]
    if bad_attrs or not attrs:
        raise UserError(f"attributes {list(attrs)}: choose a non-empty subset of {', '.join(ATTRIBUTES)}")
    check_pids(dataset, pids)
    want, attr_set = set(pids), set(attrs)
    return [EvalItem(q.pid, q.attr, q.prompt, q.answer) for q in dataset.qa if q.pid in want and q.attr in attr_set]


def read_items(path: str | Path) -> list[EvalItem]:
    """QA items from a JSONL file of ``{"pid", "attr", "prompt", "answer"}`` rows (e.g. rewritten questions)."""
    items = []
    for k, r in enumerate(read_jsonl(path), start=1):
        if not isinstance(r, dict) or not {"pid", "attr", "prompt", "answer"} <= set(r):
            raise UserError(f"{path}: record {k} needs the fields pid, attr, prompt and answer")
        if not str(r["answer"]).strip():
            raise UserError(f"{path}: record {k} has an empty answer")
        items.append(EvalItem(int(r["pid"]), str(r["attr"]), str(r["prompt"]), str(r["answer"])))
    if not items:
        raise UserError(f"{path} holds no items")
    return items


def select_items(dataset: Any, items: Sequence[EvalItem], pids: Sequence[int]) -> list[EvalItem]:
    """The ``items`` of people in ``pids``; every item's person must exist in ``dataset`` (else ``ValueError``)."""
    check_pids(dataset, [it.pid for it in items])
    want = set(pids)
    return [it for it in items if it.pid in want]


def check_pids(dataset: Any, pids: Sequence[int]) -> None:
    """Raise ``ValueError`` if any pid is not a person of ``dataset`` (e.g. QA items from another dataset)."""
    known = {p.pid for p in dataset.people}
    missing = sorted(set(pids) - known)
    if missing:
        raise UserError(
            f"{len(missing)} person id(s) are not in dataset {dataset.root} (e.g. {missing[:5]}); evaluate with "
            "the dataset the items were made from"
        )


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def generate_answers(
    model: torch.nn.Module,
    objective: Objective | str,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 64,
    progress: bool = False,
    abi_suffix: Sequence[int] = QA_ABI_SUFFIX,
    desc: str = "generate",
) -> list[list[int]]:
    """Greedy answers to ``prompts`` (ids without specials) from ``[EOS_ID] + prompt`` by ``objective`` (or its
    name; ``Objective.generate``): causal for NTP and BICO models; for ABI models a Part B span after Part A =
    ``[EOS] + prompt + [MASK] + abi_suffix``."""
    obj = as_objective(objective)
    full = [[EOS_ID, *p] for p in prompts]
    out: list[list[int]] = []
    block = max(batch_size * 4, 1)
    for i in tqdm(range(0, len(full), block), desc=desc, unit="block", disable=not progress, leave=False):
        out += obj.generate(model, full[i : i + block], max_new_tokens, batch_size=batch_size, suffix=abi_suffix)
    return out


def evaluate_items(
    model: torch.nn.Module,
    tokenizer: Any,
    objective: Objective | str,
    items: Sequence[EvalItem],
    batch_size: int = 64,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One record per item: pid, task, prompt, answer, generated (decoded), exact_match, first_token.

    Generation runs for (longest answer + 1) tokens, so an answer is exact only if the model also stops after it.
    """
    if not items:
        return []
    objective = as_objective(objective)
    check_fits(items, tokenizer, model_dims(model).n_ctx, objective)
    prompts, answers = encode_items(tokenizer, items)
    gen = generate_answers(model, objective, prompts, max(len(a) for a in answers) + 1, batch_size, progress)
    return [
        {
            "pid": it.pid, "task": it.task, "prompt": it.prompt, "answer": it.answer,
            "generated": tokenizer.decode(g), "exact_match": ids_exact_match(g, a),
            "first_token": first_token_match(g, a),
        }
        for it, a, g in zip(items, answers, gen)
    ]  # fmt: skip


def summarize(
    records: Sequence[dict[str, Any]],
    model_name: str,
    objective: str,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    **extra: Any,
) -> list[dict]:
    """Result rows per task and ``overall`` for exact_match and first_token (``extra`` columns, e.g. split), each
    with the person-clustered bootstrap interval ``ci_low``/``ci_high`` (``probekit.stats``: people resampled,
    all of a person's questions together; ``n_boot`` = 0 leaves them out)."""
    if not records:
        return []
    df = pd.DataFrame(records)
    rows = []
    tasks = list(dict.fromkeys(df["task"].astype(str)))
    masks = np.stack([(df["task"].astype(str) == t).to_numpy() for t in tasks] + [np.ones(len(df), dtype=bool)])
    for metric in ("exact_match", "first_token"):
        values = df[metric].to_numpy(dtype=np.float64)
        iv = (person_bootstrap(np.broadcast_to(values, masks.shape), df["pid"].to_numpy(), n_boot, level, seed,
                               mask=masks) if n_boot else None)  # fmt: skip
        for i, task in enumerate(tasks + ["overall"]):
            ci = {"ci_low": float(iv.low[i]), "ci_high": float(iv.high[i])} if iv is not None else {}
            rows.append({"model": model_name, "objective": objective, "task": task, "metric": metric,
                         "value": float(values[masks[i]].mean()), "n": int(masks[i].sum()), **ci, **extra})  # fmt: skip
    order = {t: i for i, t in enumerate(tasks + ["overall"])}
    return sorted(rows, key=lambda r: order[r["task"]])  # per task: exact_match, first_token (the old order)


# ---------------------------------------------------------------------------------------------------------------
# Pipelines


@dataclass
class ExtractionResult:
    table: pd.DataFrame
    records: list[dict[str, Any]]
    finetune: FinetuneResult | None
    paths: list[Path] = field(default_factory=list)


ItemBuilder = Callable[[Any, Sequence[int]], list[EvalItem]]


def model_objective(meta: dict[str, Any], override: str | None = None) -> str:
    """The objective a checkpoint was trained with (``override`` for models saved outside the trainer)."""
    objective = override or meta.get("objective")
    if objective not in REGISTRY:
        raise UserError(
            f"checkpoint {meta.get('path')} does not say which objective trained it (got {objective!r}); "
            f"pass the objective explicitly (one of {objective_names()})"
        )
    return str(objective)


def default_model_name(meta: dict[str, Any]) -> str:
    """A checkpoint's name in results tables: its run directory's name (or the checkpoint directory's)."""
    ckpt = Path(str(meta["path"]))
    return ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.name


def run_extraction(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    make_items: ItemBuilder,
    finetune_cfg: FinetuneConfig,
    kind: str = "qa",
    model_name: str | None = None,
    objective: str | None = None,
    eval_train: bool = False,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    png: bool = True,
    train_groups: Sequence[str] = (),
) -> ExtractionResult:
    """Load, (finetune on P_train), evaluate on P_test (and P_train with ``eval_train``), write results to ``out``.

    ``train_groups``: finetune on (and report as P_train) the P_train people of these dataset groups only. For a
    dataset with groups, ``results_by_group.csv`` also gives every split's rates per group (same columns plus
    ``group``), e.g. the minorities' P_test accuracy of a celebrities + minorities corpus.

    Every input is checked before any training: the output directory, the checkpoint, the dataset, the
    tokenizer match, the items (people present, answers non-empty, sequences within the context).
    """
    from probekit.data.store import load_dataset
    from probekit.model.checkpoint import load_checkpoint

    out = prepare_output_dir(out, overwrite)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, meta = load_checkpoint(checkpoint, device=device)
    base = get_objective(model_objective(meta, objective))
    ft_objective = get_objective(finetune_cfg.objective) if finetune_cfg.objective else base
    dataset = load_dataset(data)
    train_pids = dataset.split["train"]
    if train_groups:
        chosen = dataset.group_pids(train_groups)
        train_pids = [p for p in train_pids if p in chosen]
    train_items = make_items(dataset, train_pids)
    test_items = make_items(dataset, dataset.split["test"])
    if not test_items:
        raise UserError(f"no {kind} items for P_test of {dataset.root}")
    check_tokenizer_fits(tokenizer, [f"{it.prompt} {it.answer}" for it in [*train_items, *test_items]],
               f"the {kind} items of dataset {dataset.root}")  # fmt: skip
    # the objective (before or after finetuning) that needs the most context
    widest = max((base, ft_objective), key=lambda o: o.inference_extra_tokens(len(QA_ABI_SUFFIX)))
    for items in (train_items, test_items):
        check_fits(items, tokenizer, model.cfg.n_ctx, widest)
    name = model_name or default_model_name(meta)

    ft = None
    obj = base
    if finetune_cfg.method != "none":
        ft = finetune(model, tokenizer, base, train_items, finetune_cfg, out / "finetune", progress, overwrite, meta)
        model, obj = ft.model, ft_objective
    splits = [("test", test_items)] + ([("train", train_items)] if eval_train else [])
    records, rows = [], []
    for split, items in splits:
        recs = evaluate_items(model, tokenizer, obj, items, batch_size, progress)
        records += [{**r, "split": split} for r in recs]
        rows += summarize(recs, name, obj.name, split=split, kind=kind, finetune=finetune_cfg.method)
    table = results_frame(rows)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / "predictions.jsonl", records)
    if dataset.groups:
        by_group = []
        for group, pids in dataset.groups.items():
            members = set(pids)
            for split, _ in splits:
                recs = [r for r in records if r["split"] == split and r["pid"] in members]
                by_group += summarize(recs, name, obj.name, split=split, kind=kind, finetune=finetune_cfg.method,
                                      group=group)  # fmt: skip
        if by_group:
            with atomic_path(out / "results_by_group.csv") as tmp:
                results_frame(by_group).to_csv(tmp, index=False)
    atomic_write_json(out / "eval_config.json", {
        "kind": kind, "checkpoint": str(meta["path"]), "data": str(dataset.root), "model": name,
        "objective": obj.name, "finetune": to_dict(finetune_cfg),
        **({"train_groups": list(train_groups)} if train_groups else {}),
        "finetune_checkpoint": str(ft.checkpoint) if ft and ft.checkpoint else None,
        "adapter": str(ft.adapter) if ft and ft.adapter else None,
        "tokenizer": tokenizer_record(tokenizer),
    })  # fmt: skip
    paths = write_results(table, out, "results", metrics=("exact_match", "first_token"), png=png)
    return ExtractionResult(table, records, ft, paths)


def run_qa(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    finetune_cfg: FinetuneConfig | None = None,
    attrs: Sequence[str] = ATTRIBUTES,
    items_file: str | Path | None = None,
    **kwargs: Any,
) -> ExtractionResult:
    """QA extraction: finetune on P_train questions of ``attrs`` (per ``finetune_cfg``), answer P_test's.

    ``items_file``: QA items from a JSONL file instead of the dataset's own (split by person: P_train/P_test).
    Keyword arguments are those of ``run_extraction`` (model_name, eval_train, batch_size, device, progress, ...).
    """
    if items_file is not None:
        file_items = read_items(items_file)
        builder: ItemBuilder = lambda ds, pids: select_items(ds, file_items, pids)  # noqa: E731
    else:
        builder = lambda ds, pids: qa_eval_items(ds, pids, attrs)  # noqa: E731
    return run_extraction(checkpoint, data, out, builder, finetune_cfg or FinetuneConfig(), "qa", **kwargs)


def parse_ratio(ratio: str | float) -> float:
    """A bio:QA token ratio ("2:8") as the share of QA tokens (0.8), or a share given directly."""
    if isinstance(ratio, (int, float)):
        share = float(ratio)
    else:
        bio, sep, qa = str(ratio).partition(":")
        try:
            share = float(qa) / (float(bio) + float(qa)) if sep else float(bio)
        except (ValueError, ZeroDivisionError):
            raise UserError(f"bio:QA ratio {ratio!r} must look like 2:8 (or a QA share such as 0.8)") from None
    if not 0 < share < 1:
        raise UserError(f"bio:QA ratio {ratio!r} gives a QA share of {share}; it must be strictly between 0 and 1")
    return share


def mixed_train(
    train_cfg: Any, bio_qa_ratio: str | float = "2:8", progress: bool = True, overwrite: bool = False
) -> Any:
    """Mixed training: biographies of everyone plus P_train QA sequences in one run (``TrainConfig.qa_mix`` set
    from ``bio_qa_ratio``). Returns the trainer's ``TrainResult``; evaluate its checkpoint with ``method="none"``."""
    from probekit.training.trainer import train

    cfg = copy.deepcopy(train_cfg)
    cfg.qa_mix = parse_ratio(bio_qa_ratio)
    return train(cfg, progress=progress, overwrite=overwrite)
