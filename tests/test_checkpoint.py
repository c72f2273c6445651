"""Checkpoint directories: round trip, run-directory resolution, and clear errors for broken checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from probekit.data.tokenizer import build_tokenizer
from probekit.model.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model_config,
    load_trainer_state,
    save_checkpoint,
)
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.training.config import TrainConfig


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(["Anya Briar Forger was born in Princeton , NJ .", "She works for Acme ."])


def _model(tok, **kw) -> HookedLM:
    cfg = ModelConfig(vocab_size=len(tok), d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_ctx=32, seed=3, **kw)
    return HookedLM(cfg)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_round_trip_with_meta(tmp_path: Path, tok) -> None:
    model = _model(tok)
    tc = TrainConfig(data=str(tmp_path / "mydata"), out=str(tmp_path), objective="bico", max_steps=3)
    path = save_checkpoint(tmp_path / "ck", model, tok, tc, trainer_state={"step": 7}, meta={"step": 7})
    assert {p.name for p in path.iterdir()} >= {
        "config.json", "meta.json", "model.safetensors", "tokenizer.json", "train_config.json", "trainer_state.pt"
    }
    loaded, tok2, meta = load_checkpoint(path)
    _assert_same_weights(model, loaded)
    assert not loaded.training
    assert tok2.get_vocab() == tok.get_vocab()
    assert meta["objective"] == "bico" and meta["dataset"] == "mydata" and meta["step"] == 7
    assert meta["train_config"]["max_steps"] == 3 and meta["model_config"] == model.cfg and meta["path"] == path
    assert load_trainer_state(path)["step"] == 7
    assert load_model_config(path) == model.cfg
    x = torch.tensor([[1, 6, 7, 8]])
    assert torch.equal(model.eval()(x), loaded(x))


def test_tied_embeddings_and_abi_table_round_trip(tmp_path: Path, tok) -> None:
    model = _model(tok, tie_embeddings=True, span_positions=True)
    save_checkpoint(tmp_path / "ck", model, tok)
    loaded, _, meta = load_checkpoint(tmp_path / "ck")
    _assert_same_weights(model, loaded)
    assert loaded.unembed.weight is loaded.embed.weight
    assert meta["train_config"] is None and meta["objective"] is None


def test_run_directory_resolves_to_latest(tmp_path: Path, tok) -> None:
    model = _model(tok)
    for step in (5, 40, 200):
        save_checkpoint(tmp_path / "run" / "checkpoints" / f"step_{step:08d}", model, tok, meta={"step": step})
    assert latest_checkpoint(tmp_path / "run").name == "step_00000200"
    _, _, meta = load_checkpoint(tmp_path / "run")
    assert meta["step"] == 200


def test_truncated_weights_name_the_file(tmp_path: Path, tok) -> None:
    path = save_checkpoint(tmp_path / "ck", _model(tok), tok)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors.*corrupt or truncated.*re-train"):
        load_checkpoint(path)


def test_garbage_weights_and_trainer_state(tmp_path: Path, tok) -> None:
    path = save_checkpoint(tmp_path / "ck", _model(tok), tok, trainer_state={"step": 1})
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"model.safetensors"):
        load_checkpoint(path)
    (path / "trainer_state.pt").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"trainer_state.pt.*corrupt or truncated"):
        load_trainer_state(path)


def test_vocab_mismatch_is_refused(tmp_path: Path, tok) -> None:
    path = save_checkpoint(tmp_path / "ck", _model(tok), tok)
    cfg = json.loads((path / "config.json").read_text())
    cfg["vocab_size"] += 5
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"vocab_size .* does not match its tokenizer"):
        load_checkpoint(path)
    other = build_tokenizer(["completely different words here"])
    with pytest.raises(ValueError, match="does not match the tokenizer"):
        save_checkpoint(tmp_path / "ck2", _model(tok), other)


def test_missing_files_and_paths(tmp_path: Path, tok) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        load_checkpoint(tmp_path / "empty")
    path = save_checkpoint(tmp_path / "ck", _model(tok), tok)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        load_trainer_state(path)
