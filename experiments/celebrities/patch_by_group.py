"""Activation patching per group of people in the celebrities experiment, after `probekit run`:

    python experiments/celebrities/patch_by_group.py [runs/celebrities]

Runs `probekit patch` (name swap, residual stream, 50 pairs per attribute, P_test people of one group, sources and
targets alike) on each finetuned QA model for the celebrities and for the minorities, then writes the route table
(how often swapping the whole name / the answer position at layer l flips the greedy answer to the source's) to
experiments/celebrities/results/patch_by_group.csv and its figure to figures/celebrities/patch_by_group.{png,csv}.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from probekit.patching.patch import route_figure, route_table
from probekit.reporting.figures import write_figures

HERE = Path(__file__).resolve().parent
RUNS = {"ntp_celebrities": "celebrities_minorities", "ntp_single_control": "single_control"}
PLURAL = {"celebrity": "celebrities", "minority": "minorities"}


def main(run: Path) -> None:
    tables = []
    for model, data in RUNS.items():
        for group in ("celebrity", "minority"):
            out = run / "patch_by_group" / f"{model}_{group}"
            if not (out / "results.parquet").exists():
                subprocess.run(["probekit", "--threads", "1", "patch", "--model", str(run / "qa" / model / "finetune"),
                                "--data", str(run / "data" / data), "--out", str(out), "--groups", group,
                                "--mode", "patch", "--hooks", "resid", "--pairs", "50", "--name", model, "--no-png",
                                "--overwrite"], check=True)  # fmt: skip
            df = pd.read_parquet(out / "results.parquet")
            tables.append(route_table(df).assign(model=f"{model}: {PLURAL[group]}", group=group))
    route = pd.concat(tables, ignore_index=True)
    (HERE / "results").mkdir(exist_ok=True)
    route.to_csv(HERE / "results" / "patch_by_group.csv", index=False)
    fig = route_figure(route)
    fig.name = "patch_by_group"
    report = write_figures([fig], HERE.parents[1] / "figures" / "celebrities", index=False)
    for f in report.files:  # figures/ keeps PNG + CSV, as the runs copy them
        if f.suffix not in (".png", ".csv"):
            f.unlink()
    piv = route.pivot_table(index=["model", "attribute", "state"], columns="layer", values="value")
    print((100 * piv).round(0).to_string())
    print(route.groupby(["model", "attribute"])["n_pairs"].max().to_string())


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/celebrities"))
