"""P-/Q-probe task building (positions, labels, people-level split) and probe spec validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from probekit.data.pools import ATTRIBUTES
from probekit.data.store import build_dataset
from probekit.data.tokenizer import EOS_ID, encode_with_offsets
from probekit.probes.spec import HOOKS, PROBE_KINDS, TARGET_KINDS, ProbeSpec, load_spec
from probekit.probes.tasks import build_p_tasks, build_q_tasks, people_split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("probe_tasks") / "ds", n_people=40, augmentation="multi3+permute",
                         seed=3)  # fmt: skip


def test_p_positions_precede_each_value_first_token(ds):
    people = people_split(ds, val_fraction=0.25, seed=0)
    t = build_p_tasks(ds, people, ATTRIBUTES, ATTRIBUTES, TARGET_KINDS)
    assert t.n == len(ds.entries) == 120 and t.positions.shape == (120, 6)
    tok = ds.tokenizer
    checked = 0
    for r in range(t.n):
        seq = t.sequences[r]
        assert seq[0] == EOS_ID
        person = ds.person(int(t.pids[r]))
        for j, attr in enumerate(t.position_names):
            p = int(t.positions[r, j])
            value = person.attrs[attr]
            first = encode_with_offsets(tok, value)[0][0]
            # the token after the read position is the value's first token, and decodes to its first word
            assert seq[p + 1] == first == t.next_tokens[r, j]
            assert tok.decode([seq[p + 1]]) == value.split()[0].rstrip(",")
            # and the value starts right there (the first occurrence of the value in the entry)
            assert seq[p + 1 : p + 1 + len(encode_with_offsets(tok, value)[0])] == encode_with_offsets(tok, value)[0]
            checked += 1
    assert checked == 120 * 6
    # labels: first_token = that token; value = index into the pool
    for k, (attr, target) in enumerate(t.label_keys):
        for r in range(t.n):
            v = ds.person(int(t.pids[r])).attrs[attr]
            if target == "first_token":
                assert t.labels[k, r] == t.next_tokens[r, t.position_names.index(attr)]
            else:
                assert ds.pools.values(attr)[t.labels[k, r]] == v


def test_people_level_split_has_no_person_on_both_sides(ds):
    people = people_split(ds, val_fraction=0.25, seed=1)
    assert not set(people.train) & set(people.test)
    assert set(people.val) <= set(people.train) and len(people.val) == round(0.25 * len(people.train))
    assert set(people.train) == set(ds.split["train"]) and set(people.test) == set(ds.split["test"])
    for t in (build_p_tasks(ds, people, ["company"], ["company"], ["value"]),
              build_q_tasks(ds, people, ["company"], ["value"])):  # fmt: skip
        tr, te = set(t.pids[t.split.train].tolist()), set(t.pids[t.split.test].tolist())
        assert not tr & te
        assert tr == set(people.train) and te == set(people.test)
        assert set(t.pids[t.split.val].tolist()) == set(people.val)
        # every row of a person is on one side: all M entries of a P_train person are training rows
        assert len(t.split.train) + len(t.split.test) == t.n


def test_q_reads_the_last_name_token(ds):
    people = people_split(ds)
    t = build_q_tasks(ds, people, ATTRIBUTES, TARGET_KINDS)
    assert t.n == 40 and t.position_names == ["name"]
    for r in range(t.n):
        person = ds.person(int(t.pids[r]))
        seq = t.sequences[r]
        assert seq == [EOS_ID] + encode_with_offsets(ds.tokenizer, person.full_name)[0]
        assert t.positions[r, 0] == len(seq) - 1
        assert ds.tokenizer.decode([seq[-1]]) == person.last
        for k, (attr, target) in enumerate(t.label_keys):
            if target == "first_token":
                assert t.labels[k, r] == encode_with_offsets(ds.tokenizer, person.attrs[attr])[0][0]


def test_subsampling_and_entries_per_person(ds):
    people = people_split(ds, max_people=10, seed=0)
    assert len(people.train) + len(people.test) == 10
    t = build_p_tasks(ds, people, ["major"], ["major"], ["first_token"], entries_per_person=1)
    assert t.n == 10 and sorted(t.pids.tolist()) == sorted(people.train + people.test)


def test_entry_without_spans_is_a_clear_error(ds):
    broken = dataclasses.replace(ds, entries=[dataclasses.replace(e, spans=[s for s in e.spans if s.kind != "major"])
                                              for e in ds.entries])  # fmt: skip
    with pytest.raises(ValueError, match="no character span"):
        build_p_tasks(broken, people_split(ds), ["major"], ["major"], ["value"])


def test_spec_validation_names_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown hooks \['resid_pre_typo'\]; valid hooks are"):
        ProbeSpec(hooks=["resid_pre_typo"])
    with pytest.raises(ValueError, match="valid attributes are"):
        ProbeSpec(attributes=["birthday"])
    with pytest.raises(ValueError, match=r"valid probe kinds are \['p', 'q'\]"):
        ProbeSpec(kinds=["x"])
    with pytest.raises(ValueError, match="valid targets are"):
        ProbeSpec(targets=["whole"])
    with pytest.raises(ValueError, match="valid positions are"):
        ProbeSpec(positions=["name"])
    with pytest.raises(ValueError, match="valid engines are"):
        ProbeSpec(engine="xgboost")
    with pytest.raises(ValueError, match="layers must be"):
        ProbeSpec(layers=[-1])
    with pytest.raises(ValueError, match="l2_grid"):
        ProbeSpec(l2_grid=[0.0])
    spec = ProbeSpec(layers=[0, 3])
    assert spec.resolve_layers("resid", 3) == [0, 3]
    with pytest.raises(ValueError, match=r"layers \[3\] do not exist for hook 'mlp_out'"):
        spec.resolve_layers("mlp_out", 3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("kinds: [p]\nlayer: all\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['layer'\]"):
        load_spec(bad)
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "missing.yaml")


def test_repository_specs_load():
    specs = {n: load_spec(REPO / "probes" / f"{n}.yaml") for n in ("default", "p_probe", "q_probe")}
    assert specs["default"].kinds == PROBE_KINDS
    assert specs["p_probe"].kinds == ("p",) and specs["q_probe"].kinds == ("q",)
    assert all(s.hooks == ("resid",) and s.targets == TARGET_KINDS for s in specs.values())
    assert set(HOOKS) >= {"resid"}
    assert np.all(np.diff(specs["default"].l2_grid) > 0)
    assert all(s.embed_probe is None for s in specs.values())
    paper = load_spec(REPO / "probes" / "embed_update.yaml")
    assert paper.embed_probe is not None and paper.embed_probe.rank == 0 and paper.embed_probe.weight_decay == 0.3
