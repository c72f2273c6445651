"""Print the tables of README.md from the patching results (run after run.sh):
python experiments/patching_demo/summary.py runs/patching_demo/patch_qa runs/patching_demo/patch_bio"""

from __future__ import annotations

import sys

import pandas as pd

ROWS = [("resid", "last"), ("resid", "name_all"), ("attn_out", "last"), ("mlp_out", "last"), ("mlp_out", "name_all")]


def table(path: str, mode: str, metric: str = "greedy_first") -> str:
    df = pd.read_parquet(f"{path}/results.parquet")
    df = df[(df["mode"] == mode) & (df["metric"] == metric)]
    lines = ["| attribute | n | clean / corrupted | state | layer 0 | 1 | 2 | 3 | 4 |", "|---|---|---|---|---|---|---|---|---|"]
    for attr, a in df.groupby("attribute", sort=False):
        base = f"{100 * a['clean'].iloc[0]:.0f} / {100 * a['corrupt'].iloc[0]:.0f}"
        for hook, label in ROWS:
            s = a[(a.hook == hook) & (a.position_label == label)].sort_values("layer")
            cells = [f"{100 * v:.0f} [{100 * lo:.0f}, {100 * hi:.0f}]" for v, lo, hi in zip(s.value, s.ci_low, s.ci_high)]
            cells += [""] * (5 - len(cells))
            lines.append(f"| {attr} | {int(a.n_pairs.max())} | {base} | {hook} @ {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def full_map(path: str, attr: str, mode: str = "patch", hook: str = "resid", metric: str = "greedy_first") -> str:
    df = pd.read_parquet(f"{path}/results.parquet")
    a = df[(df["mode"] == mode) & (df.metric == metric) & (df.attribute == attr) & (df.hook == hook)]
    piv = a.pivot_table(index=["position", "token"], columns="layer", values="value")
    layers = list(piv.columns)
    lines = ["| position | " + " | ".join(f"layer {v}" for v in layers) + " |", "|---" * (len(layers) + 1) + "|"]
    for (pos, tok), r in piv.iterrows():
        lines.append(f"| {pos} `{tok}` | " + " | ".join(f"{100 * v:.0f}" for v in r) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(f"\n{sys.argv[1]}: full map, company, patch, resid\n")
    print(full_map(sys.argv[1], "company"))
    print(f"\n{sys.argv[1]}: full map, birth_date, patch, resid\n")
    print(full_map(sys.argv[1], "birth_date"))
    for path in sys.argv[1:]:
        for mode in ("patch", "restore"):
            print(f"\n{path}: {mode}, greedy first token = the clean run's answer (%; 95% person bootstrap)\n")
            print(table(path, mode))
