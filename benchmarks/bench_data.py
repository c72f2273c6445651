"""Time bioS at the paper's scale: N=100,000 people, multi5+permute, end to end, against the previous code.

Usage: python benchmarks/bench_data.py [--n 100000] [--augmentation multi5+permute] [--repeats 1] [--quick]

Prints the in-memory generation time (people, 500k entries, 600k QA pairs, inverse prompts, split), then, for
each later stage of ``build_dataset``, the current implementation against the previous one on the same data,
measured side by side in this run (alternating, ``--repeats`` times each, medians):

* entries: ``render_entries`` (templates unpacked once, spans shared) vs the previous loop of one ``_render``
  call per sentence; the entries must be equal;
* tokenizer: word counts of distinct text pieces (``store._tokenizer``) vs training on every text
  (``build_tokenizer(_texts_for_tokenizer(...))``); the two tokenizers must be identical;
* writing the four JSONL files: direct row formatting (``store._write_rows``) vs ``json.dumps`` per row
  (``atomic_write_jsonl``); the bytes must be identical;
* reading the dataset back (``load_dataset``; a training run does this): shared Span objects vs one Span per
  stored span.

``build_dataset`` itself no longer re-reads the JSONL files it has just written (it returns the objects it wrote),
so the previous end-to-end time is generation + old tokenizer + old writing + old reload, the current one is
``build_dataset`` timed as a whole (target < 45 s), with ``load_dataset`` beside it. ``--quick`` skips the old
implementations (they take minutes at N=100,000). Times are CPU seconds of this process by default
(``--clock cpu``): on cores shared with other jobs, wall time mostly measures waiting for a core.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probekit.data import store
from probekit.data.bios import PRONOUNS, Entry, Span, _render, generate_people, parse_augmentation, render_entries
from probekit.data.pools import ATTRIBUTES, load_pools
from probekit.data.qa import inverse_prompt, qa_items, split_people
from probekit.data.tokenizer import build_tokenizer
from probekit.io import atomic_write_jsonl


def _old_write(tmp: Path, people: list[Any], entries: list[Any], qa: list[Any], inverse: list[str]) -> None:
    """The previous build_dataset's JSONL writing (json.dumps per row)."""
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


def _old_render(people: list[Any], pools: Any, augmentation: Any, seed: int) -> list[Entry]:
    """The previous render_entries: one _render call per sentence."""
    import random

    rng = random.Random(seed + 1_000_003)
    entries: list[Entry] = []
    for person in people:
        name = person.full_name
        as_name = {"Subj": name, "subj": name, "Poss": f"{name}'s", "poss": f"{name}'s", "obj": name, "_name": name}
        pronoun = PRONOUNS[person.gender]
        for idx in range(augmentation.multi):
            order = list(ATTRIBUTES)
            if augmentation.permute:
                rng.shuffle(order)
            spans: list[Span] = []
            sentences: list[str] = []
            offset = 0
            for k, attr in enumerate(order):
                subject = as_name if (k == 0 or augmentation.fullname) else pronoun
                tpl = rng.choice(pools.templates[attr])
                s = _render(tpl, person.attrs[attr], subject, attr, offset, spans)
                sentences.append(s)
                offset += len(s) + 1
            entries.append(Entry(person.pid, idx, " ".join(sentences), tuple(order), spans))
    return entries


def _old_load(path: Path) -> Any:
    """load_dataset with one Span object per stored span (the previous reader)."""
    saved = store._span_maker
    store._span_maker = lambda: (lambda s: Span(*s))  # type: ignore[assignment]
    try:
        return store.load_dataset(path)
    finally:
        store._span_maker = saved  # type: ignore[assignment]


