"""Knowledge extraction (METHODS 1): finetune on P_train questions, answer P_test questions.

Regimes:

- pretrain -> finetune: a pretrained checkpoint is finetuned on P_train items, fully or with LoRA (``peft``:
  adapters on ``q_proj``/``v_proj`` and optionally a low-rank update of the input embedding ``embed``, the paper's
  rank-128 embedding update), through the trainer's item path (``ItemSource`` of ``answer_item``: the loss covers
  the answer only; ABI models learn the answer as their blank span). ``method="none"`` evaluates as is.
- mixed training: ``mixed_train`` trains from scratch on every biography plus P_train QA sequences in one run
  (``bio_qa_ratio`` e.g. "2:8" of tokens), then evaluation runs with ``method="none"``.

Evaluation: greedy generation from ``[EOS_ID] + ids(prompt)`` (``greedy_generate`` for NTP and BICO models,
``abi_generate`` for ABI models, whose answer is a Part B span), scored by whole-answer exact match on token ids
and first-token accuracy, per task (attribute) and overall. ``run_extraction`` is the whole pipeline for any item
builder: QA here, inverse search in ``probekit.evaluate.inverse``.

Outputs of ``run_extraction(out=...)``: ``finetune/`` (the trainer's run directory; its checkpoint holds the
finetuned, merged model), ``adapter/`` (LoRA adapter in peft format, when kept), ``predictions.jsonl`` (one row per
item), ``results.parquet``/``results.csv`` (model, objective, task, metric, value, n, split) and figures.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from probekit.config import to_dict
from probekit.data.pools import ATTRIBUTES
from probekit.data.tokenizer import EOS_ID
from probekit.errors import UserError, UserFileNotFoundError
from probekit.evaluate.figures import results_frame, write_results
from probekit.evaluate.scoring import first_token_match, ids_exact_match
from probekit.io import atomic_write_json, atomic_write_jsonl, prepare_output_dir, read_jsonl
from probekit.stats import DEFAULT_LEVEL, DEFAULT_N_BOOT, person_bootstrap

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("full", "lora", "none")
# QA training sequences end with EOS after the answer (answer_item), so an ABI model's blank sits before an EOS:
# its Part A at inference is [EOS] + prompt + [MASK] + [EOS], as in abi_answer_batch.
QA_ABI_SUFFIX: tuple[int, ...] = (EOS_ID,)
OBJECTIVES: tuple[str, ...] = ("ntp", "abi", "bico")


@dataclass(frozen=True)
class EvalItem:
    """One prompt with its expected answer; ``task`` is the attribute (QA) or the attribute subset (inverse)."""

    pid: int
    task: str
    prompt: str
    answer: str


@dataclass
class FinetuneConfig:
    """How to finetune before evaluating (defaults: 20 epochs over the P_train items)."""

    method: str = "full"  # full | lora | none
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    embed_rank: int = 0  # LoRA rank of the input-embedding update (paper: 128); 0 = embedding frozen
    objective: str | None = None  # finetuning objective; None = the checkpoint's own
    epochs: float | None = 20.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32
    lr: float | None = None  # None: 3e-4 for full, 1e-3 for LoRA
    warmup_steps: int = 10
    weight_decay: float = 0.0
    merge: bool = True  # LoRA: merge the adapter into the weights (the checkpoint is then a plain model)
    save_adapter: bool = False  # LoRA: also write the adapter (peft format) to <out>/adapter
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"finetune method {self.method!r}: choose one of {METHODS}")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise UserError(f"finetune objective {self.objective!r}: choose one of {OBJECTIVES}")
        if self.lora_rank < 1 or self.embed_rank < 0:
            raise UserError("lora_rank must be >= 1 and embed_rank >= 0")
        if self.epochs is None and self.max_steps is None:
            raise UserError("set epochs or max_steps for finetuning")
        if not self.lora_targets:
            raise UserError("lora_targets is empty; e.g. ('q_proj', 'v_proj')")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.method == "lora" else 3e-4)


@dataclass
class FinetuneResult:
    model: torch.nn.Module  # the finetuned model (merged HookedLM, or a peft model when merge=False)
    checkpoint: Path | None  # loadable checkpoint of the merged/full model (None when merge=False)
    adapter: Path | None  # peft adapter directory, when written
    run_dir: Path
    steps: int
    train_loss: float | None
    trainable_params: int


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


def encode_items(tokenizer: Any, items: Sequence[EvalItem]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of every prompt and answer (no specials). An empty answer raises ``ValueError``."""
    if not items:
        return [], []
    prompts = tokenizer([it.prompt for it in items], add_special_tokens=False)["input_ids"]
    answers = tokenizer([it.answer for it in items], add_special_tokens=False)["input_ids"]
    for it, a in zip(items, answers):
        if not a:
            raise UserError(f"item for person {it.pid} ({it.task}) has an empty answer; every answer needs a token")
    return [list(p) for p in prompts], [list(a) for a in answers]


