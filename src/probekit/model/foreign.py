"""Models trained elsewhere, seen in probekit's token-id space, so training, finetuning and evaluation run on them.

Probing and patching read an outside checkpoint as it is (TransformerBridge and its own tokenizer, through
``probekit.data.tokens``). Evaluation and finetuning build items, batches and stopping rules from probekit's
special tokens at fixed ids (``<pad>`` 0, ``<|endoftext|>`` 1, ``<unk>`` 2, ``[MASK]`` 3, ``[START]`` 4,
``[END]`` 5), so an outside model is brought into that id space instead:

- **The tokenizer** (``shifted_tokenizer``): the model's own fast tokenizer (same normalizer, pre-tokenizer,
  model and decoder, so the same segmentation and text) with every id moved up by 6 and probekit's six special
  tokens at 0..5. A special token of the model whose text collides with one of probekit's (GPT-2's
  ``<|endoftext|>``, Llama's ``<unk>``) is renamed ``<name>@model``. Its own post-processor is dropped: probekit
  adds start and end tokens itself.
- **The model**: probekit's ``<|endoftext|>`` means the model's BOS token on input (the start of every sequence)
  and its EOS token on output (where generation stops).
  - A Llama checkpoint that ``import_llama`` accepts becomes a ``HookedLM`` with 6 more embedding rows
    (``import_llama_shifted``): row 1 = the BOS embedding, unembedding row 1 = the EOS unembedding; the other
    special rows, and the model's own EOS unembedding, copy the unembedding of its unknown token (a token a
    trained model never predicts). Everything probekit does runs on it, BICO's attention included.
  - Any other causal LM (GPT-2, GPT-NeoX, ...) is wrapped in ``ForeignLM``: inputs are mapped back to the model's
    ids, the logits gain the six special columns (``<|endoftext|>`` = the model's EOS logit, the rest and the
    model's own EOS column far below any real logit). Only the causal attention of the model exists, so NTP
    training, finetuning (full or LoRA) and causal generation work; BICO and ABI need probekit's attention and
    are refused. Its checkpoints hold the Hugging Face config and ``ForeignLM`` weights (``save_checkpoint``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from probekit.data.tokenizer import EOS_ID, PAD_ID, SPECIAL_TOKENS, wrap
from probekit.errors import UserError, UserFileNotFoundError

N_SPECIAL = len(SPECIAL_TOKENS)
FAR_BELOW = -1e9  # logit of the special columns an outside model never writes
LORA_TARGETS: dict[str, tuple[str, ...]] = {  # attention projections per architecture (peft target modules)
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "gpt_neo": ("q_proj", "v_proj"),
    "opt": ("q_proj", "v_proj"),
}


def is_hf_dir(path: str | Path) -> bool:
    """A Hugging Face model directory: ``config.json`` naming ``architectures`` (probekit checkpoints do not)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "architectures" in json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False


# ---------------------------------------------------------------------------------------------------------------
# The tokenizer


def _shift_ids(node: Any, old_to_new: dict[int, int]) -> Any:
    return old_to_new.get(node, node) if isinstance(node, int) else node


def shifted_tokenizer(tok: Any) -> Any:
    """``tok`` (a Hugging Face fast tokenizer) in probekit's id space: ids + 6, probekit's specials at 0..5."""
    from tokenizers import Tokenizer

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{type(tok).__name__} is a slow tokenizer; save the model with a fast tokenizer "
                        "(tokenizer.json) to evaluate it with probekit")  # fmt: skip
    spec = json.loads(backend.to_str())
    clash = {t: f"{t}@model" for t in SPECIAL_TOKENS}
    model = spec["model"]
    kind = model.get("type")
    if kind in ("BPE", "WordLevel", "WordPiece"):
        model["vocab"] = {clash.get(t, t): i + N_SPECIAL for t, i in model["vocab"].items()}
        model["vocab"].update({t: i for i, t in enumerate(SPECIAL_TOKENS)})  # ids 0..5 (added tokens reuse them)
    elif kind == "Unigram":
        model["vocab"] = [[clash.get(p, p), s] for p, s in model["vocab"]]
        model["vocab"] = [[t, -1e9] for t in SPECIAL_TOKENS] + model["vocab"]  # never chosen when segmenting
        if model.get("unk_id") is not None:
            model["unk_id"] = model["unk_id"] + N_SPECIAL
    else:
        raise UserError(f"tokenizer model {kind!r} is not supported (BPE, Unigram, WordLevel, WordPiece are)")
    if model.get("unk_token") in clash:
        model["unk_token"] = clash[model["unk_token"]]
    added = []
    for a in spec.get("added_tokens") or []:
        a = dict(a, id=a["id"] + N_SPECIAL, content=clash.get(a["content"], a["content"]))
        added.append(a)
    specials = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)]  # fmt: skip
    spec["added_tokens"] = specials + added
    spec["post_processor"] = None  # probekit adds its start and end tokens itself
    return wrap(Tokenizer.from_str(json.dumps(spec)))


