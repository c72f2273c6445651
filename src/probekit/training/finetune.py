"""Finetuning as its own stage: a copy of a model trained on prompt/answer items, the loss on the answer only.

Used by QA extraction and inverse search (``probekit.evaluate.qa.run_extraction``) and the distraction work
(``probekit.evaluate.distract``); the reversal curse trains its models from scratch (``train_reversal``) and has no
finetuning stage. ``finetune(model, tokenizer, objective, items, FinetuneConfig(...), run_dir)`` trains through the
trainer's item path: the objective makes each item (``Objective.answer_item``: ``[EOS] + prompt + answer +
[EOS]``) and each batch (``Objective.answer_batch``; ABI models learn the answer as their blank's span), fully or
with LoRA (``peft``: adapters on ``q_proj``/``v_proj`` and optionally a low-rank update of the input embedding
``embed``, the paper's rank-128 embedding update).

``EvalItem`` (one prompt with its answer), ``encode_items`` and ``check_fits`` live here because finetuning and
evaluation share them; ``probekit.evaluate.qa`` re-exports all of these names.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from probekit.data.tokenizer import EOS_ID
from probekit.errors import UserError, UserFileNotFoundError
from probekit.io import atomic_write_json
from probekit.objectives import as_objective, get_objective
from probekit.objectives.base import Objective
from probekit.serde import to_dict
from probekit.training.config import FinetuneConfig as FinetuneConfig

# Finetuning items end with EOS after the answer (``answer_item``), so an infilling (ABI) model's blank sits
# before an EOS: its Part A at inference is [EOS] + prompt + [MASK] + [EOS].
ANSWER_SUFFIX: tuple[int, ...] = (EOS_ID,)

__all__ = [
    "ANSWER_SUFFIX",
    "EvalItem",
    "FinetuneConfig",
    "FinetuneResult",
    "check_fits",
    "encode_items",
    "finetune",
    "load_adapter",
]


@dataclass(frozen=True)
class EvalItem:
    """One prompt with its expected answer; ``task`` is the attribute (QA) or the attribute subset (inverse)."""

    pid: int
    task: str
    prompt: str
    answer: str


@dataclass
class FinetuneResult:
    model: torch.nn.Module  # the finetuned model (merged HookedLM, or a peft model when merge=False)
    checkpoint: Path | None  # loadable checkpoint of the merged/full model (None when merge=False)
    adapter: Path | None  # peft adapter directory, when written
    run_dir: Path
    steps: int
    train_loss: float | None
    trainable_params: int


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


def check_fits(items: Sequence[EvalItem], tokenizer: Any, n_ctx: int, objective: Objective | str) -> None:
    """Raise ``ValueError`` before any work if a training/eval sequence would not fit the model's context.

    Conservative: every prompt must fit with the longest answer of ``items`` (generation runs that long).
    """
    if not items:
        return
    prompts, answers = encode_items(tokenizer, items)
    # [EOS] + the objective's layout around the answer + the stop token (causal: 2; ABI: EOS, [MASK], EOS,
    # [START], [END] = 5)
    extra = 2 + as_objective(objective).inference_extra_tokens(len(ANSWER_SUFFIX))
    longest = max(len(a) for a in answers)
    for it, p in zip(items, prompts):
        if len(p) + longest + extra > n_ctx:
            raise UserError(
                f"prompt for person {it.pid} ({it.task}) needs {len(p) + longest + extra} tokens with its answer, "
                f"over the model's context n_ctx={n_ctx}: {it.prompt[:80]!r}; use a model with a larger n_ctx "
                "or fewer attributes in the prompt"
            )


def _model_cfg(model: torch.nn.Module) -> Any:
    """A HookedLM's ``ModelConfig`` (torch types unknown module attributes as ``Tensor | Module``)."""
    return cast(Any, model).cfg


