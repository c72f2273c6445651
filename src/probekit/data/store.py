"""Dataset directories: build, write atomically, load.

A bioS dataset directory holds::

    manifest.json      generator version, seed, N, augmentation, pool checksums and limits, counts
    people.jsonl       one person a line: pid, names, gender, attrs
    bios.jsonl         one biography entry a line: pid, idx, text, order, spans [[kind, start, end], ...]
    qa.jsonl           six questions per person: pid, attr, prompt, answer
    inverse.jsonl      one attributes -> name prompt per person (all six attributes)
    split.json         {"train": [pids], "test": [pids]}: P_train / P_test
    pools.json         the attribute value lists used (classes of whole-value probes)
    tokenizer.json     the word-level tokenizer (+ tokenizer_config.json, special_tokens_map.json)

The directory is built under a temporary name and renamed into place, so a crash never leaves a half-written
dataset; the same arguments give byte-identical files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

import probekit
from probekit.data.bios import Entry, Person, Span, generate_people, parse_augmentation, render_entries
from probekit.data.pools import ATTRIBUTES, POOL_FILES, Pools, birth_dates, load_pools
from probekit.data.qa import QAItem, inverse_prompt, qa_items, split_people
from probekit.data.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
from probekit.io import atomic_dir, atomic_write_json, atomic_write_jsonl, prepare_output_dir, read_jsonl

GENERATOR_VERSION = 1


@dataclass
class PoolValues:
    """The value list of every attribute, as stored with a dataset (``values(attr)`` = whole-value classes)."""

    lists: dict[str, list[str]]

    def values(self, attr: str) -> list[str]:
        if attr not in self.lists:
            raise ValueError(f"unknown attribute {attr!r}; valid: {', '.join(ATTRIBUTES)}")
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
    _by_pid: dict[int, Person] = field(default_factory=dict, repr=False)

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


def build_dataset(
    out_dir: str | Path,
    n_people: int,
    augmentation: str = "single",
    seed: int = 0,
    pool_files: Mapping[str, str | Path] | None = None,
    pool_limits: Mapping[str, int] | None = None,
    overwrite: bool = False,
    name: str | None = None,
    extra_vocab: Sequence[str] = (),
) -> BioDataset:
    """Generate people, biographies, QA, inverse prompts, split and tokenizer into ``out_dir``.

    All inputs are validated before anything is written; ``out_dir`` must be absent or empty unless ``overwrite``.
    ``extra_vocab``: further texts whose words join the tokenizer (e.g. ``probekit.data.distract.DISTRACT_VOCAB``);
    recorded in the manifest when given (the default leaves the files byte-identical to earlier versions).
    """
    out = prepare_output_dir(out_dir, overwrite)
    aug = parse_augmentation(augmentation)
    from probekit.data.integrity import check_memory

    check_memory(n_people, aug.multi)  # a huge N is refused here, not by running out of memory
    pools = load_pools(pool_files)
    if pool_limits:
        pools = pools.limited(pool_limits, seed)
    people = generate_people(n_people, pools, seed)

    entries = render_entries(people, pools, aug, seed)
    qa = qa_items(people)
    inverse = [inverse_prompt(p) for p in people]
    split = split_people([p.pid for p in people], seed)
    tok = build_tokenizer(_texts_for_tokenizer(pools, entries, qa, inverse, people, extra_vocab))
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
                   "vocab_size": len(tok)},  # fmt: skip
    }
    if extra_vocab:
        manifest["extra_vocab"] = list(extra_vocab)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        atomic_write_jsonl(tmp / "people.jsonl", (
            {"pid": p.pid, "first": p.first, "middle": p.middle, "last": p.last, "gender": p.gender,
             "attrs": p.attrs} for p in people))  # fmt: skip
        atomic_write_jsonl(tmp / "bios.jsonl", (
            {"pid": e.pid, "idx": e.idx, "text": e.text, "order": list(e.order),
             "spans": [[s.kind, s.start, s.end] for s in e.spans]} for e in entries))  # fmt: skip
        atomic_write_jsonl(tmp / "qa.jsonl", ({"pid": q.pid, "attr": q.attr, "prompt": q.prompt,
                                               "answer": q.answer} for q in qa))  # fmt: skip
        atomic_write_jsonl(tmp / "inverse.jsonl", ({"pid": p.pid, "attrs": list(ATTRIBUTES), "prompt": s,
                                                    "answer": p.full_name} for p, s in zip(people, inverse)))  # fmt: skip
        atomic_write_json(tmp / "split.json", split)
        atomic_write_json(tmp / "pools.json", value_lists)
        save_tokenizer(tok, tmp)
        atomic_write_json(tmp / "manifest.json", manifest)
        from probekit.provenance import append_session, record

        append_session(tmp, record(inputs={f"pool {k}": v for k, v in sorted((pool_files or {}).items())},
                                   seeds={"seed": seed}))  # fmt: skip
    return load_dataset(out)


REQUIRED_FILES = ("manifest.json", "people.jsonl", "bios.jsonl", "qa.jsonl", "split.json", "pools.json",
                  "tokenizer.json")  # fmt: skip


def load_dataset(path: str | Path) -> BioDataset:
    """Load a dataset directory written by ``build_dataset``."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist; create it with `probekit data bios`")
    missing = [f for f in REQUIRED_FILES if not (root / f).exists()]
    if missing:
        raise FileNotFoundError(f"{root} is not a complete probekit dataset (missing {', '.join(missing)})")
    from probekit.data.integrity import check_dataset, read_json, rows_of

    manifest = read_json(root / "manifest.json")
    people = rows_of(root / "people.jsonl", read_jsonl(root / "people.jsonl"),
                     lambda r: Person(r["pid"], r["first"], r["middle"], r["last"], r["gender"],
                                      r["attrs"]))  # fmt: skip
    bios = read_jsonl(root / "bios.jsonl")
    if any("spans" not in r for r in bios):
        raise ValueError(f"{root / 'bios.jsonl'}: entries have no character spans; regenerate the dataset")
    entries = rows_of(root / "bios.jsonl", bios, lambda r: Entry(r["pid"], r["idx"], r["text"], tuple(r["order"]),
                                                                [Span(*s) for s in r["spans"]]))  # fmt: skip
    qa = rows_of(root / "qa.jsonl", read_jsonl(root / "qa.jsonl"),
                 lambda r: QAItem(r["pid"], r["attr"], r["prompt"], r["answer"]))  # fmt: skip
    inverse = read_jsonl(root / "inverse.jsonl") if (root / "inverse.jsonl").exists() else []
    lists = read_json(root / "pools.json")
    split = read_json(root / "split.json")
    check_dataset(root, people, entries, qa, split, lists)
    lists["birth_date"] = birth_dates()
    return BioDataset(
        root=root, manifest=manifest, people=people, entries=entries, qa=qa, inverse=inverse,
        split=split, tokenizer=load_tokenizer(root), pools=PoolValues({a: lists[a] for a in ATTRIBUTES}),
    )  # fmt: skip


__all__ = ["BioDataset", "PoolValues", "build_dataset", "load_dataset", "POOL_FILES"]
