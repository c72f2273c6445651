"""Time bioS generation at the paper's scale: N=100,000 people, multi5+permute, plus QA data.

Usage: python benchmarks/bench_data.py [--n 100000] [--augmentation multi5+permute] [--write]

Prints the in-memory generation time (people, 500k entries, 600k QA pairs, inverse prompts, split) against the
30 s target, and with --write the full `build_dataset` time (tokenizer training and JSONL writing included).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from probekit.data.bios import generate_people, parse_augmentation, render_entries
from probekit.data.pools import load_pools
from probekit.data.qa import inverse_prompt, qa_items, split_people
from probekit.data.store import build_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--augmentation", default="multi5+permute")
    ap.add_argument("--write", action="store_true", help="also time build_dataset (tokenizer + files)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    pools = load_pools()
    people = generate_people(args.n, pools, seed=0)
    t1 = time.perf_counter()
    entries = render_entries(people, pools, parse_augmentation(args.augmentation), seed=0)
    t2 = time.perf_counter()
    qa = qa_items(people)
    inv = [inverse_prompt(p) for p in people]
    split_people([p.pid for p in people], seed=0)
    t3 = time.perf_counter()
    total = t3 - t0
    print(f"N={args.n:,} {args.augmentation}: {len(entries):,} entries, {len(qa):,} QA, {len(inv):,} inverse prompts")
    print(f"  people     {t1 - t0:6.2f} s")
    print(f"  entries    {t2 - t1:6.2f} s")
    print(f"  QA+inverse {t3 - t2:6.2f} s")
    print(f"  generation total {total:.2f} s  (target < 30 s: {'met' if total < 30 else 'MISSED'}; ratio {total / 30:.2f})")
    if args.write:
        with tempfile.TemporaryDirectory() as d:
            t4 = time.perf_counter()
            build_dataset(Path(d) / "ds", n_people=args.n, augmentation=args.augmentation, seed=0)
            t5 = time.perf_counter()
            size = sum(f.stat().st_size for f in (Path(d) / "ds").iterdir()) / 2**20
            print(f"  build_dataset (generate + tokenizer + write + reload) {t5 - t4:.2f} s, {size:.0f} MiB on disk")


if __name__ == "__main__":
    main()