def _peft_model(model: torch.nn.Module, cfg: FinetuneConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    from probekit.model.foreign import LORA_TARGETS, ForeignLM

    targets = list(cfg.lora_targets)
    rank_pattern: dict[str, int] = {}
    if isinstance(model, ForeignLM):  # a model trained elsewhere: its own names for the attention projections
        kind = model.cfg.model_type
        if tuple(targets) == ("q_proj", "v_proj"):  # the default, in probekit's (and Llama's) names
            if kind not in LORA_TARGETS:
                raise UserError(f"no default LoRA targets for a {kind} model; set finetune.lora_targets to its "
                                "attention projection modules")  # fmt: skip
            targets = list(LORA_TARGETS[kind])
        if cfg.embed_rank:
            raise UserError(f"embed_rank > 0 (the embedding update) is supported for probekit's model only, not "
                            f"a {kind} checkpoint; set embed_rank: 0")  # fmt: skip
    if cfg.embed_rank:
        if _model_cfg(model).tie_embeddings:
            raise UserError("embed_rank > 0 needs untied embeddings: merging would also change the output layer")
        targets.append("embed")
        rank_pattern["embed"] = cfg.embed_rank
    conv1d = isinstance(model, ForeignLM) and model.cfg.model_type == "gpt2"  # GPT-2 stores its weights transposed
    lcfg = LoraConfig(
        fan_in_fan_out=conv1d,
        r=cfg.lora_rank,
        lora_alpha=cast(int, cfg.lora_alpha),
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        rank_pattern=rank_pattern,
        alpha_pattern={k: float(v) * cfg.lora_alpha / cfg.lora_rank for k, v in rank_pattern.items()},
    )  # peft types lora_alpha as int; a float works
    return get_peft_model(model, lcfg)


def finetune(
    model: torch.nn.Module,
    tokenizer: Any,
    objective: Objective | str,
    items: Sequence[EvalItem],
    cfg: FinetuneConfig,
    run_dir: str | Path,
    progress: bool = True,
    overwrite: bool = False,
    base_meta: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Finetune a copy of ``model`` on ``items`` (loss on the answer tokens only) with the trainer.

    ``objective``: the model's pretraining objective, or its name (``cfg.objective`` overrides it for finetuning;
    the trainer builds the finetuning objective from its name, with default settings, as the answer batches
    need none). Training items come from ``Objective.answer_item`` and batches from ``answer_batch``. The input
    model is left untouched. Full: every parameter trains. LoRA: only the adapters train (base weights stay
    bit-identical); with ``merge`` the adapters are merged afterwards and the run's checkpoint is overwritten by
    the merged model, so it loads with ``load_checkpoint``; with ``save_adapter`` (or ``merge=False``) the adapter
    is also written in peft format to ``<run_dir>/adapter`` (load with ``load_adapter``). ``base_meta``: the base
    checkpoint's meta; its dataset, data and path are recorded in the finetuned checkpoint's meta.
    """
    from probekit.model.checkpoint import save_checkpoint
    from probekit.training.config import TrainConfig
    from probekit.training.data import ItemSource
    from probekit.training.trainer import train

    if cfg.method == "none":
        raise ValueError("finetune called with method 'none'")
    if not items:
        raise UserError("no finetuning items (P_train is empty for these settings)")
    run_dir = Path(run_dir)
    base_objective = as_objective(objective)
    ft_objective = get_objective(cfg.objective) if cfg.objective else base_objective
    check_fits(items, tokenizer, _model_cfg(model).n_ctx, ft_objective)
    prompts, answers = encode_items(tokenizer, items)
    train_items = [ft_objective.answer_item(p, a) for p, a in zip(prompts, answers)]
    tc = TrainConfig(
        out=str(run_dir), objective=ft_objective.name, seq_len=max(len(it.ids) for it in train_items),
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
        "finetune": to_dict(cfg), "base_objective": base_objective.name, "objective": ft_objective.name,
        "step": result.steps,
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

    from probekit.model.checkpoint import load_checkpoint

    if not (Path(adapter) / "adapter_config.json").exists():
        raise UserFileNotFoundError(f"{adapter} holds no adapter_config.json; write one with save_adapter=True")
    model, tok, meta = load_checkpoint(checkpoint, device=device)
    return PeftModel.from_pretrained(model, str(adapter)).eval(), tok, meta