def check_fits(items: Sequence[EvalItem], tokenizer: Any, n_ctx: int, objective: str) -> None:
    """Raise ``ValueError`` before any work if a training/eval sequence would not fit the model's context.

    Conservative: every prompt must fit with the longest answer of ``items`` (generation runs that long).
    """
    if not items:
        return
    prompts, answers = encode_items(tokenizer, items)
    extra = 5 if objective == "abi" else 2  # EOS + EOS (causal) / EOS, [MASK], EOS, [START], [END] (ABI)
    longest = max(len(a) for a in answers)
    for it, p in zip(items, prompts):
        if len(p) + longest + extra > n_ctx:
            raise UserError(
                f"prompt for person {it.pid} ({it.task}) needs {len(p) + longest + extra} tokens with its answer, "
                f"over the model's context n_ctx={n_ctx}: {it.prompt[:80]!r}; use a model with a larger n_ctx "
                "or fewer attributes in the prompt"
            )


# ---------------------------------------------------------------------------------------------------------------
# Finetuning


def _peft_model(model: torch.nn.Module, cfg: FinetuneConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = list(cfg.lora_targets)
    rank_pattern: dict[str, int] = {}
    if cfg.embed_rank:
        if model.cfg.tie_embeddings:
            raise UserError("embed_rank > 0 needs untied embeddings: merging would also change the output layer")
        targets.append("embed")
        rank_pattern["embed"] = cfg.embed_rank
    lcfg = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        rank_pattern=rank_pattern, alpha_pattern={k: float(v) * cfg.lora_alpha / cfg.lora_rank
                                                   for k, v in rank_pattern.items()},
    )  # fmt: skip
    return get_peft_model(model, lcfg)


