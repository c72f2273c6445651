"""``probekit eval``: knowledge extraction (QA), inverse search, reversal-curse and distraction (S2A) tasks on
trained models."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

from probekit.cli.flags import add_flags
from probekit.errors import UserError, UserFileExistsError

COMMANDS = {"eval": "evaluate models: QA extraction, inverse search, reversal curse"}
EXAMPLES_QA = """examples:
  probekit eval qa --checkpoint runs/ntp_multi --data data/multi5 --out evals/qa_ntp_full
  probekit eval qa --checkpoint runs/ntp_multi --data data/multi5 --out evals/qa_lora --finetune lora \\
      --lora-rank 16 --embed-rank 128 --save-adapter
  probekit eval qa --checkpoint runs/mixed --data data/single --out evals/qa_none --finetune none
  probekit eval qa --mixed --train-config cfg.yaml --data data/single --bio-qa-ratio 2:8 --out evals/mixed
"""
EXAMPLES_INVERSE = """examples:
  probekit eval inverse --checkpoint runs/ntp_multi --data data/multi5 --out evals/inv --attrs birth_city,company
  probekit eval inverse --checkpoint runs/bico_multi --data data/multi5 --out evals/inv_none --finetune none
"""
EXAMPLES_DISTRACT = """examples:
  probekit data bios --n 200 --augmentation multi5+permute --distract-vocab --out data/distract
  probekit eval distract --checkpoint runs/ntp_distract --data data/distract --out evals/distract
  probekit eval distract --checkpoint runs/ntp_distract --data data/distract --out evals/d_rule --s2a rule --n-boot 200
"""
EXAMPLES_REVERSAL = """examples:
  probekit data reversal --out data/reversal
  probekit eval reversal --data data/reversal --train-config cfg.yaml --objective bico --out evals/rev_bico
  probekit eval reversal --data data/reversal --checkpoint runs/rev_ntp --out evals/rev_ntp --test ttest
