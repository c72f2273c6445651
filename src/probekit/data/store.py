"""Dataset directories: build, write atomically, load.

A bioS dataset directory holds::

    manifest.json      generator version, seed, N, augmentation, pool checksums and limits, counts
    people.jsonl       one person a line: pid, names, gender, attrs
    bios.jsonl         one biography entry a line: pid, idx, text, order, spans [[kind, start, end], ...]
    qa.jsonl           six questions per person: pid, attr, prompt, answer
    inverse.jsonl      one attributes -> name prompt per person (all six attributes)
    split.json         {"train": [pids], "test": [pids]}: P_train / P_test
    groups.json        (only with groups) {group name: [pids]}: who is rendered under which augmentation
    pools.json         the attribute value lists used (classes of whole-value probes)
    tokenizer.json     the word-level tokenizer (+ tokenizer_config.json, special_tokens_map.json)

The directory is built under a temporary name and renamed into place, so a crash never leaves a half-written
dataset; the same arguments give byte-identical files.
"""

from __future__ import annotations

import functools
import gc
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

import probekit
from probekit.data.bios import (
    Entry,
    Person,
    PersonGroup,
    Span,
    assign_groups,
    entries_per_person,
    generate_people,
    parse_augmentation,
    render_entries,
    render_grouped,
)
from probekit.data.pools import (
    ATTRIBUTES,
    POOL_FILES,
    Pools,
    birth_dates,
    check_name_space,
    load_pools,
    people_per_name,
)
from probekit.data.qa import QAItem, inverse_prompt, qa_items, split_people
from probekit.data.tokenizer import WordCounter, build_tokenizer, load_tokenizer, save_tokenizer, tokenizer_from_counts
from probekit.errors import UserError, UserFileNotFoundError
from probekit.io import atomic_dir, atomic_write_json, atomic_write_text, prepare_output_dir, read_jsonl

GENERATOR_VERSION = 1


@dataclass
class PoolValues:
    """The value list of every attribute, as stored with a dataset (``values(attr)`` = whole-value classes)."""

    lists: dict[str, list[str]]

    def values(self, attr: str) -> list[str]:
        if attr not in self.lists:
            raise UserError(f"unknown attribute {attr!r}; valid: {', '.join(ATTRIBUTES)}")
        return self.lists[attr]


@dataclass
class BioDataset:
    root: Path
    manifest: dict[str, Any]
    people: list[Person]
    entries: list[Entry]
    qa: list[QAItem]
    inverse: list[dict[str, Any]]
    split: dict[str, list[int]]
    tokenizer: PreTrainedTokenizerFast
    pools: PoolValues
    groups: dict[str, list[int]] | None = None  # {group name: pids} for a dataset built with groups
    _by_pid: dict[int, Person] = field(default_factory=dict, repr=False)

    def group_pids(self, names: Sequence[str]) -> set[int]:
        """The people of the named groups (every group name must exist)."""
        known = self.groups or {}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(f"dataset {self.root} has no group(s) {unknown}; its groups: {sorted(known) or 'none'} "
                            "(build it with groups to select people by group)")  # fmt: skip
        return {pid for n in names for pid in known[n]}

    def person(self, pid: int) -> Person:
        if not self._by_pid:
            self._by_pid = {p.pid: p for p in self.people}
        if pid not in self._by_pid:
            raise KeyError(f"person {pid} is not in dataset {self.root}")
        return self._by_pid[pid]

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.root.name)


def _texts_for_tokenizer(pools: Pools, entries: list[Entry], qa: list[QAItem], inverse: list[str],
                         people: list[Person], extra: Sequence[str] = ()) -> Iterator[str]:  # fmt: skip
    yield from (e.text for e in entries)
    yield from extra  # e.g. the distractor phrases of probekit.data.distract
    yield from (q.text for q in qa)
    yield from inverse
    # every pool value, so whole-value classes tokenize even when a small N leaves a value unused
    for a in ATTRIBUTES:
        if a != "birth_date":
            yield " ".join(pools.values(a))
    yield " ".join(p.full_name for p in people[:1])


# characters at which the word-level pre-tokenizer always splits (whitespace split + isolated punctuation)
_SPLIT_CHARS = frozenset(" " + string.punctuation)


