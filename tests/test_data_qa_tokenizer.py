"""QA items, the people split, inverse prompts and the tokenizer's exact span mapping."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from probekit.data.pools import ATTRIBUTES
from probekit.data.qa import QUESTIONS, inverse_prompt, split_people
from probekit.data.tokenizer import (
    EOS_ID,
    MASK_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    char_span_to_token_span,
    encode_with_offsets,
    load_tokenizer,
)


def test_qa_items_have_six_questions_ending_with_answer(tiny_single) -> None:
    ds = tiny_single
    by_pid: dict[int, set[str]] = {}
    for q in ds.qa:
        by_pid.setdefault(q.pid, set()).add(q.attr)
        p = ds.person(q.pid)
        assert q.prompt == QUESTIONS[q.attr].format(name=p.full_name) + " Answer:"
        assert q.answer == p.attrs[q.attr] and q.text.endswith(" " + q.answer)
    assert all(v == set(ATTRIBUTES) for v in by_pid.values())


def test_split_is_seeded_disjoint_and_half() -> None:
    s = split_people(range(101), seed=0)
    assert not set(s["train"]) & set(s["test"]) and sorted(s["train"] + s["test"]) == list(range(101))
    assert len(s["train"]) in (50, 51)
    assert s == split_people(range(101), seed=0) and s != split_people(range(101), seed=1)


def test_stored_split_matches(tiny_single) -> None:
    assert tiny_single.split == split_people([p.pid for p in tiny_single.people], seed=0)


def test_inverse_prompt(tiny_single) -> None:
    p = tiny_single.people[0]
    s = inverse_prompt(p, ["major", "company"])
    assert s == f"Who majored in {p.attrs['major']} and worked for {p.attrs['company']}? Answer:"
    assert tiny_single.inverse[0]["answer"] == p.full_name
    with pytest.raises(ValueError, match="unknown attribute"):
        inverse_prompt(p, ["shoe_size"])


def test_tokenizer_special_ids_and_hf_loading(tiny_single) -> None:
    tok = tiny_single.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(6))
    assert tok.pad_token_id == PAD_ID and tok.eos_token_id == EOS_ID and tok.mask_token_id == MASK_ID
    hf = PreTrainedTokenizerFast.from_pretrained(str(tiny_single.root))
    text = tiny_single.entries[0].text
    assert hf(text)["input_ids"] == tok(text)["input_ids"]
    assert tok.unk_token_id not in tok(text)["input_ids"]
    assert load_tokenizer(tiny_single.root / "tokenizer.json").get_vocab() == tok.get_vocab()


def test_char_span_maps_to_exact_tokens(tiny_multi) -> None:
    tok = tiny_multi.tokenizer
    checked = 0
    for e in tiny_multi.entries:
        ids, offsets = encode_with_offsets(tok, e.text)
        for s in e.spans:
            i, j = char_span_to_token_span(offsets, s.start, s.end)
            value_ids, _ = encode_with_offsets(tok, e.text[s.start : s.end])
            assert ids[i:j] == value_ids
            assert offsets[i][0] == s.start and offsets[j - 1][1] == s.end
            checked += 1
    assert checked >= len(tiny_multi.entries) * 7


def test_char_span_off_boundary_raises(tiny_single) -> None:
    _, offsets = encode_with_offsets(tiny_single.tokenizer, "Princeton, NJ")
    with pytest.raises(ValueError, match="token boundaries"):
        char_span_to_token_span(offsets, 1, 5)
