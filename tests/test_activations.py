"""Activation collection (HookedLM and TransformerBridge), disk storage, planted features, and `probekit probe`
end to end on probekit and Hugging Face (GPT-2- and Llama-shaped) checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from probekit.cli import main
from probekit.data.store import build_dataset
from probekit.data.tokenizer import EOS_ID, save_tokenizer
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.probes.activations import collect_activations, hook_points, load_activations
from probekit.probes.config import EngineConfig
from probekit.probes.engine import Split, run_probes
from probekit.reporting.results import COLUMNS

TINY_SPEC = """\
kinds: [p, q]
positions: [birth_date, company]
attributes: [birth_date, company]
targets: [first_token, value]
l2_grid: [0.01]
max_iter: 30
batch_size: 8
"""


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("acts") / "ds", n_people=24, augmentation="single", seed=7)


def tiny_lm(vocab: int, n_ctx: int = 256, seed: int = 0) -> HookedLM:
    return HookedLM(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=n_ctx, seed=seed))


def test_hook_points_are_the_layer_boundaries():
    pts = hook_points(3)
    assert [p.name for p in pts] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre",
                                     "blocks.2.hook_resid_post"]  # fmt: skip
    assert [p.layer for p in pts] == [0, 1, 2, 3]
    assert [p.name for p in hook_points(3, ["mlp_out"], [1])] == ["blocks.1.hook_mlp_out"]
    with pytest.raises(ValueError, match="valid hooks are"):
        hook_points(3, ["resid_typo"])
    with pytest.raises(ValueError, match=r"layers \[4\] do not exist"):
        hook_points(3, ["resid"], [4])


def test_batched_padded_collection_matches_unbatched_cache():
    model = tiny_lm(40).eval()
    gen = torch.Generator().manual_seed(0)
    seqs = [[EOS_ID] + torch.randint(6, 40, (n,), generator=gen).tolist() for n in (3, 9, 5, 12, 1, 7)]
    pos = np.array([[0, len(s) - 1] for s in seqs])
    pts = hook_points(2) + hook_points(2, ["attn_out", "mlp_out", "resid_mid"])
    acts = collect_activations(model, seqs, pos, pts, batch_size=4, position_names=["start", "last"])
    assert acts.n == 6 and acts.n_positions == 2 and acts.d == 32 and acts.n_points == 3 + 6
    for r, s in enumerate(seqs):
        _, cache = model.run_with_cache(torch.tensor([s]))
        for i, p in enumerate(pts):
            ref = cache[p.name][0, pos[r]]  # [2, d]
            assert torch.allclose(acts.data[i][r], ref, atol=1e-5), (r, p.name)
    assert acts.to_tensor().shape == (9, 6, 2, 32)


def test_disk_storage_streams_float16_memmaps(tmp_path):
    model = tiny_lm(40).eval()
    seqs = [[EOS_ID, 6 + i % 30, 7, 8 + i % 20] for i in range(50)]
    pos = np.tile([1, 3], (50, 1))
    pts = hook_points(2)
    mem = collect_activations(model, seqs, pos, pts, batch_size=16)
    disk = collect_activations(model, seqs, pos, pts, batch_size=16, storage="disk", out_dir=tmp_path / "acts")
    assert isinstance(disk.data[0], np.memmap) and disk.data[0].dtype == np.float16
    assert sorted(f.name for f in (tmp_path / "acts").iterdir() if not f.name.startswith(".")) == [
        "activations.json", "point_000.npy", "point_001.npy", "point_002.npy"]  # fmt: skip
    again = load_activations(tmp_path / "acts")
    for i in range(3):
        for p in range(2):
            assert torch.allclose(again.get(i, p), mem.get(i, p), atol=2e-3, rtol=1e-2)
    assert again.points == pts and again.position_names == ["0", "1"]


def test_bad_positions_and_context_are_errors_before_work():
    model = tiny_lm(40, n_ctx=8)
    with pytest.raises(ValueError, match="context is 8"):
        collect_activations(model, [[EOS_ID] + [6] * 9], np.array([[1]]), hook_points(2))
    with pytest.raises(ValueError, match="outside its 3 tokens"):
        collect_activations(model, [[EOS_ID, 6, 7]], np.array([[3]]), hook_points(2))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        collect_activations(model, [[EOS_ID, 99]], np.array([[1]]), hook_points(2))


def test_probe_recovers_a_feature_planted_in_the_embedding():
    """Tokens 30..59 carry class tok % 3 along fixed directions of their embedding: a linear probe on the
    layer-0 residual at that token decodes it; the same probe on shuffled labels is at chance."""
    model = tiny_lm(60).eval()
    gen = torch.Generator().manual_seed(1)
    dirs = torch.randn(3, 32, generator=gen)
    with torch.no_grad():
        for tok in range(30, 60):
            model.embed.weight[tok] = 0.02 * torch.randn(32, generator=gen) + 0.5 * dirs[tok % 3]
    rng = np.random.default_rng(0)
    toks = rng.integers(30, 60, 300)
    seqs = [[EOS_ID, int(rng.integers(6, 30)), int(t)] for t in toks]
    acts = collect_activations(model, seqs, np.full((300, 1), 2), hook_points(2), batch_size=64)
    labels = np.stack([toks % 3, rng.permutation(toks % 3)])
    split = Split(train=np.arange(200), val=np.arange(40), test=np.arange(200, 300))
    fits = run_probes(acts.features(), labels, split, EngineConfig(l2_grid=(1e-3, 1e-1)))
    by = {(f.group, f.label): f for f in fits}
    assert by[(0, 0)].accuracy >= 0.95  # layer 0: the embedding itself
    assert all(by[(g, 0)].accuracy >= 0.8 for g in range(3))  # carried through the residual stream
    assert all(by[(g, 1)].accuracy <= 1 / 3 + 0.15 for g in range(3))  # shuffled: chance


def _run_cli(tmp_path: Path, model_dir: Path, data: Path, *extra: str) -> pd.DataFrame:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    out = tmp_path / f"out_{model_dir.name}"
    rc = main(["probe", "--spec", str(spec), "--model", str(model_dir), "--data", str(data), "--out", str(out),
               "--no-png", *extra])  # fmt: skip
    assert rc == 0
    df = pd.read_parquet(out / "results.parquet")
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert (out / "results.csv").exists() and (out / "figures" / f"q_layers_{model_dir.name}_value.html").exists()
    return df


@pytest.mark.slow
def test_probekit_checkpoint_end_to_end_with_random_control(ds, tmp_path, capsys):
    from probekit.model.checkpoint import save_checkpoint

    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, tiny_lm(len(ds.tokenizer)), ds.tokenizer, meta={"objective": "ntp", "dataset": ds.name})
    df = _run_cli(tmp_path, ckpt, ds.root, "--control-random")
    assert set(df["model"]) == {"ckpt", "ckpt (random init)"}
    assert set(df["objective"]) == {"ntp"} and set(df["dataset"]) == {ds.name}
    # 2 models x (P: 2 positions x 2 attrs x 2 targets x 3 layers + Q: 2 attrs x 2 targets x 3 layers)
    assert len(df) == 2 * (24 + 12)
    assert (df["status"] == "ok").all()
    # an accuracy and a baseline are counts of the test rows: k / n_test exactly, never a mean over something else
    for col in ("accuracy", "baseline"):
        k = df[col] * df["n_test"]
        assert ((k - k.round()).abs() < 1e-9).all() and df[col].between(0, 1).all()
    assert (df["n_train"] + df["n_test"]).isin([24]).all()
    assert "Q-probes at the name" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hugging_face_checkpoint_probed_through_transformer_bridge(ds, tmp_path, arch):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from probekit.model.hf import load_bridge

    V = len(ds.tokenizer)
    torch.manual_seed(0)
    if arch == "gpt2":
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                        bos_token_id=EOS_ID, eos_token_id=EOS_ID))  # fmt: skip
    else:
        hf = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                          bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=0))  # fmt: skip
    model_dir = tmp_path / f"hf_{arch}"
    hf.save_pretrained(model_dir)
    save_tokenizer(ds.tokenizer, model_dir)
    # activations through the bridge equal the HF model's own hidden states (right-padded batches)
    bridge = load_bridge(model_dir)
    hf.eval()
    seqs = [[EOS_ID] + ds.tokenizer(e.text, add_special_tokens=False)["input_ids"] for e in ds.entries[:5]]
    pos = np.array([[1, len(s) - 1] for s in seqs])
    acts = collect_activations(bridge, seqs, pos, hook_points(2), batch_size=3)
    for r, s in enumerate(seqs):
        with torch.no_grad():
            hs = hf(torch.tensor([s]), output_hidden_states=True).hidden_states
        for layer in range(2):  # hidden_states[l] = input of block l (the last entry is after the final norm)
            assert torch.allclose(acts.data[layer][r], hs[layer][0, pos[r]], atol=1e-4)
    df = _run_cli(tmp_path, model_dir, ds.root)
    assert set(df["model"]) == {model_dir.name} and len(df) == 24 + 12
    assert (df["status"] == "ok").all()


def test_cli_rejects_mismatched_tokenizer_and_existing_output(ds, tmp_path, capsys):
    from probekit.model.checkpoint import save_checkpoint

    other = build_dataset(tmp_path / "other", n_people=6, seed=99)
    ckpt = tmp_path / "ckpt_other"
    save_checkpoint(ckpt, tiny_lm(len(other.tokenizer)), other.tokenizer)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    rc = main(["probe", "--spec", str(spec), "--model", str(ckpt), "--data", str(ds.root), "--out",
               str(tmp_path / "o1")])  # fmt: skip
    assert rc == 2 and "cannot encode" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists()
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "x").write_text("keep")
    rc = main(["probe", "--spec", str(spec), "--model", str(ckpt), "--data", str(ds.root), "--out",
               str(tmp_path / "o2")])  # fmt: skip
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    small = tmp_path / "ckpt_small_ctx"
    save_checkpoint(small, tiny_lm(len(ds.tokenizer), n_ctx=16), ds.tokenizer)
    rc = main(["probe", "--spec", str(spec), "--model", str(small), "--data", str(ds.root), "--out",
               str(tmp_path / "o3")])  # fmt: skip
    assert rc == 2 and "beyond the context" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()


def test_run_spec_streams_to_disk_with_the_same_results(ds, tmp_path):
    from probekit.probes.runner import ProbeModel, run_spec
    from probekit.probes.spec import ProbeSpec

    pm = ProbeModel(tiny_lm(len(ds.tokenizer)), "tiny", "ntp", ds.name, ds.tokenizer)
    common = dict(kinds=["p", "q"], positions=["major"], attributes=["major", "birth_date"], targets=["first_token"],
                  l2_grid=[0.01], max_iter=30)  # fmt: skip
    mem = run_spec(ProbeSpec(storage="memory", **common), ds, [pm], progress=False)
    disk = run_spec(ProbeSpec(storage="disk", **common), ds, [pm], work_dir=tmp_path / "w", progress=False)
    assert len(mem) == len(disk) == 2 * 3 * 2
    assert np.allclose(mem["accuracy"], disk["accuracy"], atol=0.05)  # float16 storage on disk
    assert not any((tmp_path / "w").glob("acts_*"))  # activations are removed once probed


def test_abi_reading_is_the_prefix_as_a_bidirectional_part_a() -> None:
    """reading='abi': the state at position p is the model's state at p for the input seq[:p+1] read as one ABI
    Part A (bidirectional): checked against a manual forward pass; it differs from the causal reading below the
    last token's own layers 0 and 1 (the read token attends to every earlier token in both readings) but from
    layer 2 on (what it attends to was itself computed bidirectionally), and it never sees tokens after p."""
    import numpy as np
    import torch

    from probekit.model.config import ModelConfig
    from probekit.model.transformer import HookedLM
    from probekit.probes.activations import collect_activations, hook_points

    torch.manual_seed(0)
    model = HookedLM(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=32)).eval()
    seqs = [[1, 7, 8, 9, 10, 11, 12], [1, 20, 21, 22, 23], [1, 30, 31, 32, 33, 34, 35, 36]]
    pos = np.array([[2, 5], [1, 3], [4, 6]])
    points = hook_points(2)
    abi = collect_activations(model, seqs, pos, points, reading="abi", batch_size=2)
    causal = collect_activations(model, seqs, pos, points, batch_size=2)
    for r, s in enumerate(seqs):
        for j, p in enumerate(pos[r]):
            ids = torch.tensor([s[: p + 1]])
            _, cache = model.run_with_cache(ids, attn_mode="abi", prefix_len=torch.tensor([p + 1]))
            for i, pt in enumerate(points):
                torch.testing.assert_close(abi.data[i][r, j], cache[pt.name][0, p], rtol=1e-5, atol=1e-5)
    assert torch.equal(abi.data[0], causal.data[0])  # layer 0: the embeddings
    torch.testing.assert_close(abi.data[1], causal.data[1], rtol=1e-5, atol=1e-5)  # block 0: same keys, same view
    assert not torch.allclose(abi.data[2], causal.data[2], atol=1e-4)  # block 1 reads bidirectional states
    longer = [s + [40, 41, 42] for s in seqs]  # tokens after the read positions change nothing
    again = collect_activations(model, longer, pos, points, reading="abi", batch_size=2)
    for i in range(len(points)):
        torch.testing.assert_close(again.data[i], abi.data[i], rtol=1e-5, atol=1e-5)


def test_abi_models_are_probed_in_both_readings(tiny_single) -> None:
    import torch

    from probekit.model.config import ModelConfig
    from probekit.model.transformer import HookedLM
    from probekit.probes.runner import ProbeModel, run_spec
    from probekit.probes.spec import ProbeSpec

    cfg = ModelConfig(vocab_size=len(tiny_single.tokenizer), d_model=32, n_layers=1, n_heads=2, d_mlp=64, n_ctx=128)
    torch.manual_seed(0)
    model = HookedLM(cfg).eval()
    spec = ProbeSpec(kinds=("q",), attributes=["major"], targets=["value"], l2_grid=(0.1,), max_iter=10, bootstrap=0)
    abi = run_spec(spec, tiny_single, [ProbeModel(model, "a", objective="abi")], progress=False)
    ntp = run_spec(spec, tiny_single, [ProbeModel(model, "n", objective="ntp")], progress=False)
    assert sorted(abi["reading"].unique()) == ["abi", "causal"] and list(ntp["reading"].unique()) == ["causal"]
    forced = run_spec(ProbeSpec(**{**spec.__dict__, "readings": ["abi"]}), tiny_single,
                      [ProbeModel(model, "n", objective="ntp")], progress=False)  # fmt: skip
    assert list(forced["reading"].unique()) == ["abi"]
    with pytest.raises(ValueError, match="readings"):
        ProbeSpec(readings=["sideways"])


def test_probe_and_patch_cli_progress_bars_can_be_turned_off(ds, tmp_path, capsys):
    from probekit.model.checkpoint import save_checkpoint

    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, tiny_lm(len(ds.tokenizer)), ds.tokenizer, meta={"objective": "ntp", "dataset": ds.name})
    capsys.readouterr()
    for name, flags, bars in (("bars", [], True), ("quiet", ["--no-progress"], False)):
        (tmp_path / name).mkdir()
        _run_cli(tmp_path / name, ckpt, ds.root, *flags)
        assert ("%|" in capsys.readouterr().err) is bars  # tqdm bars by default, none with --no-progress
    for flags, bars in (([], True), (["--no-progress"], False)):
        out = tmp_path / f"patch{len(flags)}"
        assert main(["patch", "--model", str(ckpt), "--data", str(ds.root), "--out", str(out), "--attributes",
                     "birth_city", "--pairs", "4", "--split", "all", "--bootstrap", "10", "--no-png", "--all-pairs",
                     *flags]) == 0  # fmt: skip
        assert ("%|" in capsys.readouterr().err) is bars