def _tokenizer(pools: Pools, entries: list[Entry], qa: list[QAItem], inverse: list[str], people: list[Person],
               extra: Sequence[str] = ()) -> PreTrainedTokenizerFast:  # fmt: skip
    """The tokenizer trained on ``_texts_for_tokenizer(...)``, from word counts of distinct text pieces.

    Entries are cut at their spans (names and values) into template text and span text, QA texts at the name
    and before the answer; each distinct piece is pre-tokenized once and counted with its multiplicity. Valid
    because every cut falls next to a space or punctuation, where the pre-tokenizer splits anyway (checked on
    every distinct piece; otherwise the tokenizer is trained on the full texts as before). Same files as
    ``build_tokenizer`` on the texts (``benchmarks/bench_data.py`` times both).
    """
    lead: dict[str, int] = {}  # text before an entry's first span
    mid: dict[str, int] = {}  # text between two spans (or between a QA name and its answer)
    tail: dict[str, int] = {}  # text after the last span
    spans: dict[str, int] = {}  # span text: names and values
    for e in entries:
        text, prev, first = e.text, 0, True
        for sp in e.spans:
            start = sp.start
            if start < prev:  # overlapping or unsorted spans: count the whole texts instead
                return build_tokenizer(_texts_for_tokenizer(pools, entries, qa, inverse, people, extra))
            gap = text[prev:start]
            box = lead if first else mid
            box[gap] = box.get(gap, 0) + 1
            piece = text[start : sp.end]
            spans[piece] = spans.get(piece, 0) + 1
            prev, first = sp.end, False
        gap = text[prev:]
        box = lead if first else tail
        box[gap] = box.get(gap, 0) + 1
    whole = WordCounter()
    names = {p.pid: p.full_name for p in people}
    for q in qa:
        name = names.get(q.pid, "")
        i = q.prompt.find(name) if name else -1
        if i < 0:
            whole.add(q.text)
            continue
        left, right = q.prompt[:i], q.prompt[i + len(name) :] + " "  # text = prompt + " " + answer
        lead[left] = lead.get(left, 0) + 1
        spans[name] = spans.get(name, 0) + 1
        mid[right] = mid.get(right, 0) + 1
        spans[q.answer] = spans.get(q.answer, 0) + 1
    ok = (all(not g or g[-1] in _SPLIT_CHARS for g in lead) and all(not g or g[0] in _SPLIT_CHARS for g in tail)
          and all(g and g[0] in _SPLIT_CHARS and g[-1] in _SPLIT_CHARS for g in mid))  # fmt: skip
    if not ok:
        return build_tokenizer(_texts_for_tokenizer(pools, entries, qa, inverse, people, extra))
    for box in (lead, mid, tail, spans):
        whole.add_counts(box)
    for text in inverse:
        whole.add(text)
    for text in extra:
        whole.add(text)
    for a in ATTRIBUTES:
        if a != "birth_date":
            whole.add(" ".join(pools.values(a)))
    whole.add(" ".join(p.full_name for p in people[:1]))
    return tokenizer_from_counts(whole.counts)


