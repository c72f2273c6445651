"""``probekit plot``: re-render probe figures (HTML, PNG, CSV) from one or more results tables."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMANDS = {"plot": "re-render probe figures from results tables"}


def cmd_plot(args: argparse.Namespace) -> int:
    from probekit import provenance as prov
    from probekit.errors import UserError
    from probekit.plots import check_layer, render_figures
    from probekit.results import RESULTS_PARQUET, read_provenance, read_results

    if (args.results is None) == (args.experiment is None):
        raise UserError("give either --results TABLE... (probe figures) or --experiment DIR (an experiment's "
                        "figures, comparisons across its models included)")  # fmt: skip
    _check_figures_dir(Path(args.out))
    if args.experiment is not None:
        return _plot_experiment(args)
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


def _plot_experiment(args: argparse.Namespace) -> int:
    """Every figure of a finished experiment from its tables (``probekit.experiments.render_experiment``)."""
    from probekit import provenance as prov
    from probekit.experiments import config_record, load_experiment_tables, render_experiment
    from probekit.report import write_report

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
    )
    summary = (run / "summary.txt").read_text() if (run / "summary.txt").exists() else ""
    write_report(Path(args.out) / "report.html", title=f"probekit experiment: {cfg.name}", question=cfg.notes,
                 config=config_record(cfg), provenance=rec, summary=summary, figures=figures)  # fmt: skip
    names = sorted({p.stem for p in report.files})
    where = f" (comparison tables in {run / 'comparison'})" if corr is not None else ""
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
