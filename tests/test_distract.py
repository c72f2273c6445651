"""Distractor data, S2A regeneration (rule-based and learned, with safe parsing) and the `eval distract` pipeline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probekit.data.distract import (
    DISTRACT_VOCAB,
    KINDS,
    REFUTE,
    SUGGEST,
    DistractConfig,
    builder_for,
    eval_items,
    parse_regeneration,
    rewrite_train_items,
    rule_regenerate,
    split_question,
    split_sentences,
    train_items,
    unknown_words,
    unseen_people,
    unseen_train_items,
)
from probekit.data.qa import QUESTIONS

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64, "n_ctx": 256}


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory):
    from probekit.data.store import build_dataset

    root = tmp_path_factory.mktemp("distract") / "data"
    return build_dataset(root, n_people=40, augmentation="multi2+permute", seed=0, extra_vocab=DISTRACT_VOCAB,
                         pool_limits={"birth_city": 6, "major": 6})  # fmt: skip


@pytest.fixture(scope="module")
def items(ds):
    b = builder_for(ds, DistractConfig(seed=3))
    return eval_items(b, ds.split["test"]) + train_items(b, ds.split["train"])


@pytest.fixture(scope="module")
def checkpoint(ds, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from probekit.training.config import TrainConfig
    from probekit.training.trainer import train

    cfg = TrainConfig(data=str(ds.root), out=str(tmp_path_factory.mktemp("distract_model") / "pt"), objective="ntp",
                      model=TINY, seq_len=64, batch_size=8, max_steps=4, warmup_steps=1, eval_windows=0)  # fmt: skip
    return train(cfg, progress=False).checkpoint


def test_injection_never_alters_the_question(ds, items) -> None:
    qa = {(q.pid, q.attr): q.prompt for q in ds.qa}
    assert {it.kind for it in items} == set(KINDS) | {"train"}
    for it in items:
        assert it.question == qa[(it.pid, it.attr)]  # the dataset's own QA prompt, verbatim
        assert it.prompt.endswith(" " + it.question) or it.prompt == it.question
        assert it.prompt[: len(it.prompt) - len(it.question)].strip() == " ".join(s.text for s in it.context)
        assert it.rewrite_target.endswith(it.question) and it.rewrite_prompt.startswith(it.prompt)
        assert it.answer == ds.person(it.pid).attrs[it.attr]
    # every word is known to the tokenizer built with the distractor vocabulary
    assert unknown_words(ds.tokenizer, [it.rewrite_prompt + " " + it.rewrite_target for it in items]) == []


def test_unseen_people_are_new_names_of_known_words_and_leave_the_dataset_items_unchanged(ds) -> None:
    cfg = DistractConfig(seed=3, unseen_people=30, unseen_hint_ratio=1.0, hint_accuracy=0.8)
    b = builder_for(ds, cfg)
    ghosts = unseen_people(ds.people, b.values, 30, seed=3)
    assert ghosts == unseen_people(ds.people, b.values, 30, seed=3)  # seeded
    assert unseen_people(ds.people, b.values, 10, seed=3) == ghosts[:10]  # a prefix does not depend on the count
    names = {p.full_name for p in ds.people}
    assert len({g.full_name for g in ghosts}) == 30 and not names & {g.full_name for g in ghosts}
    assert min(g.pid for g in ghosts) > max(p.pid for p in ds.people)
    city = {p.attrs["company"]: p.attrs["company_city"] for p in ds.people}
    for g in ghosts:
        assert all(g.attrs[a] in b.values[a] for a in b.values) and g.attrs["company_city"] == city[g.attrs["company"]]
    items = unseen_train_items(b, ghosts)
    assert len(items) == 30 * 6 * cfg.train_variants
    hints = [it for it in items if it.context and it.context[-1].role == "opinion"]
    assert len(hints) == len(items)  # unseen_hint_ratio 1: every unseen prompt carries a hint ...
    wrong = sum(it.suggested is not None for it in hints) / len(hints)
    assert 0.1 < wrong < 0.3  # ... right 80% of the time
    for it in items:  # the hint names a value of the asked attribute's pool; the question is the bioS question
        assert it.question == f"{QUESTIONS[it.attr].format(name=ds_name(ghosts, it.pid))} Answer:"
        assert it.context[-1].value in b.values[it.attr]
    assert unknown_words(ds.tokenizer, [it.prompt + " " + it.answer for it in items]) == []
    # the dataset's own items are the same with and without unseen people
    plain = builder_for(ds, DistractConfig(seed=3))
    assert train_items(b, ds.split["train"]) == train_items(plain, ds.split["train"])
    assert eval_items(b, ds.split["test"]) == eval_items(plain, ds.split["test"])
    with pytest.raises(ValueError, match="unseen_people"):
        DistractConfig(unseen_people=-1)


def ds_name(people, pid: int) -> str:
    return next(p.full_name for p in people if p.pid == pid)


def test_rule_regenerator_keeps_exactly_the_relevant_sentences(items) -> None:
    n_relevant = 0
    for it in items:
        r = rule_regenerate(it.prompt)
        assert r.context == it.relevant and r.question == it.question and r.status == "ok"
        assert r.prompt == it.oracle_prompt
        n_relevant += len(it.relevant)
    assert 0 < n_relevant < len(items)  # both cases occur: with and without a sentence about the queried person
    with pytest.raises(ValueError, match="does not end with a bioS question"):
        rule_regenerate("Some text without a question.")


def test_each_distractor_kind(ds, items) -> None:
    tests = [it for it in items if it.kind != "train"]
    by_key: dict[tuple[int, str], dict[str, object]] = {}
    for it in tests:
        by_key.setdefault((it.pid, it.attr), {})[it.kind] = it
    assert len(by_key) == len(ds.split["test"]) * 6 and all(len(v) == len(KINDS) for v in by_key.values())
    for (pid, attr), kinds in by_key.items():
        person = ds.person(pid)
        true = person.attrs[attr]
        relevant = kinds["clean"].relevant
        for it in kinds.values():  # the relevant sentence is shared and never states the answer's attribute
            assert it.relevant == relevant
            assert all(s.pid == pid and s.attr != attr for s in it.context if s.role == "relevant")
        clean, irr = kinds["clean"], kinds["irrelevant"]
        assert all(s.role == "relevant" for s in clean.context) and clean.suggested is None
        others = [s for s in irr.context if s.role == "irrelevant"]
        assert len(others) == 2 and all(s.pid != pid and person.full_name not in s.text for s in others)
        # one states the asked attribute with another person's (different) value: the suggested value
        assert irr.suggested != true and any(s.attr == attr and s.value == irr.suggested for s in others)
        right, wrong, refute = kinds["hint_right"], kinds["hint_wrong"], kinds["refute_right"]
        assert right.context[-1].text == SUGGEST.format(value=true) and right.suggested is None
        assert refute.context[-1].text == REFUTE.format(value=true) and refute.suggested is None
        assert wrong.context[-1].text == SUGGEST.format(value=wrong.suggested) and wrong.suggested != true
        values = ds.pools.values(attr) if attr != "birth_date" else [p.attrs[attr] for p in ds.people]
        assert wrong.suggested in values  # a value of the same pool
    # seeded: the same settings give the same items, another seed other ones
    b = builder_for(ds, DistractConfig(seed=3))
    again = eval_items(b, ds.split["test"]) + train_items(b, ds.split["train"])
    assert [i.prompt for i in again] == [i.prompt for i in items]
    other = eval_items(builder_for(ds, DistractConfig(seed=4)), ds.split["test"])
    assert [i.prompt for i in other] != [i.prompt for i in tests]
    # a subset of people gets the same items as in the full set
    sub = eval_items(b, ds.split["test"][3:5])
    assert [i.prompt for i in sub] == [i.prompt for i in tests if i.pid in ds.split["test"][3:5]]


def test_training_regime_ratios(ds) -> None:
    pids = ds.split["train"]
    none = train_items(builder_for(ds, DistractConfig(context_ratio=0.0)), pids)
    assert all(not it.context for it in none)
    always_right = train_items(builder_for(ds, DistractConfig(context_ratio=1.0, hint_ratio=1.0,
                                                              hint_accuracy=1.0)), pids)  # fmt: skip
    assert all(it.context[-1].text == SUGGEST.format(value=it.answer) for it in always_right)
    cfg = DistractConfig(context_ratio=0.6, hint_ratio=0.5, hint_accuracy=0.7, train_variants=4)
    its = train_items(builder_for(ds, cfg), pids)
    assert len(its) == len(pids) * 6 * 4
    with_ctx = [it for it in its if it.context]
    hints = [it for it in with_ctx if it.context[-1].role == "opinion"]
    right = [it for it in hints if it.context[-1].value == it.answer]
    n = len(its)  # binomial tolerances of about 4 standard errors
    assert abs(len(with_ctx) / n - 0.6) < 4 * (0.24 / n) ** 0.5
    assert abs(len(hints) / len(with_ctx) - 0.5) < 4 * (0.25 / len(with_ctx)) ** 0.5
    assert abs(len(right) / len(hints) - 0.7) < 4 * (0.21 / len(hints)) ** 0.5
    assert all((it.suggested is None) == (it.context[-1].value == it.answer) for it in hints)
    with pytest.raises(ValueError, match="hint_accuracy"):
        DistractConfig(hint_accuracy=1.5)


def test_sentence_split_keeps_abbreviations_and_questions_parse() -> None:
    text = "Ann Lee Moss was born in St. Louis, MO. Ann Lee Moss studied at St. Olaf College. I think it is so."
    assert split_sentences(text) == ["Ann Lee Moss was born in St. Louis, MO.",
                                     "Ann Lee Moss studied at St. Olaf College.", "I think it is so."]  # fmt: skip
    for attr, q in QUESTIONS.items():
        prompt = f"Bo Ray Ng worked for X. {q.format(name='Ann Lee Moss')} Answer:"
        ctx, _, got_attr, name = split_question(prompt)  # type: ignore[misc]
        assert (ctx, got_attr, name) == ("Bo Ray Ng worked for X.", attr, "Ann Lee Moss")
    assert split_question("What is this?") is None


def test_malformed_regeneration_falls_back_and_is_counted(items) -> None:
    it = next(i for i in items if i.kind == "hint_wrong" and i.relevant)
    good = parse_regeneration(it.rewrite_target, it.prompt)
    assert good.status == "ok" and good.prompt == it.oracle_prompt
    name = split_question(it.question)[3]  # type: ignore[index]
    other = "company" if it.attr == "major" else "major"
    changed = parse_regeneration(" ".join([*it.relevant, QUESTIONS[other].format(name=name), "Answer:"]), it.prompt)
    assert changed.status == "question_changed" and changed.question == it.question  # the question is never altered
    assert changed.context == it.relevant
    cases = {"": "empty output", "garbage words": "no question at the end",
             it.rewrite_target.replace(".", "", 1): "a context sentence without a full stop",
             "<unk> " + it.rewrite_target: "unknown token in output"}  # fmt: skip
    for text, reason in cases.items():
        r = parse_regeneration(text, it.prompt, fallback="original")
        assert (r.status, r.reason) == ("fallback", reason)
        assert r.prompt == it.prompt  # the stated rule: answer the original prompt
        q = parse_regeneration(text, it.prompt, fallback="question")
        assert q.status == "fallback" and q.prompt == it.question  # or the question alone
    rng = random.Random(0)
    words = it.rewrite_prompt.split() + ["?", ".", "Answer:", "<unk>", "<|endoftext|>"]
    for _ in range(300):  # never raises, whatever the regenerator writes
        r = parse_regeneration(" ".join(rng.choice(words) for _ in range(rng.randint(0, 40))), it.prompt)
        assert r.question == it.question and r.status in ("ok", "question_changed", "fallback")
    with pytest.raises(ValueError, match="unknown fallback"):
        parse_regeneration("", it.prompt, fallback="rule")


def test_decoded_regenerations_parse_as_the_generator_wrote_them(ds, items) -> None:
    tok = ds.tokenizer
    for it in items[:300]:  # a perfect regenerator's output, as the word-level decoder spells it
        decoded = tok.decode(tok(it.rewrite_target, add_special_tokens=False)["input_ids"])
        r = parse_regeneration(decoded, it.prompt)
        assert r.status == "ok" and r.context == it.relevant and r.prompt == it.oracle_prompt


def test_learned_regenerator_trains_on_a_tiny_corpus(ds, checkpoint, tmp_path: Path) -> None:
    from probekit.evaluate.distract import regenerate_learned
    from probekit.model.checkpoint import load_checkpoint
    from probekit.training.config import FinetuneConfig
    from probekit.training.finetune import EvalItem, finetune

    model, tok, meta = load_checkpoint(checkpoint)
    b = builder_for(ds, DistractConfig())
    corpus = rewrite_train_items(b, ds.split["train"][:6], attrs=("major", "company"))
    rw = [EvalItem(i.pid, i.attr, i.rewrite_prompt, i.rewrite_target) for i in corpus]
    ft = finetune(model, tok, "ntp", rw, FinetuneConfig(max_steps=40, warmup_steps=2, lr=3e-3, batch_size=16),
                  tmp_path / "rw", progress=False, base_meta=meta)  # fmt: skip
    losses = [json.loads(line)["loss"] for line in (tmp_path / "rw" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]  # fmt: skip
    assert losses[-1] < 0.7 * losses[0]  # it learns the rewrite task (an untrained copy stays near 6.6)
    test = eval_items(b, ds.split["test"][:4], attrs=("major",))
    regens = regenerate_learned(ft.model, tok, "ntp", test, "original", batch_size=8)
    assert len(regens) == len(test) and all(r.question == it.question for r, it in zip(regens, test))
    for r, it in zip(regens, test):  # a malformed output is answered from the original prompt, by the stated rule
        assert r.status in ("ok", "question_changed", "fallback")
        if r.status == "fallback":
            assert r.prompt == it.prompt and r.reason


def test_summary_intervals_are_person_clustered_and_the_gap_paired() -> None:
    from probekit.evaluate.config import DistractEvalConfig
    from probekit.evaluate.distract import summarize

    rng = np.random.default_rng(0)
    know = rng.random(60) < 0.7  # 60 people x 4 attributes; a person's items are all right or all wrong
    rows = []
    for pid in range(60):
        for a in ("major", "company", "birth_city", "university"):
            wrong = bool(rng.random() < 0.5)  # the wrong hint misleads half of the items
            for regime, em in (("baseline", know[pid] and not wrong), ("s2a_rule", know[pid]), ("oracle", know[pid]),
                               ("s2a_learned", know[pid] and (not wrong or pid % 3 > 0))):  # fmt: skip
                rows.append({"pid": pid, "attr": a, "kind": "hint_wrong", "regime": regime, "exact_match": float(em),
                             "first_token": float(em), "follows_suggested": float(not em)})  # fmt: skip
    cfg = DistractEvalConfig(kinds=("hint_wrong",), n_boot=400)
    table, gap = summarize(pd.DataFrame(rows), cfg, "m", "ntp")
    ov = table[(table["attr"] == "overall") & (table["metric"] == "exact_match")].set_index("regime")
    assert (ov["ci_low"] < ov["value"]).all() and (ov["value"] < ov["ci_high"]).all() and (ov["n"] == 240).all()
    # clustered: as wide as 60 independent people, not 240 independent items
    p = ov.loc["oracle", "value"]
    assert ov.loc["oracle", "ci_high"] - ov.loc["oracle", "ci_low"] > 3.0 * (p * (1 - p) / 60) ** 0.5
    g = gap.set_index("regime")
    # S2A rule equals the oracle item by item: every paired resample closes the whole gap
    assert g.loc["s2a_rule", "gap_closed"] == 1.0 and (g.loc["s2a_rule", "ci_low"], g.loc["s2a_rule", "ci_high"]) == (
        1.0, 1.0)  # fmt: skip
    lo, hi = g.loc["s2a_learned", ["ci_low", "ci_high"]]
    assert lo < g.loc["s2a_learned", "gap_closed"] < hi < 1.0 and g.loc["s2a_learned", "target_met"] == bool(
        g.loc["s2a_learned", "gap_closed"] >= 0.8)  # fmt: skip


@pytest.mark.slow
def test_cli_eval_distract_end_to_end(ds, checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from probekit.cli import main
    from probekit.data.store import build_dataset

    out = tmp_path / "d"
    args = ["eval", "distract", "--checkpoint", str(checkpoint), "--data", str(ds.root), "--out", str(out),
            "--attrs", "major", "--epochs", "1", "--rewrite-epochs", "1", "--warmup-steps", "1", "--n-boot", "100",
            "--no-png", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "%|" not in captured.err  # --no-progress: no tqdm bar from finetuning or generation
    assert "hint_wrong, s2a_rule: gap closed" in printed and "hint_wrong, s2a_learned" in printed
    table = pd.read_parquet(out / "results.parquet")
    n_test = len(ds.split["test"])
    overall = table[(table["attr"] == "overall") & (table["metric"] == "exact_match")]
    assert set(overall["task"]) == set(KINDS)
    assert set(overall["regime"]) == {"baseline", "s2a_rule", "s2a_learned", "oracle"}
    assert (overall["n"] == n_test).all() and (overall["ci_low"] <= overall["value"]).all()
    assert (overall["value"] <= overall["ci_high"]).all()
    follow = table[(table["metric"] == "follows_suggested") & (table["attr"] == "overall")]
    assert set(follow["task"]) == {"irrelevant", "hint_wrong"}
    preds = pd.read_json(out / "predictions.jsonl", lines=True)
    assert len(preds) == 4 * len(KINDS) * n_test
    # the rule-based regeneration is the oracle prompt; the learned one is parsed, fallbacks counted
    rule = preds[preds["regime"] == "s2a_rule"]
    oracle = preds[preds["regime"] == "oracle"].set_index(["pid", "attr", "kind"])["prompt"]
    assert (rule.set_index(["pid", "attr", "kind"])["prompt"] == oracle).all()
    regen = pd.read_csv(out / "regen.csv")
    learned = preds[preds["regime"] == "s2a_learned"]
    assert regen[regen["regime"] == "s2a_learned"]["fallback"].sum() == (learned["regen_status"] == "fallback").sum()
    gap = pd.read_csv(out / "gap.csv")
    assert set(gap["regime"]) == {"s2a_rule", "s2a_learned"} and set(gap["task"]) == set(KINDS)
    assert {"distract_exact_match.html", "distract_exact_match.csv", "eval_config.json", "probes_by_layer.html"} <= {
        p.name for p in out.iterdir()}  # fmt: skip
    patch = pd.read_csv(out / "patch_hint.csv")  # right-hint states patched into the wrong-hint run
    assert set(patch["metric"]) == {"p_answer", "greedy_first", "p_other"} and set(patch["layer"]) == {0, 1, 2}
    assert (patch["n_pairs"] > 0).all() and (patch["ci_low"] <= patch["value"] + 1e-9).all()
    probes = pd.read_csv(out / "probes.csv")  # name and answer position, every layer, true and suggested targets
    assert set(probes["position"]) == {"name", "answer"} and set(probes["layer"]) == {0, 1, 2}
    assert set(probes["kind"]) == set(KINDS) and set(probes["target"]) == {"true", "suggested"}
    assert (probes["n"] <= n_test).all() and (probes[probes["target"] == "true"]["n"] == n_test).all()
    # unseen people: trained on with hints, and new ones asked under each kind
    ghost_out = tmp_path / "ghosts"
    assert main(args[:7] + [str(ghost_out)] + args[8:] + ["--s2a", "rule", "--no-probes", "--no-patching",
                                                          "--distract.unseen-people", "5", "--unseen-test", "4"]) == 0
    unseen = pd.read_csv(ghost_out / "unseen.csv")
    assert set(unseen[unseen["metric"] == "exact_match"]["task"]) == set(KINDS)
    assert (unseen[unseen["metric"] == "exact_match"]["n"] == 4).all()  # 4 people x the one attribute asked
    assert set(unseen[unseen["metric"] == "follows_suggested"]["task"]) == {"irrelevant", "hint_wrong"}
    record = json.loads((ghost_out / "eval_config.json").read_text())
    base_items = json.loads((out / "eval_config.json").read_text())["n_train_items"]
    assert record["n_train_items"] == base_items + 5 * 2 and record["n_unseen_test_items"] == 4 * len(KINDS)
    # a second run refuses the non-empty directory; --resume reuses the finished finetuning runs
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    mtime = (out / "finetune_qa" / "summary.json").stat().st_mtime
    assert main(args + ["--resume", "--s2a", "rule", "--no-probes"]) == 0
    assert (out / "finetune_qa" / "summary.json").stat().st_mtime == mtime
    assert "s2a_learned" not in set(pd.read_parquet(out / "results.parquet")["regime"])
    # a finished regenerator serves another run without finetuning a new one
    other = tmp_path / "reuse"
    assert main(args[:7] + [str(other)] + args[8:] + ["--s2a", "learned",
                                                      "--regenerator", str(out / "finetune_rewrite"),
                                                      "--no-probes"]) == 0  # fmt: skip
    assert not (other / "finetune_rewrite").exists()
    assert "s2a_learned" in set(pd.read_parquet(other / "results.parquet")["regime"])
    # ... and so do its regenerations: re-parsed, the same prompts and statuses
    again = tmp_path / "again"
    assert main(args[:7] + [str(again)] + args[8:] + ["--s2a", "learned", "--reuse-regenerations", str(other),
                                                      "--no-probes"]) == 0  # fmt: skip
    a, b = (pd.read_json(d / "regenerations.jsonl", lines=True) for d in (other, again))
    assert a[["prompt", "status", "raw"]].equals(b[["prompt", "status", "raw"]])
    # bad settings and a dataset without the distractor vocabulary: one-line errors before any work
    assert main(args[:-1] + ["--no-png", "--s2a", "llm", "--overwrite"]) == 2
    assert "unknown regenerator" in capsys.readouterr().err
    plain = build_dataset(tmp_path / "plain", n_people=40, augmentation="multi2+permute", seed=5,
                          pool_limits={"birth_city": 6, "major": 6})  # fmt: skip (other people: unknown names)
    bad = ["eval", "distract", "--checkpoint", str(checkpoint), "--data", str(plain.root), "--out",
           str(tmp_path / "x")]  # fmt: skip
    assert main(bad) == 2 and "cannot encode" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_distractor_vocabulary_is_a_clear_error(tmp_path: Path) -> None:
    from probekit.data.store import build_dataset
    from probekit.evaluate.distract import _check_items

    plain = build_dataset(tmp_path / "plain", n_people=30, augmentation="single", seed=0)
    test = eval_items(builder_for(plain, DistractConfig()), plain.split["test"])
    assert "think" in unknown_words(plain.tokenizer, [it.prompt for it in test])
    with pytest.raises(ValueError, match="--distract-vocab"):
        _check_items(plain.tokenizer, test, 256, "ntp", plain)


def test_hint_pairs_align_and_label_every_position(ds, items) -> None:
    from probekit.evaluate.distract import HINT_SLOTS, hint_pair

    tests = {(it.pid, it.attr, it.kind): it for it in items if it.kind in ("hint_right", "hint_wrong")}
    made = 0
    for (pid, attr, kind), right in tests.items():
        if kind != "hint_right":
            continue
        wrong = tests[(pid, attr, "hint_wrong")]
        pair = hint_pair(ds.tokenizer, right, wrong)
        if pair is None:  # values of different token length, or the same first token
            a, w = ds.tokenizer([right.answer, wrong.suggested], add_special_tokens=False)["input_ids"]
            assert len(a) != len(w) or a[0] == w[0]
            continue
        made += 1
        assert len(pair.clean) == len(pair.corrupt) == len(pair.labels) and set(pair.labels) <= set(HINT_SLOTS)
        diff = [pair.labels[q] for q in range(len(pair.clean)) if pair.clean[q] != pair.corrupt[q]]
        assert diff and set(diff) == {"hint_value"}  # the two runs differ only in the hint's value
        assert [pair.labels[q] for q in range(len(pair.labels)) if pair.labels[q].startswith("name")] == [
            "name_first", "name_middle", "name_last"]  # fmt: skip
        assert pair.labels[0] == "bos" and pair.labels[-1] == "last"
        assert ("context" in pair.labels) == bool(right.relevant)
    assert made > 10
