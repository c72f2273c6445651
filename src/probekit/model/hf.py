"""Hugging Face interop: export to / import from ``LlamaForCausalLM`` directories, and TransformerBridge loading.

``HookedLM`` is a Llama (same RMSNorm, rotate-half rotary, SwiGLU, no biases), so export is a renaming of
tensors: ``embed`` -> ``model.embed_tokens``, ``blocks.{l}.ln1/ln2.w`` -> ``model.layers.{l}.input_layernorm /
post_attention_layernorm.weight``, ``blocks.{l}.attn.*_proj`` -> ``model.layers.{l}.self_attn.*_proj``,
``blocks.{l}.mlp.*_proj`` -> ``model.layers.{l}.mlp.*_proj``, ``ln_final.w`` -> ``model.norm.weight``,
``unembed`` -> ``lm_head``. The exported model's logits equal ours on causal inputs.

ABI checkpoints (``cfg.span_positions``) carry a learned ``span_embed`` table that Llama lacks. Export folds
its row 0 (span position 0 = Part A, the value every token of a plain causal input gets) into
``embed_tokens``, so the Llama computes exactly what our model computes on causal input; with tied embeddings the
export is written untied (``lm_head`` keeps the unfolded table). The whole table is written to
``probekit_extra.safetensors`` (a logged warning says so); Part B inputs (span positions >= 1) cannot be expressed
in Llama. ``import_llama`` restores the table and subtracts row 0 again when the side file is present.
``probekit_extra.json`` always records probekit's full ``ModelConfig``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from probekit.errors import UserError, UserFileNotFoundError
from probekit.io import atomic_dir, atomic_write_json
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.serde import from_dict, to_dict

log = logging.getLogger(__name__)

EXTRA_JSON = "probekit_extra.json"
EXTRA_TENSORS = "probekit_extra.safetensors"


def hf_name(name: str) -> str:
    """Our parameter name -> the ``LlamaForCausalLM`` state-dict name."""
    parts = name.split(".")
    if name == "embed.weight":
        return "model.embed_tokens.weight"
    if name == "ln_final.w":
        return "model.norm.weight"
    if name == "unembed.weight":
        return "lm_head.weight"
    if parts[0] == "blocks":
        layer, rest = parts[1], ".".join(parts[2:])
        norms = {"ln1.w": "input_layernorm.weight", "ln2.w": "post_attention_layernorm.weight"}
        if rest in norms:
            return f"model.layers.{layer}.{norms[rest]}"
        if rest.startswith("attn."):
            return f"model.layers.{layer}.self_attn.{rest[len('attn.') :]}"
        if rest.startswith("mlp."):
            return f"model.layers.{layer}.{rest}"
    raise KeyError(f"no Llama name for parameter {name!r}")


def check_vocab(vocab_size: int, tokenizer: Any, where: str) -> None:
    """A tokenizer with more tokens than the checkpoint's vocabulary would produce out-of-range ids."""
    n_tok = len(tokenizer)
    if n_tok > vocab_size:
        raise UserError(
            f"{where}: the tokenizer has {n_tok} tokens but the checkpoint's vocabulary has {vocab_size} rows; "
            "use the tokenizer the model was trained with (saved beside the checkpoint)"
        )


def llama_config_dict(cfg: ModelConfig, tie: bool) -> dict[str, Any]:
    from probekit.data.tokenizer import EOS_ID, PAD_ID

    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_mlp,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.d_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.n_ctx,
        "initializer_range": cfg.init_range,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": tie,
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "use_cache": True,
        "dtype": "float32",
    }


