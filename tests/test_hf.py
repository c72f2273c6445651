"""Hugging Face interop: Llama export matches our logits, TransformerBridge sees the same residual stream,
import round-trips, and bad inputs fail clearly."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from probekit.data.tokenizer import build_tokenizer
from probekit.model.config import ModelConfig
from probekit.model.hf import EXTRA_JSON, EXTRA_TENSORS, export_llama, import_llama, load_bridge
from probekit.model.transformer import HookedLM


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    words = " ".join(f"w{i}" for i in range(40))
    return build_tokenizer([f"Anya Briar Forger was born in Princeton , NJ . {words}"])


def trained_like(vocab: int, **kw: object) -> HookedLM:
    """A tiny model with perturbed weights (RMSNorm weights away from 1, so the mapping of every tensor matters)."""
    cfg = dict(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=64, seed=3)
    cfg.update(kw)
    model = HookedLM(ModelConfig(**cfg)).eval()  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def ids_for(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(12))


@pytest.mark.parametrize("tie", [False, True])
def test_export_logits_match_llama(tmp_path: Path, tokenizer, tie: bool) -> None:  # type: ignore[no-untyped-def]
    from transformers import LlamaForCausalLM

    model = trained_like(len(tokenizer), tie_embeddings=tie)
    out = export_llama(model, tokenizer, tmp_path / "llama")
    assert {"config.json", "model.safetensors", "tokenizer.json", EXTRA_JSON} <= {p.name for p in out.iterdir()}
    hf = LlamaForCausalLM.from_pretrained(str(out)).eval()
    ids = ids_for(len(tokenizer))
    with torch.no_grad():
        diff = (hf(ids).logits - model(ids)).abs().max().item()
    assert diff < 1e-4
    assert hf.config.tie_word_embeddings == tie
    # A plain Hugging Face save (no probekit side files) imports too
    hf.save_pretrained(str(tmp_path / "plain"))
    tokenizer.save_pretrained(str(tmp_path / "plain"))
    back, _ = import_llama(tmp_path / "plain")
    assert back.cfg.tie_embeddings == tie and back.cfg.d_model == 32
    with torch.no_grad():
        assert (back(ids) - model(ids)).abs().max().item() < 1e-5


def test_bridge_resid_post_matches_run_with_cache(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = trained_like(len(tokenizer))
    out = export_llama(model, tokenizer, tmp_path / "llama")
    bridge = load_bridge(out)
    ids = ids_for(len(tokenizer))
    with torch.no_grad():
        logits_b, cache_b = bridge.run_with_cache(ids)
        logits, cache = model.run_with_cache(ids)
    assert (logits_b - logits).abs().max().item() < 1e-4
    for layer in range(model.cfg.n_layers):
        for name in ("hook_resid_pre", "hook_resid_post"):
            key = f"blocks.{layer}.{name}"
            assert (cache_b[key] - cache[key]).abs().max().item() < 1e-4, key


def test_embed_update_probe_trains_the_same_through_the_bridge(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    from probekit.probes.config import EmbedProbeConfig
    from probekit.probes.embed_probe import train_embed_probe
    from tests.test_embed_probe import token_task

    model = trained_like(len(tokenizer))
    bridge = load_bridge(export_llama(model, tokenizer, tmp_path / "llama"))
    task = token_task(True, vocab=len(tokenizer))
    cfg = EmbedProbeConfig(epochs=2, batch_size=16)
    _, ours = train_embed_probe(model, task, cfg)
    _, theirs = train_embed_probe(bridge, task, cfg)
    for a, b in zip(ours["epochs"], theirs["epochs"]):  # same model, same update: the same training run
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 and a["val_accuracy"] == b["val_accuracy"]


def test_import_round_trip(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = trained_like(len(tokenizer), rope_theta=500.0, norm_eps=1e-6)
    out = export_llama(model, tokenizer, tmp_path / "llama")
    back, tok = import_llama(out)
    assert back.cfg == model.cfg
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert tok.get_vocab() == tokenizer.get_vocab()
    ids = ids_for(len(tokenizer))
    assert torch.equal(back(ids, attn_mode="bico"), model(ids, attn_mode="bico"))


def test_abi_span_table_goes_to_side_file_and_comes_back(tmp_path: Path, tokenizer, caplog) -> None:  # type: ignore[no-untyped-def]
    from transformers import LlamaForCausalLM

    model = trained_like(len(tokenizer), span_positions=True, tie_embeddings=True)
    with caplog.at_level(logging.WARNING, logger="probekit.model.hf"):
        out = export_llama(model, tokenizer, tmp_path / "abi")
    assert any("span" in r.getMessage() for r in caplog.records)
    assert (out / EXTRA_TENSORS).exists()
    extra = json.loads((out / EXTRA_JSON).read_text())
    assert extra["span_embed"]["row0_folded_into_embed_tokens"] is True
    ids = ids_for(len(tokenizer))
    hf = LlamaForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() < 1e-4  # causal input = all Part A
    back, _ = import_llama(out)
    assert back.span_embed is not None and model.span_embed is not None
    assert torch.equal(back.span_embed.weight, model.span_embed.weight)
    assert torch.allclose(back.embed.weight, model.embed.weight, atol=1e-6)
    kw = dict(attn_mode="abi", prefix_len=torch.tensor([12, 15]), span_positions=torch.arange(20).expand(2, 20) % 4)
    assert torch.allclose(back(ids, **kw), model(ids, **kw), atol=1e-5)


def test_bad_inputs_fail_clearly(tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    small = trained_like(len(tokenizer) - 3)
    with pytest.raises(ValueError, match=r"tokenizer has .* tokens but the checkpoint's vocabulary has"):
        export_llama(small, tokenizer, tmp_path / "x")
    assert not (tmp_path / "x").exists()

    out = export_llama(trained_like(len(tokenizer)), tokenizer, tmp_path / "ok")
    with pytest.raises(FileExistsError):
        export_llama(trained_like(len(tokenizer)), tokenizer, out)

    with pytest.raises(FileNotFoundError, match=r"config.json"):
        import_llama(tmp_path / "missing")

    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 2}))
    with pytest.raises(ValueError, match="grouped-query attention"):
        import_llama(out)
    (out / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="expected 'llama'"):
        import_llama(out)
    (out / "config.json").write_text(json.dumps({**cfg, "vocab_size": len(tokenizer) - 2}))
    (out / EXTRA_JSON).unlink()  # a plain Llama directory whose weights do not match its config
    with pytest.raises(ValueError, match="shape"):
        import_llama(out)


def trained_on_bios(ds, steps: int = 80) -> HookedLM:  # type: ignore[no-untyped-def]
    """A tiny NTP model trained a few dozen steps on the biographies and QA texts (greedy outputs vary by prompt)."""
    from probekit.data.tokenizer import EOS_ID, PAD_ID

    tok = ds.tokenizer
    texts = [e.text for e in ds.entries] + [q.text for q in ds.qa]
    seqs = [[EOS_ID, *ids, EOS_ID] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    cfg = ModelConfig(vocab_size=len(tok), d_model=48, n_layers=2, n_heads=4, d_mlp=96, n_ctx=96, seed=5)
    model = HookedLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = [seqs[i] for i in torch.randint(0, len(seqs), (16,), generator=g).tolist()]
        ids = torch.full((len(batch), max(map(len, batch))), PAD_ID, dtype=torch.long)
        for b, s in enumerate(batch):
            ids[b, : len(s)] = torch.tensor(s)
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=PAD_ID
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_export_generates_like_probekit_through_auto_classes(tmp_path: Path, tiny_single) -> None:  # type: ignore[no-untyped-def]
    """A user loading the export with plain AutoTokenizer + AutoModelForCausalLM gets probekit's greedy text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probekit.data.tokenizer import EOS_ID
    from probekit.objectives import generate

    ds = tiny_single
    tok = ds.tokenizer
    before = tok.backend_tokenizer.to_str()
    model = trained_on_bios(ds)
    out = export_llama(model, tok, tmp_path / "llama")
    assert tok.backend_tokenizer.to_str() == before  # the caller's tokenizer is not changed
    assert tok("Anya was born")["input_ids"] == tok("Anya was born", add_special_tokens=False)["input_ids"]

    prompts = [" ".join(e.text.split()[:n]) for e, n in zip(ds.entries[:6], (3, 5, 7, 9, 11, 13))]
    prompts += [q.prompt for q in ds.qa[0:36:7]]  # six people, a different question each
    assert len(prompts) == 12
    ours = generate(model, "ntp", [[EOS_ID, *tok(p, add_special_tokens=False)["input_ids"]] for p in prompts], 24)
    assert len({tuple(o) for o in ours}) > 6  # the model is not constant: outputs differ between prompts
    assert any(len(o) < 24 for o in ours)  # and some stop at the end token

    hf_tok = AutoTokenizer.from_pretrained(str(out))
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    theirs = []
    for p in prompts:
        enc = hf_tok(p, return_tensors="pt")
        with torch.no_grad():
            seq = hf.generate(**enc, do_sample=False, max_new_tokens=24)[0, enc["input_ids"].shape[1] :].tolist()
        theirs.append(seq[:-1] if seq and seq[-1] == EOS_ID else seq)
    assert theirs == ours
    assert [hf_tok.decode(t, skip_special_tokens=True) for t in theirs] == [tok.decode(o) for o in ours]

    # The start token is added exactly once, and only when special tokens are asked for
    for p in prompts:
        plain = tok(p, add_special_tokens=False)["input_ids"]
        assert hf_tok(p)["input_ids"] == [EOS_ID, *plain]
        assert hf_tok(p, add_special_tokens=False)["input_ids"] == plain
    # probekit reads the export back as its own tokenizer, encoding as before when it asks for no specials
    back, back_tok = import_llama(out)
    assert back_tok.get_vocab() == tok.get_vocab()
    for p in prompts:
        assert back_tok(p, add_special_tokens=False)["input_ids"] == tok(p, add_special_tokens=False)["input_ids"]
    ids = [[EOS_ID, *back_tok(p, add_special_tokens=False)["input_ids"]] for p in prompts]
    assert generate(back, "ntp", ids, 24) == ours
