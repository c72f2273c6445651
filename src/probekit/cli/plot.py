"""``probekit plot``: re-render probe figures (HTML, PNG, CSV) from one or more results tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

COMMANDS = {"plot": "re-render probe figures from results tables"}


def cmd_plot(args: argparse.Namespace) -> int:
    from probekit.io import check_output, output_lock

    qa_dirs = [q.partition("=")[2] for q in getattr(args, "qa", None) or []]
    check_output(args.out, {"--results": args.results, "--experiment": args.experiment, "--scale": args.scale,
                            "--dynamics": getattr(args, "dynamics", None), "--qa": qa_dirs,
                            "--reversal": getattr(args, "reversal", None)})  # fmt: skip
    with output_lock(args.out):  # one writer per figures directory
        return _cmd_plot(args)


def _cmd_plot(args: argparse.Namespace) -> int:
    from probekit import provenance as prov
    from probekit.errors import UserError
    from probekit.reporting.plots import check_layer, render_figures
    from probekit.reporting.results import RESULTS_PARQUET, read_provenance, read_results

    if sum(v is not None for v in (args.results, args.experiment, args.scale, args.dynamics, args.reversal)) != 1:
        raise UserError("give one of --results TABLE... (probe figures), --experiment DIR (an experiment's "
                        "figures, comparisons across its models included), --scale CSV... (storage and QA "
                        "against scale from the scale tables of several runs), --dynamics TABLE (storage "
                        "through training, from `probekit probe --checkpoints all`) or --reversal RUN (a "
                        "reversal-mechanism run directory)")  # fmt: skip
    if args.qa and args.dynamics is None:
        raise UserError("--qa STEP=DIR goes with --dynamics (QA of the probed checkpoints)")
    if args.dynamics is not None:
        return _plot_dynamics(args)
    if args.reversal is not None:
        from probekit.reporting.reversal import summarize_run

        written = summarize_run(args.reversal, args.out, png=not args.no_png)
        print(f"wrote {', '.join(f'{k}.csv' for k in written)} and figures into {args.out}")
        return 0
    if args.scale is not None:
        scale_tables = _read_scale_tables(args.scale)  # checked before --out is touched
    _check_figures_dir(Path(args.out))
    if args.experiment is not None:
        return _plot_experiment(args)
    if args.scale is not None:
        return _plot_scale(args, scale_tables)
    df = read_results(args.results)
    check_layer(df, args.layer)
    tables = [Path(r) / RESULTS_PARQUET if Path(r).is_dir() else Path(r) for r in args.results]
    rec = prov.record(inputs={f"table{i}": t for i, t in enumerate(tables)})
    rec["tables"] = {str(t.resolve()): {"sha256": rec["inputs"][f"table{i}"].get("sha256"),
                                         "made_by": (read_provenance(t) or {}).get("command")}
                     for i, t in enumerate(tables)}  # fmt: skip
    report = render_figures(df, args.out, layer=args.layer, png=not args.no_png, provenance=rec,
                            control=not args.no_control)  # fmt: skip
    names = sorted({p.stem for p in report.files})
    print(f"rendered {len(names)} figures from {len(df)} probe results into {args.out}:")
    for n in names:
        print(f"  {n}")
    if report.png_error:
        print(f"warning: {report.png_error}")
    return 0


def _plot_dynamics(args: argparse.Namespace) -> int:
    """Layer x step figures of one run's checkpoint probes, with QA exact match at the steps ``--qa`` names."""
    import pandas as pd

    from probekit import provenance as prov
    from probekit.errors import UserError
    from probekit.io import atomic_path
    from probekit.reporting.dynamics import dynamics_figure, dynamics_table, qa_point
    from probekit.reporting.figures import write_figures
    from probekit.reporting.results import read_results

    points = []
    for item in args.qa or []:  # every input is read before --out is touched
        step, sep, d = item.partition("=")
        if not sep or not step.strip().isdigit() or not d:
            raise UserError(f"--qa {item!r} must look like STEP=DIR, e.g. 1000=runs/qa_step1000")
        points.append(qa_point(d, int(step)))
    df = read_results([args.dynamics])
    table = dynamics_table(df)
    qa = pd.DataFrame(points) if points else None
    out = Path(args.out)
    _check_figures_dir(out)
    rec = prov.record(inputs={"probes": args.dynamics, **{f"qa {q}": q.partition("=")[2] for q in args.qa or []}})
    figs = [dynamics_figure(table, qa, run) for run in dict.fromkeys(table["model"].astype(str))]
    report = write_figures(figs, out, not args.no_png, rec)
    with atomic_path(out / "dynamics.csv") as tmp:
        table.to_csv(tmp, index=False)
    if qa is not None:
        with atomic_path(out / "dynamics_qa.csv") as tmp:
            qa.to_csv(tmp, index=False)
    print(f"rendered {len(figs)} dynamics figure(s) into {out} (tables: dynamics.csv"
          + (", dynamics_qa.csv)" if qa is not None else ")"))  # fmt: skip
    if report.png_error:
        print(f"warning: {report.png_error}")
    return 0


