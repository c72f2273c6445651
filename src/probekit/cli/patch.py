"""``probekit patch``: activation patching maps (layer x position) on QA prompts or biography prefixes."""

from __future__ import annotations

import argparse
import time

from probekit.errors import UserError

EXAMPLES = """examples:
  probekit patch --model evals/qa_ntp/finetune --data data/multi5_permute --out patch/qa_ntp
  probekit patch --model runs/ntp --data data/multi5_permute --out patch/bio --prompts bio --mode patch,restore
  probekit patch --model hf/llama_dir --data data/single --out patch/hf --hooks resid,attn_out,mlp_out \\
      --attributes birth_city,company --whole-answer
"""


def _list(text: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(v) for v in _list(text))
    except ValueError:
        raise UserError(f"{flag} {text!r}: give whole numbers separated by commas, e.g. 0,2,4") from None


def _config(args: argparse.Namespace):
    from probekit.data.pools import ATTRIBUTES
    from probekit.patching import PatchConfig

    attrs = ATTRIBUTES if args.attributes in (None, "all") else _list(args.attributes)
    return PatchConfig(
        attributes=attrs, prompts=args.prompts, modes=_list(args.mode), corruption=args.corruption,
        noise_scale=args.noise_scale, hooks=_list(args.hooks), layers=_ints(args.layers, "--layers"),
        split=args.split, n_pairs=args.pairs, whole_answer=args.whole_answer, require_correct=not args.all_pairs,
        n_boot=args.bootstrap, batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip


def cmd_patch(args: argparse.Namespace) -> int:
    from probekit.activations import hook_points, model_dims
    from probekit.config import to_dict
    from probekit.data.store import load_dataset
    from probekit.errors import check_device
    from probekit.evaluate.figures import write_table
    from probekit.io import atomic_dir, atomic_write_json, atomic_write_jsonl, prepare_output_dir
    from probekit.patching import MAX_TARGET_TRIES, patch_figures, run_patching
    from probekit.plots import write_figures
    from probekit.probes.runner import check_compatible, load_probe_model

    t0 = time.perf_counter()
    check_device(args.device)
    cfg = _config(args)
    out = prepare_output_dir(args.out, args.overwrite)
    ds = load_dataset(args.data)
    pm = load_probe_model(args.model, device=args.device, name=args.name)
    if pm.kind == "probekit":
        check_compatible(pm, ds)
    hook_points(model_dims(pm.model).n_layers, cfg.hooks, cfg.layers)  # bad hooks/layers fail before any work
    print(f"patching {pm.name} ({pm.kind}, objective {pm.objective}) on {cfg.prompts} prompts of dataset {ds.name}: "
          f"modes {list(cfg.modes)}, hooks {list(cfg.hooks)}, up to {cfg.n_pairs} pairs per attribute "
          f"({cfg.split} people)")  # fmt: skip
    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        res = run_patching(pm, ds, cfg, progress=True)
        write_table(res.table, tmp, "results")
        atomic_write_jsonl(tmp / "pairs.jsonl", res.pairs)
        report = write_figures(patch_figures(res.table), tmp / "figures", png=not args.no_png)
        atomic_write_json(tmp / "run.json", {
            "config": to_dict(cfg), "model": str(args.model), "model_name": pm.name, "kind": pm.kind,
            "data": str(args.data), "counts": res.counts, "noise_std": res.noise_std,
            "seconds": round(time.perf_counter() - t0, 1), "png_error": report.png_error,
        })  # fmt: skip
    for c in res.counts:
        print(f"  {c['attribute']:<13} {c['mode']:<8} {c['used']:>4} pairs (of {c['candidates']} sources: "
              f"{c['source_wrong']} answered wrong, {c['no_target']} found no target answering right in "
              f"{MAX_TARGET_TRIES} tries; {c['misaligned']} misaligned pairs)")  # fmt: skip
    n_fig = len({p.stem for p in report.files})
    print(f"wrote {out / 'results.parquet'}, {out / 'results.csv'} ({len(res.table)} rows), pairs.jsonl and "
          f"{n_fig} figures in {out / 'figures'} ({time.perf_counter() - t0:.0f}s)")  # fmt: skip
    if report.png_error:
        print(f"warning: {report.png_error}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from probekit.patching import CORRUPTIONS, PROMPTS, SPLITS

    p = subparsers.add_parser(
        "patch",
        help="activation patching: which layer x position states carry the answer",
        description=(
            "For pairs of people and one prompt template, copy the clean run's residual stream (or attention / MLP "
            "output) at one (layer, position) into the corrupted run and measure the clean answer: patch = the "
            "source person's state into the target person's run (probability of the source's answer, greedy flip "
            "rate); restore = a clean state into a run whose name is noised (or swapped). Writes "
            "results.parquet/.csv (means over pairs, person-clustered bootstrap intervals), pairs.jsonl and a "
            "position x layer heatmap per attribute in figures/."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="probekit checkpoint or run directory, or a Hugging Face causal-LM directory")  # fmt: skip
    p.add_argument("--data", required=True, help="dataset directory (from `probekit data bios`)")
    p.add_argument("--out", required=True, help="output directory (must be new or empty unless --overwrite)")
    p.add_argument("--attributes", default="all", help="comma-separated attributes, or 'all'")
    p.add_argument("--prompts", choices=PROMPTS, default="qa",
                   help="qa: the QA questions; bio: first-sentence biography prefixes (default: qa)")  # fmt: skip
    p.add_argument("--mode", default="patch", help="patch, restore, or both comma-separated (default: patch)")
    p.add_argument("--corruption", choices=CORRUPTIONS, default="noise",
                   help="restore mode: Gaussian noise on the name embeddings, or another person's name")  # fmt: skip
    p.add_argument("--noise-scale", type=float, default=3.0,
                   help="noise std in units of the std of the clean name embeddings (default: 3)")  # fmt: skip
    p.add_argument("--hooks", default="resid",
                   help="comma-separated: resid, attn_out, mlp_out, resid_mid (default: resid)")  # fmt: skip
    p.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    p.add_argument("--split", choices=SPLITS, default="test", help="whose prompts: P_test, P_train or all people")
    p.add_argument("--pairs", type=int, default=50, help="pairs per attribute (default: 50)")
    p.add_argument("--whole-answer", action="store_true",
                   help="also score the whole answer by teacher forcing (logp_answer, greedy_answer)")  # fmt: skip
    p.add_argument("--all-pairs", action="store_true",
                   help="keep pairs the model answers wrong "
                   "(default: only pairs whose clean run is right)")  # fmt: skip
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of people (0: no intervals)")
    p.add_argument("--batch-size", type=int, default=256, help="sequences per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairing, the noise and the bootstrap")
    p.add_argument("--name", default=None, help="model name in the results (default: the directory name)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--no-png", action="store_true", help="write HTML and CSV figures only")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=cmd_patch)
