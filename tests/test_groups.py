"""People groups rendered under their own augmentation (celebrities + minorities in one corpus, Physics of LMs 3.1):
the assignment, the rendering, the stored files, finetuning on one group and the per-group QA rates."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from probekit.data.bios import PersonGroup, assign_groups, check_groups
from probekit.data.qa import split_people
from probekit.data.store import build_dataset, load_dataset
from probekit.errors import UserError

CELEB = [PersonGroup("celebrity", "multi5+permute", 0.5), PersonGroup("minority", "single", 0.5)]


def test_groups_cut_each_half_of_the_split_by_their_fractions() -> None:
    split = split_people(list(range(101)), seed=4)
    groups = [PersonGroup("a", "single", 0.25), PersonGroup("b", "multi2", 0.75)]
    members = assign_groups(split, groups, seed=4)
    assert sorted(members["a"] + members["b"]) == list(range(101))  # disjoint, every person once
    for half in ("train", "test"):
        n = len(split[half])
        in_a = len(set(members["a"]) & set(split[half]))
        assert in_a == round(n * 0.25) and len(set(members["b"]) & set(split[half])) == n - in_a
    assert members == assign_groups(split, groups, seed=4)  # seeded
    assert members != assign_groups(split, groups, seed=5)


@pytest.mark.parametrize(
    "groups, message",
    [
        ([PersonGroup("a", "single", 0.5), PersonGroup("a", "single", 0.5)], "distinct names"),
        ([PersonGroup("a", "single", 0.5), PersonGroup("b", "single", 0.4)], "add up to 1"),
        ([PersonGroup("a", "multi0", 1.0)], "multi0"),
        ([PersonGroup("a", "single", 0.0), PersonGroup("b", "single", 1.0)], "fraction must be in"),
        ([], "one or more groups"),
    ],
)
def test_bad_groups_are_refused_with_the_reason(groups: list[PersonGroup], message: str) -> None:
    with pytest.raises(UserError, match=message):
        check_groups(groups)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_grouped_dataset_renders_each_person_under_their_groups_augmentation(tmp_path: Path) -> None:
    plain = build_dataset(tmp_path / "plain", 40, "single", seed=3)
    multi = build_dataset(tmp_path / "multi", 40, "multi5+permute", seed=3)
    mixed = build_dataset(tmp_path / "mixed", 40, seed=3, groups=CELEB)
    assert mixed.groups is not None and mixed.split == plain.split
    celebs, minors = set(mixed.groups["celebrity"]), set(mixed.groups["minority"])
    assert len(celebs) == len(minors) == 20
    by_pid = {}
    for e in mixed.entries:
        by_pid.setdefault(e.pid, []).append(e)
    assert all(len(by_pid[p]) == 5 for p in celebs) and all(len(by_pid[p]) == 1 for p in minors)
    # a minority's biography is exactly the single dataset's, a celebrity's exactly the multi5+permute one's
    single_text = {e.pid: e.text for e in plain.entries}
    multi_text = {(e.pid, e.idx): e.text for e in multi.entries}
    assert all(e.text == single_text[e.pid] for e in mixed.entries if e.pid in minors)
    assert all(e.text == multi_text[(e.pid, e.idx)] for e in mixed.entries if e.pid in celebs)
    loaded = load_dataset(tmp_path / "mixed")
    assert loaded.groups == mixed.groups
    assert [g["name"] for g in loaded.manifest["groups"]] == ["celebrity", "minority"]
    assert loaded.group_pids(["minority"]) == minors
    with pytest.raises(UserError, match="no group"):
        loaded.group_pids(["famous"])
    assert load_dataset(tmp_path / "plain").groups is None


def test_all_single_groups_leave_the_corpus_byte_identical(tmp_path: Path) -> None:
    """The celebrities experiment's control (everyone single, same groups) trains on the plain single corpus."""
    build_dataset(tmp_path / "plain", 30, "single", seed=1)
    build_dataset(tmp_path / "ctl", 30, seed=1, groups=[PersonGroup("celebrity", "single"),
                                                        PersonGroup("minority", "single")])  # fmt: skip
    for f in ("bios.jsonl", "people.jsonl", "qa.jsonl", "split.json", "pools.json", "tokenizer.json"):
        assert _sha(tmp_path / "plain" / f) == _sha(tmp_path / "ctl" / f), f
    assert (tmp_path / "ctl" / "groups.json").exists() and not (tmp_path / "plain" / "groups.json").exists()


def test_patching_takes_its_people_from_the_named_groups(tmp_path: Path) -> None:
    from probekit.patching.config import PatchConfig
    from probekit.patching.patch import _people

    mixed = build_dataset(tmp_path / "mixed", 40, seed=3, groups=CELEB)
    assert mixed.groups is not None
    minors = set(mixed.groups["minority"])
    test_minors = _people(mixed, "test", PatchConfig(groups=("minority",)).groups)
    assert test_minors and set(test_minors) == minors & set(mixed.split["test"])
    assert _people(mixed, "test") == list(mixed.split["test"])
    plain = build_dataset(tmp_path / "plain", 20, "single", seed=3)
    with pytest.raises(UserError, match="no group"):
        _people(plain, "test", ("minority",))