"""


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=100)


def _attrs(text: str | None) -> tuple[str, ...]:
    from probekit.data.pools import ATTRIBUTES

    if not text or text == "all":
        return ATTRIBUTES
    attrs = tuple(a.strip() for a in text.split(",") if a.strip())
    bad = [a for a in attrs if a not in ATTRIBUTES]
    if bad:
        raise UserError(f"--attrs: unknown attribute(s) {bad}; choose from {', '.join(ATTRIBUTES)} (or 'all')")
    return attrs


def _finetune_cfg(args: argparse.Namespace) -> Any:
    """FinetuneConfig from the finetuning flags (generated from its fields, --seed included)."""
    from probekit.serde import from_dict
    from probekit.training.config import FinetuneConfig

    given = args.finetune_flags.given(args)
    if given.get("max_steps"):
        given["epochs"] = None  # --steps replaces the epoch budget
    return from_dict(FinetuneConfig, given)


def _train_config(path: str, out: Path, objective: str | None, data: str | None = None) -> Any:
    from probekit.serde import load_config
    from probekit.training.config import TrainConfig

    cfg = load_config(TrainConfig, path)
    if objective:
        cfg.objective = objective
    if data:
        cfg.data = data
    cfg.out = str(out / "train")
    cfg.validate()
    return cfg


def _print_summary(table: Any, paths: list[Path], metrics: tuple[str, ...]) -> None:
    import pandas as pd

    t = table[table["metric"].isin(metrics)]
    keys = ("model", "objective", "split", "finetune", "kind")
    index = [c for c in keys if c in t.columns and t[c].nunique() > 1] + ["task"]
    has_ci = "ci_low" in t.columns
    cells = t.assign(cell=[f"{r.value:.3f}" + (f" [{r.ci_low:.3f}, {r.ci_high:.3f}]" if has_ci and pd.notna(r.ci_low)
                                               else "") for r in t.itertuples()])  # fmt: skip
    wide = cells.pivot_table(index=index, columns="metric", values="cell", aggfunc="first", sort=False)
    wide["n"] = t.groupby(index, sort=False)["n"].max()
    print("value [95% person-bootstrap interval]" if has_ci else "")
    print(wide.to_string())
    print("wrote " + ", ".join(str(p) for p in paths if p.suffix in (".parquet", ".csv", ".png"))[:2000])


def _output_dir(args: argparse.Namespace) -> Path:
    """``--out`` checked before any work; an evaluation killed before it finished is named as such."""
    from probekit.io import prepare_output_dir

    out = Path(args.out)
    if (
        not args.overwrite
        and out.is_dir()
        and any(out.iterdir())
        and not (out / "results.parquet").exists()
        and ((out / "finetune").exists() or (out / "train").exists() or (out / "provenance.json").exists())
    ):
        raise UserFileExistsError(f"{out} holds an evaluation that was interrupted before it wrote results.parquet; "
                                  "re-run the same command with --overwrite to start it again "
                                  "(it is seeded)")  # fmt: skip
    return prepare_output_dir(out, args.overwrite)


def _record_session(out: Path, inputs: dict[str, Any], seed: int) -> None:
    """``out/provenance.json``: this command, its seed, and the checksums of the model weights and data used."""
    from probekit import provenance as prov
    from probekit.model.checkpoint import weights_file

    paths = {k: weights_file(v) if k == "checkpoint" else v for k, v in inputs.items() if v}
    prov.append_session(out, prov.record(inputs=paths, seeds={"seed": seed}))


def _check_batch_size(value: int | None) -> None:
    if value is not None and value < 1:
        raise UserError(f"--eval-batch-size must be a whole number >= 1 (prompts per batch), got {value}")


def _locked(args: argparse.Namespace, inputs: dict[str, Any], run: Any) -> int:
    """``run(args)`` holding ``--out``'s lock, once ``--out`` is checked against every input and the settings
    every evaluation shares are checked (before any model is loaded or finetuned)."""
    from probekit.io import check_output, output_lock

    _check_batch_size(getattr(args, "eval_batch_size", None))  # eval distract: checked with its config
    check_output(args.out, inputs)
    with output_lock(args.out):
        return int(run(args))


def cmd_qa(args: argparse.Namespace, kind: str = "qa") -> int:
    inputs = {"--checkpoint": args.checkpoint, "--data": args.data, "--items": getattr(args, "items", None),
              "--train-config": getattr(args, "train_config", None)}  # fmt: skip
    return _locked(args, inputs, lambda a: _cmd_qa(a, kind))


def _cmd_qa(args: argparse.Namespace, kind: str = "qa") -> int:
    from probekit.errors import check_device
    from probekit.evaluate.inverse import run_inverse
    from probekit.evaluate.qa import mixed_train, run_qa

    check_device(args.device)
    out = _output_dir(args)
    attrs = _attrs(args.attrs)
    ft = _finetune_cfg(args)
    common = dict(model_name=args.name, objective=args.objective, eval_train=args.eval_train,
                  batch_size=args.eval_batch_size, device=args.device, png=not args.no_png,
                  progress=not args.no_progress)  # fmt: skip
    checkpoint = args.checkpoint
    if getattr(args, "mixed", False):
        if checkpoint or not args.train_config:
            raise UserError("--mixed trains a new model: give --train-config (a TrainConfig YAML) and no --checkpoint")
        cfg = _train_config(args.train_config, out, args.objective, args.data)
        result = mixed_train(cfg, args.bio_qa_ratio, progress=not args.no_progress, overwrite=args.overwrite)
        print(f"mixed training: {result.steps} steps, loss {result.train_loss:.3f}, checkpoint {result.checkpoint}")
        checkpoint, ft.method = result.checkpoint, "none"
    elif not checkpoint:
        raise UserError("--checkpoint is required (a checkpoint or run directory from `probekit train`)")
    overwrite = args.overwrite or getattr(args, "mixed", False)  # the output directory was checked above
    if kind == "qa":
        res = run_qa(checkpoint, args.data, out, ft, attrs, items_file=args.items, overwrite=overwrite, **common)
    else:
        res = run_inverse(checkpoint, args.data, out, ft, attrs, overwrite=overwrite, **common)
    if res.finetune is not None:
        f = res.finetune
        where = f"checkpoint {f.checkpoint}" + (f", adapter {f.adapter}" if f.adapter else "")
        print(f"finetune ({ft.method}): {f.steps} steps, {f.trainable_params} trainable parameters, "
              f"final loss {f.train_loss:.3f}; {where}")  # fmt: skip
    _record_session(out, {"checkpoint": checkpoint, "data": args.data}, ft.seed)
    _print_summary(res.table, res.paths, ("exact_match", "first_token"))
    return 0


def cmd_inverse(args: argparse.Namespace) -> int:
    return cmd_qa(args, kind="inverse")


def cmd_reversal(args: argparse.Namespace) -> int:
    from probekit.evaluate.config import ReversalEvalConfig
    from probekit.serde import from_dict

    args.reversal_settings = from_dict(ReversalEvalConfig, args.reversal_flags.given(args))
    _check_batch_size(args.reversal_settings.batch_size)
    inputs = {"--checkpoint": args.checkpoint, "--data": args.data, "--train-config": args.train_config}
    return _locked(args, inputs, _cmd_reversal)


def _cmd_reversal(args: argparse.Namespace) -> int:
    from probekit.data.reversal import load_reversal_dir
    from probekit.errors import check_device
    from probekit.evaluate.reversal import run_reversal, train_reversal

    check_device(args.device)
    out = _output_dir(args)
    if bool(args.checkpoint) == bool(args.train_config):
        raise UserError("give exactly one of --checkpoint (a trained model) or --train-config (train one first)")
    settings = args.reversal_settings
    checkpoint = args.checkpoint
    tasks = list(settings.tasks) or None
    data = load_reversal_dir(args.data)  # bad data fails here, before any training
    unknown = [t for t in tasks or () if t not in data.tasks]
    if unknown:
        raise UserError(f"--tasks: {unknown} not available in {args.data}; available: {data.tasks}")
    if args.train_config:
        cfg = _train_config(args.train_config, out, args.objective)
        result = train_reversal(data, cfg, progress=not args.no_progress, overwrite=args.overwrite)
        print(f"trained {cfg.objective}: {result.steps} steps, loss {result.train_loss:.3f}, "
              f"checkpoint {result.checkpoint}")  # fmt: skip
        checkpoint = result.checkpoint
    res = run_reversal(
        checkpoint, data, out, tasks, model_name=args.name,
        objective=None if args.train_config else args.objective, seed=settings.seed, test=settings.test,
        batch_size=settings.batch_size, device=args.device, overwrite=args.overwrite or bool(args.train_config),
        png=not args.no_png, progress=not args.no_progress,
    )  # fmt: skip
    _record_session(out, {"checkpoint": checkpoint, "data": args.data}, settings.seed)
    _print_summary(res.table, res.paths, ("exact_match", "logprob_correct", "logprob_random", "p_value"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from probekit.io import check_output, output_lock, prepare_output_dir
    from probekit.reporting.evaluation import write_comparison

    check_output(args.out, {"results": args.results})
    out = prepare_output_dir(args.out, args.overwrite)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    with output_lock(out):  # one writer per output directory
        df, paths = write_comparison(args.results, out, metrics=metrics, split=args.split or None,
                                     png=not args.no_png)  # fmt: skip
    _print_summary(df, paths, metrics)
    return 0


def cmd_distract(args: argparse.Namespace) -> int:
    cfg = _distract_cfg(args)
    inputs = {"--checkpoint": args.checkpoint, "--data": args.data, "--config": args.config}
    return _locked(args, inputs, lambda a: _cmd_distract(a, cfg))


def _distract_cfg(args: argparse.Namespace) -> Any:
    """DistractEvalConfig from --config, then the flags generated from its fields (--seed, --eval-batch-size
    and --warmup-steps among them), each replacing the file's value."""
    from probekit.cli.flags import merge
    from probekit.evaluate.config import DistractEvalConfig
    from probekit.serde import from_dict, load_mapping

    data = load_mapping(args.config, "distraction config") if args.config else {}
    given = args.distract_flags.given(args)
    if given.get("attrs") == ("all",):
        given["attrs"] = _attrs("all")
    cfg = from_dict(DistractEvalConfig, merge(data, given))
    _check_batch_size(cfg.batch_size)
    return cfg


