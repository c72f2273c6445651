"""``probekit demo`` (the main job with built-in defaults) and ``probekit run`` (any experiment config)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probekit.experiment.runner import ExperimentResult

COMMANDS = {
    "demo": "the whole pipeline with built-in defaults (about 12 min on 2 idle CPU cores)",
    "run": "run an experiment config (data -> train -> probe -> QA -> figures), resumable",
}


def _report(res: ExperimentResult) -> None:
    from probekit.experiment.runner import TIMINGS_FILE, timing_summary

    print("\n" + res.summary)
    if res.timings is not None and len(res.timings):
        print("\n".join(timing_summary(res.timings)).rstrip() + f"  ({res.out / TIMINGS_FILE})")
    pngs = [f for f in res.figures if f.suffix == ".png"]
    print(f"\nresults: {res.out / 'results.parquet'} (+ .csv), summary: {res.out / 'summary.txt'}")
    print(f"figures: {len(res.figures)} files in {res.out / 'figures'} ({len(pngs)} PNG)")
    print(f"report (every table and figure, opens offline): {res.out / 'report.html'}")
    print(f"done in {time.strftime('%H:%M:%S', time.gmtime(res.seconds))} (h:mm:ss)")


def _check_jobs(jobs: int) -> None:
    """``--jobs`` is checked before anything is printed or written."""
    from probekit.errors import UserError

    if jobs < 1:
        raise UserError(f"--jobs must be a whole number >= 1 (models trained at once), got {jobs}")


def cmd_demo(args: argparse.Namespace) -> int:
    from probekit.experiment.runner import run_experiment
    from probekit.experiment.spec import demo_config

    _check_jobs(args.jobs)
    cfg = demo_config()
    print(f"probekit demo: {cfg.notes}\nwriting to {args.out} (re-run the same command to resume)")
    _report(run_experiment(cfg, args.out, progress=not args.no_progress, figures_out=args.figures_out,
                           png=not args.no_png, jobs=args.jobs))  # fmt: skip
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from probekit.experiment.runner import run_experiment
    from probekit.experiment.spec import load_experiment

    _check_jobs(args.jobs)
    cfg = load_experiment(args.config, args.set)
    out = args.out if args.out is not None else f"runs/{cfg.name}"
    from probekit.io import check_output

    check_output(out, {"config": args.config})
    models = [m for arg in args.models for m in arg.split(",") if m] if args.models is not None else None
    if args.dry_run:
        from probekit.experiment.runner import dry_run

        print(dry_run(cfg, out, models=models, executor=args.executor, gpu_tflops=args.gpu_tflops))
        return 0
    print(f"probekit run {cfg.name}: {cfg.notes}\nwriting to {out} (re-run the same command to resume)")
    _report(run_experiment(cfg, out, progress=not args.no_progress, figures_out=args.figures_out,
                           png=not args.no_png, jobs=args.jobs, models=models, executor=args.executor))  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo",
        help=COMMANDS["demo"],
        description=(
            "Generate bioS single and multi5+permute data (400 people), train a 4-layer NTP model on each, P- and "
            "Q-probe every layer (with a random-init control, control tasks and 95% intervals); then train an NTP "
            "and a BICO model on the reversal-curse facts and test both directions. Writes the results tables, "
            "figures, a summary and report.html. Interrupted? Run the same command again: finished stages are "
            "skipped and training resumes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument("--out", default="runs/demo", help="output directory")
    d.add_argument("--figures-out", help="also copy the PNG figures and their CSV data here (e.g. figures/demo)")
    d.add_argument("--no-png", action="store_true", help="skip PNG export (HTML and CSV only)")
    d.add_argument("--jobs", type=int, default=2, help="models trained, probed and evaluated at once (one thread each)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and batch jobs)")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser(
        "run",
        help=COMMANDS["run"],
        description="Run every stage of an experiment YAML (see experiments/*/config.yaml); resumable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("config", help="experiment YAML file or directory holding config.yaml")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change one setting of the config (repeatable): a dotted KEY, with an entry's name or * "
                        "where it meets the datasets or models list, and a YAML VALUE, e.g. "
                        "'datasets.*.name_pools={first: 12, middle: 12, last: 12}' or models.ntp_single.train.seed=1; "
                        "the run records the changed config")  # fmt: skip
    r.add_argument("--out", help="output directory (default runs/<name>)")
    r.add_argument("--figures-out", help="also copy the PNG figures and their CSV data here")
    r.add_argument("--no-png", action="store_true", help="skip PNG export (HTML and CSV only)")
    r.add_argument("--jobs", type=int, default=1, help="models trained, probed and evaluated at once (one thread each)")
    r.add_argument("--models", nargs="+", metavar="NAME",
                   help="work on these models only (names, or one comma-separated list); the tables then cover them, "
                        "and a later run without --models adds the others to the same experiment")  # fmt: skip
    r.add_argument("--executor", default="local", metavar="NAME",
                   help="where each model's jobs of each stage run: local (this machine, --jobs at once), slurm "
                        "(one Slurm job each through submitit, with the config's resources; logs in "
                        "<out>/jobs/) or submitit-local (the same as subprocesses here)")  # fmt: skip
    r.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and batch jobs)")
    r.add_argument("--dry-run", action="store_true",
                   help="check every setting and print the jobs a run would submit, their resources and the "
                        "estimated GPU-hours of training; write and submit nothing")  # fmt: skip
    r.add_argument("--gpu-tflops", type=float, default=300.0,
                   help="--dry-run: effective TFLOP/s per GPU assumed for the training estimate")  # fmt: skip
    r.set_defaults(func=cmd_run)
