"""QA extraction and inverse search: split hygiene, finetuning (full, LoRA), generation per objective, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from probekit.data.tokenizer import EOS_ID, build_tokenizer
from probekit.evaluate import qa as qa_mod
from probekit.evaluate.inverse import inverse_items, name_preference, run_inverse
from probekit.evaluate.qa import evaluate_items, mixed_train, parse_ratio, qa_eval_items, run_qa
from probekit.model.checkpoint import load_checkpoint, save_checkpoint
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.training.config import FinetuneConfig, TrainConfig
from probekit.training.data import bios_source
from probekit.training.finetune import EvalItem, finetune, load_adapter
from probekit.training.trainer import train

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64}


@pytest.fixture(scope="module")
def models(tiny_single, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A few pretraining steps per objective: enough to have a real trained checkpoint of each kind."""
    root = tmp_path_factory.mktemp("qa_models")
    out = {}
    for obj in ("ntp", "abi", "bico"):
        cfg = TrainConfig(data=str(tiny_single.root), out=str(root / obj), objective=obj, model=TINY, seq_len=64,
                          batch_size=8, max_steps=4, warmup_steps=1, eval_windows=0)  # fmt: skip
        out[obj] = train(cfg, progress=False).checkpoint
    return out


def test_split_never_leaks_test_people(tiny_single, models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tiny_single
    train_pids, test_pids = set(ds.split["train"]), set(ds.split["test"])
    test_names = [ds.person(p).full_name for p in test_pids]
    for items in (qa_eval_items(ds, ds.split["train"]), inverse_items(ds, ds.split["train"], ["birth_city", "major"])):
        assert {it.pid for it in items} == train_pids
        assert not any(name in it.prompt or name in it.answer for it in items for name in test_names)
    # mixed training: the QA sequences mixed into pretraining are P_train's only
    extra = bios_source(ds, seq_len=64, seed=0, qa_mix=0.5).extra
    texts = ds.tokenizer.batch_decode(extra)
    assert len(extra) == 6 * len(train_pids) and not any(n in t for t in texts for n in test_names)
    # the pipeline finetunes on exactly the P_train items
    seen: list[EvalItem] = []
    real = qa_mod.finetune

    def spy(model, tok, objective, items, *args, **kwargs):
        seen.extend(items)
        return real(model, tok, objective, items, *args, **kwargs)

    monkeypatch.setattr(qa_mod, "finetune", spy)
    run_qa(models["ntp"], ds.root, tmp_path / "o", FinetuneConfig(max_steps=1, epochs=None, warmup_steps=0),
           attrs=["major"], progress=False, png=False)  # fmt: skip
    assert {it.pid for it in seen} == train_pids and {it.task for it in seen} == {"major"}


@pytest.mark.parametrize("objective", ["ntp", "abi", "bico"])
def test_finetune_then_generate_each_objective(tiny_single, models, tmp_path: Path, objective: str) -> None:
    """Full finetuning memorises P_train answers; generation (ABI: as a blank span) recovers them."""
    cfg = FinetuneConfig(method="full", max_steps=60, epochs=None, lr=1e-2, warmup_steps=0, batch_size=20)
    res = run_qa(models[objective], tiny_single.root, tmp_path / "out", cfg, attrs=["major"], eval_train=True,
                 progress=False, png=False)  # fmt: skip
    t = res.table
    em = t[(t.task == "overall") & (t.metric == "exact_match")].set_index("split")["value"]
    assert em["train"] >= 0.3, em  # memorised (measured: ntp 1.0, abi 0.9, bico 0.4)
    assert set(t.task) == {"major", "overall"} and set(t.split) == {"train", "test"}
    n = t[(t.split == "test") & (t.task == "overall")]["n"].iloc[0]
    assert n == len(tiny_single.split["test"])
    on_disk = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert list(on_disk.columns[:6]) == ["model", "objective", "task", "metric", "value", "n"]
    assert (tmp_path / "out" / "results.csv").exists() and (tmp_path / "out" / "results_exact_match.html").exists()
    preds = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 * n and all(p["exact_match"] == (p["generated"] == p["answer"]) for p in preds)
    _, _, meta = load_checkpoint(res.finetune.checkpoint)  # the finetuned checkpoint is loadable
    assert meta["objective"] == objective and meta["finetune"]["method"] == "full"


@torch.no_grad()
def test_generation_follows_hand_greedy(tiny_single, models) -> None:
    """evaluate_items generates like a hand-written greedy loop (ABI: a blank span before the closing EOS) and
    scores exact match on the ids up to the stop token."""
    from probekit.data.tokenizer import END_ID, MASK_ID, START_ID

    qa = tiny_single.qa[:4]
    for objective in ("ntp", "abi", "bico"):
        model, tok, _ = load_checkpoint(models[objective])
        items = [EvalItem(q.pid, q.attr, q.prompt, q.answer) for q in qa]
        recs = evaluate_items(model, tok, objective, items)
        longest = max(len(tok(q.answer, add_special_tokens=False)["input_ids"]) for q in qa)
        for q, r in zip(qa, recs):
            prompt = [EOS_ID, *tok(q.prompt, add_special_tokens=False)["input_ids"]]
            answer = tok(q.answer, add_special_tokens=False)["input_ids"]
            out: list[int] = []
            for _ in range(longest + 1):  # hand greedy decoding (as long as the batch's), one token at a time
                if objective == "abi":
                    a = prompt + [MASK_ID, EOS_ID]
                    ids = torch.tensor([a + [START_ID, *out]])
                    pos = torch.tensor([list(range(len(a))) + [len(prompt)] * (len(out) + 1)])
                    span = torch.tensor([[0] * len(a) + list(range(1, len(out) + 2))])
                    logits = model(ids, attn_mode="abi", positions=pos, span_positions=span,
                                   prefix_len=torch.tensor([len(a)]))[0, -1]  # fmt: skip
                else:
                    logits = model(torch.tensor([prompt + out]))[0, -1]
                nxt = int(logits.argmax())
                if nxt == (END_ID if objective == "abi" else EOS_ID):
                    break
                out.append(nxt)
            assert r["generated"] == tok.decode(out)
            assert r["exact_match"] == (out == answer) and r["first_token"] == (out[:1] == answer[:1])


def test_lora_trains_only_adapters(tiny_single, models, tmp_path: Path) -> None:
    model, tok, meta = load_checkpoint(models["ntp"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    items = qa_eval_items(tiny_single, tiny_single.split["train"], ["major"])
    cfg = FinetuneConfig(method="lora", embed_rank=4, max_steps=3, epochs=None, lr=1e-2, warmup_steps=0, merge=False)
    res = finetune(model, tok, "ntp", items, cfg, tmp_path / "unmerged", progress=False, base_meta=meta)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input model is untouched
    base = res.model.get_base_model().state_dict()
    lora = {k: v for k, v in base.items() if "lora_" in k}
    frozen = {k.replace(".base_layer", ""): v for k, v in base.items() if "lora_" not in k}
    assert set(frozen) == set(before) and all(torch.equal(before[k], v) for k, v in frozen.items())
    assert any("embed.lora_embedding_B" in k for k in lora)
    assert all(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k or "lora_embedding_B" in k)  # trained
    assert res.trainable_params == sum(v.numel() for v in lora.values()) and res.checkpoint is None
    reloaded, _, _ = load_adapter(models["ntp"], res.adapter)
    x = torch.tensor([[EOS_ID, *tok(items[0].prompt, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        want = res.model(x)
        assert torch.allclose(reloaded(x), want, atol=1e-5)
    # merged: the same (seeded) run, merged into plain weights that load without peft
    merged = finetune(model, tok, "ntp", items, FinetuneConfig(**{**cfg.__dict__, "merge": True}), tmp_path / "m",
                      progress=False)  # fmt: skip
    plain, _, mmeta = load_checkpoint(merged.checkpoint)
    changed = {k for k, v in plain.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) or k == "embed.weight" for k in changed)
    with torch.no_grad():
        assert torch.allclose(plain(x), want, atol=1e-4)
    assert mmeta["finetune"]["method"] == "lora"


def test_inverse_search(tiny_single, models, tmp_path: Path) -> None:
    ds = tiny_single
    items = inverse_items(ds, ds.split["test"], ["birth_city", "company"])
    p = ds.person(items[0].pid)
    assert items[0].answer == p.full_name and items[0].task == "birth_city+company"
    assert p.attrs["birth_city"] in items[0].prompt and items[0].prompt.endswith("Answer:")
    res = run_inverse(models["bico"], ds.root, tmp_path / "inv", FinetuneConfig(method="none"),
                      attrs=["birth_city", "company"], progress=False, png=False)  # fmt: skip
    t = res.table
    assert set(t.task) == {"birth_city+company", "overall"} and set(t.metric) == {"exact_match", "first_token"}
    assert (t.n == len(ds.split["test"])).all() and res.finetune is None
    # the rates are those of the predictions, and each prediction is the model's own greedy answer to the prompt
    from probekit.io import read_jsonl
    from probekit.objectives import generate
    from probekit.training.finetune import encode_items

    preds = read_jsonl(tmp_path / "inv" / "predictions.jsonl")
    assert [r["pid"] for r in preds] == [it.pid for it in items]
    assert all(r["answer"] == ds.person(r["pid"]).full_name and r["prompt"] == it.prompt for r, it in zip(preds, items))
    overall = t[(t.task == "overall") & (t.metric == "exact_match")]["value"].item()
    assert overall == pytest.approx(sum(r["exact_match"] for r in preds) / len(preds))
    model, tok, _ = load_checkpoint(models["bico"])
    prompts, answers = encode_items(tok, items)
    from probekit.data.tokenizer import EOS_ID

    # generation runs one token past the longest answer, so an exact answer must also stop
    gen = generate(model, "bico", [[EOS_ID, *q] for q in prompts], max(len(a) for a in answers) + 1)
    assert [r["generated"] for r in preds] == [tok.decode(g) for g in gen]
    assert [r["exact_match"] for r in preds] == [g == a for g, a in zip(gen, answers)]
    with pytest.raises(ValueError, match="distinct attributes"):
        inverse_items(ds, ds.split["test"], ["birth_city", "height"])


@pytest.mark.parametrize("objective", ["ntp", "abi"])
def test_name_preference_scores_the_right_name_against_another_persons(tiny_single, models, objective: str) -> None:
    from probekit.evaluate.scoring import completion_logprobs
    from probekit.training.finetune import encode_items

    ds = tiny_single
    model, tok, _ = load_checkpoint(models[objective])
    items = inverse_items(ds, ds.split["test"])
    recs = name_preference(model, objective, tok, items, seed=3)
    assert [r["pid"] for r in recs] == [it.pid for it in items]
    prompts, answers = encode_items(tok, items)
    suffix = qa_mod.QA_ABI_SUFFIX
    right = completion_logprobs(model, prompts, answers, objective, abi_suffix=suffix)
    assert [r["logprob_right"] for r in recs] == pytest.approx(right)
    # each foil is another test person's name: the recorded score is that of prompt k with some answer j != k
    n = len(items)
    for k, r in enumerate(recs):
        others = [j for j in range(n) if j != k]
        scores = completion_logprobs(model, [prompts[k]] * len(others), [answers[j] for j in others], objective,
                                     abi_suffix=suffix)  # fmt: skip
        assert any(abs(r["logprob_other"] - x) < 1e-5 for x in scores)
    assert all(r["preferred"] == (r["logprob_right"] > r["logprob_other"]) for r in recs)
    assert name_preference(model, objective, tok, items, seed=3) == recs  # seeded
    with pytest.raises(ValueError, match="at least two"):
        name_preference(model, objective, tok, items[:1])


def test_bad_input_fails_before_work(tiny_single, models, tmp_path: Path) -> None:
    ds, out = tiny_single, tmp_path / "never"
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"pid": 99999, "attr": "major", "prompt": "What major? Answer:", "answer": "x"}) + "\n")
    with pytest.raises(ValueError, match="not in dataset"):
        run_qa(models["ntp"], ds.root, out, items_file=items, progress=False)
    items.write_text(json.dumps({"pid": 0, "attr": "major", "prompt": "What major? Answer:", "answer": " "}) + "\n")
    with pytest.raises(ValueError, match="empty answer"):
        run_qa(models["ntp"], ds.root, out, items_file=items, progress=False)
    items.write_text('{"pid": 0, "attr": "major"\n')
    with pytest.raises(ValueError, match=r"items.jsonl:1: malformed"):
        run_qa(models["ntp"], ds.root, out, items_file=items, progress=False)
    # a prompt longer than the model's context
    short = HookedLM(ModelConfig(vocab_size=len(ds.tokenizer), n_ctx=12, **TINY))
    save_checkpoint(tmp_path / "short", short, ds.tokenizer, meta={"objective": "ntp"})
    with pytest.raises(ValueError, match="n_ctx=12"):
        run_qa(tmp_path / "short", ds.root, out, progress=False)
    # a model trained with another tokenizer
    other = build_tokenizer(["some other words"])
    save_checkpoint(tmp_path / "other", HookedLM(ModelConfig(vocab_size=len(other), **TINY)), other,
                    meta={"objective": "ntp"})  # fmt: skip
    with pytest.raises(ValueError, match="cannot encode"):
        run_qa(tmp_path / "other", ds.root, out, progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="finetune method"):
        FinetuneConfig(method="adapter")
    with pytest.raises(ValueError, match="choose a non-empty subset"):
        qa_eval_items(ds, ds.split["test"], ["shoe_size"])


def test_mixed_training(tiny_single, tmp_path: Path) -> None:
    assert parse_ratio("2:8") == pytest.approx(0.8) and parse_ratio(0.5) == 0.5
    with pytest.raises(ValueError, match="2:8"):
        parse_ratio("two to eight")
    with pytest.raises(ValueError, match="strictly between"):
        parse_ratio("1:0")
    cfg = TrainConfig(data=str(tiny_single.root), out=str(tmp_path / "mixed"), model=TINY, seq_len=64, batch_size=8,
                      max_steps=3, warmup_steps=1, eval_windows=0)  # fmt: skip
    result = mixed_train(cfg, "2:8", progress=False)
    assert json.loads((tmp_path / "mixed" / "train_config.json").read_text())["qa_mix"] == pytest.approx(0.8)
    assert cfg.qa_mix == 0.0  # the caller's config is not modified
    res = run_qa(result.checkpoint, tiny_single.root, tmp_path / "eval", FinetuneConfig(method="none"),
                 attrs=["birth_date"], progress=False, png=False)  # fmt: skip
    assert res.table.loc[res.table.metric == "exact_match", "n"].tolist() == [len(tiny_single.split["test"])] * 2


def test_cli_eval_qa(tiny_single, models, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from probekit.cli import main

    args = ["eval", "qa", "--checkpoint", str(models["abi"]), "--data", str(tiny_single.root), "--finetune", "none",
            "--attrs", "major,company", "--no-png", "--out", str(tmp_path / "cli")]  # fmt: skip
    assert main([*args[:-2], "--no-progress", "--out", str(tmp_path / "quiet")]) == 0
    assert "%|" not in capsys.readouterr().err  # no tqdm bar
    assert main([*args[:-2], "--out", str(tmp_path / "loud")]) == 0
    assert "%|" in capsys.readouterr().err  # bars by default
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "exact_match" in printed and "results.parquet" in printed
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args[:-1] + [str(tmp_path / "x"), "--attrs", "height"]) == 2
    assert "unknown attribute" in capsys.readouterr().err
    # compare several evaluations in one table and figure
    assert main(["eval", "compare", str(tmp_path / "cli"), str(tmp_path / "cli"), "--out", str(tmp_path / "cmp"),
                 "--metrics", "exact_match,first_token", "--no-png"]) == 2  # the same run twice: ambiguous bars
    assert "same model, objective and task" in capsys.readouterr().err and not (tmp_path / "cmp").exists()
    assert main(["eval", "compare", str(tmp_path / "cli"), "--out", str(tmp_path / "cmp2"), "--no-png"]) == 0
    cmp = pd.read_csv(tmp_path / "cmp2" / "comparison_exact_match.csv")
    assert set(cmp.task) == {"major", "company", "overall"} and (tmp_path / "cmp2" / "comparison.parquet").exists()