def export_llama(model: HookedLM, tokenizer: Any, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` and ``tokenizer`` as a ``LlamaForCausalLM`` directory (float32 safetensors).

    Files: ``config.json``, ``generation_config.json``, ``model.safetensors``, the tokenizer files,
    ``probekit_extra.json`` (our ``ModelConfig``) and, for ABI models, ``probekit_extra.safetensors`` (the span
    table; see the module docstring). The saved tokenizer prepends ``<|endoftext|>`` (probekit's sequence start)
    itself, so ``AutoTokenizer`` + ``AutoModelForCausalLM.generate(max_new_tokens=n)`` produce probekit's greedy
    continuation (``save_export_tokenizer``, ``generation_config_dict``).
    """
    cfg = model.cfg
    check_vocab(cfg.vocab_size, tokenizer, "export_llama")
    state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    span_table = state.pop("span_embed.weight", None)
    tie = cfg.tie_embeddings
    if span_table is not None:
        log.warning(
            "export_llama: Llama has no span-position table; row 0 (Part A) of span_embed is folded into "
            "embed_tokens so causal logits match, and the full table is written to %s (Part B inputs cannot be "
            "run by the exported Llama)",
            EXTRA_TENSORS,
        )
        if tie:
            state["unembed.weight"] = state["embed.weight"].clone()
            tie = False
        state["embed.weight"] = state["embed.weight"] + span_table[0]
    tensors: dict[str, Tensor] = {}
    for name, value in state.items():
        if tie and name == "unembed.weight":
            continue
        tensors[hf_name(name)] = value.contiguous()
    extra = {
        "format": "probekit",
        "model_config": to_dict(cfg),
        "span_embed": None
        if span_table is None
        else {"file": EXTRA_TENSORS, "tensor": "span_embed.weight", "row0_folded_into_embed_tokens": True},
        "tie_embeddings_untied_for_export": bool(cfg.tie_embeddings and not tie),
    }
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / "config.json", llama_config_dict(cfg, tie))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if span_table is not None:
            save_file(
                {"span_embed.weight": span_table.contiguous()}, str(tmp / EXTRA_TENSORS), metadata={"format": "pt"}
            )
        atomic_write_json(tmp / EXTRA_JSON, extra)
        atomic_write_json(tmp / "generation_config.json", generation_config_dict())
        save_export_tokenizer(tokenizer, tmp)
    return Path(out_dir)


def generation_config_dict() -> dict[str, Any]:
    """``generation_config.json`` of an export: ``generate`` stops where probekit's greedy decoding stops.

    probekit decodes greedily and ends a row at ``<|endoftext|>`` (not returned) or after ``max_new_tokens``
    (``probekit.objectives.generate``); with these settings ``generate(**inputs, max_new_tokens=n)`` returns the
    same tokens followed by the stop token. No length is set: probekit has no default either, and a
    ``max_length`` here would make ``transformers`` warn on every call that passes ``max_new_tokens``.
    """
    from probekit.data.tokenizer import EOS_ID, PAD_ID

    return {"bos_token_id": EOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID, "do_sample": False}


def save_export_tokenizer(tokenizer: Any, directory: Path) -> None:
    """Save a copy of ``tokenizer`` that adds probekit's start token ``<|endoftext|>`` itself.

    probekit starts every sequence with ``<|endoftext|>`` and encodes with ``add_special_tokens=False``, so its
    tokenizers add nothing. A user of the export calls ``AutoTokenizer.from_pretrained(dir)(text)``: the saved
    copy's post-processor (in ``tokenizer.json``, which ``transformers`` loads as it is) prepends the start token
    exactly once, and ``tokenizer_config.json`` says ``add_bos_token: true`` to match. ``add_special_tokens=False``
    still encodes without it. The caller's tokenizer is left as it was; a tokenizer whose start token is not
    probekit's is saved unchanged.
    """
    import copy

    from tokenizers import processors

    from probekit.data.tokenizer import EOS, EOS_ID

    if getattr(tokenizer, "backend_tokenizer", None) is None or tokenizer.convert_tokens_to_ids(EOS) != EOS_ID:
        tokenizer.save_pretrained(str(directory))
        return
    out = copy.deepcopy(tokenizer)
    out.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOS}:0 $A:0", pair=f"{EOS}:0 $A:0 {EOS}:1 $B:1", special_tokens=[(EOS, EOS_ID)]
    )
    out.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(bos_token=EOS, add_bos_token=True, add_eos_token=False)
    atomic_write_json(config_path, config)


def _read_llama_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.exists():
        raise UserFileNotFoundError(f"{directory} has no config.json; point to a LlamaForCausalLM directory")
    hf = json.loads(path.read_text(encoding="utf-8"))
    if hf.get("model_type") != "llama":
        raise UserError(f"{path}: model_type is {hf.get('model_type')!r}, expected 'llama' (LlamaForCausalLM)")
    n_heads = hf["num_attention_heads"]
    problems = []
    if hf.get("num_key_value_heads", n_heads) != n_heads:
        problems.append("grouped-query attention (num_key_value_heads != num_attention_heads)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf.get('hidden_act')!r} (only 'silu')")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("attention/MLP biases")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"rope_type {rope.get('rope_type')!r} (only 'default')")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
    if head_dim * n_heads != hf["hidden_size"]:
        problems.append("head_dim * num_attention_heads != hidden_size")
    if problems:
        raise UserError(f"{path}: unsupported Llama features for HookedLM: {'; '.join(problems)}")
    hf["_rope_theta"] = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    return hf


def _load_safetensors(directory: Path) -> dict[str, Tensor]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = [directory / f for f in sorted(set(weight_map.values()))]
    else:
        raise UserFileNotFoundError(
            f"{directory} has no model.safetensors (or sharded index); export it with safetensors"
        )
    out: dict[str, Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                out[k] = sf.get_tensor(k)
    return out


def load_dir_tokenizer(directory: str | Path) -> Any:
    """probekit's word-level tokenizer when the directory holds one, else whatever ``AutoTokenizer`` loads.

    A tokenizer from an ``export_llama`` directory adds ``<|endoftext|>`` when asked for special tokens (see
    ``save_export_tokenizer``); probekit always encodes with ``add_special_tokens=False``, which adds nothing.
    """
    from transformers import AutoTokenizer

    from probekit.data.tokenizer import load_tokenizer

    directory = Path(directory)
    if (directory / "tokenizer.json").exists():
        try:
            return load_tokenizer(directory)
        except ValueError:  # not a probekit tokenizer (special tokens elsewhere)
            pass
    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserFileNotFoundError(
            f"{directory}: no loadable tokenizer ({e}); save the tokenizer into the directory"
        ) from e


def import_llama(directory: str | Path) -> tuple[HookedLM, Any]:
    """Load a ``LlamaForCausalLM`` directory (config.json + safetensors + tokenizer) as ``(HookedLM, tokenizer)``."""
    directory = Path(directory)
    hf = _read_llama_config(directory)
    extra_path = directory / EXTRA_JSON
    extra = json.loads(extra_path.read_text(encoding="utf-8")) if extra_path.exists() else None
    span_file = directory / EXTRA_TENSORS
    has_span = extra is not None and extra.get("span_embed") is not None and span_file.exists()
    tied = bool(hf.get("tie_word_embeddings", False))
    derived = {
        "vocab_size": hf["vocab_size"],
        "d_model": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": hf["num_attention_heads"],
        "d_mlp": hf["intermediate_size"],
        "n_ctx": hf["max_position_embeddings"],
        "rope_theta": hf["_rope_theta"],
        "norm_eps": hf["rms_norm_eps"],
        "tie_embeddings": tied,
        "span_positions": has_span,
    }
    base = dict(extra["model_config"]) if extra is not None else {"init_range": hf.get("initializer_range", 0.02)}
    if extra is not None and not extra.get("tie_embeddings_untied_for_export", False):
        for k in derived:
            if k not in ("span_positions", "rope_theta", "norm_eps") and base.get(k) != derived[k]:
                raise UserError(f"{directory}: {EXTRA_JSON} says {k}={base.get(k)} but config.json says {derived[k]}")
    base.update(derived)
    if extra is not None and extra.get("tie_embeddings_untied_for_export"):
        base["tie_embeddings"] = False  # the exported lm_head is its own tensor now
    cfg = from_dict(ModelConfig, base)

    tensors = _load_safetensors(directory)
    tensors.pop("model.rotary_emb.inv_freq", None)
    model = HookedLM(cfg)
    state: dict[str, Tensor] = {}
    expected = {n for n in model.state_dict() if n != "span_embed.weight" and not (tied and n == "unembed.weight")}
    missing = [n for n in sorted(expected) if hf_name(n) not in tensors]
    unknown = sorted(set(tensors) - {hf_name(n) for n in expected})
    if missing or unknown:
        raise UserError(
            f"{directory}: weights do not match the config (missing {[hf_name(n) for n in missing][:5]}, "
            f"unexpected {unknown[:5]}); is this a LlamaForCausalLM checkpoint?"
        )
    for n in expected:
        state[n] = tensors[hf_name(n)]
    if has_span:
        with safe_open(str(span_file), framework="pt") as sf:
            table = sf.get_tensor("span_embed.weight")
        state["span_embed.weight"] = table
        state["embed.weight"] = state["embed.weight"] - table[0]
    if tied:
        state["unembed.weight"] = state["embed.weight"]
    for n, p in model.state_dict().items():
        if tuple(state[n].shape) != tuple(p.shape):
            raise UserError(
                f"{directory}: tensor {hf_name(n)} has shape {tuple(state[n].shape)}, expected {tuple(p.shape)}"
            )
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    tokenizer = load_dir_tokenizer(directory)
    check_vocab(cfg.vocab_size, tokenizer, f"import_llama({directory})")
    return model, tokenizer


def load_bridge(directory: str | Path, device: str = "cpu") -> Any:
    """A TransformerLens ``TransformerBridge`` over a local HF directory (offline; the tokenizer must be inside).

    ``bridge.run_with_cache(ids)`` returns ``(logits, cache)`` with ``blocks.{l}.hook_resid_pre/post``.
    """
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise UserFileNotFoundError(f"{directory} has no config.json; point to a Hugging Face model directory")
    if not any((directory / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise UserFileNotFoundError(
            f"{directory} has no tokenizer files; save the tokenizer into it (export_llama does)"
        )
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(directory), device=device)