def _without_gc(fn: Any) -> Any:
    """Run ``fn`` with Python's cyclic garbage collector paused (restored after, also on errors).

    Building or loading 100,000 people creates ~10 million small acyclic objects (strings, lists, dicts,
    dataclasses); every collection of the oldest generation walks all of them, which cost ~20% of
    ``build_dataset`` at 30,000 people and more at 100,000. Nothing here makes reference cycles, so pausing the
    collector frees nothing later than reference counting does.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


@_without_gc
def build_dataset(
    out_dir: str | Path,
    n_people: int,
    augmentation: str = "single",
    seed: int = 0,
    pool_files: Mapping[str, str | Path] | None = None,
    pool_limits: Mapping[str, int] | None = None,
    name_pools: Mapping[str, int] | None = None,
    overwrite: bool = False,
    name: str | None = None,
    extra_vocab: Sequence[str] = (),
    groups: Sequence[PersonGroup] | None = None,
) -> BioDataset:
    """Generate people, biographies, QA, inverse prompts, split and tokenizer into ``out_dir``.

    All inputs are validated before anything is written; ``out_dir`` must be absent or empty unless ``overwrite``.
    ``extra_vocab``: further texts whose words join the tokenizer (e.g. ``probekit.data.distract.DISTRACT_VOCAB``);
    recorded in the manifest when given (the default leaves the files byte-identical to earlier versions).
    ``groups``: shares of the people rendered under their own augmentations instead of ``augmentation``
    (``probekit.data.bios.PersonGroup``; written to ``groups.json``), each split 50/50 like the whole.
    ``name_pools``: sizes of seeded subsets of the first/middle/last name pools (``{"first": 12, ...}``), so that
    people share names; recorded in the manifest with the mean number of people per name.
    """
    out = prepare_output_dir(out_dir, overwrite)
    aug = parse_augmentation(augmentation)
    from probekit.data.integrity import check_memory

    # a huge N is refused here, not by running out of memory (groups are checked on the way)
    check_memory(n_people, entries_per_person(augmentation, groups or ()))
    pools = load_pools(pool_files)
    if name_pools:
        check_name_space(n_people, name_pools, pools)
        pools = pools.with_name_pools(name_pools, seed)
    if pool_limits:
        pools = pools.limited(pool_limits, seed)
    people = generate_people(n_people, pools, seed)

    split = split_people([p.pid for p in people], seed)
    members = assign_groups(split, groups, seed) if groups else None
    if groups and members is not None:
        entries = render_grouped(people, pools, groups, members, seed)
    else:
        entries = render_entries(people, pools, aug, seed)
    qa = qa_items(people)
    inverse = [inverse_prompt(p) for p in people]
    tok = _tokenizer(pools, entries, qa, inverse, people, extra_vocab)
    value_lists = {a: pools.values(a) for a in ATTRIBUTES if a != "birth_date"}
    manifest = {
        "name": name or out.name,
        "generator": "bioS",
        "generator_version": GENERATOR_VERSION,
        "probekit_version": probekit.__version__,
        "seed": seed,
        "n_people": n_people,
        "augmentation": aug.name,
        "pool_checksums": pools.checksums,
        "pool_overrides": sorted(pool_files or {}),
        "pool_limits": dict(sorted((pool_limits or {}).items())),
        "pool_sizes": {a: len(v) for a, v in value_lists.items()},
        "counts": {"people": len(people), "entries": len(entries), "qa": len(qa), "inverse": len(inverse),
                   "train_people": len(split["train"]), "test_people": len(split["test"]),
                   "vocab_size": len(tok)},
    }  # fmt: skip
    if name_pools:  # only when set: datasets of the full pools keep their earlier bytes
        manifest["name_pools"] = dict(sorted(name_pools.items()))
        manifest["people_per_name"] = people_per_name([p.first for p in people], [p.middle for p in people],
                                                      [p.last for p in people])  # fmt: skip
    if extra_vocab:
        manifest["extra_vocab"] = list(extra_vocab)
    if groups and members is not None:
        manifest["augmentation"] = "groups"
        manifest["groups"] = [{"name": g.name, "augmentation": parse_augmentation(g.augmentation).name,
                               "fraction": g.fraction, "people": len(members[g.name])} for g in groups]  # fmt: skip
    with atomic_dir(out, overwrite=overwrite) as tmp:
        _write_rows(tmp, people, entries, qa, inverse)
        atomic_write_json(tmp / "split.json", split)
        atomic_write_json(tmp / "pools.json", value_lists)
        if members is not None:
            atomic_write_json(tmp / "groups.json", members)
        save_tokenizer(tok, tmp)
        atomic_write_json(tmp / "manifest.json", manifest)
        from probekit.provenance import append_session, record

        append_session(tmp, record(inputs={f"pool {k}": v for k, v in sorted((pool_files or {}).items())},
                                   seeds={"seed": seed}))  # fmt: skip
    # What load_dataset(out) returns, without re-reading the JSONL files just written from these very objects
    # (the small files are read back, so manifest, split and pools are exactly the stored ones; tested)
    from probekit.data.integrity import read_json

    lists = read_json(out / "pools.json")
    lists["birth_date"] = birth_dates()
    inverse_rows = [{"pid": p.pid, "attrs": list(ATTRIBUTES), "prompt": s, "answer": p.full_name}
                    for p, s in zip(people, inverse)]  # fmt: skip
    return BioDataset(
        root=out, manifest=read_json(out / "manifest.json"), people=people, entries=entries, qa=qa,
        inverse=inverse_rows, split=read_json(out / "split.json"), tokenizer=load_tokenizer(out),
        pools=PoolValues({a: lists[a] for a in ATTRIBUTES}), groups=_read_groups(out),
    )  # fmt: skip


def _read_groups(root: Path) -> dict[str, list[int]] | None:
    """``groups.json`` as ``{name: pids}`` (None for a dataset without groups)."""
    from probekit.data.integrity import read_json

    f = root / "groups.json"
    return {str(k): [int(p) for p in v] for k, v in read_json(f).items()} if f.exists() else None


def _write_rows(tmp: Path, people: list[Person], entries: list[Entry], qa: list[QAItem], inverse: list[str]) -> None:
    """people/bios/qa/inverse.jsonl, byte for byte what ``json.dumps(row, ensure_ascii=False)`` per row writes.

    The rows are formatted directly (strings through json's own C string encoder, repeated strings encoded
    once) instead of one ``json.dumps`` per row; ``tests/test_data_fast_build.py`` checks the bytes against
    ``atomic_write_jsonl``.
    """
    enc = _json_str_encoder()
    memo: dict[str, str] = {}

    def cached(value: str) -> str:
        out = memo.get(value)
        if out is None:
            out = memo[value] = enc(value)
        return out

    def attrs(d: Mapping[str, str]) -> str:
        return "{" + ", ".join(f"{cached(k)}: {enc(v)}" for k, v in d.items()) + "}"

    span_text: dict[int, str] = {}  # by id(): render_entries shares equal Span objects, alive all along

    def span(sp: Span) -> str:
        out = span_text.get(id(sp))
        if out is None:
            out = span_text[id(sp)] = f"[{cached(sp.kind)}, {sp.start}, {sp.end}]"
        return out

    order_text: dict[tuple[str, ...], str] = {}

    def order(o: tuple[str, ...]) -> str:
        out = order_text.get(o)
        if out is None:
            out = order_text[o] = "[" + ", ".join(cached(a) for a in o) + "]"
        return out

    atomic_write_text(tmp / "people.jsonl", "".join(
        f'{{"pid": {p.pid}, "first": {cached(p.first)}, "middle": {cached(p.middle)}, "last": {cached(p.last)}, '
        f'"gender": {cached(p.gender)}, "attrs": {attrs(p.attrs)}}}\n' for p in people))  # fmt: skip
    atomic_write_text(tmp / "bios.jsonl", "".join(
        f'{{"pid": {e.pid}, "idx": {e.idx}, "text": {enc(e.text)}, '
        f'"order": {order(e.order)}, "spans": [{", ".join(map(span, e.spans))}]}}\n'
        for e in entries))  # fmt: skip
    atomic_write_text(tmp / "qa.jsonl", "".join(
        f'{{"pid": {q.pid}, "attr": {cached(q.attr)}, "prompt": {enc(q.prompt)}, "answer": {cached(q.answer)}}}\n'
        for q in qa))  # fmt: skip
    attr_list = "[" + ", ".join(cached(a) for a in ATTRIBUTES) + "]"
    atomic_write_text(tmp / "inverse.jsonl", "".join(
        f'{{"pid": {p.pid}, "attrs": {attr_list}, "prompt": {enc(s)}, "answer": {enc(p.full_name)}}}\n'
        for p, s in zip(people, inverse)))  # fmt: skip


def _json_str_encoder() -> Any:
    """json's encoder of one string for ``ensure_ascii=False`` (the C one when available)."""
    import json.encoder

    return json.encoder.c_encode_basestring or json.encoder.py_encode_basestring  # type: ignore[attr-defined]