def _cmd_distract(args: argparse.Namespace, cfg: Any) -> int:
    from probekit.errors import check_device
    from probekit.evaluate.distract import run_distract
    from probekit.io import prepare_output_dir

    check_device(args.device)
    prepare_output_dir(args.out, args.overwrite or args.resume)
    res = run_distract(args.checkpoint, args.data, args.out, cfg, model_name=args.name, objective=args.objective,
                       device=args.device, overwrite=args.overwrite, resume=args.resume,
                       png=not args.no_png, progress=not args.no_progress)  # fmt: skip
    t = res.table[(res.table["attr"] == "overall") & res.table["metric"].isin(("exact_match", "follows_suggested"))]
    wide = t.pivot_table(index=["task", "regime"], columns="metric", values="value", sort=False)
    print(wide.to_string(float_format=lambda v: f"{v:.3f}"))
    for r in res.gap[res.gap["task"] == "hint_wrong"].itertuples():
        print(f"hint_wrong, {r.regime}: gap closed {r.gap_closed:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}] "
              f"(baseline {r.baseline:.3f}, S2A {r.s2a:.3f}, oracle {r.oracle:.3f}; target 0.80)")  # fmt: skip
    print("wrote " + ", ".join(str(p) for p in res.paths if p.suffix in (".parquet", ".png"))[:2000])
    return 0