def finetune(
    model: torch.nn.Module,
    tokenizer: Any,
    objective: str,
    items: Sequence[EvalItem],
    cfg: FinetuneConfig,
    run_dir: str | Path,
    progress: bool = True,
    overwrite: bool = False,
    base_meta: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Finetune a copy of ``model`` on ``items`` (loss on the answer tokens only) with the trainer.

    ``objective``: the model's pretraining objective (``cfg.objective`` overrides it for finetuning). The input
    model is left untouched. Full: every parameter trains. LoRA: only the adapters train (base weights stay
    bit-identical); with ``merge`` the adapters are merged afterwards and the run's checkpoint is overwritten by
    the merged model, so it loads with ``load_checkpoint``; with ``save_adapter`` (or ``merge=False``) the adapter
    is also written in peft format to ``<run_dir>/adapter`` (load with ``load_adapter``). ``base_meta``: the base
    checkpoint's meta; its dataset, data and path are recorded in the finetuned checkpoint's meta.
    """
    from probekit.checkpoint import save_checkpoint
    from probekit.train import TrainConfig, train
    from probekit.train_data import ItemSource, answer_item

    if cfg.method == "none":
        raise ValueError("finetune called with method 'none'")
    if not items:
        raise UserError("no finetuning items (P_train is empty for these settings)")
    run_dir = Path(run_dir)
    ft_objective = cfg.objective or objective
    check_fits(items, tokenizer, model.cfg.n_ctx, ft_objective)
    prompts, answers = encode_items(tokenizer, items)
    train_items = [answer_item(p, a, loss_on_eos=ft_objective != "abi") for p, a in zip(prompts, answers)]
    tc = TrainConfig(
        out=str(run_dir), objective=ft_objective, seq_len=max(len(it.ids) for it in train_items),
        batch_size=cfg.batch_size, max_steps=cfg.max_steps, epochs=None if cfg.max_steps else cfg.epochs,
        lr=cfg.learning_rate, min_lr=cfg.learning_rate / 10, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, eval_windows=0, seed=cfg.seed, log_every=10,
    )  # fmt: skip
    model = copy.deepcopy(model)
    peft_model = None
    if cfg.method == "lora":
        with torch.random.fork_rng(devices=[]):  # seeded adapter init, global RNG left as it was
            torch.manual_seed(cfg.seed)
            peft_model = _peft_model(model, cfg)
        trained = peft_model.base_model.model  # the HookedLM with adapters injected (base frozen by peft)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        trained = model
    n_trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    source = ItemSource(train_items, seed=cfg.seed, name="finetune")
    result = train(tc, source, model=trained, tokenizer=tokenizer, progress=progress, overwrite=overwrite)
    base = base_meta or {}
    meta = {
        "finetune": to_dict(cfg), "base_objective": objective, "objective": ft_objective, "step": result.steps,
        "dataset": base.get("dataset"), "data": base.get("data"),
        "base_checkpoint": str(base["path"]) if base.get("path") else None,
        "tokens": result.tokens, "train_loss": result.train_loss,
    }  # fmt: skip
    adapter = None
    if peft_model is None:
        final: torch.nn.Module = result.model
        meta_file = result.checkpoint / "meta.json"
        atomic_write_json(meta_file, {**json.loads(meta_file.read_text(encoding="utf-8")), **meta})
        checkpoint: Path | None = result.checkpoint
    else:
        if cfg.save_adapter or not cfg.merge:
            adapter = run_dir / "adapter"
            peft_model.save_pretrained(str(adapter))
        if cfg.merge:
            final = peft_model.merge_and_unload()
            # replace the trainer's checkpoint (which holds the adapter-injected modules) by the merged model
            save_checkpoint(result.checkpoint, final, tokenizer, tc, meta=meta)
            checkpoint = result.checkpoint
        else:
            final, checkpoint = peft_model, None
            shutil.rmtree(result.checkpoint.parent, ignore_errors=True)  # not loadable without peft
    final.eval()
    return FinetuneResult(final, checkpoint, adapter, run_dir, result.steps, result.train_loss, n_trainable)


def load_adapter(checkpoint: str | Path, adapter: str | Path, device: str = "cpu") -> tuple[Any, Any, dict]:
    """A base checkpoint with a saved LoRA adapter applied: ``(peft_model, tokenizer, meta)``."""
    from peft import PeftModel

    from probekit.checkpoint import load_checkpoint

    if not (Path(adapter) / "adapter_config.json").exists():
        raise UserFileNotFoundError(f"{adapter} holds no adapter_config.json; write one with save_adapter=True")
    model, tok, meta = load_checkpoint(checkpoint, device=device)
    return PeftModel.from_pretrained(model, str(adapter)).eval(), tok, meta


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def generate_answers(
    model: torch.nn.Module,
    objective: str,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 64,
    progress: bool = False,
    abi_suffix: Sequence[int] = QA_ABI_SUFFIX,
    desc: str = "generate",
) -> list[list[int]]:
    """Greedy answers to ``prompts`` (ids without specials) from ``[EOS_ID] + prompt``: causal for NTP and BICO
    models; for ABI models a Part B span after Part A = ``[EOS] + prompt + [MASK] + abi_suffix``."""
    from probekit.generate import abi_generate, greedy_generate

    full = [[EOS_ID, *p] for p in prompts]
    out: list[list[int]] = []
    block = max(batch_size * 4, 1)
    for i in tqdm(range(0, len(full), block), desc=desc, unit="block", disable=not progress, leave=False):
        chunk = full[i : i + block]
        if objective == "abi":
            out += abi_generate(model, chunk, max_new_tokens, batch_size=batch_size, suffix=abi_suffix)
        else:
            out += greedy_generate(model, chunk, max_new_tokens, batch_size=batch_size)
    return out


def evaluate_items(
    model: torch.nn.Module,
    tokenizer: Any,
    objective: str,
    items: Sequence[EvalItem],
    batch_size: int = 64,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One record per item: pid, task, prompt, answer, generated (decoded), exact_match, first_token.

    Generation runs for (longest answer + 1) tokens, so an answer is exact only if the model also stops after it.
    """
    if not items:
        return []
    check_fits(items, tokenizer, model.cfg.n_ctx, objective)
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
    if objective not in OBJECTIVES:
        raise UserError(
            f"checkpoint {meta.get('path')} does not say which objective trained it (got {objective!r}); "
            f"pass the objective explicitly (one of {OBJECTIVES})"
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
) -> ExtractionResult:
    """Load, (finetune on P_train), evaluate on P_test (and P_train with ``eval_train``), write results to ``out``.

    Every input is checked before any training: the output directory, the checkpoint, the dataset, the
    tokenizer match, the items (people present, answers non-empty, sequences within the context).
    """
    from probekit.checkpoint import load_checkpoint
    from probekit.data.store import load_dataset

    out = prepare_output_dir(out, overwrite)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, meta = load_checkpoint(checkpoint, device=device)
    objective = model_objective(meta, objective)
    dataset = load_dataset(data)
    if dataset.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(
            f"checkpoint {meta['path']} was trained with a different tokenizer than dataset {dataset.root}; "
            "evaluate a model on the dataset it was trained on"
        )
    train_items = make_items(dataset, dataset.split["train"])
    test_items = make_items(dataset, dataset.split["test"])
    if not test_items:
        raise UserError(f"no {kind} items for P_test of {dataset.root}")
    modes = {objective, finetune_cfg.objective or objective}
    for items in (train_items, test_items):
        check_fits(items, tokenizer, model.cfg.n_ctx, "abi" if "abi" in modes else objective)
    name = model_name or default_model_name(meta)

    ft = None
    if finetune_cfg.method != "none":
        ft = finetune(
            model, tokenizer, objective, train_items, finetune_cfg, out / "finetune", progress, overwrite, meta
        )
        model, objective = ft.model, finetune_cfg.objective or objective
    splits = [("test", test_items)] + ([("train", train_items)] if eval_train else [])
    records, rows = [], []
    for split, items in splits:
        recs = evaluate_items(model, tokenizer, objective, items, batch_size, progress)
        records += [{**r, "split": split} for r in recs]
        rows += summarize(recs, name, objective, split=split, kind=kind, finetune=finetune_cfg.method)
    table = results_frame(rows)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / "predictions.jsonl", records)
    atomic_write_json(out / "eval_config.json", {
        "kind": kind, "checkpoint": str(meta["path"]), "data": str(dataset.root), "model": name,
        "objective": objective, "finetune": to_dict(finetune_cfg),
        "finetune_checkpoint": str(ft.checkpoint) if ft and ft.checkpoint else None,
        "adapter": str(ft.adapter) if ft and ft.adapter else None,
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
    from probekit.train import train

    cfg = copy.deepcopy(train_cfg)
    cfg.qa_mix = parse_ratio(bio_qa_ratio)
    return train(cfg, progress=progress, overwrite=overwrite)