def _read_scale_tables(paths: list[str]) -> list[tuple[Path, pd.DataFrame]]:
    """The ``comparison/scale.csv`` tables of ``paths`` (files, or experiment output directories)."""
    import pandas as pd

    from probekit.errors import UserError

    need = {"model", "augmentation", "n_layers", "d_model", "n_people", "measure", "q_name", "q_low", "q_high",
            "qa", "qa_low", "qa_high", "baseline"}  # fmt: skip
    out = []
    for p in map(Path, paths):
        f = p / "comparison" / "scale.csv" if p.is_dir() else p
        if not f.is_file():
            raise UserError(f"--scale {p}: no scale table there (an experiment directory's comparison/scale.csv, "
                            "written by `probekit run` for experiments that vary depth, width, people or name "
                            "pools)")  # fmt: skip
        try:
            t = pd.read_csv(f)
        except (ValueError, OSError) as e:
            raise UserError(f"--scale {f}: not a readable CSV ({e})") from e
        if missing := sorted(need - set(t.columns)):
            raise UserError(f"--scale {f}: not a scale table (missing columns {', '.join(missing)})")
        if "last_names" not in t.columns:  # tables from before the name-sharing axis: the full name pools
            from probekit.reporting.scaling import full_last_names

            t.insert(t.columns.get_loc("n_people") + 1, "last_names", full_last_names())
        out.append((f, t))
    return out


def _plot_scale(args: argparse.Namespace, tables: list[tuple[Path, pd.DataFrame]]) -> int:
    """Q at the name and QA against depth, width and people from the scale tables of several runs (each a part of
    one experiment, as ``probekit run --models`` writes them): a model in two tables must have the same row."""
    import pandas as pd

    from probekit import provenance as prov
    from probekit.errors import UserError
    from probekit.reporting.figures import write_figures
    from probekit.reporting.report import summary_text
    from probekit.reporting.scaling import scale_figure, scale_summary

    joined = pd.concat([t.assign(_table=str(f)) for f, t in tables], ignore_index=True)
    if joined["measure"].nunique() > 1:
        raise UserError(f"--scale: the tables measure storage differently ({', '.join(joined['measure'].unique())}); "
                        "join tables of one experiment config")  # fmt: skip
    cols = [c for c in joined.columns if c != "_table"]
    for model, g in joined.groupby("model", sort=False):
        if len(g.drop_duplicates(cols)) > 1:
            raise UserError(f"--scale: model {model} has different rows in {', '.join(g['_table'])}; give each "
                            "model's table once")  # fmt: skip
    table = joined.drop_duplicates(cols).drop(columns="_table").reset_index(drop=True)
    fig = scale_figure(table)
    if fig is None:
        raise UserError(f"--scale: the {len(table)} models share one depth, width and people count; nothing varies "
                        "to plot against (add the table of a run with other values)")  # fmt: skip
    rec = prov.record(inputs={f"table{i}": f for i, (f, _) in enumerate(tables)})
    report = write_figures([fig], args.out, png=not args.no_png, provenance=rec)
    print(summary_text(scale_summary(table)))
    print(f"rendered {fig.name} from {len(tables)} scale tables ({len(table)} models) into {args.out}")
    if report.png_error:
        print(f"warning: {report.png_error}")
    return 0