def _common(p: argparse.ArgumentParser, *, seed: bool = True, batch_size: bool = True) -> None:
    """The flags every evaluation has; ``seed``/``batch_size`` false where a config's generated flag is
    ``--seed``/``--eval-batch-size``."""
    p.add_argument("--out", required=True, help="output directory (must be absent or empty)")
    p.add_argument("--name", help="model name in the results table (default: the run directory's name)")
    from probekit.cli.flags import objective_choices

    objectives = objective_choices()
    p.add_argument("--objective", type=objectives, metavar=objectives.metavar,
                   help="the checkpoint's objective, if its meta.json does not record one (with a training config: "
                        "the objective to train with)")  # fmt: skip
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed of the evaluation (default: 0)")
    if batch_size:
        p.add_argument("--eval-batch-size", type=int, default=64, help="prompts per generation batch (default: 64)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--no-png", action="store_true", help="skip PNG figures (HTML and CSV are still written)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and batch jobs)")


def _extraction_args(p: argparse.ArgumentParser, default_attrs: str) -> None:
    p.add_argument("--checkpoint", help="checkpoint or run directory (latest checkpoint) of a pretrained model")
    p.add_argument("--data", required=True, help="the bioS dataset directory the model was trained on")
    p.add_argument("--attrs", default=default_attrs, help="comma-separated attributes, or 'all'")
    from probekit.cli.flags import objective_choices
    from probekit.training.config import FINETUNE_METHODS, FinetuneConfig

    g = p.add_argument_group("finetuning on P_train (FinetuneConfig)")
    flags = add_flags(g, FinetuneConfig,
                      names={"method": ("--finetune",), "objective": ("--ft-objective",),
                             "max_steps": ("--steps", "--max-steps"), "seed": ("--seed",)},
                      choices={"method": FINETUNE_METHODS, "objective": objective_choices()})  # fmt: skip
    p.set_defaults(finetune_flags=flags)
    p.add_argument("--eval-train", action="store_true", help="also evaluate on P_train (memorisation check)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help=COMMANDS["eval"],
                       description=__doc__)  # fmt: skip
    esub = p.add_subparsers(dest="eval_command", metavar="<task>", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    q = esub.add_parser(
        "qa", help="QA extraction: finetune on P_train questions, exact match on P_test", formatter_class=fmt,
        description=_wrap(
            "Knowledge extraction (Allen-Zhu & Li): finetune a pretrained model on the P_train people's questions "
            "(full or LoRA) and answer the P_test people's questions by greedy generation; scored by whole-answer "
            "exact match and first-token accuracy per attribute. ABI models answer as a blank span. --mixed "
            "instead trains one model on all biographies plus P_train QA and evaluates it without finetuning. "
            "Writes predictions.jsonl, results.parquet/.csv (model, objective, task, metric, value, n, split) and "
            "figures."
        ),
        epilog=EXAMPLES_QA,
    )  # fmt: skip
    _extraction_args(q, "all")
    q.add_argument("--items", help="QA items from a JSONL file (pid, attr, prompt, answer) instead of the dataset's")
    q.add_argument("--mixed", action="store_true", help="mixed training from --train-config, then evaluate")
    q.add_argument("--train-config", help="TrainConfig YAML/JSON for --mixed (its data/out are filled in)")
    q.add_argument("--bio-qa-ratio", default="2:8", help="--mixed: bio:QA token ratio (paper: 2:8)")
    _common(q, seed=False)
    q.set_defaults(func=cmd_qa)

    i = esub.add_parser(
        "inverse", help="inverse search: attributes -> name, finetuned on P_train, tested on P_test",
        formatter_class=fmt,
        description=_wrap(
            "Inverse search on biographies: prompts list a person's attributes (--attrs) and ask for the name; "
            "exact match on the full name's token ids. Finetunes on the P_train people's inverse prompts (full "
            "or LoRA, or --finetune none) and tests on P_test."
        ),
        epilog=EXAMPLES_INVERSE,
    )  # fmt: skip
    _extraction_args(i, "all")
    _common(i, seed=False)
    i.set_defaults(func=cmd_inverse)

    r = esub.add_parser(
        "reversal", help="reversal curse: N2D, D2N and their reverses (exact match + log-prob test)",
        formatter_class=fmt,
        description=_wrap(
            "Reversal-curse tasks on a directory in the public format (probekit data reversal, or the public "
            "repository's files): N2D, D2N, N2D-reverse, D2N-reverse. Scores exact match (the greedy completion "
            "starts with the target, case- and whitespace-insensitive) and the log-probability of the correct "
            "completion versus a random other one, with a paired significance test. Either evaluates --checkpoint "
            "or first trains a model on the training facts with --train-config."
        ),
        epilog=EXAMPLES_REVERSAL,
    )  # fmt: skip
    r.add_argument("--data", required=True, help="reversal data directory (*_prompts_train/test.jsonl)")
    r.add_argument("--checkpoint", help="a model trained on this directory's training facts")
    r.add_argument("--train-config", help="TrainConfig YAML/JSON: train on the training facts first (into OUT/train)")
    from probekit.evaluate.config import ReversalEvalConfig

    _common(r, seed=False, batch_size=False)
    flags = add_flags(r.add_argument_group("evaluation settings", "ReversalEvalConfig fields"), ReversalEvalConfig,
                      names={"batch_size": "--eval-batch-size"})  # fmt: skip
    r.set_defaults(func=cmd_reversal, reversal_flags=flags)

    c = esub.add_parser(
        "compare", help="one table and figure from several evaluations (e.g. NTP vs ABI vs BICO)",
        description=_wrap(
            "Concatenate the results of several `probekit eval` runs and draw the metric by task with one bar per "
            "model (objective): accuracy by attribute for QA, by task for the reversal curse."
        ),
    )  # fmt: skip
    c.add_argument("results", nargs="+", help="evaluation output directories (or results.parquet files)")
    c.add_argument("--out", required=True, help="output directory (must be absent or empty)")
    c.add_argument("--metrics", default="exact_match", help="comma-separated metrics to plot")
    c.add_argument("--split", default="test", help="keep rows of this split (QA, inverse); '' keeps all")
    c.add_argument("--no-png", action="store_true", help="skip PNG figures (HTML and CSV are still written)")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    c.set_defaults(func=cmd_compare)

    d = esub.add_parser(
        "distract", help="distraction / sycophancy on QA and System 2 Attention (S2A) regeneration",
        formatter_class=fmt,
        description=_wrap(
            "Distraction (Weston & Sukhbaatar, S2A): finetune the checkpoint on P_train questions whose prompts "
            "often carry a usually-right hint and irrelevant sentences (a model that can be distracted), then answer "
            "P_test questions under each distractor kind (clean, irrelevant, hint_right, hint_wrong, refute_right) "
            "from the distracted prompt (baseline), from an S2A regeneration of its context (--s2a rule: keep "
            "the sentences naming the queried person; learned: a copy of the checkpoint finetuned on the rewrite "
            "task) and from the prompt without distractors (oracle). Reports exact match, the rate of outputting "
            "the suggested wrong value and the share of the baseline-oracle gap S2A closes, with person-clustered "
            "bootstrap intervals. The dataset must be built with `probekit data bios --distract-vocab`."
        ),
        epilog=EXAMPLES_DISTRACT,
    )  # fmt: skip
    d.add_argument("--checkpoint", required=True, help="checkpoint or run directory of a pretrained NTP/BICO model")
    d.add_argument("--data", required=True, help="the bioS dataset directory the model was trained on")
    d.add_argument("--config", help="DistractEvalConfig YAML/JSON (flags below override it)")
    from probekit.data.distract import FALLBACKS
    from probekit.evaluate.config import DistractEvalConfig
    from probekit.training.config import FINETUNE_METHODS

    g = d.add_argument_group("distraction settings (DistractEvalConfig; each replaces the --config value)")
    flags = add_flags(g, DistractEvalConfig, defaults=DistractEvalConfig(), exclude=("seed", "distract.seed"),
                      together={"--seed": ("seed", "distract.seed"),
                                "--warmup-steps": ("finetune.warmup_steps", "rewrite_finetune.warmup_steps")},
                      names={"batch_size": ("--eval-batch-size",),
                             "distract.context_ratio": ("--context-ratio", "--distract.context-ratio"),
                             "distract.hint_accuracy": ("--hint-accuracy", "--distract.hint-accuracy"),
                             "finetune.method": ("--finetune", "--finetune.method"),
                             "finetune.epochs": ("--epochs", "--finetune.epochs"),
                             "rewrite_finetune.epochs": ("--rewrite-epochs", "--rewrite-finetune.epochs")},
                      choices={"fallback": FALLBACKS, "finetune.method": FINETUNE_METHODS,
                               "rewrite_finetune.method": FINETUNE_METHODS})  # fmt: skip
    d.set_defaults(distract_flags=flags)
    d.add_argument("--resume", action="store_true", help="continue in --out, reusing finished finetuning runs")
    _common(d, seed=False, batch_size=False)
    d.set_defaults(func=cmd_distract)