def _read_rows(path: Path) -> list[Any]:
    """``read_jsonl(path)``, parsed with orjson when it is installed (faster than json); any problem with the
    file is left to ``read_jsonl``, whose errors name the line."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency, but the reader works without it
        return read_jsonl(path)
    try:
        return [orjson.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]
    except orjson.JSONDecodeError:
        return read_jsonl(path)


def _span_maker() -> Any:
    """``Span(*s)`` for a stored ``[kind, start, end]``, sharing one (frozen) Span per distinct triple instead of
    building 3.5 million frozen dataclasses at 100,000 people; the same errors for a malformed triple."""
    cache: dict[tuple[Any, ...], Span] = {}

    def make(s: Any) -> Span:
        key = tuple(s)
        span = cache.get(key)
        if span is None:
            span = cache[key] = Span(*key)
        return span

    return make


REQUIRED_FILES = ("manifest.json", "people.jsonl", "bios.jsonl", "qa.jsonl", "split.json", "pools.json",
                  "tokenizer.json")  # fmt: skip


@_without_gc
def load_dataset(path: str | Path) -> BioDataset:
    """Load a dataset directory written by ``build_dataset``."""
    root = Path(path)
    if not root.is_dir():
        raise UserFileNotFoundError(f"dataset directory {root} does not exist; create it with `probekit data bios`")
    missing = [f for f in REQUIRED_FILES if not (root / f).exists()]
    if missing:
        raise UserFileNotFoundError(f"{root} is not a complete probekit dataset (missing {', '.join(missing)})")
    from probekit.data.integrity import check_dataset, read_json, rows_of

    manifest = read_json(root / "manifest.json")
    people = rows_of(root / "people.jsonl", _read_rows(root / "people.jsonl"),
                     lambda r: Person(r["pid"], r["first"], r["middle"], r["last"], r["gender"],
                                      r["attrs"]))  # fmt: skip
    bios = _read_rows(root / "bios.jsonl")
    if any("spans" not in r for r in bios):
        raise UserError(f"{root / 'bios.jsonl'}: entries have no character spans; regenerate the dataset")
    spans = _span_maker()
    entries = rows_of(root / "bios.jsonl", bios, lambda r: Entry(r["pid"], r["idx"], r["text"], tuple(r["order"]),
                                                                [spans(s) for s in r["spans"]]))  # fmt: skip
    qa = rows_of(root / "qa.jsonl", _read_rows(root / "qa.jsonl"),
                 lambda r: QAItem(r["pid"], r["attr"], r["prompt"], r["answer"]))  # fmt: skip
    inverse = _read_rows(root / "inverse.jsonl") if (root / "inverse.jsonl").exists() else []
    lists = read_json(root / "pools.json")
    split = read_json(root / "split.json")
    check_dataset(root, people, entries, qa, split, lists)
    lists["birth_date"] = birth_dates()
    tokenizer = load_tokenizer(root)
    _check_tokenizer(root, manifest, tokenizer, entries)
    return BioDataset(
        root=root, manifest=manifest, people=people, entries=entries, qa=qa, inverse=inverse,
        split=split, tokenizer=tokenizer, pools=PoolValues({a: lists[a] for a in ATTRIBUTES}),
        groups=_read_groups(root),
    )  # fmt: skip


def _check_tokenizer(root: Path, manifest: dict[str, Any], tokenizer: Any, entries: list[Entry]) -> None:
    """The tokenizer must be the dataset's own: its size as the manifest records it, and every word of the
    first biographies known (a word-level tokenizer built from the dataset never maps its words to ``<unk>``)."""
    want = (manifest.get("counts") or {}).get("vocab_size")
    fix = "restore the dataset's own tokenizer.json (or rebuild the dataset with `probekit data bios`)"
    if isinstance(want, int) and want != len(tokenizer):
        raise UserError(f"{root / 'tokenizer.json'} has {len(tokenizer)} tokens but {root / 'manifest.json'} records "
                        f"{want}: the tokenizer belongs to another dataset; {fix}")  # fmt: skip
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    sample = " ".join(e.text for e in entries[:20])
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    if ids and unk in ids:
        n = sum(i == unk for i in ids)
        raise UserError(f"{root / 'tokenizer.json'} does not know {n} of {len(ids)} tokens of the first biographies "
                        f"(they become <unk>): the tokenizer belongs to another dataset; {fix}")  # fmt: skip


__all__ = ["POOL_FILES", "BioDataset", "PoolValues", "build_dataset", "load_dataset"]
