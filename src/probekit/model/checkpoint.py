"""Checkpoints: one self-contained directory per saved model.

A checkpoint directory holds::

    model.safetensors    the HookedLM weights (float32; tied embeddings stored once)
    config.json          the ModelConfig
    tokenizer.json       the word-level tokenizer (+ tokenizer_config.json, special_tokens_map.json)
    train_config.json    the TrainConfig that produced it (absent for models saved outside the trainer)
    meta.json            objective, dataset name, step, tokens, final losses: what readers usually need
    trainer_state.pt     optimiser, scheduler, RNG states, data position, step (only for resumable checkpoints)

It is written under a temporary name and renamed into place, so a crash never leaves a half-written
checkpoint that looks complete. A training run directory keeps its checkpoints under ``checkpoints/step_*``;
``load_checkpoint`` accepts either a checkpoint directory or a run directory (then the latest checkpoint).

Typical use by later stages::

    model, tokenizer, meta = load_checkpoint("runs/ntp_small")     # latest checkpoint of the run
    meta["objective"], meta["dataset"], meta["step"]
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from transformers import PreTrainedTokenizerFast

from probekit.data.tokenizer import load_tokenizer, save_tokenizer
from probekit.errors import UserError, UserFileNotFoundError
from probekit.io import atomic_dir, atomic_write_json
from probekit.provenance import sha256_file
from probekit.serde import from_dict, to_dict

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"
TRAIN_CONFIG_FILE = "train_config.json"
META_FILE = "meta.json"
TRAINER_STATE_FILE = "trainer_state.pt"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINTS_SUBDIR = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _short(e: BaseException) -> str:
    """``Type: first line of the message`` (library errors can run to many lines)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


def _fix_hint(path: Path) -> str:
    return f"remove {path} and re-train (or resume from an earlier checkpoint)"


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    train_config: Any = None,
    trainer_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (an existing one at ``directory`` is replaced).

    ``model`` is a HookedLM (its ``cfg`` is saved as ``config.json``); ``train_config`` a TrainConfig (or a dict)
    or None; ``trainer_state`` what the trainer needs to resume (omit for a weights-only checkpoint); ``meta``
    extra JSON-able facts merged into ``meta.json`` (objective and dataset name are derived from ``train_config``).
    Returns the directory path.
    """
    directory = Path(directory)
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise ValueError("save_checkpoint expects a probekit HookedLM (a module with a `cfg` ModelConfig)")
    if cfg.vocab_size != len(tokenizer):
        raise UserError(
            f"model vocab_size {cfg.vocab_size} does not match the tokenizer ({len(tokenizer)} tokens); "
            "a checkpoint must pair a model with the tokenizer it was trained with"
        )
    tc = None if train_config is None else (train_config if isinstance(train_config, dict) else to_dict(train_config))
    info: dict[str, Any] = {
        "objective": (tc or {}).get("objective"),
        "dataset": (tc or {}).get("dataset_name") or _dataset_name((tc or {}).get("data")),
        "data": (tc or {}).get("data"),
    }
    info.update(meta or {})
    with atomic_dir(directory, overwrite=True) as tmp:
        save_model(model, str(tmp / WEIGHTS_FILE))
        info["weights_sha256"] = sha256_file(tmp / WEIGHTS_FILE)  # checked by every load (verify_weights)
        atomic_write_json(tmp / MODEL_CONFIG_FILE, to_dict(cfg))
        save_tokenizer(tokenizer, tmp)
        if tc is not None:
            atomic_write_json(tmp / TRAIN_CONFIG_FILE, tc)
        atomic_write_json(tmp / META_FILE, info)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
    return directory


def _dataset_name(data: str | None) -> str | None:
    if not data:
        return None
    manifest = Path(data) / "manifest.json"
    if manifest.exists():
        try:
            name = json.loads(manifest.read_text(encoding="utf-8")).get("name")
            if name:
                return str(name)
        except (OSError, json.JSONDecodeError):
            pass
    return Path(data).name


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``checkpoints/step_*`` directories of a run, oldest first (by step)."""
    root = Path(run_dir) / CHECKPOINTS_SUBDIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def step_of(checkpoint: str | Path) -> int:
    """The training step of a ``step_<N>`` checkpoint directory."""
    m = _STEP_DIR.match(Path(checkpoint).name)
    if m is None:
        raise UserError(f"{checkpoint} is not a step_<N> checkpoint directory")
    return int(m.group(1))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a training run directory, or None if it has none."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the latest checkpoint of a run directory."""
    path = Path(path)
    if not path.exists():
        raise UserFileNotFoundError(f"checkpoint {path} does not exist; train one with `probekit train`")
    if (path / WEIGHTS_FILE).exists() or (path / MODEL_CONFIG_FILE).exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise UserFileNotFoundError(
            f"{path} is neither a checkpoint (no {WEIGHTS_FILE}) nor a run directory with {CHECKPOINTS_SUBDIR}/step_*"
        )
    return latest


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        hint = _fix_hint(file.parent)
        raise UserError(f"cannot read {file} ({_short(e)}); the checkpoint is corrupt: {hint}") from e
    if not isinstance(data, dict):
        raise UserError(f"{file} does not hold a JSON object; the checkpoint is corrupt: {_fix_hint(file.parent)}")
    return data