# ---------------------------------------------------------------------------------------------------------------
# Any causal LM: a wrapper


@dataclass
class ForeignConfig:
    """What probekit needs to know of a wrapped model; ``hf_config`` is its Hugging Face config (to rebuild it)."""

    vocab_size: int  # probekit's: the model's + 6
    n_ctx: int
    n_layers: int
    d_model: int
    model_type: str
    bos_id: int  # the model's own ids
    eos_id: int
    pad_id: int
    hf_config: dict[str, Any] = field(default_factory=dict)
    foreign: bool = True  # marks a ForeignLM checkpoint's config.json
    tie_embeddings: bool = False


class ForeignLM(nn.Module):
    """A Hugging Face causal LM taking and giving probekit ids (module docstring). ``forward(input_ids, ...)``
    returns logits [B, T, V + 6]."""

    def __init__(self, hf: nn.Module, cfg: ForeignConfig) -> None:
        super().__init__()
        self.hf = hf
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: ForeignConfig) -> ForeignLM:
        from transformers import AutoConfig, AutoModelForCausalLM

        hf_cfg = AutoConfig.for_model(**cfg.hf_config)
        return cls(AutoModelForCausalLM.from_config(hf_cfg), cfg)

    def forward(
        self,
        input_ids: Tensor,
        attn_mode: str = "causal",
        key_mask: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        if attn_mode != "causal" or kwargs.get("positions") is not None:
            raise UserError(f"a {self.cfg.model_type} checkpoint has only causal attention; attention mode "
                            f"{attn_mode!r} (BICO, ABI) needs probekit's model: use NTP, or a Llama checkpoint, "
                            "which probekit converts")  # fmt: skip
        ids = input_ids - N_SPECIAL  # [B, T] the model's ids
        ids = torch.where(input_ids == EOS_ID, self.cfg.bos_id, ids)
        ids = torch.where(input_ids == PAD_ID, self.cfg.pad_id, ids)
        if bool((ids < 0).any()):
            raise UserError("a special token other than <|endoftext|> or <pad> reached a model trained elsewhere "
                            "(only NTP items and causal generation are supported for it)")  # fmt: skip
        mask = key_mask.long() if key_mask is not None else None  # [B, T]
        logits = self.hf(input_ids=ids, attention_mask=mask).logits  # [B, T, V]
        logits = logits.clone()
        eos = logits[..., self.cfg.eos_id].clone()  # [B, T]
        logits[..., self.cfg.eos_id] = FAR_BELOW  # probekit's <|endoftext|> is the one place to stop
        special = torch.full((*logits.shape[:-1], N_SPECIAL), FAR_BELOW, dtype=logits.dtype, device=logits.device)
        special[..., EOS_ID] = eos
        out = torch.cat([special, logits], dim=-1)  # [B, T, V + 6]
        if labels is not None:
            from probekit.model.transformer import logits_cross_entropy

            return logits_cross_entropy(out, labels)
        return out


def _special_ids(tok: Any, hf_cfg: Any) -> tuple[int, int, int]:
    """The model's (bos, eos, pad) ids: from the tokenizer, else the config."""
    bos = getattr(tok, "bos_token_id", None)
    eos = getattr(tok, "eos_token_id", None)
    bos = bos if bos is not None else getattr(hf_cfg, "bos_token_id", None)
    eos = eos if eos is not None else getattr(hf_cfg, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0]
    if bos is None and eos is None:
        raise UserError("the checkpoint's tokenizer and config name neither a BOS nor an EOS token; probekit needs "
                        "one to start sequences and one to end them (set them in the tokenizer)")  # fmt: skip
    bos = bos if bos is not None else eos
    eos = eos if eos is not None else bos
    pad = getattr(tok, "pad_token_id", None)
    assert bos is not None and eos is not None
    return int(bos), int(eos), int(pad if pad is not None else eos)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def import_llama_shifted(directory: Path) -> tuple[Any, Any]:
    """A Llama directory as a ``HookedLM`` in probekit's id space (module docstring) and the shifted tokenizer."""
    from probekit.model.hf import import_llama
    from probekit.model.transformer import HookedLM

    model, tok = import_llama(directory)
    bos, eos, _ = _special_ids(tok, None)
    unk = getattr(tok, "unk_token_id", None)
    cfg = copy.deepcopy(model.cfg)
    V = cfg.vocab_size
    new = HookedLM(type(cfg)(**{**cfg.__dict__, "vocab_size": V + N_SPECIAL, "tie_embeddings": False}))
    state = model.state_dict()
    emb, unemb = state["embed.weight"], state["unembed.weight"]  # [V, d]
    quiet = unemb[unk] if unk is not None and unk not in (bos, eos) else unemb.mean(0) - 10 * unemb.std(0)
    new_state = dict(state)
    special_emb = torch.zeros((N_SPECIAL, emb.shape[1]), dtype=emb.dtype)
    special_emb[EOS_ID] = emb[bos]
    special_un = quiet.expand(N_SPECIAL, -1).clone()
    special_un[EOS_ID] = unemb[eos]
    unemb = unemb.clone()
    unemb[eos] = quiet
    new_state["embed.weight"] = torch.cat([special_emb, emb])
    new_state["unembed.weight"] = torch.cat([special_un, unemb])
    if "span_embed.weight" in new_state:
        raise UserError(f"{directory} is a probekit ABI export; load it as the probekit checkpoint it came from")
    new.load_state_dict(new_state)
    return new.eval(), shifted_tokenizer(tok)


def load_foreign(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer, meta)`` of a Hugging Face causal-LM directory, in probekit's id space.

    A probekit export (its tokenizer is probekit's) loads back as the ``HookedLM`` it was; another Llama becomes a
    shifted ``HookedLM``; any other architecture a ``ForeignLM``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from probekit.data.tokens import TokenView
    from probekit.model.hf import import_llama, load_dir_tokenizer

    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise UserFileNotFoundError(f"{directory} has no config.json; point to a Hugging Face model directory")
    raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    model_type = str(raw.get("model_type", "unknown"))
    meta: dict[str, Any] = {"objective": "ntp", "dataset": None, "data": None, "step": None, "train_config": None,
                            "path": directory, "hf_model_type": model_type}  # fmt: skip
    tok = load_dir_tokenizer(directory)
    if TokenView(tok).is_probekit:  # a probekit export: the model it was, with its own tokenizer
        model, tok = import_llama(directory)
        return model.to(device).eval(), tok, meta
    if model_type == "llama":
        try:
            model, shifted = import_llama_shifted(directory)
            return model.to(device).eval(), shifted, meta
        except UserError as e:
            if "unsupported Llama features" not in str(e):
                raise
    hf_cfg = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{directory}: transformers cannot load this model ({str(e).splitlines()[0][:160]}); "
                        "save it with save_pretrained") from None  # fmt: skip
    bos, eos, pad = _special_ids(tok, hf_cfg)
    text = getattr(hf_cfg, "text_config", hf_cfg)
    n_ctx = next((int(getattr(text, k)) for k in ("max_position_embeddings", "n_positions", "n_ctx")
                  if getattr(text, k, None)), 2048)  # fmt: skip
    cfg = ForeignConfig(
        vocab_size=int(hf.get_output_embeddings().weight.shape[0]) + N_SPECIAL, n_ctx=n_ctx,
        n_layers=int(text.num_hidden_layers), d_model=int(text.hidden_size), model_type=model_type,
        bos_id=bos, eos_id=eos, pad_id=pad, hf_config=hf_cfg.to_dict(),
    )  # fmt: skip
    shifted = shifted_tokenizer(tok)
    if len(shifted) > cfg.vocab_size:
        raise UserError(f"{directory}: the tokenizer has {len(shifted) - N_SPECIAL} tokens but the model only "
                        f"{cfg.vocab_size - N_SPECIAL} output rows; save the tokenizer it was trained "
                        "with")  # fmt: skip
    shifted = _pad_vocab(shifted, cfg.vocab_size)
    return ForeignLM(hf, cfg).to(device).eval(), shifted, meta


def _pad_vocab(tok: Any, size: int) -> Any:
    """A model may have more output rows than its tokenizer has tokens (GPT-2 rounds up); probekit checks that
    the two agree, so the tokenizer gets unused placeholder tokens up to the model's size."""
    missing = size - len(tok)
    if missing > 0:
        tok.add_tokens([f"<unused{i}@model>" for i in range(missing)], special_tokens=True)
    return tok
