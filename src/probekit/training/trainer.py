"""The trainer: one loop for NTP, ABI and BICO pretraining and for QA finetuning, resumable bit for bit.

``train(TrainConfig(...))`` builds everything from the config (dataset, objective, model), validates it before
the first step, and runs AdamW (the fused kernel) with linear warmup then cosine decay to ``min_lr`` and gradient
clipping. Weight decay applies to the linear layers' weights only (attention, MLP, an untied ``unembed``):
embeddings (``embed``, ``span_embed``, a tied ``unembed``) and RMSNorm weights are not decayed. Metrics go to
``<out>/metrics.jsonl``; checkpoints (see ``probekit.model.checkpoint``) to ``<out>/checkpoints/step_XXXXXXXX`` every
``save_every`` steps and at the end.

Data (``probekit.training.data``): by default the dataset's biographies are shuffled across the corpus every epoch
and packed into windows of ``seq_len`` tokens (NTP, BICO: one window = one causal/BICO sequence; ABI: one window =
one sequence through blank infilling, whose input is two tokens longer per span, so the model's ``n_ctx``
defaults to ``objective.max_input_len(seq_len)``, e.g. 332 for ``seq_len`` 256 at 15% masking). Callers can pass
any ``SequenceSource`` instead, e.g. ``ItemSource`` of QA items whose loss covers only the answer.

Exact resume: the data order of an epoch is a function of ``(seed, epoch)``, every batch's random choices (BICO
masks, ABI spans) come from a generator seeded by ``(seed, step, rank)``, and the checkpoint stores the weights,
the optimiser state, the step, the data position and the torch/python/numpy RNG states. A run stopped at any
checkpoint and resumed therefore reaches the same weights as an uninterrupted run (tested on CPU).

Multi-GPU: the loop runs through Hugging Face ``accelerate`` (``accelerator.prepare`` / ``backward`` /
``clip_grad_norm_``), so ``accelerate launch -m probekit.cli train ...`` (or ``torchrun``, also on CPU with gloo)
trains data-parallel unchanged: ``batch_size`` is the global batch, and each process takes every
``world_size``-th item of it (2 CPU processes reproduce a single process's weights to 3e-7).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from probekit.data.tokenizer import load_tokenizer
from probekit.errors import UserError, UserFileExistsError, UserFileNotFoundError, check_precision
from probekit.io import atomic_write_json, atomic_write_jsonl, prepare_output_dir, read_jsonl
from probekit.model.batch import ItemLike, ModelBatch, TrainItem
from probekit.model.checkpoint import (
    CHECKPOINTS_SUBDIR,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_trainer_state,
    load_weights,
    save_checkpoint,
)
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.objectives import get_objective
from probekit.provenance import sha256_file
from probekit.serde import from_dict, load_config, to_dict
from probekit.training.config import (
    METRICS_FILE,
    SUMMARY_FILE,
    TRAIN_CONFIG_FILE,
    TrainConfig,
    absolute_paths,
    config_differences,
)
from probekit.training.data import DataStream, ItemSource, SequenceSource, bios_source

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path  # the final checkpoint directory (load with probekit.model.checkpoint.load_checkpoint)
    steps: int
    tokens: int
    epochs: float  # passes over the source's epoch
    train_loss: float | None  # mean training loss over the last log interval
    eval_loss: float | None
    elapsed_s: float
    model: HookedLM
    tokenizer: PreTrainedTokenizerFast
    metrics_path: Path


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay Linear weights; not embeddings (incl. a tied unembed) or norm weights. Frozen params are left out."""
    no_decay: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, torch.nn.Embedding) or not isinstance(mod, torch.nn.Linear):
            no_decay.update(id(p) for p in mod.parameters(recurse=False))
    decay: list[torch.nn.Parameter] = []
    rest: list[torch.nn.Parameter] = []
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (rest if id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def make_accelerator(precision: str) -> Accelerator:
    """The trainer's ``Accelerator`` with mixed precision ``precision`` (``cpu=True`` without CUDA, so that torchrun
    / accelerate launch on CPU-only machines run data-parallel over gloo).

    accelerate keeps one mixed-precision setting per process (``AcceleratorState``) and refuses a second
    ``Accelerator`` with another one. A process that trains one model after another (a worker of ``probekit run
    --jobs N``, ``--jobs 1``, a notebook) may meet a float32 model after a bf16 one, so a changed setting resets
    that shared state first (the distributed setup, ``PartialState``, is kept). Trainers built earlier in the same
    process then follow the new setting: train them one at a time.
    """
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def _step_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p % (2**32) for p in parts]).generate_state(1)[0])