def load_model_config(path: str | Path) -> Any:
    """The ModelConfig of a checkpoint (or of a run's latest checkpoint), without loading weights."""
    from probekit.model.config import ModelConfig
    from probekit.model.foreign import ForeignConfig

    ckpt = resolve_checkpoint(path)
    file = ckpt / MODEL_CONFIG_FILE
    if not file.exists():
        raise UserFileNotFoundError(
            f"checkpoint {ckpt} has no {MODEL_CONFIG_FILE}; it is incomplete: {_fix_hint(ckpt)}"
        )
    data = _read_json(file)
    if data.get("foreign"):  # a model trained elsewhere, finetuned by probekit (``probekit.model.foreign``)
        return from_dict(ForeignConfig, data)
    return from_dict(ModelConfig, data)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Any, PreTrainedTokenizerFast, dict[str, Any]]:
    """Load ``(model, tokenizer, meta)`` from a checkpoint directory or a run directory (latest checkpoint).

    ``model`` is a HookedLM in eval mode on ``device`` (a ``ForeignLM`` for a model trained elsewhere; a Hugging
    Face directory is loaded by ``probekit.model.foreign.load_foreign``). ``meta`` holds: ``objective`` (e.g. "ntp"),
    ``dataset`` (dataset name), ``data`` (dataset directory the run trained on), ``step``, ``tokens``,
    ``train_loss``/``eval_loss`` (when trained by probekit), ``train_config`` (dict, or None), ``model_config``
    (the ModelConfig) and ``path`` (the checkpoint directory). Raises ``FileNotFoundError``/``ValueError``
    naming the file for a missing, truncated or mismatched checkpoint.
    """
    from probekit.model.foreign import ForeignConfig, ForeignLM, is_hf_dir, load_foreign
    from probekit.model.transformer import HookedLM

    if is_hf_dir(path):  # a Hugging Face directory: in probekit's id space
        return load_foreign(path, device)
    ckpt = resolve_checkpoint(path)
    for name in (WEIGHTS_FILE, MODEL_CONFIG_FILE, TOKENIZER_FILE):
        if not (ckpt / name).exists():
            raise UserFileNotFoundError(f"checkpoint {ckpt} has no {name}; it is incomplete: {_fix_hint(ckpt)}")
    cfg = load_model_config(ckpt)
    try:
        tokenizer = load_tokenizer(ckpt)
    except Exception as e:  # tokenizers raises its own exception types for malformed JSON
        raise UserError(f"cannot read {ckpt / TOKENIZER_FILE} ({_short(e)}); {_fix_hint(ckpt)}") from e
    if cfg.vocab_size != len(tokenizer):
        raise UserError(
            f"checkpoint {ckpt}: model vocab_size {cfg.vocab_size} does not match its tokenizer "
            f"({len(tokenizer)} tokens); the files come from different runs: {_fix_hint(ckpt)}"
        )
    meta: dict[str, Any] = {}
    if (ckpt / META_FILE).exists():
        meta.update(_read_json(ckpt / META_FILE))
    verify_weights(ckpt, meta)
    model = ForeignLM.from_config(cfg) if isinstance(cfg, ForeignConfig) else HookedLM(cfg)
    load_weights(model, ckpt)
    model.to(device).eval()
    tc = _read_json(ckpt / TRAIN_CONFIG_FILE) if (ckpt / TRAIN_CONFIG_FILE).exists() else None
    meta.setdefault("objective", (tc or {}).get("objective"))
    meta.setdefault("dataset", _dataset_name((tc or {}).get("data")))
    meta.setdefault("step", None)
    meta["train_config"] = tc
    meta["model_config"] = cfg
    meta["path"] = ckpt
    return model, tokenizer, meta


