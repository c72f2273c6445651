"""Checkpoints trained elsewhere with subword tokenizers (GPT-2 + byte-level BPE, Llama + metaspace BPE), probed
and patched unchanged: read positions and targets are checked by decoding the tokens there."""

from __future__ import annotations

from pathlib import Path

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
def outside(ds, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("outside")
    return {arch: outside_checkpoint(root / arch, ds, arch) for arch in ("gpt2", "llama")}


def _visible(text: str) -> str:
    return text.replace("▁", " ").strip()


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