class Trainer:
    """Build with everything validated up front; ``run()`` trains and returns a ``TrainResult``.

    ``source``: a ``SequenceSource`` (default: the biographies of ``cfg.data``, packed), or a list of items
    (``TrainItem``, token lists or ``(ids, loss_mask)`` pairs: one padded sequence each, see ``ItemSource``).
    ``model``: an existing HookedLM to train in place (only parameters with ``requires_grad`` are optimised);
    ``tokenizer`` is then required unless ``cfg.data``/``cfg.init_from`` supplies it. ``on_step(trainer, row)`` is
    called after every step (after any checkpoint of that step; ``row`` is the metrics row, ``{}`` on steps that
    log nothing). ``overwrite`` replaces an existing run in
    ``cfg.out`` (its files are removed only after every check passed); ``resume`` continues it.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        source: SequenceSource | Sequence[ItemLike] | None = None,
        *,
        model: HookedLM | None = None,
        tokenizer: PreTrainedTokenizerFast | None = None,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        on_step: Callable[[Trainer, dict[str, Any]], None] | None = None,
    ) -> None:
        cfg.validate()
        check_precision(cfg.precision, "precision")  # refused, never recorded, where it cannot take effect
        cfg = absolute_paths(cfg)
        if source is not None and not isinstance(source, SequenceSource):
            source = ItemSource(list(source), seed=cfg.seed)  # a plain list of items / (ids, loss_mask) pairs
        self.cfg, self.progress, self.on_step = cfg, progress, on_step
        self.out = Path(cfg.out)
        resume_from = self._check_out_dir(resume, overwrite)

        from probekit.model.foreign import is_hf_dir

        outside = bool(cfg.init_from) and is_hf_dir(str(cfg.init_from))  # trained elsewhere: its tokens rule
        dataset = None
        if source is None:
            if not cfg.data:
                raise UserError("TrainConfig.data is empty: set the dataset directory (or pass a source)")
            from probekit.data.store import load_dataset

            dataset = load_dataset(cfg.data)
            if not outside:
                tokenizer = self._same_vocab(tokenizer, dataset.tokenizer, f"dataset {cfg.data}")
        init_model = None
        if cfg.init_from:
            init_model, init_tok, _ = load_checkpoint(cfg.init_from)
            tokenizer = self._same_vocab(tokenizer, init_tok, f"checkpoint {cfg.init_from}")
        if tokenizer is None:
            raise UserError("no tokenizer: set TrainConfig.data or init_from, or pass tokenizer=")
        self.tokenizer = tokenizer
        self.objective = get_objective(cfg.objective, tokenizer, **cfg.objective_settings)
        if source is None:
            source = bios_source(dataset, cfg.seq_len, cfg.seed, cfg.qa_mix, cfg.eval_windows, cfg.eval_holdout,
                                 tokenizer=tokenizer if outside else None)  # fmt: skip
        elif cfg.qa_mix:
            raise UserError("qa_mix applies to the dataset's packed biographies; mix QA into your own source instead")
        self.source = source
        self.dataset_name = dataset.name if dataset is not None else getattr(source, "name", None)

        need = self._input_len(source.max_len())
        mcfg = self._model_config(init_model, model, need)
        if need > mcfg.n_ctx:
            fit = max((s for s in range(2, mcfg.n_ctx + 1) if self._input_len(s) <= mcfg.n_ctx), default=0)
            raise UserError(
                f"sequences too long for the context: objective {cfg.objective!r} makes inputs of up to {need} "
                f"tokens from sequences of {source.max_len()} tokens, but the model's n_ctx is {mcfg.n_ctx}; "
                f"set model.n_ctx >= {need} or use sequences of at most {fit} tokens (seq_len)"
            )
        if model is None:
            model = init_model if init_model is not None else HookedLM(mcfg)
        if model.cfg.vocab_size != len(tokenizer):
            raise UserError(f"model vocab_size {model.cfg.vocab_size} != tokenizer size {len(tokenizer)}")
        if getattr(model.cfg, "foreign", False) and cfg.objective != "ntp":
            raise UserError(f"objective {cfg.objective!r} needs probekit's attention (BICO's bidirectional pass, "
                            f"ABI's blanks), which a {getattr(model.cfg, 'model_type', '')} checkpoint lacks; train it "
                            "with ntp, or "
                            "start from a Llama checkpoint (converted to probekit's model)")  # fmt: skip

        self.accelerator = make_accelerator(cfg.precision)
        world = self.accelerator.num_processes
        if cfg.batch_size % world:
            raise UserError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
        self.stream = DataStream(source)
        self.max_steps = self._budget_steps()
        if cfg.warmup_steps > self.max_steps:
            budget = "epochs" if cfg.epochs is not None else "tokens" if cfg.tokens is not None else "max_steps"
            raise UserError(f"warmup_steps {cfg.warmup_steps} exceeds the {self.max_steps} steps the {budget} "
                            f"budget gives (the learning rate would never reach lr); set warmup_steps to at "
                            f"most {self.max_steps} or raise the budget")  # fmt: skip
        self.eval_items = source.eval_items(cfg.eval_windows) if cfg.eval_windows else []

        self.step, self.tokens, self.elapsed_before = 0, 0, 0.0
        self._loss_sum, self._loss_n = torch.zeros(()), 0  # training loss summed over the open log interval
        self.last_train_loss: float | None = None
        self.last_eval_loss: float | None = None
        state = None
        if resume_from is not None:
            self._same_vocab(tokenizer, load_tokenizer(resume_from), f"checkpoint {resume_from}")
            load_weights(model, resume_from)
            state = load_trainer_state(resume_from)
        else:
            random.seed(cfg.seed)
            np.random.seed(cfg.seed % 2**32)
            torch.manual_seed(cfg.seed)
        model.to(self.accelerator.device)
        fused = self.accelerator.device.type in ("cpu", "cuda")  # one kernel for all params: ~5x faster on CPU
        optimizer = torch.optim.AdamW(
            _param_groups(model, cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.betas[0], cfg.betas[1]),
            eps=cfg.eps,
            fused=fused,
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if state is not None:
            self._load_state(state)
        self._write_run_files(resume_from is not None)

    # ------------------------------------------------------------------------------------------------ set-up

    def _check_out_dir(self, resume: bool, overwrite: bool) -> Path | None:
        if not resume:
            if not overwrite and (self.out / TRAIN_CONFIG_FILE).exists():
                ckpt = latest_checkpoint(self.out)
                where = f"its last checkpoint is {ckpt.name}" if ckpt is not None else "it has no checkpoint yet"
                raise UserFileExistsError(f"{self.out} already holds a training run ({where}); pass --resume to "
                                          "continue it, or --overwrite to discard it and start again")  # fmt: skip
            prepare_output_dir(self.out, overwrite)  # the old run is removed only once everything is validated
            return None
        saved = self.out / TRAIN_CONFIG_FILE
        if not saved.exists():
            raise UserFileNotFoundError(f"cannot resume: {saved} does not exist (no run started in {self.out})")
        old = to_dict(load_config(TrainConfig, saved))
        diffs = config_differences(old, to_dict(self.cfg))
        if diffs:
            raise UserError(
                f"cannot resume {self.out}: the config differs from the run's in "
                + "; ".join(diffs)
                + " (use the original settings, or start a new run with another --out or --overwrite)"
            )
        ckpt = latest_checkpoint(self.out)
        if ckpt is None:
            log.info("no checkpoint in %s yet: starting from step 0", self.out)
        return ckpt

    @staticmethod
    def _same_vocab(
        have: PreTrainedTokenizerFast | None, new: PreTrainedTokenizerFast, what: str
    ) -> PreTrainedTokenizerFast:
        if have is not None and have.get_vocab() != new.get_vocab():
            a, b = new.get_vocab(), have.get_vocab()
            if len(a) != len(b):
                how = f"{len(new)} tokens vs {len(have)} in the tokenizer in use"
            else:
                diff = sorted(set(a.items()) ^ set(b.items()), key=lambda kv: (kv[1], kv[0]))
                tok, idx = diff[0]
                how = (f"both have {len(new)} tokens, but the words or their ids differ, e.g. {tok!r} (id {idx}) "
                       "is in only one of them")  # fmt: skip
            raise UserError(
                f"the vocabulary of {what} does not match the tokenizer in use ({how}): a checkpoint can only be "
                "trained further on data built with its own tokenizer"
            )
        return have if have is not None else new

    def _input_len(self, seq_len: int) -> int:
        """Longest model input made from sequences or answer items of ``seq_len`` tokens (ABI items: +2)."""
        return self.objective.answer_input_len(seq_len)

    def _model_config(self, init_model: HookedLM | None, model: HookedLM | None, need: int) -> ModelConfig:
        given = model if model is not None else init_model
        if given is not None:
            have = to_dict(given.cfg)
            diffs = [f"{k}: {v!r} (config) vs {have[k]!r} (model)" for k, v in self.cfg.model.items() if have[k] != v]
            if diffs:
                raise UserError("model settings differ from the model being trained: " + "; ".join(diffs)
                                + "; remove them from `model:` (they come from the checkpoint)")  # fmt: skip
            return given.cfg
        d = {"n_ctx": max(need, self._input_len(self.cfg.seq_len)), "seed": self.cfg.seed, **self.cfg.model}
        vocab = len(self.tokenizer)
        if d.get("vocab_size", vocab) != vocab:
            raise UserError(f"model.vocab_size {d['vocab_size']} does not match the tokenizer ({vocab} tokens); "
                            "leave it out (it is taken from the tokenizer)")  # fmt: skip
        d["vocab_size"] = vocab
        return from_dict(ModelConfig, d)  # ModelConfig.__post_init__ checks heads / head size

    def _budget_steps(self) -> int:
        cfg, B = self.cfg, self.cfg.batch_size
        epoch_items = self.stream.epoch_size
        if cfg.max_steps is not None:
            return int(cfg.max_steps)
        if cfg.epochs is not None:
            return max(1, math.ceil(cfg.epochs * epoch_items / B))
        tokens_per_step = B * self.stream.epoch_tokens / epoch_items
        return max(1, math.ceil(float(cfg.tokens) / tokens_per_step))  # type: ignore[arg-type]

    def _write_run_files(self, resumed: bool) -> None:
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        if not resumed and self.out.exists():  # --overwrite: remove the old run's files (only ours)
            for name in (TRAIN_CONFIG_FILE, METRICS_FILE, SUMMARY_FILE):
                (self.out / name).unlink(missing_ok=True)
            shutil.rmtree(self.out / CHECKPOINTS_SUBDIR, ignore_errors=True)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / TRAIN_CONFIG_FILE, to_dict(self.cfg))
        from probekit.provenance import append_session, record

        inputs = {k: v for k in ("data", "init_from") if (v := getattr(self.cfg, k))}
        append_session(self.out, record(inputs=inputs, seeds={"seed": self.cfg.seed},
                                        resumed_at_step=self.step if resumed else None))  # fmt: skip
        metrics = self.out / METRICS_FILE
        if resumed or metrics.exists():  # drop rows logged after the checkpoint we resume from
            rows = read_jsonl(metrics) if metrics.exists() else []
            atomic_write_jsonl(metrics, [r for r in rows if r.get("step", 0) <= self.step])
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))  # (name, keys, pos, has_gauss, cached)
        state: dict[str, Any] = {
            "step": self.step,
            "tokens": self.tokens,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0),
            "data": self.stream.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.step, "lr": self.lr_at(max(self.step - 1, 0))},
            "train_loss": self.last_train_loss,
            "eval_loss": self.last_eval_loss,
            "loss_acc": [float(self._loss_sum), self._loss_n],  # the open log interval, so rows match on resume
            "rng": {
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.last_train_loss, self.last_eval_loss = state.get("train_loss"), state.get("eval_loss")
        acc_sum, self._loss_n = state.get("loss_acc", [0.0, 0])
        self._loss_sum = torch.tensor(float(acc_sum), device=self.accelerator.device)
        self.stream.seek(state["data"]["epoch"], state["data"]["offset"])
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(_tuplify(rng["python"]))
        np_s = rng["numpy"]
        np.random.set_state((np_s[0], np_s[1].numpy().astype(np.uint32), *np_s[2:]))
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # ------------------------------------------------------------------------------------------------ steps

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) ``step``: linear warmup to ``lr``, then cosine to ``min_lr`` at the end."""
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, self.max_steps - cfg.warmup_steps))
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))

    def build_batch(self, items: Sequence[TrainItem], generator: torch.Generator) -> ModelBatch:
        """The objective's batch for ``items``; items with loss masks restrict the loss to their target tokens."""
        if any(it.loss_mask is not None for it in items):
            return self.objective.answer_batch(items, generator)
        return self.objective.build([it.ids for it in items], generator)

    def train_step(self, batch: ModelBatch) -> torch.Tensor:
        """One optimiser step on ``batch`` (forward, backward, clip, AdamW); returns the detached loss."""
        acc = self.accelerator
        batch = batch.to(acc.device)
        with acc.autocast():
            loss = self.objective.compute_loss(self.model, batch)
        acc.backward(loss)
        if self.cfg.grad_clip > 0:
            acc.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss per target token on the fixed eval set (random choices from a fixed generator)."""
        if not self.eval_items:
            return None
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        gen = torch.Generator().manual_seed(_step_seed(self.cfg.seed, 2**31 - 1))
        total, count = 0.0, 0
        for i in range(0, len(self.eval_items), self.cfg.batch_size):
            batch = self.build_batch(self.eval_items[i : i + self.cfg.batch_size], gen).to(self.accelerator.device)
            n = batch.n_loss_tokens
            if n:
                with self.accelerator.autocast():
                    total += float(self.objective.compute_loss(model, batch)) * n
                count += n
        model.train()
        return total / count if count else None

    def save(self) -> Path:
        """Checkpoint the current step (main process writes; older checkpoints beyond keep_checkpoints pruned)."""
        acc = self.accelerator
        path = self.out / CHECKPOINTS_SUBDIR / f"step_{self.step:08d}"
        acc.wait_for_everyone()
        if acc.is_main_process:
            meta = {"dataset": self.dataset_name, "step": self.step, "tokens": self.tokens,
                    "train_loss": self.last_train_loss, "eval_loss": self.last_eval_loss}  # fmt: skip
            save_checkpoint(path, acc.unwrap_model(self.model), self.tokenizer, self.cfg, self.state_dict(), meta)
            if self.cfg.keep_checkpoints:
                for old in list_checkpoints(self.out)[: -self.cfg.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    # ------------------------------------------------------------------------------------------------ loop

    def run(self) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        rank, world, B = acc.process_index, acc.num_processes, cfg.batch_size
        self.model.train()
        self._t0 = time.perf_counter()
        bar = tqdm(total=self.max_steps, initial=self.step, desc=f"train {cfg.objective}", unit="step",
                   disable=not (self.progress and acc.is_main_process), dynamic_ncols=True)  # fmt: skip
        self._loss_sum = self._loss_sum.to(acc.device)
        t_log, tok_log = time.perf_counter(), self.tokens
        last_saved = self.step if latest_checkpoint(self.out) is not None else -1
        # closed in the finally below; only the main process writes metrics
        metrics = open(self.out / METRICS_FILE, "a", encoding="utf-8") if acc.is_main_process else None  # noqa: SIM115
        try:
            while self.step < self.max_steps:
                items = self.stream.take(B)
                gen = torch.Generator().manual_seed(_step_seed(cfg.seed, self.step, rank))
                batch = self.build_batch(items[rank::world], gen)
                lr = self.lr_at(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self._loss_sum = self._loss_sum + self.train_step(batch)
                self._loss_n += 1
                self.step += 1
                self.tokens += sum(len(it.ids) for it in items)
                bar.update(1)
                row: dict[str, Any] = {}
                last = self.step == self.max_steps
                do_eval = last or (cfg.eval_every > 0 and self.step % cfg.eval_every == 0)
                if last or self.step % cfg.log_every == 0 or do_eval:
                    now = time.perf_counter()
                    self.last_train_loss = float(acc.reduce(self._loss_sum, "mean")) / self._loss_n
                    row = {"step": self.step, "loss": self.last_train_loss, "lr": lr, "tokens": self.tokens,
                           "tokens_per_s": (self.tokens - tok_log) / max(now - t_log, 1e-9),
                           "epoch": self.step * B / self.stream.epoch_size, "eval_loss": None}  # fmt: skip
                    if do_eval:
                        self.last_eval_loss = row["eval_loss"] = self.evaluate()
                    self._loss_sum, self._loss_n = torch.zeros((), device=acc.device), 0
                    bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
                    if metrics is not None:
                        metrics.write(json.dumps(row) + "\n")
                        metrics.flush()
                    t_log, tok_log = time.perf_counter(), self.tokens
                if last or (cfg.save_every > 0 and self.step % cfg.save_every == 0):
                    if metrics is not None:
                        metrics.flush()
                    self.save()
                    last_saved = self.step
                if self.on_step is not None:
                    self.on_step(self, row)
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        if last_saved != self.step:  # resumed a finished run: make sure a final checkpoint exists
            self.save()
        return self._result()

    def _result(self) -> TrainResult:
        elapsed = self.elapsed_before + time.perf_counter() - self._t0
        ckpt = latest_checkpoint(self.out)
        assert ckpt is not None
        result = TrainResult(
            out_dir=self.out, checkpoint=ckpt, steps=self.step, tokens=self.tokens,
            epochs=self.step * self.cfg.batch_size / self.stream.epoch_size, train_loss=self.last_train_loss,
            eval_loss=self.last_eval_loss, elapsed_s=elapsed, model=self.accelerator.unwrap_model(self.model),
            tokenizer=self.tokenizer, metrics_path=self.out / METRICS_FILE,
        )  # fmt: skip
        if self.accelerator.is_main_process:
            atomic_write_json(self.out / SUMMARY_FILE, {
                "steps": result.steps, "tokens": result.tokens, "epochs": result.epochs,
                "train_loss": result.train_loss, "eval_loss": result.eval_loss, "elapsed_s": elapsed,
                "checkpoint": str(ckpt), "objective": self.cfg.objective, "dataset": self.dataset_name,
                "weights_sha256": sha256_file(ckpt / "model.safetensors"),
            })  # fmt: skip
        return result


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def train(
    cfg: TrainConfig,
    source: SequenceSource | Sequence[ItemLike] | None = None,
    *,
    model: HookedLM | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[Trainer, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Validate, train, checkpoint; see ``Trainer`` for the arguments. Returns a ``TrainResult``."""
    trainer = Trainer(cfg, source, model=model, tokenizer=tokenizer, resume=resume, overwrite=overwrite,
                      progress=progress, on_step=on_step)  # fmt: skip
    return trainer.run()
