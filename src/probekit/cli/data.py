"""``probekit data``: generate datasets (bioS biographies with QA, split and tokenizer) and inspect them."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from probekit.data.pools import LIMITABLE, NAME_PARTS, POOL_FILES
from probekit.errors import UserError, UserFileNotFoundError

HELP = "generate and inspect datasets"
COMMANDS = {"data": HELP}


def _pool_files(pools_dir: str | None, files: dict[str, str]) -> dict[str, str]:
    """The pool files of ``--pools-dir`` (those it holds), overridden by ``--pool NAME=FILE``."""
    out: dict[str, str] = {}
    if pools_dir:
        root = Path(pools_dir)
        if not root.is_dir():
            raise UserFileNotFoundError(f"--pools-dir {root} is not a directory")
        out.update({name: str(root / rel) for name, rel in POOL_FILES.items() if (root / rel).exists()})
        if not out:
            raise UserError(f"--pools-dir {root} holds none of the pool files ({', '.join(POOL_FILES.values())})")
    out.update(files)
    return out


def _distract_vocab(on: bool) -> tuple[str, ...]:
    from probekit.data.distract import DISTRACT_VOCAB

    return DISTRACT_VOCAB if on else ()


def cmd_bios(args: argparse.Namespace) -> int:
    from probekit.cli.flags import merge
    from probekit.data.config import BiosConfig
    from probekit.data.store import build_dataset
    from probekit.errors import check_seed
    from probekit.io import check_output, output_lock
    from probekit.serde import from_dict, load_mapping

    base = load_mapping(args.config, "--config") if args.config else {}
    cfg = from_dict(BiosConfig, merge(base, args.bios_flags.given(args)))
    check_seed(cfg.seed, "--seed")
    pools = _pool_files(args.pools_dir, cfg.pool_files)
    check_output(args.out, {"--config": args.config, "--pools-dir": args.pools_dir, "--pool": list(pools.values())})
    t0 = time.perf_counter()
    with output_lock(args.out):
        ds = build_dataset(
            args.out, n_people=cfg.n_people, augmentation=cfg.augmentation, seed=cfg.seed, pool_files=pools,
            pool_limits=cfg.pool_limits, name_pools=cfg.name_pools, overwrite=args.overwrite,
            extra_vocab=_distract_vocab(cfg.distract_vocab),
        )  # fmt: skip
    c = ds.manifest["counts"]
    print(f"wrote {ds.root}  ({time.perf_counter() - t0:.1f}s)")
    print(f"  augmentation {ds.manifest['augmentation']}, seed {cfg.seed}")
    print(f"  {c['people']} people ({c['train_people']} P_train / {c['test_people']} P_test), {c['entries']} entries, "
          f"{c['qa']} QA pairs, vocabulary {c['vocab_size']} tokens")  # fmt: skip
    print(f"  {_sharing(ds.people)}")
    print(f"  example: {ds.entries[0].text[:160]}...")
    return 0


def _sharing(people: list) -> str:
    """One line: mean people per first, middle and last name (how much a single name token identifies)."""
    from probekit.data.pools import people_per_name

    ppn = people_per_name([p.first for p in people], [p.middle for p in people], [p.last for p in people])
    line = "people per name: " + ", ".join(f"{k} {v:.2f}" for k, v in ppn.items())
    counts = Counter(p.last for p in people)
    alone = sum(1 for p in people if counts[p.last] == 1)
    if alone * 2 > len(people):  # the unique-name shortcut: a single token identifies most people
        line += (
            f"\n  note: {alone} of {len(people)} people have a last name of their own, so one name token "
            "identifies them and a model can keep their facts in its embedding; give --name-pool first=12 "
            "--name-pool middle=12 --name-pool last=12 (or other sizes) to share names as in the paper"
        )
    return line


def cmd_show(args: argparse.Namespace) -> int:
    from probekit.data.store import load_dataset

    ds = load_dataset(args.dir)
    print(json.dumps({k: ds.manifest[k] for k in ("augmentation", "seed", "n_people", "counts", "pool_sizes")},
                     indent=2))  # fmt: skip
    print(_sharing(ds.people))
    for e in ds.entries[: args.n]:
        print(f"\n[person {e.pid}, entry {e.idx}] {e.text}")
        for s in e.spans:
            print(f"   {s.kind:>13} [{s.start:>4},{s.end:>4}) {e.text[s.start : s.end]!r}")
    q = ds.qa[0]
    print(f"\nQA: {q.prompt} {q.answer}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help=HELP, description=__doc__)
    dsub = p.add_subparsers(dest="data_command", metavar="<kind>", required=True)

    b = dsub.add_parser(
        "bios",
        help="bioS biographies + QA + P_train/P_test split + tokenizer",
        description=(
            "Generate N synthetic people and their biographies (Allen-Zhu & Li's bioS) into a dataset directory: "
            "people, biography entries with character spans, six QA pairs per person, inverse-search prompts, a "
            "seeded 50/50 P_train/P_test split and a word-level tokenizer. The same arguments give "
            "byte-identical files."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from probekit.cli.flags import add_flags
    from probekit.data.config import BiosConfig

    b.add_argument("--out", required=True, help="output dataset directory (must be absent or empty)")
    b.add_argument("--config", help="YAML/JSON BiosConfig (the settings below; flags given override it)")
    b.add_argument("--pools-dir", help="a directory laid out like the built-in pools; files found replace them "
                   "(--pool overrides single files)")  # fmt: skip
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    group = b.add_argument_group(
        "dataset settings", f"BiosConfig fields. Attributes with pools to limit: {', '.join(LIMITABLE)}; name parts: "
        f"{', '.join(NAME_PARTS)} (e.g. --name-pool first=12 --name-pool middle=12 --name-pool last=12 shares names as "
        f"among the paper's 100,000 people); pools to replace: {', '.join(POOL_FILES)}",
    )  # fmt: skip
    flags = add_flags(group, BiosConfig, names={"n_people": ("--n", "--n-people"), "pool_limits": "--pool-limit",
                                                "name_pools": "--name-pool", "pool_files": "--pool"})  # fmt: skip
    b.set_defaults(func=cmd_bios, bios_flags=flags)

    s = dsub.add_parser("show", help="print a dataset's manifest and a few entries with their spans")
    s.add_argument("dir")
    s.add_argument("--n", type=int, default=2, help="entries to print")
    s.set_defaults(func=cmd_show)

    _register_reversal(dsub)


def _register_reversal(sub: argparse._SubParsersAction) -> None:
    """Add ``probekit data reversal``."""
    from probekit.data.reversal import ReversalConfig

    p = sub.add_parser(
        "reversal",
        help="reversal-curse data: fictitious people in the public JSONL format + tokenizer",
        description=(
            "Generate fictitious people with invented names and unique descriptions in three groups "
            "(NameToDescription only, DescriptionToName only, Both), paraphrase every fact with training templates "
            "and held-out test templates, and write the public reversal-curse files (p2d_prompts_train.jsonl, "
            "d2p_reverse_prompts_test.jsonl, ...), people.jsonl, manifest.json and a word-level tokenizer."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from probekit.cli.flags import add_flags

    p.add_argument("--out", required=True, help="output directory (must be absent or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    flags = add_flags(p, ReversalConfig, names={"n_train_templates": "--train-templates",
                                                "n_test_templates": "--test-templates"})  # fmt: skip
    p.set_defaults(func=_cmd_reversal, reversal_flags=flags)


def _cmd_reversal(args: argparse.Namespace) -> int:
    import re

    from probekit.data.reversal import ReversalConfig, make_reversal_dataset
    from probekit.errors import UserError
    from probekit.serde import from_dict

    try:
        cfg = from_dict(ReversalConfig, args.reversal_flags.given(args))
    except UserError as e:  # name the command-line flags, not the config fields behind them
        msg = str(e)
        for name, flag in args.reversal_flags.options().items():
            msg = re.sub(rf"\b{name}\b", flag, msg)
        raise UserError(msg) from None

    from probekit.io import check_output, output_lock

    check_output(args.out, {})
    with output_lock(args.out):
        data = make_reversal_dataset(args.out, cfg, overwrite=args.overwrite)
    m = data.manifest
    print(f"wrote {data.root}")
    print(f"  {sum(m['groups'].values())} people ({', '.join(f'{g} {n}' for g, n in m['groups'].items())}), "
          f"vocabulary {m['vocab_size']} tokens")  # fmt: skip
    for stem, n in m["files"].items():
        print(f"  {stem}.jsonl: {n} rows")
    ex = data.files["p2d_prompts_train"][0]
    print(f"  example: {ex.prompt!r} -> {ex.completion!r}")
    return 0
