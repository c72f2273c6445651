"""bioS generation: spans, uniqueness, determinism, augmentations, pools and bad input."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from probekit.data.bios import generate, parse_augmentation
from probekit.data.pools import ATTRIBUTES, POOL_FILES, load_pools
from probekit.data.store import build_dataset, load_dataset
from tests.conftest import write_lines

PRONOUN_RE = re.compile(r"\b(he|she|his|her|him)\b", re.IGNORECASE)


def test_builtin_pools_have_the_paper_sizes() -> None:
    pools = load_pools()
    assert (len(pools.first_names), len(pools.middle_names), len(pools.last_names)) == (400, 400, 1000)
    assert len(pools.birth_cities) == 200 and len(pools.universities) == 300 and len(pools.majors) == 100
    assert len(pools.companies) == 263 and set(pools.company_city) == set(pools.companies)
    assert sum(c == "New York, NY" for c in pools.company_city.values()) == 36
    assert len(pools.values("birth_date")) == 200 * 12 * 28
    assert all(len(t) >= 40 for t in pools.templates.values())


def test_spans_point_at_values_and_names() -> None:
    people, entries = generate(300, seed=3, augmentation="multi2+permute")
    by_pid = {p.pid: p for p in people}
    for e in entries:
        p = by_pid[e.pid]
        kinds = Counter(s.kind for s in e.spans)
        assert all(kinds[a] == 1 for a in ATTRIBUTES)
        for s in e.spans:
            expected = p.full_name if s.kind == "name" else p.attrs[s.kind]
            assert e.text[s.start : s.end] == expected
        assert e.first_span("name").start < min(e.first_span(a).start for a in ATTRIBUTES[1:]) or kinds["name"] >= 1
        first_sentence_end = e.text.index(". ") if ". " in e.text else len(e.text)
        assert e.first_span("name").start < first_sentence_end  # the name is in the first sentence


def test_full_names_unique_and_attributes_consistent() -> None:
    people, _ = generate(5000, seed=1)
    assert len({p.full_name for p in people}) == len(people)
    pools = load_pools()
    for p in people[:500]:
        assert p.attrs["company_city"] == pools.company_city[p.attrs["company"]]
        assert p.attrs["birth_city"] in pools.birth_cities


def test_single_keeps_order_and_pronouns_consistent() -> None:
    people, entries = generate(200, seed=0, augmentation="single")
    assert len(entries) == 200 and all(e.order == ATTRIBUTES for e in entries)
    by_pid = {p.pid: p for p in people}
    for e in entries:
        found = {w.lower() for w in PRONOUN_RE.findall(e.text)}
        wrong = {"he", "his", "him"} if by_pid[e.pid].gender == "female" else {"she", "her"}
        assert not found & wrong, e.text
        assert Counter(s.kind for s in e.spans)["name"] == 1


def test_permute_changes_order_multi_redraws_templates_fullname_removes_pronouns() -> None:
    _, entries = generate(100, seed=0, augmentation="multi5+permute+fullname")
    assert len(entries) == 500
    orders = Counter(e.order for e in entries)
    assert len(orders) > 50 and all(sorted(o) == sorted(ATTRIBUTES) for o in orders)
    by_person: dict[int, list[str]] = {}
    for e in entries:
        by_person.setdefault(e.pid, []).append(e.text)
        assert not PRONOUN_RE.search(e.text), e.text
        assert Counter(s.kind for s in e.spans)["name"] == 6
    assert all(len(set(texts)) == 5 for texts in by_person.values())
    # multi without permute: same order, different templates
    _, multi = generate(50, seed=0, augmentation="multi4")
    assert all(e.order == ATTRIBUTES for e in multi)
    sentences_differ = sum(len({e.text.split(". ")[0] for e in multi if e.pid == pid}) > 1 for pid in range(50))
    assert sentences_differ > 40


def test_parse_augmentation() -> None:
    a = parse_augmentation("permute+multi5")
    assert (a.multi, a.permute, a.fullname, a.name) == (5, True, False, "multi5+permute")
    assert parse_augmentation("single").name == "single"
    with pytest.raises(ValueError, match="valid parts"):
        parse_augmentation("multi5+shuffle")
    with pytest.raises(ValueError, match="at least 1"):
        parse_augmentation("multi0")


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def test_same_seed_gives_byte_identical_dataset(tmp_path: Path) -> None:
    a = build_dataset(tmp_path / "a", n_people=60, augmentation="multi2+permute", seed=7)
    b = build_dataset(tmp_path / "b", n_people=60, augmentation="multi2+permute", seed=7)
    c = build_dataset(tmp_path / "c", n_people=60, augmentation="multi2+permute", seed=8)
    fa, fb = _files(a.root), _files(b.root)
    fa["manifest.json"] = fa["manifest.json"].replace(b'"a"', b'"x"')
    fb["manifest.json"] = fb["manifest.json"].replace(b'"b"', b'"x"')
    assert fa == fb
    assert _files(c.root)["bios.jsonl"] != fa["bios.jsonl"]


def test_dataset_round_trip_and_refuses_non_empty_dir(tiny_single, tmp_path: Path) -> None:
    ds = load_dataset(tiny_single.root)
    assert len(ds.people) == 40 and len(ds.entries) == 40 and len(ds.qa) == 240
    assert ds.manifest["counts"]["entries"] == 40 and set(ds.manifest["pool_checksums"]) == set(POOL_FILES)
    assert ds.entries[5].spans == tiny_single.entries[5].spans
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_dataset(tiny_single.root, n_people=10)
    build_dataset(tiny_single.root, n_people=40, seed=0, overwrite=True)


def test_pool_limits_subsample_values(tmp_path: Path) -> None:
    ds = build_dataset(tmp_path / "d", n_people=200, pool_limits={"major": 5, "company": 10}, seed=0)
    assert len({p.attrs["major"] for p in ds.people}) <= 5 and len(ds.pools.values("major")) == 5
    assert len(ds.pools.values("company")) == 10
    assert all(p.attrs["company"] in ds.pools.values("company") for p in ds.people)


# ---- user pools and bad input: each is a clear error and writes nothing ----


def test_user_pool_replaces_builtin(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "majors.txt", ["# my majors", "Astrobiology", "Glassblowing"])
    ds = build_dataset(tmp_path / "out", n_people=30, pool_files={"majors": f})
    assert {p.attrs["major"] for p in ds.people} <= {"Astrobiology", "Glassblowing"}


def _small_name_pools(tmp_path: Path) -> dict[str, Path]:
    return {
        "first_names": write_lines(tmp_path / "f.txt", ["Ann\tfemale", "Bob\tmale"]),
        "middle_names": write_lines(tmp_path / "m.txt", ["Lee", "Kay"]),
        "last_names": write_lines(tmp_path / "l.txt", ["Hart", "Moss"]),
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_people": 9, "pool_files": "small_names"}, "exceeds the 8 unique full names"),
        ({"augmentation": "multi3+shuffle"}, "unknown augmentation 'shuffle'.*multiM.*permute.*fullname"),
        ({"augmentation": "multi0"}, "multi0"),
        ({"pool_files": {"majors": "missing.txt"}}, "pool file for 'majors' not found"),
        ({"pool_files": {"majors": "empty"}}, "pool 'majors' .* is empty"),
        ({"pool_files": {"companies": "no_city"}}, "company 'Acme' has no headquarters city"),
        ({"pool_files": {"templates_major": "no_value"}}, "must contain the value slot"),
        ({"pool_files": {"nonsense": "x"}}, "unknown pool name"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path: Path, kwargs: dict, message: str) -> None:
    files: dict[str, Path] = {
        "empty": write_lines(tmp_path / "empty.txt", ["# only a comment"]),
        "no_city": write_lines(tmp_path / "companies.txt", ["Acme"]),
        "no_value": write_lines(tmp_path / "tpl.txt", ["{Subj} studied something."]),
        "missing.txt": tmp_path / "missing.txt",
    }
    pf = kwargs.get("pool_files")
    if pf == "small_names":
        kwargs["pool_files"] = _small_name_pools(tmp_path)
    elif isinstance(pf, dict):
        kwargs["pool_files"] = {k: files.get(v, v) for k, v in pf.items()}
    out = tmp_path / "out"
    with pytest.raises(ValueError if "not found" not in message else FileNotFoundError, match=message):
        build_dataset(out, **{"n_people": 5, **kwargs})
    assert not out.exists()


def test_outputs_have_ordinary_permissions(tiny_single) -> None:
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    for f in ("manifest.json", "bios.jsonl"):
        assert stat.S_IMODE((tiny_single.root / f).stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(tiny_single.root.stat().st_mode) == 0o777 & ~mask


def test_name_pools_make_people_share_names(tmp_path: Path) -> None:
    ds = build_dataset(tmp_path / "n", n_people=120, seed=3, name_pools={"first": 6, "middle": 5, "last": 4})
    firsts, middles, lasts = ({getattr(p, part) for p in ds.people} for part in ("first", "middle", "last"))
    assert (len(firsts), len(middles), len(lasts)) == (6, 5, 4)
    assert len({p.full_name for p in ds.people}) == 120  # the combination still identifies everyone
    full = load_pools()
    assert firsts <= set(full.first_names) and lasts <= set(full.last_names)
    genders = dict(zip(full.first_names, full.first_genders))
    assert all(p.gender == genders[p.first] for p in ds.people if genders[p.first])  # genders stay aligned
    assert ds.manifest["name_pools"] == {"first": 6, "last": 4, "middle": 5}
    assert ds.manifest["people_per_name"] == {"first": 20.0, "middle": 24.0, "last": 30.0}
    again = build_dataset(tmp_path / "m", n_people=120, seed=3, name_pools={"first": 6, "middle": 5, "last": 4})
    assert [p.full_name for p in again.people] == [p.full_name for p in ds.people]  # seeded
    plain = build_dataset(tmp_path / "p", n_people=120, seed=3)
    assert "name_pools" not in plain.manifest  # the default keeps earlier datasets' bytes


def test_name_pools_too_small_for_n_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unique full names, fewer than the 100"):
        build_dataset(tmp_path / "x", n_people=100, name_pools={"first": 4, "middle": 4, "last": 4})
    assert not (tmp_path / "x").exists()
