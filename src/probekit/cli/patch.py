"""``probekit patch``: activation patching maps (layer x position) on QA prompts or biography prefixes."""

from __future__ import annotations

import argparse
import time
from typing import Any

from probekit.errors import UserError

EXAMPLES = """examples:
  probekit patch --model evals/qa_ntp/finetune --data data/multi5_permute --out patch/qa_ntp
  probekit patch --model runs/ntp --data data/multi5_permute --out patch/bio --prompts bio --mode patch,restore
  probekit patch --model hf/llama_dir --data data/single --out patch/hf --hooks resid,attn_out,mlp_out \\
      --attributes birth_city,company --whole-answer
"""


COMMANDS = {"patch": "activation patching: which layer x position states carry the answer"}


def _config(args: argparse.Namespace) -> Any:
    """PatchConfig from the flags generated from its fields (``--attributes all``: the six)."""
    from probekit.data.pools import ATTRIBUTES
    from probekit.patching.config import PatchConfig
    from probekit.serde import from_dict

    given = args.patch_flags.given(args)
    if given.get("attributes") == ("all",):
        given["attributes"] = ATTRIBUTES
    return from_dict(PatchConfig, given)


def cmd_patch(args: argparse.Namespace) -> int:
    from probekit.io import check_output, output_lock

    check_output(args.out, {"--data": args.data, "--model": args.model})
    with output_lock(args.out):  # one writer per output directory
        from probekit.cli.probe import _is_reversal_dir

        if _is_reversal_dir(args.data):
            return _cmd_patch_reversal(args)
        if args.tasks:
            raise UserError("--tasks applies to reversal-curse data (`probekit data reversal`); use --attributes here")
        return _cmd_patch(args)


def _cmd_patch_reversal(args: argparse.Namespace) -> int:
    """Patching on reversal-curse prompts (``probekit.patching.reversal``)."""
    from probekit.data.reversal import load_reversal_dir
    from probekit.errors import check_device
    from probekit.io import atomic_dir, prepare_output_dir
    from probekit.patching.patch import save_patching
    from probekit.patching.reversal import TASKS, run_reversal_patching
    from probekit.probes.activations import hook_points, model_dims
    from probekit.probes.runner import load_probe_model

    t0 = time.perf_counter()
    check_device(args.device)
    cfg = _config(args)
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else list(TASKS)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise UserError(f"--tasks {bad}: choose from {', '.join(TASKS)}")
    out = prepare_output_dir(args.out, args.overwrite)
    data = load_reversal_dir(args.data)
    pm = load_probe_model(args.model, device=args.device, name=args.name)
    hook_points(model_dims(pm.model).n_layers, cfg.hooks, cfg.layers)
    print(f"patching {pm.name} on reversal prompts of {data.root}: tasks {tasks}, up to {cfg.n_pairs} pairs each")
    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        res = run_reversal_patching(pm, data, cfg, tasks, progress=not args.no_progress)
        seconds = round(time.perf_counter() - t0, 1)
        report = save_patching(res, cfg, tmp, png=not args.no_png, model=str(args.model), model_name=pm.name,
                               kind=pm.kind, data=str(args.data), seconds=seconds)  # fmt: skip
    for c in res.counts:
        print(f"  {c['attribute']:<12} {c['used']:>4} pairs (of {c['candidates']} people: {c['source_wrong']} "
              f"answered wrong, {c['no_target']} with a partner of the same first answer token, {c['misaligned']} "
              "misaligned)")  # fmt: skip
    print(f"wrote {out / 'results.csv'} ({len(res.table)} rows) ({time.perf_counter() - t0:.0f}s)")
    if report.png_error:
        print(f"warning: {report.png_error}")
    return 0


def _cmd_patch(args: argparse.Namespace) -> int:
    from probekit.data.store import load_dataset
    from probekit.errors import check_device
    from probekit.io import atomic_dir, prepare_output_dir
    from probekit.patching.patch import MAX_TARGET_TRIES, run_patching, save_patching
    from probekit.probes.activations import hook_points, model_dims
    from probekit.probes.runner import check_compatible, load_probe_model

    t0 = time.perf_counter()
    check_device(args.device)
    cfg = _config(args)
    out = prepare_output_dir(args.out, args.overwrite)
    ds = load_dataset(args.data)
    pm = load_probe_model(args.model, device=args.device, name=args.name)
    check_compatible(pm, ds)  # the model's tokenizer fits its vocabulary and encodes the dataset
    hook_points(model_dims(pm.model).n_layers, cfg.hooks, cfg.layers)  # bad hooks/layers fail before any work
    print(f"patching {pm.name} ({pm.kind}, objective {pm.objective}) on {cfg.prompts} prompts of dataset {ds.name}: "
          f"modes {list(cfg.modes)}, hooks {list(cfg.hooks)}, up to {cfg.n_pairs} pairs per attribute "
          f"({cfg.split} people)")  # fmt: skip
    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        res = run_patching(pm, ds, cfg, progress=not args.no_progress)
        seconds = round(time.perf_counter() - t0, 1)
        report = save_patching(res, cfg, tmp, png=not args.no_png, model=str(args.model), model_name=pm.name,
                               kind=pm.kind, data=str(args.data), seconds=seconds)  # fmt: skip
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
    from probekit.cli.flags import add_flags
    from probekit.patching.config import CORRUPTIONS, PROMPTS, SPLITS, PatchConfig

    p = subparsers.add_parser(
        "patch",
        help=COMMANDS["patch"],
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
    g = p.add_argument_group("patching settings (PatchConfig)")
    flags = add_flags(g, PatchConfig,
                      names={"modes": ("--mode", "--modes"), "n_pairs": ("--pairs", "--n-pairs"),
                             "n_boot": ("--bootstrap", "--n-boot")},
                      negatives={"require_correct": "--all-pairs"},
                      choices={"prompts": PROMPTS, "corruption": CORRUPTIONS, "split": SPLITS})  # fmt: skip
    p.add_argument(
        "--tasks",
        default=None,
        help="reversal-curse data only: tasks to patch (D2N, N2D-reverse, N2D, D2N-reverse; default all)",
    )
    p.add_argument("--name", default=None, help="model name in the results (default: the directory name)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--no-png", action="store_true", help="write HTML and CSV figures only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and batch jobs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=cmd_patch, patch_flags=flags)