def _plot_experiment(args: argparse.Namespace) -> int:
    """Every figure of a finished experiment from its tables (``probekit.experiment.runner.render_experiment``)."""
    from probekit import provenance as prov
    from probekit.experiment.runner import load_experiment_tables, render_experiment
    from probekit.experiment.spec import config_record
    from probekit.reporting.report import write_report
    from probekit.reporting.scaling import model_axes, varying_axes

    run = Path(args.experiment).resolve()
    cfg, probe, embed, qa, inverse = load_experiment_tables(run)
    rec = prov.record(inputs={"results": run / "results.parquet"})
    report, corr, figures = render_experiment(
        cfg,
        run,
        probe,
        embed,
        qa,
        inverse,
        layer=args.layer,
        png=not args.no_png,
        provenance=rec,
        control=not args.no_control,
        figures_dir=Path(args.out),
        scale=bool(varying_axes(model_axes(cfg))),
        tables_dir=Path(args.out) / "comparison",
    )
    summary = (run / "summary.txt").read_text() if (run / "summary.txt").exists() else ""
    write_report(Path(args.out) / "report.html", title=f"probekit experiment: {cfg.name}", question=cfg.notes,
                 config=config_record(cfg), provenance=rec, summary=summary, figures=figures)  # fmt: skip
    names = sorted({p.stem for p in report.files})
    where = f" (comparison tables in {Path(args.out) / 'comparison'})" if corr is not None else ""
    print(f"rendered {len(names)} figures of experiment {cfg.name} into {args.out}{where}, with report.html")
    if report.png_error:
        print(f"warning: {report.png_error}")
    return 0


def _check_figures_dir(out: Path) -> None:
    """``--out`` must be new, empty, or a figures directory: one holding our provenance.json, or only figure files
    (HTML, PNG, CSV and plotly.min.js, as figures drawn before provenance was recorded)."""
    from probekit.errors import UserError
    from probekit.provenance import PROVENANCE_FILE

    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the figures")
    entries = [p for p in out.iterdir() if not p.name.startswith(".")]
    figure_files = all(p.is_file() and (p.suffix in (".html", ".png", ".csv") or p.name == "plotly.min.js")
                       for p in entries)  # fmt: skip
    if (out / PROVENANCE_FILE).exists() or figure_files:
        return
    raise UserError(f"--out {out} is not empty and holds no probekit figures (no {PROVENANCE_FILE}); choose a new "
                    "or empty directory")  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help=COMMANDS["plot"],
        description="Draw every probe figure (HTML, PNG and the CSV data) from one or more results tables; "
        "several tables (models) give side-by-side comparison figures too. --experiment DIR re-renders a finished "
        "experiment's figures, with the comparison across objectives (P grids, Q profiles, storage vs extraction "
        "scatter with correlations, extraction bars).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--results", nargs="+", help="results.parquet/.csv files or probe output dirs")
    p.add_argument("--experiment", help="an experiment's output directory (probekit run): all its figures, the "
                   "comparison across its models included")  # fmt: skip
    p.add_argument("--scale", nargs="+", metavar="CSV",
                   help="scale tables (comparison/scale.csv, or experiment directories) of runs of one experiment, "
                        "e.g. parts run with --models into different --out directories: Q-probe at the name and QA "
                        "extraction against each axis that varies over all of them")  # fmt: skip
    p.add_argument("--dynamics", metavar="TABLE",
                   help="a probe table of a run's checkpoints (`probekit probe --checkpoints all`): Q at the name "
                        "and P at the birth-date position, layer x step")  # fmt: skip
    p.add_argument("--qa", nargs="+", metavar="STEP=DIR",
                   help="with --dynamics: `probekit eval qa` outputs of checkpoints, by step")  # fmt: skip
    p.add_argument("--reversal", metavar="RUN",
                   help="a reversal-mechanism run directory (experiments/reversal_mechanism/run.sh): tasks over "
                        "seeds, read-outs by layer, patching routes and the per-person link")  # fmt: skip
    p.add_argument("--out", required=True, help="directory for the figures")
    p.add_argument("--layer", type=int, default=None,
                   help="layer of the position x attribute figures (omit: each model's last layer)")  # fmt: skip
    p.add_argument("--no-png", action="store_true", help="write HTML and CSV only")
    p.add_argument(
        "--no-control",
        action="store_true",
        help="leave out the control-task curves and selectivity grids (tables probed with control_task)",
    )
    p.set_defaults(func=cmd_plot)
