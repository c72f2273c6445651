"""The Q-probe vs QA correlation of the augmentation sweep with and without birth date, after `probekit run`:

    python experiments/augmentation/correlation_by_attribute.py [runs/augmentation]

Birth date follows the name in every biography without `permute`, so a probe at the name reads the next words
(birth month) and QA extracts birth dates by continuing after the name: those points can carry a correlation by
themselves. This recomputes `comparison/correlations.csv` (same points, same person bootstrap) leaving them out,
and writes experiments/augmentation/results/correlation_without_birth_date.csv.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from probekit.experiment.runner import load_experiment_tables
from probekit.experiment.stages.probe import q_people_table
from probekit.reporting import compare

HERE = Path(__file__).resolve().parent


def main(out: Path) -> None:
    cfg, probe, *_ = load_experiment_tables(out)
    keys = [(r.key, r.model.name) for r in cfg.runs()]
    points = compare.storage_points(probe, q_people_table(cfg, out), compare.load_eval_predictions(out, "qa", keys),
                                    compare.load_eval_predictions(out, "inverse", keys))  # fmt: skip
    rows = []
    for label, keep in (("all attributes", np.ones(len(points.table), dtype=bool)),
                        ("without birth date", (points.table["attribute"] != "birth_date").to_numpy())):  # fmt: skip
        sub = compare.Points(points.table[keep].reset_index(drop=True), points.pids, points.storage[keep],
                             points.qa[keep], points.inverse[keep])  # fmt: skip
        corr = compare.correlations(sub, seed=int(cfg.probe.get("seed", 0)))
        rows.append(corr[corr["versus"] == "qa"].assign(points=label))
    table = pd.concat(rows, ignore_index=True)
    (HERE / "results").mkdir(exist_ok=True)
    table.to_csv(HERE / "results" / "correlation_without_birth_date.csv", index=False)
    print(table[["points", "measure", "method", "r", "ci_low", "ci_high", "n_points"]].round(2).to_string(index=False))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/augmentation"))
