"""Checkpoints trained elsewhere, built here without downloads: a byte-level BPE tokenizer with a GPT-2, and a
SentencePiece-style (metaspace) BPE tokenizer with a Llama, each trained a few steps with plain ``transformers`` on
a dataset's biographies and saved with ``save_pretrained``, as a user would bring them to probekit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast


def bpe_tokenizer(texts: list[str], style: str, vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """``style="byte"``: GPT-2's byte-level BPE (the space before a word belongs to its token, ``Ġ``), BOS = EOS =
    ``<|endoftext|>``, added by nobody. ``style="metaspace"``: Llama's SentencePiece-style BPE (``▁`` marks a
    space; ``<s>`` added in front of every text by the tokenizer itself), ``<unk>`` for unknown characters."""
    if style == "byte":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = ["<|endoftext|>"]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
        tok.train_from_iterator(texts, trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                       unk_token="<|endoftext|>")  # fmt: skip
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_hf_model(arch: str, vocab: int, tok: Any, seed: int = 0) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=32, n_layer=2, n_head=2,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    return LlamaForCausalLM(cfg)


def train_plain(model: Any, tok: Any, texts: list[str], steps: int = 30, seed: int = 0) -> None:
    """A few steps of plain causal-LM training (``labels=input_ids``), each text starting with the BOS token."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    bos = tok.bos_token_id
    seqs = [[bos, *tok(t, add_special_tokens=False)["input_ids"]] for t in texts]
    for step in range(steps):
        batch = [seqs[(step * 8 + k) % len(seqs)] for k in range(8)]
        T = max(len(s) for s in batch)
        ids = torch.tensor([s + [bos] * (T - len(s)) for s in batch])
        labels = torch.tensor([s + [-100] * (T - len(s)) for s in batch])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def outside_checkpoint(out: Path, ds: Any, arch: str, steps: int = 30, more_text: list[str] | None = None) -> Path:
    """A ``save_pretrained`` directory (model + tokenizer) of ``arch`` (``gpt2`` with byte-level BPE, ``llama`` with
    metaspace BPE) trained ``steps`` steps on the dataset's biographies; the tokenizer also learns from the QA
    questions and ``more_text``, as a tokenizer is trained on a wider corpus than one dataset."""
    texts = [e.text for e in ds.entries]
    qa = [f"{q.prompt} {q.answer}" for q in ds.qa]
    tok = bpe_tokenizer(texts + qa + list(more_text or []), "byte" if arch == "gpt2" else "metaspace")
    model = tiny_hf_model(arch, len(tok), tok)
    train_plain(model, tok, texts, steps)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
