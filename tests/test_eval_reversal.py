"""Reversal-curse evaluation: training on the facts, exact match and log-probability scoring, bad input, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from probekit.data.reversal import ReversalConfig, load_reversal_dir, make_reversal_dataset
from probekit.data.tokenizer import EOS_ID
from probekit.evaluate.reversal import random_others, reversal_source, run_reversal, train_reversal
from probekit.evaluate.scoring import completion_logprobs
from probekit.model.checkpoint import load_checkpoint, save_checkpoint
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.training.config import TrainConfig

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64}


@pytest.fixture(scope="module")
def rev(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("rev")
    data = make_reversal_dataset(root / "data", ReversalConfig(n_per_group=3, n_train_templates=8, n_test_templates=3))
    runs = {}
    for obj, steps in (("ntp", 150), ("abi", 10)):
        cfg = TrainConfig(out=str(root / obj), objective=obj, model=TINY, batch_size=16, max_steps=steps, lr=1e-2,
                          min_lr=1e-3, warmup_steps=5, eval_windows=0)  # fmt: skip
        runs[obj] = train_reversal(data.root, cfg, progress=False).checkpoint
    return data, runs


def test_training_source_is_every_fact(rev) -> None:
    data, runs = rev
    src = reversal_source(data)
    assert len(src.items) == len(data.files["all_prompts_train"]) == 3 * 8 * 4
    assert all(it.ids[0] == EOS_ID and it.loss_mask is None for it in src.items)
    assert data.tokenizer.decode(src.items[0].ids[1:]) == data.tokenizer.decode(
        data.tokenizer(data.train_texts()[0], add_special_tokens=False)["input_ids"])  # fmt: skip
    _, _, meta = load_checkpoint(runs["ntp"])
    assert meta["objective"] == "ntp" and meta["data"] == str(data.root)


def test_ntp_learns_the_trained_direction_only(rev, tmp_path: Path) -> None:
    data, runs = rev
    res = run_reversal(runs["ntp"], data.root, tmp_path / "out", progress=False, png=False)
    t = res.table.set_index(["task", "metric"])["value"]
    n_items = {task: len(data.task(task)) for task in ("N2D", "D2N", "N2D-reverse", "D2N-reverse")}
    assert set(res.table.task) == set(n_items)
    assert set(res.table.metric) == {"exact_match", "logprob_correct", "logprob_random", "logprob_diff",
                                     "correct_preferred", "p_value"}  # fmt: skip
    # measured with this seed: D2N 1.0 and N2D-reverse 0.0 (the reversal curse in a 2-layer model)
    assert t["D2N", "exact_match"] >= 0.75 and t["N2D-reverse", "exact_match"] <= 0.25
    assert t["D2N", "logprob_correct"] > t["D2N", "logprob_random"] and t["D2N", "correct_preferred"] == 1.0
    assert 0.0 <= t["D2N", "p_value"] < 0.05 and 0.0 <= t["N2D-reverse", "p_value"] <= 1.0
    assert len(res.records) == sum(n_items.values())
    for r in res.records:
        assert r["random_completion"] != r["target"]
        assert r["exact_match"] == r["generated"].lower().startswith(r["target"].strip().lower())
    # the per-item log-probabilities are those of completion_logprobs on the same ids
    model, tok, _ = load_checkpoint(runs["ntp"])
    r0 = res.records[0]
    p, c = (tok(s, add_special_tokens=False)["input_ids"] for s in (r0["prompt"], r0["target"]))
    assert completion_logprobs(model, [p], [c])[0] == pytest.approx(r0["logprob_correct"], abs=1e-4)
    on_disk = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(on_disk) == len(res.records) and (tmp_path / "out" / "results.parquet").exists()


def test_abi_model_answers_as_a_span(rev, tmp_path: Path) -> None:
    data, runs = rev
    res = run_reversal(runs["abi"], data.root, tmp_path / "abi", tasks=["D2N", "both"], progress=False, png=False)
    assert set(res.table.task) == {"D2N", "both"} and set(res.table.objective) == {"abi"}
    lp = res.table.set_index(["task", "metric"])["value"]
    assert math.isfinite(lp["D2N", "logprob_correct"]) and lp["D2N", "logprob_correct"] < 0
    # each item's log-probability is the span's, teacher-forced token by token through the generation layout
    # (Part A = [EOS] + prompt + [MASK], Part B = [START] + the tokens so far): an independent computation
    import torch

    from probekit.objectives.abi import abi_generation_inputs

    model, tok, _ = load_checkpoint(runs["abi"])
    model.eval()
    for r in [x for x in res.records if x["task"] == "D2N"][:3]:
        p, c = (tok(s, add_special_tokens=False)["input_ids"] for s in (r["prompt"], r["target"]))
        total = 0.0
        with torch.no_grad():
            for k in range(len(c)):
                logits = model(**abi_generation_inputs([p], [c[:k]], ()).model_kwargs())  # [1, T, V]
                total += float(torch.log_softmax(logits[0, -1].double(), -1)[c[k]])
        assert r["logprob_correct"] == pytest.approx(total, abs=1e-3)


def test_random_others() -> None:
    picks = random_others([" Ann Lee", " Bo Chan", " ann  lee", " Cy Dee"], seed=0)
    assert all(picks[k] is not None and picks[k] not in ((0, 2) if k in (0, 2) else (k,)) for k in range(4))
    assert picks == random_others([" Ann Lee", " Bo Chan", " ann  lee", " Cy Dee"], seed=0)
    assert random_others([" Same", " same "], seed=0) == [None, None]


def test_bad_input_fails_before_work(rev, tmp_path: Path) -> None:
    data, runs = rev
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="not available"):
        run_reversal(runs["ntp"], data.root, out, tasks=["N2X"])
    short = HookedLM(ModelConfig(vocab_size=len(data.tokenizer), n_ctx=8, **TINY))
    save_checkpoint(tmp_path / "short", short, data.tokenizer, meta={"objective": "ntp"})
    with pytest.raises(ValueError, match="n_ctx=8"):
        run_reversal(tmp_path / "short", data.root, out)
    other = make_reversal_dataset(tmp_path / "other", ReversalConfig(n_per_group=1, n_train_templates=2,
                                                                     n_test_templates=1, seed=9))  # fmt: skip
    with pytest.raises(ValueError, match="cannot encode"):  # the model's tokenizer does not know these names
        run_reversal(runs["ntp"], other.root, out)
    assert not out.exists()
    assert load_reversal_dir(data.root).tasks  # the data itself was fine


def test_cli_eval_reversal(rev, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from probekit.cli import main

    data, runs = rev
    args = ["eval", "reversal", "--data", str(data.root), "--checkpoint", str(runs["ntp"]), "--test", "permutation",
            "--tasks", "D2N,N2D-reverse", "--no-png", "--out", str(tmp_path / "cli")]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "N2D-reverse" in printed and "p_value" in printed
    table = json.loads((tmp_path / "cli" / "eval_config.json").read_text())
    assert table["test"] == "permutation" and table["tasks"] == ["D2N", "N2D-reverse"]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {d_model: 32, n_layers: 2, n_heads: 2, d_mlp: 64}\nmax_steps: 2\nbatch_size: 8\n"
                   "warmup_steps: 1\neval_windows: 0\n")  # fmt: skip
    both = args[:-1] + [str(tmp_path / "both"), "--train-config", str(cfg)]
    assert main(both) == 2 and "exactly one of --checkpoint" in capsys.readouterr().err
    train_args = [a for a in both if a not in ("--checkpoint", str(runs["ntp"]))]
    assert main(train_args + ["--objective", "bico"]) == 0
    assert "trained bico: 2 steps" in capsys.readouterr().out
    assert (tmp_path / "both" / "train" / "summary.json").exists()
