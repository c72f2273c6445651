"""Reversal read-outs: read positions decoded, the ridge read-out transfers to unseen people only when the state
carries the target token's direction, person sets, and the probe CLI with the per-person link."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from probekit.cli import main
from probekit.data.reversal import ReversalConfig, make_reversal_dataset
from probekit.data.tokens import TokenView
from probekit.model.checkpoint import save_checkpoint
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.probes.reversal import (
    REVERSED_GROUP,
    TRAINED_GROUPS,
    ReversalProbeSpec,
    _choose,
    _fit,
    build_reversal_tasks,
    control_targets,
    person_sets,
)


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def rev(tmp_path_factory):  # type: ignore[no-untyped-def]
    cfg = ReversalConfig(n_per_group=6, n_train_templates=4, n_test_templates=2)
    return make_reversal_dataset(tmp_path_factory.mktemp("revprobe") / "data", cfg)


def test_read_positions_decode_to_the_name_and_description_ends(rev) -> None:
    tok = rev.tokenizer
    spec = ReversalProbeSpec()
    for task in build_reversal_tasks(rev, TokenView(tok), spec):
        assert len(task.sequences) == len(rev.people) * 2  # two test templates per person
        for r, seq in enumerate(task.sequences):
            p = rev.people[int(task.pids[r])]
            at_span, at_end = (tok.decode([seq[int(q)]]) for q in task.positions[r])
            if task.readout == "n2d":
                assert p.name.endswith(at_span)  # the name's last token
                assert p.description not in tok.decode(seq)  # the answer is not in the prompt
                assert at_end == "the"  # up to the description's first word: the role comes next
                assert tok.decode([int(task.targets["role"][r])]) == p.description.split()[1]
            else:
                assert p.description.endswith(at_span)
                assert p.name.split()[0] not in tok.decode(seq)
                assert tok.decode([int(task.targets["first_name"][r])]) == p.name.split()[0]
            assert int(task.positions[r, 1]) == len(seq) - 1  # the answer position: the prompt's last token


def test_person_sets_separate_directions(rev) -> None:
    spec = ReversalProbeSpec()
    for readout in ("n2d", "d2n"):
        sets = person_sets(rev, readout, spec)
        assert not set(sets["train"]) & set(sets["same_direction"])
        assert set(sets["val"]) <= set(sets["train"])
        assert {rev.people[i].group for i in sets["train"] + sets["same_direction"]} <= set(TRAINED_GROUPS[readout])
        assert {rev.people[i].group for i in sets["reversed"]} == {REVERSED_GROUP[readout]}


def test_readout_transfers_to_unseen_people_only_through_the_token_direction() -> None:
    gen = torch.Generator().manual_seed(0)
    d, n_values, n_people = 32, 10, 80
    U = torch.randn((n_values, d), generator=gen)  # the unembedding rows of the target values
    value = torch.randint(0, n_values, (n_people,), generator=gen)
    mix = torch.randn((d, d), generator=gen)
    carries = U[value] @ mix + 0.1 * torch.randn((n_people, d), generator=gen)  # a linear image of the token
    lookup = torch.randn((n_people, d), generator=gen)  # person identity only
    train, test = torch.arange(0, 50), torch.arange(50, 80)
    for h, expect_high in ((carries, True), (lookup, False)):
        mu, A = _fit(h[train], U[value[train]], 0.01)
        acc = float((_choose(h[test], mu, A, U) == value[test]).float().mean())
        assert (acc > 0.9) if expect_high else (acc < 0.35), acc
    ids = np.repeat(np.arange(5), 4)
    pids = np.repeat(np.arange(10), 2)
    ctrl = control_targets(ids, pids, 0, "x")
    assert all(len(set(ctrl[pids == p])) == 1 for p in range(10)) and set(ctrl) <= set(ids)


def test_probe_cli_on_reversal_data_with_the_link(rev, tmp_path: Path) -> None:
    cfg = ModelConfig(vocab_size=len(rev.tokenizer), d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=64)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, HookedLM(cfg), rev.tokenizer, meta={"objective": "ntp"})
    ev = tmp_path / "eval"
    assert main(["eval", "reversal", "--checkpoint", str(ckpt), "--data", str(rev.root), "--out", str(ev),
                 "--no-png", "--no-progress"]) == 0  # fmt: skip
    spec = tmp_path / "spec.yaml"
    spec.write_text("kind: reversal\nbootstrap: 20\nridge_grid: [1.0]\n")
    out = tmp_path / "probe"
    assert main(["probe", "--spec", str(spec), "--model", str(ckpt), "--data", str(rev.root), "--out", str(out),
                 "--control-random", "--reversal-eval", str(ev)]) == 0  # fmt: skip
    table = pd.read_csv(out / "results.csv")
    assert set(table["readout"]) == {"n2d", "d2n"} and set(table["test_set"]) == {"same_direction", "reversed"}
    assert set(table["templates"]) == {"train", "test"}  # the trained formats and the held-out templates
    assert table["model"].str.endswith("(random init)").any()
    assert table["accuracy"].between(0, 1).all() and (table["chance"] > 0).all()
    assert table["baseline"].between(0, 1).all()
    link = pd.read_csv(out / "link.csv")
    assert set(link["task"]) == {"N2D-reverse", "D2N-reverse"}
    assert link["agreement"].between(0, 1).all() and (link["n_people"] == 6).all()  # each person once per reading
    people = pd.read_csv(out / "people.csv")
    assert set(people["test_set"]) == {"same_direction", "reversed"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("kinds: [p]\n")
    assert main(["probe", "--spec", str(bad), "--model", str(ckpt), "--data", str(rev.root), "--out",
                 str(tmp_path / "x")]) == 2  # fmt: skip


def test_reversal_patching_pairs_and_cli(rev, tmp_path: Path) -> None:
    from probekit.patching.config import PatchConfig
    from probekit.patching.reversal import reversal_pairs

    tok = rev.tokenizer
    cfg = PatchConfig(n_pairs=6, require_correct=False)
    pairs, counts = reversal_pairs(None, rev, TokenView(tok), "N2D-reverse", cfg)
    assert pairs and counts["used"] == len(pairs)
    names = {p.name for p in rev.people}
    for p in pairs:
        source = rev.people[p.cluster]
        assert source.group == "p2d"  # N2D-reverse: people seen only name first, asked from the description
        assert source.description in tok.decode(p.clean) and source.description not in tok.decode(p.corrupt)
        assert tok.decode(p.answer) == source.name and tok.decode(p.other or []) in names
        end = p.roles.index("name:0:0")  # the description's last token, patched into the other description's
        assert source.description.endswith(tok.decode([p.clean[end]]))
        assert p.labels[end] == "description_last"
    ckpt = tmp_path / "ckpt"
    cfgm = ModelConfig(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=64)
    save_checkpoint(ckpt, HookedLM(cfgm), tok, meta={"objective": "ntp"})
    out = tmp_path / "patch"
    assert main(["patch", "--model", str(ckpt), "--data", str(rev.root), "--out", str(out), "--all-pairs",
                 "--pairs", "4", "--bootstrap", "10", "--no-png", "--tasks", "N2D-reverse,D2N"]) == 0  # fmt: skip
    df = pd.read_csv(out / "results.csv")
    assert set(df["attribute"]) == {"N2D-reverse", "D2N"} and set(df["prompts"]) == {"reversal"}
    assert {"description_last", "description_all", "last"} <= set(df["position_label"])
    assert main(["patch", "--model", str(ckpt), "--data", str(rev.root), "--out", str(tmp_path / "x"),
                 "--tasks", "N2X"]) == 2  # fmt: skip


def test_run_summary_tables_and_figures(rev, tmp_path: Path) -> None:
    from probekit.reporting.reversal import summarize_run

    run = tmp_path / "run"
    cfgm = ModelConfig(vocab_size=len(rev.tokenizer), d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=64)
    spec = tmp_path / "spec.yaml"
    spec.write_text("kind: reversal\nbootstrap: 10\nridge_grid: [1.0]\n")
    for name, seed in (("ntp_s0", 0), ("bico_s0", 1)):
        ckpt = tmp_path / f"ckpt_{name}"
        save_checkpoint(ckpt, HookedLM(ModelConfig(**{**cfgm.__dict__, "seed": seed})), rev.tokenizer,
                        meta={"objective": name.split("_")[0]})  # fmt: skip
        assert main(["eval", "reversal", "--checkpoint", str(ckpt), "--data", str(rev.root), "--out",
                     str(run / name), "--no-png", "--no-progress"]) == 0  # fmt: skip
        assert main(["probe", "--spec", str(spec), "--model", str(ckpt), "--data", str(rev.root), "--out",
                     str(run / f"probe_{name}"), "--reversal-eval", str(run / name), "--name", name]) == 0  # fmt: skip
        assert main(["patch", "--model", str(ckpt), "--data", str(rev.root), "--out", str(run / f"patch_{name}"),
                     "--all-pairs", "--pairs", "3", "--bootstrap", "5", "--no-png", "--tasks", "N2D-reverse,D2N",
                     "--name", name]) == 0  # fmt: skip
    tables = summarize_run(run, tmp_path / "summary", png=False)
    head = tables["headline"]
    assert set(head["objective"]) == {"ntp", "bico"} and set(head["task"]) == {"N2D", "D2N", "N2D-reverse",
                                                                                "D2N-reverse"}  # fmt: skip
    assert (head["seeds"] == 1).all()
    assert set(tables["readout_best"]["model_dir"]) == {"ntp_s0", "bico_s0"}
    assert not tables["link"].empty and not tables["patch"].empty
    for stem in ("readout_by_layer", "patch_route", "link_agreement"):
        assert (tmp_path / "summary" / f"{stem}.html").exists() and (tmp_path / "summary" / f"{stem}.csv").exists()