CLOCK: Callable[[], float] = time.process_time


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = CLOCK()
    out = fn()
    return CLOCK() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--augmentation", default="multi5+permute")
    ap.add_argument("--repeats", type=int, default=1, help="timings per implementation and stage (medians)")
    ap.add_argument("--quick", action="store_true", help="only the current code (no side-by-side comparison)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: CPU seconds of this process (not inflated by other jobs on the same cores), wall: "
                         "elapsed time")  # fmt: skip
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"clock: {args.clock}")

    t0 = CLOCK()
    pools = load_pools()
    people = generate_people(args.n, pools, seed=0)
    t1 = CLOCK()
    entries = render_entries(people, pools, parse_augmentation(args.augmentation), seed=0)
    t2 = CLOCK()
    qa = qa_items(people)
    inv = [inverse_prompt(p) for p in people]
    split_people([p.pid for p in people], seed=0)
    t3 = CLOCK()
    gen = t3 - t0
    print(f"N={args.n:,} {args.augmentation}: {len(entries):,} entries, {len(qa):,} QA, {len(inv):,} inverse prompts")
    print(f"  generation {gen:.2f} s (people {t1 - t0:.2f}, entries {t2 - t1:.2f}, QA + inverse {t3 - t2:.2f})")

    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    data = (people, entries, qa, inv)
    times: dict[str, list[float]] = {}
    new_tok = old_tok = None
    for r in range(args.repeats):
        stages: list[tuple[str, Callable[[], Any]]] = [
            ("tokenizer new", lambda: store._tokenizer(pools, entries, qa, inv, people)),
            ("write new", lambda: _write(work / f"new{r}", store._write_rows, data)),
        ]
        if not args.quick:
            stages += [
                ("tokenizer old", lambda: build_tokenizer(store._texts_for_tokenizer(pools, entries, qa, inv, people))),
                ("write old", lambda: _write(work / f"old{r}", _old_write, data)),
            ]
        if r % 2:
            stages.reverse()
        for name, fn in stages:
            dt, out = _timed(fn)
            times.setdefault(name, []).append(dt)
            if name == "tokenizer new":
                new_tok = out
            elif name == "tokenizer old":
                old_tok = out
    if not args.quick:
        aug = parse_augmentation(args.augmentation)
        for r in range(args.repeats):
            pair = [("entries new", lambda: render_entries(people, pools, aug, seed=0)),
                    ("entries old", lambda: _old_render(people, pools, aug, seed=0))]  # fmt: skip
            for name, fn in pair if r % 2 == 0 else pair[::-1]:
                dt, out = _timed(fn)
                times.setdefault(name, []).append(dt)
                assert out == entries, "render_entries differs from the previous implementation"
                del out
    if old_tok is not None:
        assert new_tok.backend_tokenizer.to_str() == old_tok.backend_tokenizer.to_str(), "tokenizers differ"  # type: ignore[union-attr]
        for f in ("people.jsonl", "bios.jsonl", "qa.jsonl", "inverse.jsonl"):
            assert (work / "new0" / f).read_bytes() == (work / "old0" / f).read_bytes(), f"{f} differs"
        print("  tokenizer and JSONL files identical between the implementations")

    # free this run's copies before timing build_dataset, so that it runs with the memory a fresh process has
    for rows in (people, entries, qa, inv):
        rows.clear()
    new_tok = old_tok = None
    shutil.rmtree(work)
    gc.collect()
    with tempfile.TemporaryDirectory() as d:
        build, _ = _timed(lambda: store.build_dataset(Path(d) / "ds", n_people=args.n,
                                                      augmentation=args.augmentation, seed=0))  # fmt: skip
        size = sum(f.stat().st_size for f in (Path(d) / "ds").iterdir()) / 2**20
        loads = [("load new", lambda: store.load_dataset(Path(d) / "ds"))]
        if not args.quick:
            loads.append(("load old", lambda: _old_load(Path(d) / "ds")))
        for r in range(args.repeats):
            for name, fn in loads if r % 2 == 0 else loads[::-1]:
                times.setdefault(name, []).append(_timed(fn)[0])

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'stage':<12}{'current s':>12}{'previous s':>12}{'speed-up':>10}")
    for stage in ("entries", "tokenizer", "write", "load"):
        if f"{stage} new" not in med:
            continue
        new, old = med[f"{stage} new"], med.get(f"{stage} old")
        print(f"{stage:<12}{new:>12.2f}" + (f"{old:>12.2f}{old / new:>9.1f}x" if old else ""))
    print(f"\nbuild_dataset (generate + tokenizer + write, returns the written objects): {build:.2f} s, "
          f"{size:.0f} MiB on disk  (target < 45 s: {'met' if build < 45 else 'MISSED'})")
    print(f"load_dataset of that directory: {med['load new']:.2f} s")
    if "load old" in med:
        old_gen = gen - (t2 - t1) + med["entries old"]
        old_total = old_gen + med["tokenizer old"] + med["write old"] + med["load old"]
        print(f"previous build_dataset (old generation + old tokenizer + old writing + reload, each timed in this "
              f"run): {old_total:.2f} s -> {old_total / build:.1f}x")


def _write(tmp: Path, writer: Callable[..., None], data: tuple[Any, ...]) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    writer(tmp, *data)


if __name__ == "__main__":
    main()
