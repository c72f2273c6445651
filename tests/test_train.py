"""The trainer: packing, loss masks, schedule, checkpoints, exact resume, bad input, and the CLI."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch

from probekit.cli import main
from probekit.data.tokenizer import EOS_ID, build_tokenizer
from probekit.io import read_jsonl
from probekit.model.batch import IGNORE_INDEX, TrainItem, answer_item
from probekit.model.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.training.config import TrainConfig
from probekit.training.data import DataStream, ItemSource, PackedSource, bios_source, pack_windows, qa_answer_items
from probekit.training.trainer import Trainer, train

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64}


def _cfg(ds: Any, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(data=str(ds.root), out=str(out), model=dict(TINY), seq_len=64, batch_size=8,
                                max_steps=6, warmup_steps=2, log_every=2, eval_windows=4)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------- data


def test_packing_shuffles_entries_across_the_corpus(tiny_single) -> None:
    src = bios_source(tiny_single, seq_len=48, seed=0)
    tok = tiny_single.tokenizer
    enc = tok([e.text for e in tiny_single.entries], add_special_tokens=False)["input_ids"]
    entries = [[EOS_ID, *ids] for ids in enc]
    n_tokens = sum(map(len, entries))
    e0, e1 = src.epoch_items(0), src.epoch_items(1)
    assert all(len(it.ids) == 48 for it in e0) and len(e0) == -(-n_tokens // 48) == len(e1)
    stream0 = [t for it in e0 for t in it.ids][:n_tokens]
    # every entry appears exactly once per epoch, each starting with EOS (the separator)
    starts = [i for i, t in enumerate(stream0) if t == EOS_ID] + [n_tokens]
    pieces = sorted(tuple(stream0[a:b]) for a, b in pairwise(starts))
    assert pieces == sorted(tuple(e) for e in entries)
    # shuffled (not in dataset order), different every epoch, and reproducible
    first = stream0[: len(entries[0])]
    assert [it.ids for it in e0] != [it.ids for it in e1]
    assert [it.ids for it in src.epoch_items(1)] == [it.ids for it in e1]
    assert any(stream0[i : i + len(e)] != e for i, e in zip(starts, entries)) or first != entries[0]
    # the last window wraps around to the start of the stream
    flat = [t for it in e0 for t in it.ids]
    assert flat[n_tokens:] == flat[: len(flat) - n_tokens]


def test_pack_windows_small_corpus_wraps() -> None:
    assert pack_windows([[1, 7, 8], [1, 9]], 4) == [[1, 7, 8, 1], [9, 1, 7, 8]]


def test_qa_mix_uses_p_train_only(tiny_single) -> None:
    src = bios_source(tiny_single, seq_len=64, seed=0, qa_mix=0.5)
    tok = tiny_single.tokenizer
    train_pids, test_pids = set(tiny_single.split["train"]), set(tiny_single.split["test"])
    answer_mark = tok.convert_tokens_to_ids("Answer")
    stream = [t for it in src.epoch_items(0) for t in it.ids]
    n_qa = stream.count(answer_mark)
    bio_tokens = src.sequences.n_tokens
    qa_len = sum(map(len, src.extra)) / len(src.extra)
    assert abs(n_qa * qa_len / (n_qa * qa_len + bio_tokens) - 0.5) < 0.05
    assert len(src.extra) == 6 * len(train_pids)
    seq = lambda q: (EOS_ID, *tok(q.prompt, add_special_tokens=False)["input_ids"],  # noqa: E731
                     *tok(q.answer, add_special_tokens=False)["input_ids"])  # fmt: skip
    extra = {tuple(s) for s in src.extra}
    assert extra == {seq(q) for q in tiny_single.qa if q.pid in train_pids}
    assert not extra & {seq(q) for q in tiny_single.qa if q.pid in test_pids}
    with pytest.raises(ValueError, match="qa_mix"):
        PackedSource([[1, 7]], 4, 0, extra_fraction=1.0)


def test_data_stream_crosses_epochs_and_resumes() -> None:
    src = ItemSource([TrainItem([1, i]) for i in range(10, 15)], seed=3)
    s = DataStream(src)
    got = [it.ids[1] for it in s.take(7)]
    assert sorted(got[:5]) == [10, 11, 12, 13, 14] and s.state_dict() == {"epoch": 1, "offset": 2}
    rest = [it.ids[1] for it in s.take(3)]
    s2 = DataStream(src, epoch=1, offset=2)
    assert [it.ids[1] for it in s2.take(3)] == rest


def test_loss_mask_keeps_only_answer_tokens(tiny_single, tmp_path: Path) -> None:
    item = answer_item([20, 21, 22], [30, 31])  # EOS p p p a a EOS
    pairs = [(item.ids, item.loss_mask), [1, 40, 41]]  # plain (ids, loss_mask) pairs / token lists work too
    tr = Trainer(_cfg(tiny_single, tmp_path / "r"), pairs, tokenizer=tiny_single.tokenizer, progress=False)
    assert isinstance(tr.source, ItemSource) and tr.source.items[0] == item
    batch = tr.build_batch([item, TrainItem([1, 40, 41])], torch.Generator())
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * 3 + [30, 31, EOS_ID, IGNORE_INDEX]
    assert batch.labels[1].tolist()[:2] == [40, 41] and batch.labels[1, 2:].eq(IGNORE_INDEX).all()
    abi = Trainer(_cfg(tiny_single, tmp_path / "a", objective="abi"), ItemSource([item], seed=0),
                  tokenizer=tiny_single.tokenizer, progress=False)  # fmt: skip
    b = abi.build_batch([answer_item([20, 21, 22], [30, 31], loss_on_eos=False)], torch.Generator())
    assert b.input_ids[0].tolist() == [1, 20, 21, 22, 3, 1, 4, 30, 31]  # Part A with [MASK], [START] + answer
    assert b.labels[0].tolist()[-3:] == [30, 31, 5] and b.positions[0, -3:].tolist() == [4, 4, 4]


def test_qa_answer_items(tiny_single) -> None:
    items = qa_answer_items(tiny_single)
    tok = tiny_single.tokenizer
    train_qa = [q for q in tiny_single.qa if q.pid in set(tiny_single.split["train"])]
    assert len(items) == len(train_qa) == 6 * len(tiny_single.split["train"])
    for it, q in zip(items[:12], train_qa[:12]):
        answer = [t for t, m in zip(it.ids, it.loss_mask) if m]
        assert answer == tok(q.answer, add_special_tokens=False)["input_ids"] + [EOS_ID]
        assert it.ids[: it.loss_mask.index(True)] == [EOS_ID, *tok(q.prompt, add_special_tokens=False)["input_ids"]]


# ---------------------------------------------------------------------------------------------------- training


def test_train_run_writes_metrics_checkpoints_and_learns(tiny_single, tmp_path: Path) -> None:
    cfg = _cfg(tiny_single, tmp_path / "run", max_steps=12, eval_every=6, save_every=4, keep_checkpoints=2, lr=3e-3)
    res = train(cfg, progress=False)
    rows = read_jsonl(res.metrics_path)
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert set(rows[0]) >= {"step", "loss", "lr", "tokens", "tokens_per_s", "eval_loss"}
    assert rows[-1]["tokens"] == 12 * 8 * 64 == res.tokens and rows[-1]["tokens_per_s"] > 0
    assert [r["eval_loss"] is not None for r in rows] == [False, False, True, False, False, True]
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["eval_loss"] < rows[2]["eval_loss"]
    assert [p.name for p in list_checkpoints(res.out_dir)] == ["step_00000008", "step_00000012"]
    model, _, meta = load_checkpoint(res.out_dir)
    assert meta["step"] == 12 and meta["objective"] == "ntp" and meta["dataset"] == tiny_single.name
    assert all(torch.equal(a, b) for a, b in zip(_tensors(model).values(), _tensors(res.model).values()))
    summary = json.loads((res.out_dir / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["checkpoint"] == str(res.checkpoint)


def test_schedule_warmup_then_cosine(tiny_single, tmp_path: Path) -> None:
    tr = Trainer(_cfg(tiny_single, tmp_path / "r", max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4),
                 progress=False)  # fmt: skip
    assert tr.lr_at(0) == pytest.approx(1e-4) and tr.lr_at(9) == pytest.approx(1e-3)
    assert tr.lr_at(55) == pytest.approx(5.5e-4) and tr.lr_at(100) == pytest.approx(1e-4)
    decayed = {id(p) for p in tr.optimizer.param_groups[0]["params"]}
    model = tr.accelerator.unwrap_model(tr.model)
    assert id(model.blocks[0].attn.q_proj.weight) in decayed and id(model.embed.weight) not in decayed
    assert id(model.blocks[0].ln1.w) not in decayed


def test_budgets(tiny_single, tmp_path: Path) -> None:
    tr = Trainer(_cfg(tiny_single, tmp_path / "e", max_steps=None, epochs=2.0), progress=False)
    assert tr.max_steps == -(-2 * tr.stream.epoch_size // 8)
    tr = Trainer(_cfg(tiny_single, tmp_path / "t", max_steps=None, tokens=8 * 64 * 5 + 1), progress=False)
    assert tr.max_steps == 6
    with pytest.raises(ValueError, match="exactly one budget"):
        Trainer(_cfg(tiny_single, tmp_path / "x", epochs=1.0), progress=False)


@pytest.mark.parametrize("objective", ["bico", "abi"])
def test_resume_reaches_the_same_weights(tiny_single, tmp_path: Path, objective: str) -> None:
    """Kill after step 7 (last checkpoint at 5: epochs of 5 steps, so the resumed part crosses epochs)."""
    kw = dict(objective=objective, max_steps=12, save_every=5, eval_every=4, seq_len=48)
    straight = train(_cfg(tiny_single, tmp_path / "straight", **kw), progress=False)

    class Killed(Exception):
        pass

    def kill(trainer: Trainer, row: dict[str, Any]) -> None:
        if trainer.step == 7:
            raise Killed

    cfg = _cfg(tiny_single, tmp_path / "resumed", **kw)
    with pytest.raises(Killed):
        train(cfg, progress=False, on_step=kill)
    assert [p.name for p in list_checkpoints(cfg.out)] == ["step_00000005"]
    resumed = train(cfg, resume=True, progress=False)
    a, b = _tensors(straight.model), _tensors(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    rows_a, rows_b = read_jsonl(straight.metrics_path), read_jsonl(resumed.metrics_path)
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]
    assert [r["loss"] for r in rows_b] == pytest.approx([r["loss"] for r in rows_a], abs=1e-5)
    assert resumed.tokens == straight.tokens


def test_resume_with_changed_config_names_fields(tiny_single, tmp_path: Path) -> None:
    train(_cfg(tiny_single, tmp_path / "r", max_steps=2), progress=False)
    with pytest.raises(ValueError, match=r"lr: 0\.001 -> 0\.002.*seq_len: 64 -> 32"):
        Trainer(_cfg(tiny_single, tmp_path / "r", max_steps=2, lr=2e-3, seq_len=32), resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        Trainer(_cfg(tiny_single, tmp_path / "nothing"), resume=True, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        Trainer(_cfg(tiny_single, tmp_path / "r"), progress=False)
    with pytest.raises(ValueError, match="not divisible"):  # a refused --overwrite keeps the old run
        Trainer(_cfg(tiny_single, tmp_path / "r", model={**TINY, "n_heads": 3}), overwrite=True, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step_00000002"]
    res = train(_cfg(tiny_single, tmp_path / "r", max_steps=1, warmup_steps=1), overwrite=True, progress=False)
    assert res.steps == 1 and [r["step"] for r in read_jsonl(res.metrics_path)] == [1]


def test_bad_model_and_context_fail_before_training(tiny_single, tmp_path: Path) -> None:
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        Trainer(_cfg(tiny_single, out, model={**TINY, "n_heads": 3}), progress=False)
    with pytest.raises(ValueError, match=r"head size .* is odd"):
        Trainer(_cfg(tiny_single, out, model={**TINY, "d_model": 30, "n_heads": 2}), progress=False)
    with pytest.raises(ValueError, match=r"n_ctx is 32; set model.n_ctx >= 64 or use sequences of at most 32"):
        Trainer(_cfg(tiny_single, out, model={**TINY, "n_ctx": 32}), progress=False)
    with pytest.raises(ValueError, match=r"abi.*up to 82 tokens.*at most 50"):
        Trainer(_cfg(tiny_single, out, objective="abi", model={**TINY, "n_ctx": 64}), progress=False)
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        Trainer(_cfg(tiny_single, out, model={**TINY, "d_modle": 8}), progress=False)
    long_items = ItemSource([TrainItem([1] + [7] * 80)], seed=0)
    with pytest.raises(ValueError, match="up to 81 tokens"):
        Trainer(_cfg(tiny_single, out, data="", model={**TINY, "n_ctx": 64}), long_items,
                tokenizer=tiny_single.tokenizer, progress=False)  # fmt: skip
    assert not out.exists()
    abi = Trainer(_cfg(tiny_single, out, objective="abi"), progress=False)
    assert abi.accelerator.unwrap_model(abi.model).cfg.n_ctx == 82  # 64 + 2 per span (15% of 63 -> 9 spans max)


def test_init_from_checkpoint_and_vocab_mismatch(tiny_single, tmp_path: Path) -> None:
    base = train(_cfg(tiny_single, tmp_path / "base", max_steps=2), progress=False)
    ft = Trainer(_cfg(tiny_single, tmp_path / "ft", data="", init_from=str(base.out_dir), model={}),
                 ItemSource([answer_item([20, 21], [30])], seed=0), progress=False)  # fmt: skip
    start = _tensors(ft.accelerator.unwrap_model(ft.model))
    assert all(torch.equal(start[k], v) for k, v in _tensors(base.model).items())
    with pytest.raises(ValueError, match="model settings differ"):
        Trainer(_cfg(tiny_single, tmp_path / "ft2", init_from=str(base.out_dir), model={"d_model": 64}),
                progress=False)  # fmt: skip
    other = build_tokenizer(["a tokenizer from some other dataset"])
    foreign = HookedLM(ModelConfig(vocab_size=len(other), d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_ctx=64))
    save_checkpoint(tmp_path / "foreign", foreign, other)
    with pytest.raises(ValueError, match=r"vocabulary of checkpoint .* does not match"):
        Trainer(_cfg(tiny_single, tmp_path / "ft3", init_from=str(tmp_path / "foreign"), model={}), progress=False)


def test_cli_train_and_resume(tiny_single, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model: {d_model: 32, n_layers: 2, n_heads: 2, d_mlp: 64}\nseq_len: 64\nbatch_size: 8\n"
        "warmup_steps: 1\nmax_steps: 100\neval_windows: 2\n"
    )
    out = tmp_path / "run"
    args = ["train", "--config", str(cfg), "--data", str(tiny_single.root), "--out", str(out), "--steps", "3",
            "--seed", "1", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "steps       3" in text and "checkpoint  " in text and "final loss" in text
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == 3
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0  # config taken from the run
    assert "steps       3 (0 this session)" in capsys.readouterr().out
    assert main([*args[:-1], "--set", "lr=0.01", "--resume", "--no-progress"]) == 2
    assert "lr: 0.001 -> 0.01" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "x"), "--set", "model.n_heads=3",
                 "--data", str(tiny_single.root)]) == 2  # fmt: skip
    assert "not divisible" in capsys.readouterr().err


def test_example_config_is_valid() -> None:
    from probekit.serde import load_config

    path = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "ntp_small.yaml"
    cfg = load_config(TrainConfig, path)
    cfg.out = cfg.out or "x"
    cfg.validate()
    assert Counter(n is not None for n in (cfg.max_steps, cfg.epochs, cfg.tokens))[True] == 1