def recorded_weights_sha256(ckpt: Path, meta: dict[str, Any] | None = None) -> tuple[str, Path] | None:
    """The SHA-256 recorded for a checkpoint's weights and the file recording it: its ``meta.json``, or the run's
    ``summary.json`` when that names this checkpoint (None: nothing recorded)."""
    if meta is None:
        meta = _read_json(ckpt / META_FILE) if (ckpt / META_FILE).exists() else {}
    if isinstance(meta.get("weights_sha256"), str):
        return meta["weights_sha256"], ckpt / META_FILE
    summary = ckpt.parent.parent / "summary.json"
    if ckpt.parent.name == CHECKPOINTS_SUBDIR and summary.is_file():
        try:
            s = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if isinstance(s, dict) and isinstance(s.get("weights_sha256"), str) and Path(str(s.get("checkpoint"))).name \
                == ckpt.name:  # fmt: skip
            return s["weights_sha256"], summary
    return None


def verify_weights(ckpt: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Refuse weights whose SHA-256 differs from the one recorded when they were written (flipped bytes, a file
    copied from another run): a one-line ``UserError`` naming the file, the record and the fix."""
    ckpt = Path(ckpt)
    rec = recorded_weights_sha256(ckpt, meta)
    if rec is None:
        return
    want, where = rec
    have = sha256_file(ckpt / WEIGHTS_FILE)
    if have != want:
        raise UserError(f"weights {ckpt / WEIGHTS_FILE} do not match the SHA-256 recorded in {where} ({have[:12]}... "
                        f"vs {want[:12]}...): the file is corrupt or truncated, or was changed after it was written; "
                        f"restore it or {_fix_hint(ckpt)}")  # fmt: skip


def _shape_mismatch(model: torch.nn.Module, weights: Path) -> str | None:
    """Which tensors of ``weights`` have another shape than ``model`` (built from config.json) expects, or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception:
        return None
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    bad = [f"{k} is {shapes[k]} in the weights but {want[k]} by the config" for k in want
           if k in shapes and shapes[k] != want[k]]  # fmt: skip
    return "; ".join(bad[:3]) if bad else None


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a checkpoint's ``model.safetensors`` into ``model`` in place (strict: every tensor must fit)."""
    ckpt = Path(path)
    weights = ckpt / WEIGHTS_FILE
    if not weights.exists():
        raise UserFileNotFoundError(f"checkpoint {ckpt} has no {WEIGHTS_FILE}; it is incomplete: {_fix_hint(ckpt)}")
    shapes = _shape_mismatch(model, weights)
    if shapes is not None:
        rec = recorded_weights_sha256(ckpt)
        intact = rec is not None and sha256_file(weights) == rec[0]  # the weights are as they were written
        which = (f"the weights match their recorded SHA-256, so {ckpt / MODEL_CONFIG_FILE} is the wrong file: "
                 "restore the config.json saved with these weights" if intact else
                 f"{ckpt / MODEL_CONFIG_FILE} and {WEIGHTS_FILE} come from different models: restore the matching "
                 "pair")  # fmt: skip
        raise UserError(f"{ckpt / MODEL_CONFIG_FILE} does not describe {weights} ({shapes}); {which}")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except Exception as e:  # SafetensorError, OSError, RuntimeError (shape mismatch) ...
        raise UserError(
            f"cannot load weights {weights} ({_short(e)}); the file is corrupt or truncated: {_fix_hint(ckpt)}"
        ) from e
    if missing or unexpected:
        raise UserError(
            f"weights {weights} do not fit the model in {ckpt / MODEL_CONFIG_FILE} (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}): {_fix_hint(ckpt)}"
        )


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """The ``trainer_state.pt`` of a checkpoint (tensors, numbers and lists only: loaded with weights_only)."""
    file = Path(path) / TRAINER_STATE_FILE
    if not file.exists():
        raise UserFileNotFoundError(
            f"checkpoint {path} has no {TRAINER_STATE_FILE}, so training cannot resume from it; "
            "start a new run (or use it as init_from)"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"cannot read {file} ({_short(e)}); the file is corrupt or truncated: {_fix_hint(Path(path))}"
        ) from e
    if not isinstance(state, dict) or "step" not in state:
        raise UserError(f"{file} is not a probekit trainer state: {_fix_hint(Path(path))}")
    return state


def weights_file(model: str | Path) -> Path:
    """The weights a model path stands for: a run directory's latest checkpoint's ``model.safetensors``, a
    checkpoint's own, or the path itself (a Hugging Face directory is hashed whole)."""
    p = Path(model)
    if (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    if (p / "checkpoints").is_dir():
        ckpt = latest_checkpoint(p)
        if ckpt is not None and (ckpt / "model.safetensors").is_file():
            return ckpt / "model.safetensors"
    return p
