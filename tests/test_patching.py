"""Activation patching: a planted lookup lights up exactly where its information flows, self-patching is a no-op,
prompts of two people align, restoration recovers a noised name, the bridge agrees, and the CLI writes its files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from probekit.data.tokens import TokenView
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.patching.config import PatchConfig
from probekit.patching.patch import TracePair, build_pairs, cluster_bootstrap, patch_figures, summarize, trace_pairs
from probekit.probes.activations import hook_points

FILLERS, KEYS, ANSWERS = (6, 7, 8, 9), (10, 11, 12, 13), (14, 15, 16, 17)
KEY_AT = 2  # the planted lookup reads the token at this position: [BOS, filler, KEY, filler, filler]


def planted_model(vocab: int = 24) -> HookedLM:
    """A 2-layer model whose answer is a lookup of the key token at position 2, through one known path.

    Token embeddings are one-hot: key k in dim k, fillers in dims 8-11, BOS in dim 12. Block 0's attention has
    zero queries and keys, so every position attends uniformly to its prefix; head 0 copies dims 0-3 (the key) into
    dims 4-7. Block 0's MLP and all of block 1 write zero. The unembedding reads answer k from dim 4+k. So the key's
    information is at position 2 in the embeddings, moves to the last position in block 0's attention, and from
    then on only the last position matters: the map must light up at (layer 0, position 2) and at the last
    position from block 0's attention output on, and nowhere else (exactly).
    """
    cfg = ModelConfig(vocab_size=vocab, d_model=16, n_layers=2, n_heads=2, d_mlp=8, n_ctx=16)
    model = HookedLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith(".w"):  # RMSNorm weights
                p.fill_(1.0)
        E = model.embed.weight
        for k, t in enumerate(KEYS):
            E[t, k] = 1.0
        for j, t in enumerate(FILLERS):
            E[t, 8 + j] = 1.0
        E[1, 12] = 1.0
        attn = model.blocks[0].attn
        for k in range(4):
            attn.v_proj.weight[k, k] = 1.0  # head 0, value dim k <- key dim k
            attn.o_proj.weight[4 + k, k] = 10.0  # residual dim 4+k <- head 0 value dim k
        for k, t in enumerate(ANSWERS):
            model.unembed.weight[t, 4 + k] = 5.0
    return model


def planted_pairs() -> list[TracePair]:
    pairs = []
    for i, (a, b) in enumerate([(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (1, 3)]):
        clean = [1, FILLERS[i % 4], KEYS[a], FILLERS[(i + 1) % 4], FILLERS[(i + 2) % 4]]
        corrupt = clean[:KEY_AT] + [KEYS[b]] + clean[KEY_AT + 1 :]
        groups = {"key": (KEY_AT,), "tail": (3, 4)}
        pairs.append(TracePair(clean, corrupt, [ANSWERS[a]], [ANSWERS[b]], cluster=i, groups=groups))
    return pairs


def test_planted_lookup_lights_up_exactly_where_information_flows() -> None:
    model = planted_model()
    points = hook_points(2, ("resid", "attn_out", "mlp_out"))
    res = trace_pairs(model, planted_pairs(), points, whole_answer=True, stop_id=None)  # no stop token planted
    assert (res.clean["greedy_first"] == 1).all() and (res.corrupt["greedy_first"] == 0).all()
    assert (res.clean["p_answer"] > 0.99).all() and (res.corrupt["p_other"] > 0.99).all()
    expected = {("resid", 0, KEY_AT), ("resid", 1, 4), ("resid", 2, 4), ("attn_out", 0, 4)}
    for k, pt in enumerate(points):
        for pos in range(5):
            flip = res.patched["greedy_first"][:, k, pos]
            p = res.patched["p_answer"][:, k, pos]
            if (pt.hook, pt.layer, pos) in expected:
                assert (flip == 1).all() and (p > 0.99).all(), (pt.name, pos)
                assert (res.patched["greedy_answer"][:, k, pos] == 1).all()
            else:  # no information flows through here: the corrupted run is unchanged, bit for bit
                assert (flip == 0).all(), (pt.name, pos)
                np.testing.assert_array_equal(p, res.corrupt["p_answer"], err_msg=f"{pt.name} @ {pos}")
                np.testing.assert_array_equal(res.patched["p_other"][:, k, pos], res.corrupt["p_other"])
    # groups patch several positions at once: the key alone is position 2; the tail holds the last position
    assert res.groups == ["key", "tail"]
    for k in range(len(points)):
        np.testing.assert_array_equal(res.grouped["p_answer"][:, k, 0], res.patched["p_answer"][:, k, KEY_AT])
        np.testing.assert_array_equal(res.grouped["p_answer"][:, k, 1], res.patched["p_answer"][:, k, 4])


def test_patching_a_state_with_itself_changes_nothing() -> None:
    torch.manual_seed(0)
    model = HookedLM(ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=32, seed=3))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model.eval()
    pairs = []
    for i, n in enumerate((7, 9, 7, 12)):  # different lengths: padding must not matter either
        ids = [1] + torch.randint(6, 40, (n - 1,), generator=g).tolist()
        answer = torch.randint(6, 40, (3,), generator=g).tolist()
        pairs.append(TracePair(ids, list(ids), answer, cluster=i, groups={"span": (1, 2, 3)}))
    points = hook_points(2, ("resid", "attn_out", "mlp_out", "resid_mid"))
    res = trace_pairs(model, pairs, points, whole_answer=True, batch_size=5)
    for metric, arr in res.patched.items():
        np.testing.assert_array_equal(res.clean[metric], res.corrupt[metric])
        for i, pair in enumerate(pairs):
            got = arr[i, :, : len(pair.clean)]
            np.testing.assert_array_equal(got, np.broadcast_to(res.clean[metric][i], got.shape), err_msg=metric)
            assert np.isnan(arr[i, :, len(pair.clean) :]).all()
            np.testing.assert_array_equal(res.grouped[metric][i, :, 0], res.clean[metric][i])


def test_misaligned_prompts_are_refused() -> None:
    model = planted_model()
    bad = TracePair([1, 6, 10, 7], [1, 6, 10, 11, 7], [14])
    with pytest.raises(ValueError, match="give the pair an alignment"):
        trace_pairs(model, [bad], hook_points(2))


def test_qa_and_bio_prompts_align_and_are_labelled(tiny_multi) -> None:
    ds, tok = tiny_multi, tiny_multi.tokenizer
    for prompts in ("qa", "bio"):
        cfg = PatchConfig(prompts=prompts, split="all", n_pairs=100, require_correct=False)
        for attr in ("birth_date", "company"):
            pairs, counts = build_pairs(None, tok, ds, attr, "patch", cfg, TokenView(tok))
            assert pairs and counts["misaligned"] == 0, (prompts, attr)
            for p in pairs:
                assert len(p.clean) == len(p.corrupt) == len(p.labels) == len(p.tokens)
                name = [q for q, lab in enumerate(p.labels) if lab.startswith("name_")]
                assert [p.labels[q] for q in name] == ["name_first", "name_middle", "name_last"]
                assert name == list(range(name[0], name[0] + 3)) == list(p.groups["name"])
                differ = [q for q in range(len(p.clean)) if p.clean[q] != p.corrupt[q]]
                assert set(differ) <= set(name) and differ  # only the name differs
                assert p.labels[0] == "bos" and p.labels[-1] == "last"
                src = ds.person(p.cluster)
                assert tok.decode(p.clean[name[0] : name[-1] + 1]) == src.full_name
                assert tok.decode(p.answer).strip() == src.attrs[attr]
                assert p.answer[0] != p.other[0]
                if prompts == "qa":
                    assert p.labels[-2] == "answer_prefix" and p.labels[1] == "question"
                else:
                    entries = [tok(e.text, add_special_tokens=False)["input_ids"] for e in ds.entries
                               if e.pid == p.cluster]  # fmt: skip
                    assert any(e[: len(p.clean) - 1] == p.clean[1:] for e in entries)  # an entry's own prefix
            if prompts == "qa":  # one template: the same token at every position index except the name
                assert len({len(p.clean) for p in pairs}) == 1
            # restore/noise: clean == corrupted ids, the name positions noised
            rpairs, _ = build_pairs(None, tok, ds, attr, "restore", cfg, TokenView(tok))
            assert all(r.clean == r.corrupt and r.other is None for r in rpairs)
            assert all([r.labels[q] for q in r.noise] == ["name_first", "name_middle", "name_last"] for r in rpairs)


def test_restoring_the_noised_key_recovers_the_answer() -> None:
    model = planted_model()
    pairs = [TracePair(p.clean, p.clean, p.answer, noise=(KEY_AT,), cluster=p.cluster) for p in planted_pairs()]
    points = hook_points(2, ("resid",))
    res = trace_pairs(model, pairs, points, noise_std=50.0, seed=0)
    assert res.corrupt["p_answer"].mean() < 0.9  # the noise hurts
    k0 = 0
    np.testing.assert_allclose(res.patched["p_answer"][:, k0, KEY_AT], res.clean["p_answer"], rtol=0, atol=1e-6)
    k_last = len(points) - 1  # the final layer at the last position is the clean answer exactly
    np.testing.assert_allclose(res.patched["p_answer"][:, k_last, 4], res.clean["p_answer"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(res.patched["p_answer"][:, k0, 0], res.corrupt["p_answer"])
    # the noise is seeded: the same seed gives the same corrupted run
    again = trace_pairs(model, pairs, points, noise_std=50.0, seed=0)
    np.testing.assert_array_equal(again.corrupt["p_answer"], res.corrupt["p_answer"])


def test_summary_table_and_bootstrap() -> None:
    model = planted_model()
    pairs = planted_pairs()
    for p in pairs:
        p.labels = ["bos", "question", "name_last", "question_end", "last"]
        p.tokens = ["<start>", "f", "[name_last]", "f", ":"]
    points = hook_points(2, ("resid",))
    res = trace_pairs(model, pairs, points)
    df = summarize(res, pairs, "position", n_boot=200, seed=0, model="m", objective="ntp", dataset="d",
                   prompts="qa", mode="patch", corruption="swap", attribute="major")  # fmt: skip
    assert len(df) == len(points) * (5 + 2) * 3  # 5 positions + 2 groups; p_answer, greedy_first, p_other
    assert list(df[df.position >= 5].drop_duplicates("position").position_label) == ["key_all", "tail_all"]
    cell = df[(df.layer == 0) & (df.position == KEY_AT) & (df.metric == "greedy_first")].iloc[0]
    assert cell.value == 1 and cell.ci_low == 1 and cell.n_pairs == 6 and cell.position_label == "name_last"
    assert cell.clean == 1 and cell.corrupt == 0
    figs = patch_figures(df)
    assert [f.name for f in figs] == ["qa_patch_resid_major"]
    # the clustered bootstrap: a constant column has a zero-width interval, clusters resample together
    lo, hi = cluster_bootstrap(np.array([[1.0, 0.0], [1.0, 1.0], [1.0, np.nan]]), [0, 0, 1], 500, 0)
    assert lo[0] == hi[0] == 1 and 0 <= lo[1] <= hi[1] <= 1


def test_bridge_gives_the_same_map(tmp_path: Path) -> None:
    from probekit.data.tokenizer import build_tokenizer
    from probekit.model.hf import export_llama, load_bridge

    tok = build_tokenizer([" ".join(f"w{i}" for i in range(30))])
    model = planted_model(vocab=len(tok))
    bridge = load_bridge(export_llama(model, tok, tmp_path / "llama"))
    points = hook_points(2, ("resid", "attn_out"))
    ours = trace_pairs(model, planted_pairs(), points)
    theirs = trace_pairs(bridge, planted_pairs(), points)
    np.testing.assert_array_equal(ours.patched["greedy_first"], theirs.patched["greedy_first"])
    np.testing.assert_allclose(ours.patched["p_answer"], theirs.patched["p_answer"], atol=1e-4)


@pytest.mark.slow
def test_cli_patch_end_to_end(tiny_single, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from probekit.cli import main
    from probekit.training.config import TrainConfig
    from probekit.training.trainer import train

    cfg = TrainConfig(data=str(tiny_single.root), out=str(tmp_path / "run"), objective="ntp",
                      model={"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64}, seq_len=64, batch_size=8,
                      max_steps=3, warmup_steps=1, eval_windows=0)  # fmt: skip
    ckpt = train(cfg, progress=False).checkpoint
    out = tmp_path / "patch"
    argv = ["patch", "--model", str(ckpt), "--data", str(tiny_single.root), "--out", str(out), "--all-pairs",
            "--pairs", "5", "--attributes", "birth_city,major", "--hooks", "resid,attn_out", "--mode",
            "patch,restore", "--whole-answer", "--bootstrap", "50", "--no-png"]  # fmt: skip
    assert main(argv) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert set(df["attribute"]) == {"birth_city", "major"} and set(df["mode"]) == {"patch", "restore"}
    assert set(df["hook"]) == {"resid", "attn_out"} and set(df["layer"]) == {0, 1, 2}
    assert {"p_answer", "greedy_first", "logp_answer", "greedy_answer"} <= set(df["metric"])
    assert (df["n_pairs"] == 5).all() and (out / "results.csv").exists()
    assert {"name_first", "name_middle", "name_last", "last", "name_all"} <= set(df["position_label"])
    figs = sorted(p.name for p in (out / "figures").glob("*.html"))
    assert "qa_patch_resid_birth_city.html" in figs and "qa_restore_attn_out_major.html" in figs and len(figs) == 8
    assert (out / "figures" / "qa_patch_resid_birth_city.csv").exists()
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 20 and json.loads((out / "run.json").read_text())["config"]["n_pairs"] == 5
    assert "patch" in capsys.readouterr().out
    # a second run into the same directory is refused before any work; bad flags are one-line errors
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv[:-1], "--attributes", "height", "--overwrite"]) == 2
    assert "height" in capsys.readouterr().err
    # the same checkpoint as a Hugging Face directory, through TransformerBridge: the same map
    from probekit.model.checkpoint import load_checkpoint
    from probekit.model.hf import export_llama

    model, tok, _ = load_checkpoint(ckpt)
    hf_dir = export_llama(model, tok, tmp_path / "hf")
    hf_argv = ["patch", "--model", str(hf_dir), "--data", str(tiny_single.root), "--out", str(tmp_path / "hf_patch"),
               "--all-pairs", "--pairs", "5", "--attributes", "major", "--bootstrap", "0", "--no-png"]  # fmt: skip
    assert main(hf_argv) == 0
    ours = df[(df["mode"] == "patch") & (df.attribute == "major") & (df.hook == "resid")]
    theirs = pd.read_parquet(tmp_path / "hf_patch" / "results.parquet")
    merged = ours.merge(theirs, on=["layer", "position", "metric"], suffixes=("", "_hf"))
    assert len(merged) == len(theirs) > 0 and (merged["n_pairs_hf"] == 5).all()
    p = merged[merged.metric == "p_answer"]
    assert (p["value"] - p["value_hf"]).abs().max() < 1e-4  # the same pairs, the same probabilities


def test_require_correct_tries_further_targets(tiny_single, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each source the model answers right tries targets in its seeded order until one also answers right."""
    from probekit.patching import patch as patching

    ds, tok = tiny_single, tiny_single.tokenizer
    name_of = {tuple(tok(ds.person(p.pid).full_name, add_special_tokens=False)["input_ids"]): p.pid for p in ds.people}
    right = {p.pid for p in ds.people if p.pid % 3 == 0}  # the people this fake model answers right

    def fake(model, pairs, run, batch_size):  # type: ignore[no-untyped-def]
        out = []
        for p in pairs:
            ids = p.clean if run == "clean" else p.corrupt
            name = tuple(ids[q] for q, lab in enumerate(p.labels) if lab.startswith("name_"))
            out.append(name_of.get(name, -1) in right)
        return out

    monkeypatch.setattr(patching, "correct_mask", fake)
    cands = {c.source: c for c in patching.candidates(ds, "major", "qa", ds.split["test"], 0)}
    cfg = PatchConfig(n_pairs=100)
    pairs, counts = build_pairs(object(), tok, ds, "major", "patch", cfg, TokenView(tok))
    assert pairs and counts["used"] == len(pairs)
    assert counts["source_wrong"] == sum(1 for pid in ds.split["test"] if pid not in right)
    for p in pairs:
        assert p.cluster in right
        tgt = name_of[tuple(q for q, lab in zip(p.corrupt, p.labels) if lab.startswith("name_"))]
        assert tgt in right and tgt != p.cluster
        first_right = next(t for t in cands[p.cluster].targets[: patching.MAX_TARGET_TRIES] if t in right)
        assert tgt == first_right  # the first target in the source's order that answers right
