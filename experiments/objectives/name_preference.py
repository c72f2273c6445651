"""Inverse search as a preference: after inverse finetuning, does each model give the right name a higher
log-probability than another P_test person's name? (Exact generation of the name is 0% for every model.)

Usage: python experiments/objectives/name_preference.py [RUN=runs/objectives]
Reads each model's inverse-finetuned checkpoint (<run>/inverse/<model>/finetune) and writes
experiments/objectives/results/name_preference.csv: the share of P_test people whose right name is preferred,
with a 95% person-bootstrap interval, the mean log-probability gap and a one-sided Wilcoxon signed-rank p-value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probekit.data.store import load_dataset
from probekit.evaluate.inverse import inverse_items, name_preference
from probekit.evaluate.scoring import paired_test
from probekit.io import atomic_path
from probekit.model.checkpoint import load_checkpoint
from probekit.stats import person_bootstrap

HERE = Path(__file__).resolve().parent


def main(run: Path) -> pd.DataFrame:
    torch.set_num_threads(1)
    cfg = json.loads((run / "experiment.json").read_text())
    rows = []
    for m in cfg["models"]:
        ft = run / "inverse" / m["name"] / "finetune"
        if not ft.exists():
            continue
        model, tokenizer, meta = load_checkpoint(ft)
        ds = load_dataset(run / "data" / m["data"])
        items = inverse_items(ds, ds.split["test"])
        recs = name_preference(model, meta["objective"], tokenizer, items, seed=0)
        pref = np.array([r["preferred"] for r in recs], dtype=float)
        pids = np.array([r["pid"] for r in recs])
        iv = person_bootstrap(pref[None, :], pids, 1000, 0.95, 0)
        right = [r["logprob_right"] for r in recs]
        other = [r["logprob_other"] for r in recs]
        test = paired_test(right, other, alternative="greater")
        gap = float(np.mean(np.subtract(right, other)))
        rows.append({"model": m["name"], "objective": meta["objective"], "n": len(recs), "preferred": pref.mean(),
                     "ci_low": float(iv.low[0]), "ci_high": float(iv.high[0]), "mean_logprob_gap": gap,
                     "p_value": test.p_value})  # fmt: skip
        print(f"{m['name']:22s} right name preferred {100 * pref.mean():5.1f}% [{100 * iv.low[0]:.1f}, "
              f"{100 * iv.high[0]:.1f}]  gap {rows[-1]['mean_logprob_gap']:+.2f} nats  p = {test.p_value:.2g}")
    table = pd.DataFrame(rows)
    with atomic_path(HERE / "results" / "name_preference.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/objectives").resolve())
