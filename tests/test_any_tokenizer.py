"""Checkpoints trained elsewhere with subword tokenizers (GPT-2 + byte-level BPE, Llama + metaspace BPE), probed
and patched unchanged: read positions and targets are checked by decoding the tokens there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from probekit.cli import main
from probekit.data.store import build_dataset
from probekit.data.tokens import TokenView
from probekit.model.hf import load_dir_tokenizer
from probekit.probes.runner import build_tasks
from probekit.probes.spec import ProbeSpec
from probekit.serde import from_dict
from tests.outside_models import outside_checkpoint

SPEC = """\
kinds: [p, q]
positions: [birth_date, birth_city, company]
attributes: [birth_date, birth_city, company]
targets: [first_token, value]
l2_grid: [0.01]
max_iter: 30
batch_size: 8
bootstrap: 20
"""


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):  # type: ignore[no-untyped-def]
    return build_dataset(tmp_path_factory.mktemp("anytok") / "ds", n_people=24, augmentation="multi5", seed=3)


@pytest.fixture(scope="module")
def rev(tmp_path_factory):  # type: ignore[no-untyped-def]
    from probekit.data.reversal import ReversalConfig, make_reversal_dataset

    cfg = ReversalConfig(n_per_group=3, n_train_templates=4, n_test_templates=2)
    return make_reversal_dataset(tmp_path_factory.mktemp("anytok_rev") / "rev", cfg)


@pytest.fixture(scope="module")
def outside(ds, rev, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("outside")
    more = [r.text for rows in rev.files.values() for r in rows]  # the tokenizer saw a wider corpus
    return {arch: outside_checkpoint(root / arch, ds, arch, more_text=more) for arch in ("gpt2", "llama")}


def _visible(text: str) -> str:
    return text.replace("▁", " ").strip()


def _ends_part(part: str, token: str) -> bool:
    """``token`` holds the end of name part ``part`` (and maybe what follows it, a metaspace ``o's``)."""
    token = _visible(token)
    return any(token.startswith(part[k:]) for k in range(len(part)))


def _squash(text: str) -> str:  # word-level decoding re-spaces punctuation: compare without whitespace
    return "".join(_visible(text).split())


@pytest.mark.parametrize("which", ["gpt2", "llama", "probekit"])
def test_read_positions_and_targets_decode_to_the_values(ds, outside, which: str) -> None:
    tok = ds.tokenizer if which == "probekit" else load_dir_tokenizer(outside[which])
    view = TokenView(tok)
    expect_kind = {"gpt2": "byte-level BPE", "llama": "metaspace BPE", "probekit": "probekit word-level"}[which]
    assert view.info.kind == expect_kind
    spec = from_dict(ProbeSpec, {"kinds": ["p", "q"], "positions": ["birth_date", "birth_city", "company"],
                                 "attributes": ["birth_date", "birth_city", "company"],
                                 "targets": ["first_token", "value"]})  # fmt: skip
    p_task, q_task = build_tasks(spec, ds, view)
    assert all(s[: len(view.start_ids)] == list(view.start_ids) for s in p_task.sequences)
    entries = [e for e in ds.entries if e.pid in set(p_task.pids.tolist())]
    by_key = {(e.pid, e.text): e for e in entries}
    n_multi = 0
    for r, seq in enumerate(p_task.sequences[:60]):
        text = tok.decode(seq[len(view.start_ids) :])
        e = next(e for (pid, t), e in by_key.items() if pid == p_task.pids[r] and _squash(t) == _squash(text))
        for j, attr in enumerate(p_task.position_names):
            span = e.first_span(attr)
            value = e.text[span.start : span.end]
            read = int(p_task.positions[r, j])
            before = tok.decode(seq[len(view.start_ids) : read + 1])  # up to and including the read token
            assert _squash(before) == _squash(e.text[: span.start]), (which, attr, before)
            nxt = _visible(tok.decode([seq[read + 1]]))
            assert nxt and (value.startswith(nxt) or nxt.startswith(value)), (which, attr, nxt, value)
            k = p_task.label_keys.index((attr, "first_token"))
            assert p_task.labels[k, r] == seq[read + 1]
            n_multi += len(tok(value, add_special_tokens=False)["input_ids"]) > 1
    if which != "probekit":
        assert n_multi > 0  # the subword tokenizers really split values
    p_first = {(int(p_task.pids[r]), a): int(p_task.labels[p_task.label_keys.index((a, "first_token")), r])
               for r in range(p_task.n) for a in p_task.position_names}  # fmt: skip
    for r, seq in enumerate(q_task.sequences):
        person = ds.person(int(q_task.pids[r]))
        assert _squash(tok.decode(seq[len(view.start_ids) :])) == _squash(person.full_name)
        assert person.full_name.endswith(_visible(tok.decode([seq[int(q_task.positions[r, 0])]])))
        for k, (attr, target) in enumerate(q_task.label_keys):
            if target == "first_token":
                first = tok.decode([int(q_task.labels[k, r])])
                assert person.attrs[attr].startswith(_visible(first)) and _visible(first), (which, first)
                # as written after the question, leading space included: the token the biographies have there
                assert int(q_task.labels[k, r]) == p_first.get((person.pid, attr), int(q_task.labels[k, r]))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_probe_cli_runs_on_outside_checkpoints(ds, outside, tmp_path: Path, arch: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "probe"
    rc = main(["probe", "--spec", str(spec), "--model", str(outside[arch]), "--data", str(ds.root), "--out", str(out),
               "--no-png", "--control-random"])  # fmt: skip
    assert rc == 0
    df = pd.read_parquet(out / "results.parquet")
    assert (df["status"] == "ok").all()
    assert set(df["tokenizer_type"]) == {"byte-level BPE" if arch == "gpt2" else "metaspace BPE"}
    assert set(df["tokenizer"]) == {str(outside[arch])}
    assert (df["tokenizer_vocab"] == len(load_dir_tokenizer(outside[arch]))).all()
    assert set(df["probe_kind"]) == {"p", "q"} and df["model"].str.endswith("(random init)").any()


def test_probekit_tokenizer_tables_record_it(ds, tmp_path: Path) -> None:
    from probekit.model.checkpoint import save_checkpoint
    from probekit.model.config import ModelConfig
    from probekit.model.transformer import HookedLM

    ckpt = tmp_path / "ckpt"
    cfg = ModelConfig(vocab_size=len(ds.tokenizer), d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=256)
    save_checkpoint(ckpt, HookedLM(cfg), ds.tokenizer)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    assert main(["probe", "--spec", str(spec), "--model", str(ckpt), "--data", str(ds.root), "--out",
                 str(tmp_path / "o"), "--no-png"]) == 0  # fmt: skip
    df = pd.read_parquet(tmp_path / "o" / "results.parquet")
    assert set(df["tokenizer"]) == {"probekit"} and set(df["tokenizer_type"]) == {"probekit word-level"}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_patch_pairs_align_by_role_when_names_differ_in_length(ds, outside, arch: str) -> None:
    from probekit.patching.config import PatchConfig
    from probekit.patching.patch import build_pairs

    tok = load_dir_tokenizer(outside[arch])
    view = TokenView(tok)
    cfg = PatchConfig(attributes=["birth_city"], n_pairs=40, require_correct=False, split="all")
    for prompts in ("qa", "bio"):
        cfg = PatchConfig(attributes=["birth_date" if prompts == "bio" else "birth_city"], n_pairs=40,
                          require_correct=False, split="all", prompts=prompts)  # fmt: skip
        attr = cfg.attributes[0]
        pairs, counts = build_pairs(None, tok, ds, attr, "patch", cfg, view)
        assert counts["misaligned"] == 0 and pairs
        assert any(len(p.clean) != len(p.corrupt) for p in pairs)  # unequal lengths are used, not dropped
        for p in pairs:
            source = ds.person(p.cluster)
            target_name = _squash(tok.decode(p.corrupt[len(view.start_ids) :]))
            target = next(x for x in ds.people if _squash(x.full_name) in target_name and x.pid != source.pid)
            for q, role in enumerate(p.roles):
                t = p.target(q)
                if role.startswith("name:"):
                    part, back = (int(v) for v in role.split(":")[1:])
                    if back == 0:  # each name part's last token, in both runs
                        assert _ends_part(source.full_name.split()[part], tok.decode([p.clean[q]]))
                        assert _ends_part(target.full_name.split()[part], tok.decode([p.corrupt[t]]))
                else:  # template tokens and the last token: the same token in both runs (or none in the other)
                    assert (t >= 0 or role.startswith("post:")) and (t < 0 or p.clean[q] == p.corrupt[t]), role
            assert p.roles[-1] == "last" and p.target(len(p.clean) - 1) == len(p.corrupt) - 1
            answer = ds.person(p.cluster).attrs[attr]
            assert _visible(tok.decode(p.answer)) == answer


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_patch_cli_uses_every_pair_on_outside_checkpoints(ds, outside, tmp_path: Path, arch: str) -> None:
    out = tmp_path / "patch"
    rc = main(["patch", "--model", str(outside[arch]), "--data", str(ds.root), "--out", str(out), "--attributes",
               "birth_city", "--pairs", "20", "--split", "all", "--bootstrap", "20", "--no-png",
               "--all-pairs"])  # fmt: skip
    assert rc == 0
    df = pd.read_csv(out / "results.csv")
    n_pairs = sum(1 for _ in (out / "pairs.jsonl").open())
    assert n_pairs == 20
    last = df[(df["position_label"] == "last") & (df["metric"] == "p_answer")]
    assert len(last) and (last["n_pairs"] == n_pairs).all()  # the row labelled last covers every pair
    assert {"name_first", "name_middle", "name_last", "name_all"} <= set(df["position_label"])
    recorded = json.loads((out / "run.json").read_text())["tokenizer"]
    assert recorded["type"] == ("byte-level BPE" if arch == "gpt2" else "metaspace BPE")


def test_llama_export_probes_like_the_native_model(ds, tmp_path: Path) -> None:
    """The two paths into a probekit model (native, and its Llama export through TransformerBridge) must give the
    same tables: same tokens, same read positions, activations equal to float tolerance."""
    from probekit.model.checkpoint import save_checkpoint
    from probekit.model.config import ModelConfig
    from probekit.model.hf import export_llama
    from probekit.model.transformer import HookedLM

    cfg = ModelConfig(vocab_size=len(ds.tokenizer), d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=256, seed=4)
    model = HookedLM(cfg)
    save_checkpoint(tmp_path / "native", model, ds.tokenizer)
    export_llama(model, ds.tokenizer, tmp_path / "export")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    for which in ("native", "export"):
        assert main(["probe", "--spec", str(spec), "--model", str(tmp_path / which), "--data", str(ds.root),
                     "--out", str(tmp_path / f"o_{which}"), "--no-png", "--name", "m"]) == 0  # fmt: skip
    a, b = (pd.read_parquet(tmp_path / f"o_{w}" / "results.parquet") for w in ("native", "export"))
    keys = ["probe_kind", "layer", "position", "attribute", "target_kind"]
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    assert len(a) == len(b) > 0
    for c in ["accuracy", "baseline", "n_train", "n_test", "n_classes", "train_accuracy", "ci_low", "ci_high"]:
        pd.testing.assert_series_equal(a[c], b[c], check_exact=False, atol=1e-6, obj=c)
    assert set(a["tokenizer_type"]) == set(b["tokenizer_type"]) == {"probekit word-level"}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_outside_checkpoint_in_probekit_ids_computes_what_transformers_computes(outside, ds, arch: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probekit.model.checkpoint import load_checkpoint
    from probekit.model.foreign import ForeignLM

    model, tok, meta = load_checkpoint(outside[arch])
    assert isinstance(model, ForeignLM) == (arch == "gpt2")  # a Llama becomes probekit's own model
    assert meta["objective"] == "ntp" and tok.convert_ids_to_tokens([0, 1]) == ["<pad>", "<|endoftext|>"]
    htok = AutoTokenizer.from_pretrained(str(outside[arch]))
    hf = AutoModelForCausalLM.from_pretrained(str(outside[arch])).eval()
    text = ds.entries[0].text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    hids = htok(text, add_special_tokens=False)["input_ids"]
    assert [i - 6 for i in ids] == hids and tok.decode(ids) == htok.decode(hids)
    with torch.no_grad():
        ours = model(torch.tensor([[1, *ids]]))[0]  # [T, V + 6]
        theirs = hf(torch.tensor([[htok.bos_token_id, *hids]])).logits[0]  # [T, V]
    eos = htok.eos_token_id
    assert torch.allclose(ours[:, 1], theirs[:, eos], atol=1e-4)  # <|endoftext|> = the model's EOS
    keep = [i for i in range(theirs.shape[1]) if i not in (eos, htok.unk_token_id)]
    assert torch.allclose(ours[:, 6:][:, keep], theirs[:, keep], atol=1e-4)
    assert (ours[:, [0, 2, 3, 4, 5]] < theirs.min() + 1e-3).all() or arch == "llama"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_eval_qa_and_reversal_on_outside_checkpoints(ds, rev, outside, tmp_path: Path, arch: str) -> None:
    base = ["--checkpoint", str(outside[arch]), "--no-png", "--no-progress"]
    for method in ("full", "lora"):
        out = tmp_path / f"qa_{method}"
        assert main(["eval", "qa", *base, "--data", str(ds.root), "--out", str(out), "--finetune", method,
                     "--attrs", "birth_city,company", "--steps", "3", "--warmup-steps", "1"]) == 0  # fmt: skip
        preds = [json.loads(line) for line in (out / "predictions.jsonl").open()]
        assert preds and all(isinstance(p["generated"], str) for p in preds)
        assert {p["answer"] for p in preds} <= {ds.person(p["pid"]).attrs[p["task"]] for p in preds}
        recorded = json.loads((out / "eval_config.json").read_text())["tokenizer"]
        assert recorded["type"].endswith("(in probekit ids)") and recorded["type"].startswith(
            "byte-level" if arch == "gpt2" else "metaspace")
    out = tmp_path / "rev"
    assert main(["eval", "reversal", *base, "--data", str(rev.root), "--out", str(out)]) == 0
    table = pd.read_csv(out / "results.csv")
    assert {"N2D", "D2N"} <= set(table["task"]) and table["value"].notna().any()


def test_train_init_from_outside_checkpoints(ds, outside, tmp_path: Path) -> None:
    from probekit.training.config import TrainConfig
    from probekit.training.trainer import train

    for arch, objective in (("gpt2", "ntp"), ("llama", "ntp"), ("llama", "bico")):
        cfg = TrainConfig(data=str(ds.root), out=str(tmp_path / f"{arch}_{objective}"), init_from=str(outside[arch]),
                          objective=objective, seq_len=64, batch_size=4, max_steps=2, warmup_steps=1,
                          eval_windows=0)  # fmt: skip
        result = train(cfg, progress=False)
        assert result.steps == 2 and np.isfinite(result.train_loss)
    cfg = TrainConfig(data=str(ds.root), out=str(tmp_path / "gpt2_bico"), init_from=str(outside["gpt2"]),
                      objective="bico", seq_len=64, batch_size=4, max_steps=2, warmup_steps=1,
                      eval_windows=0)  # fmt: skip
    with pytest.raises(ValueError, match="lacks"):
        train(cfg, progress=False)
    assert not (tmp_path / "gpt2_bico" / "checkpoints").exists()
