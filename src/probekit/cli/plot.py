"""``probekit plot``: re-render probe figures (HTML, PNG, CSV) from one or more results tables."""

from __future__ import annotations

import argparse


def cmd_plot(args: argparse.Namespace) -> int:
    from probekit.plots import render_figures
    from probekit.results import read_results

    df = read_results(args.results)
    report = render_figures(df, args.out, layer=args.layer, png=not args.no_png)
    names = sorted({p.stem for p in report.files})
    print(f"rendered {len(names)} figures from {len(df)} probe results into {args.out}:")
    for n in names:
        print(f"  {n}")
    if report.png_error:
        print(f"warning: {report.png_error}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "plot",
        help="re-render probe figures from results tables",
        description="Draw every probe figure (HTML, PNG and the CSV data) from one or more results tables; "
        "several tables (models) give side-by-side comparison figures too.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--results", nargs="+", required=True, help="results.parquet/.csv files or probe output dirs")
    p.add_argument("--out", required=True, help="directory for the figures")
    p.add_argument("--layer", type=int, default=None,
                   help="layer of the position x attribute figures (omit: each model's last layer)")  # fmt: skip
    p.add_argument("--no-png", action="store_true", help="write HTML and CSV only")
    p.set_defaults(func=cmd_plot)

