"""The fast dataset build (issue 11 item 3) produces exactly what the straightforward code produced."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from probekit.data import store
from probekit.data.bios import (
    PRONOUNS,
    Entry,
    Person,
    Span,
    _render,
    generate_people,
    parse_augmentation,
    render_entries,
)
from probekit.data.pools import ATTRIBUTES, load_pools
from probekit.data.qa import inverse_prompt, qa_items
from probekit.data.tokenizer import build_tokenizer
from probekit.io import atomic_write_jsonl


def reference_render(people, pools, augmentation, seed):  # type: ignore[no-untyped-def]
    """render_entries as first written: one _render call per sentence."""
    rng = random.Random(seed + 1_000_003)
    out = []
    for person in people:
        name = person.full_name
        as_name = {"Subj": name, "subj": name, "Poss": f"{name}'s", "poss": f"{name}'s", "obj": name, "_name": name}
        for idx in range(augmentation.multi):
            order = list(ATTRIBUTES)
            if augmentation.permute:
                rng.shuffle(order)
            spans: list[Span] = []
            sentences, offset = [], 0
            for k, attr in enumerate(order):
                subject = as_name if (k == 0 or augmentation.fullname) else PRONOUNS[person.gender]
                s = _render(rng.choice(pools.templates[attr]), person.attrs[attr], subject, attr, offset, spans)
                sentences.append(s)
                offset += len(s) + 1
            out.append(Entry(person.pid, idx, " ".join(sentences), tuple(order), spans))
    return out


@pytest.mark.parametrize("aug", ["single", "multi3+permute", "multi2+permute+fullname"])
def test_render_entries_equals_reference(aug: str) -> None:
    pools = load_pools()
    people = generate_people(60, pools, seed=4)
    a = parse_augmentation(aug)
    assert render_entries(people, pools, a, seed=4) == reference_render(people, pools, a, seed=4)


@pytest.mark.parametrize("aug", ["multi3+permute", "single+fullname"])
def test_tokenizer_from_piece_counts_is_the_trained_tokenizer(aug: str) -> None:
    pools = load_pools()
    people = generate_people(80, pools, seed=1)
    entries = render_entries(people, pools, parse_augmentation(aug), seed=1)
    qa, inverse = qa_items(people), [inverse_prompt(p) for p in people]
    fast = store._tokenizer(pools, entries, qa, inverse, people, ("extra words, here",))
    trained = build_tokenizer(store._texts_for_tokenizer(pools, entries, qa, inverse, people, ("extra words, here",)))
    assert fast.backend_tokenizer.to_str() == trained.backend_tokenizer.to_str()


def test_tokenizer_falls_back_when_a_cut_would_split_a_word() -> None:
    """A span glued to a letter ("Annax") must not be counted as pieces: the fallback trains on full texts."""
    pools = load_pools()
    person = Person(0, "Anna", "B", "Cole", "female", dict.fromkeys(ATTRIBUTES, "v"))
    glued = Entry(0, 0, "Annax went to Yale. Yale Yale", ("major",), [Span("name", 0, 4), Span("major", 14, 18)])
    plain = Entry(0, 1, "Anna went to Yale.", ("major",), [Span("name", 0, 4), Span("major", 13, 17)])
    for entries in ([glued, plain], [plain]):
        fast = store._tokenizer(pools, entries, [], [], [person])
        trained = build_tokenizer(store._texts_for_tokenizer(pools, entries, [], [], [person]))
        assert fast.backend_tokenizer.to_str() == trained.backend_tokenizer.to_str()
    assert "Annax" in store._tokenizer(pools, [glued], [], [], [person]).get_vocab()


def test_write_rows_is_byte_identical_to_json_dumps(tmp_path: Path) -> None:
    pools = load_pools()
    people = generate_people(30, pools, seed=2)
    odd = Person(30, 'Zoë "Q"', "Ø\\", "O'Neil", "female", {**people[0].attrs, "major": "Tab\there\u2028"})
    people.append(odd)
    entries = render_entries(people, pools, parse_augmentation("multi2+permute"), seed=2)
    qa, inverse = qa_items(people), [inverse_prompt(p) for p in people]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    store._write_rows(tmp_path / "a", people, entries, qa, inverse)
    atomic_write_jsonl(tmp_path / "b" / "people.jsonl", (
        {"pid": p.pid, "first": p.first, "middle": p.middle, "last": p.last, "gender": p.gender,
         "attrs": p.attrs} for p in people))  # fmt: skip
    atomic_write_jsonl(tmp_path / "b" / "bios.jsonl", (
        {"pid": e.pid, "idx": e.idx, "text": e.text, "order": list(e.order),
         "spans": [[s.kind, s.start, s.end] for s in e.spans]} for e in entries))  # fmt: skip
    atomic_write_jsonl(tmp_path / "b" / "qa.jsonl", ({"pid": q.pid, "attr": q.attr, "prompt": q.prompt,
                                                      "answer": q.answer} for q in qa))  # fmt: skip
    atomic_write_jsonl(tmp_path / "b" / "inverse.jsonl", ({"pid": p.pid, "attrs": list(ATTRIBUTES), "prompt": s,
                                                           "answer": p.full_name}
                                                          for p, s in zip(people, inverse)))  # fmt: skip
    for f in ("people.jsonl", "bios.jsonl", "qa.jsonl", "inverse.jsonl"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert json.loads((tmp_path / "a" / "people.jsonl").read_text().split("\n")[-2])["first"] == 'Zoë "Q"'


def test_build_dataset_returns_what_load_dataset_reads(tmp_path: Path) -> None:
    built = store.build_dataset(tmp_path / "ds", n_people=40, augmentation="multi2+permute", seed=3)
    loaded = store.load_dataset(tmp_path / "ds")
    for f in ("root", "manifest", "people", "entries", "qa", "inverse", "split", "pools"):
        assert getattr(built, f) == getattr(loaded, f), f
    assert built.tokenizer.backend_tokenizer.to_str() == loaded.tokenizer.backend_tokenizer.to_str()


def test_word_counter_ascii_split_equals_pre_tokenizer() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from probekit.data.tokenizer import WordCounter, _pre_tokenizer

    wc, pre = WordCounter(), _pre_tokenizer()

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.characters(min_codepoint=9, max_codepoint=127), max_size=40)
           | st.text(max_size=20))  # fmt: skip
    def check(piece: str) -> None:
        assert wc.words(piece) == [w for w, _ in pre.pre_tokenize_str(piece)]

    check()
    assert wc.words("Anna's U.S. 5, 1990!") == ["Anna", "'", "s", "U", ".", "S", ".", "5", ",", "1990", "!"]
