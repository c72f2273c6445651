"""float32 against bf16 training, pair by pair, beside the yardstick of a second float32 training seed: final
training loss, training speed, memorisation, QA on P_test and the probe table, each number beside the float32 one
with its 95% person-bootstrap interval.

Usage: python experiments/precision/compare.py [RUN=runs/precision] [RESULTS=experiments/precision/results]
Pairs are the run's models named <stem>_fp32 and <stem>_bf16; a model <stem>_fp32_seed1 (the float32 training
with another seed) is compared with <stem>_fp32 the same way. Writes RESULTS/comparison.csv (one row per compared
number: pair, contrast, table, what, the float32 value and interval, the other model's value and interval, and
whether it lies inside the float32 interval) and RESULTS/comparison.txt (the readable summary printed here), and
copies the run's tables (results.csv, qa.csv, recall.csv, timings.csv, summary.txt) beside them.

Loss: mean training loss over the last 10% of logged steps (target: bf16 within 2% of float32). Speed: median
tokens/s of the logged intervals (one thread each; the pairs did not all train side by side, so the benchmark's
interleaved figures are the speed measurement). Probes: every probe of the pair matched on (kind, layer, position,
attribute, target), with the share whose accuracy lies inside the float32 interval, and the rows of the demo's
summary (Q at the name at the best layer, P at the attribute's own position at the last layer, first token).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

import pandas as pd

from probekit.io import atomic_path, read_jsonl

HERE = Path(__file__).resolve().parent
KEY = ["probe_kind", "hook", "layer", "position", "attribute", "target_kind", "reading"]
CONTRASTS = {"bf16": "_bf16", "float32 seed 1": "_fp32_seed1"}  # label -> suffix of the model set beside <stem>_fp32


def stems(run: Path) -> list[str]:
    names = [m["name"] for m in json.loads((run / "experiment.json").read_text())["models"]]
    return [n.removesuffix("_fp32") for n in names if n.endswith("_fp32")]


def training(run: Path, model: str) -> tuple[float, float]:
    """(final training loss: mean over the last 10% of logged steps, median logged tokens/s)."""
    rows = read_jsonl(run / "models" / model / "metrics.jsonl")
    n = max(1, len(rows) // 10)
    return statistics.fmean(r["loss"] for r in rows[-n:]), statistics.median(r["tokens_per_s"] for r in rows)


def rate_rows(df: pd.DataFrame, base: str, other: str, key: list[str]) -> list[dict[str, object]]:
    """One row per number of ``df`` (columns value, ci_low, ci_high) matched on ``key`` between the models."""
    a = df[df["model"] == base].set_index(key)[["value", "ci_low", "ci_high"]]
    b = df[df["model"] == other].set_index(key)[["value", "ci_low", "ci_high"]]
    both = a.join(b.add_suffix("_other"), how="inner")
    out = []
    for idx, r in both.iterrows():
        what = " ".join(str(x) for x in (idx if isinstance(idx, tuple) else (idx,)))
        inside = r["ci_low"] - 1e-9 <= r["value_other"] <= r["ci_high"] + 1e-9
        out.append({"what": what, "fp32": r["value"], "fp32_ci_low": r["ci_low"], "fp32_ci_high": r["ci_high"],
                    "other": r["value_other"], "other_ci_low": r["ci_low_other"],
                    "other_ci_high": r["ci_high_other"], "inside": bool(inside)})  # fmt: skip
    return out


def demo_rows(probes: pd.DataFrame) -> pd.DataFrame:
    """The demo summary's numbers per model: Q at the name (best layer) and P at the own position (last layer),
    first token, with intervals."""
    ok = probes[(probes["status"] == "ok") & (probes["target_kind"] == "first_token") & (probes["hook"] == "resid")]
    recs = []
    for (model, attr), g in ok.groupby(["model", "attribute"]):
        q = g[g["probe_kind"] == "q"]
        p = g[(g["probe_kind"] == "p") & (g["position"] == attr)]
        p = p[p["layer"] == p["layer"].max()]
        for what, rows in (("Q at the name, best layer", q), ("P at own position, last layer", p)):
            if len(rows):
                best = rows.loc[rows["accuracy"].idxmax()]
                recs.append({"model": model, "what": f"{what}: {attr}", "value": best["accuracy"],
                             "ci_low": best["ci_low"], "ci_high": best["ci_high"]})  # fmt: skip
    return pd.DataFrame(recs)


def pct(v: object, lo: object, hi: object) -> str:
    return f"{100 * float(v):5.1f} [{100 * float(lo):5.1f}, {100 * float(hi):5.1f}]"  # type: ignore[arg-type]


def share(rows: list[dict[str, object]]) -> str:
    inside = sum(bool(r["inside"]) for r in rows)
    diffs = [abs(float(r["other"]) - float(r["fp32"])) for r in rows]  # type: ignore[arg-type]
    return (f"{inside} of {len(rows)} inside the float32 interval ({inside / len(rows):.0%}); |difference| mean "
            f"{100 * statistics.fmean(diffs):.1f}, max {100 * max(diffs):.1f} points")  # fmt: skip


def main(run: Path, results: Path) -> pd.DataFrame:
    tables = {n: pd.read_csv(run / f"{n}.csv") for n in ("results", "qa", "recall") if (run / f"{n}.csv").exists()}
    qa = tables.get("qa")
    if qa is not None:
        qa = qa[(qa["split"] == "test") & (qa["metric"] == "exact_match")]
    sources = {"recall": tables.get("recall"), "qa": qa}
    probes = tables.get("results")
    models = set(pd.concat([t["model"] for t in tables.values()])) if tables else set()
    rows: list[dict[str, object]] = []
    lines: list[str] = []
    for stem in stems(run):
        base = f"{stem}_fp32"
        l32, s32 = training(run, base)
        lines.append(f"== {stem} (float32: {base})")
        for label, suffix in CONTRASTS.items():
            other = f"{stem}{suffix}"
            if other not in models:
                continue
            lo, so = training(run, other)
            rel = lo / l32 - 1
            head = {"pair": stem, "contrast": label}
            lines += [f"-- {label} ({other})",
                      f"final training loss: float32 {l32:.4f}, {label} {lo:.4f}, ratio - 1 = {rel:+.2%}"
                      + (f" (target within 2%: {'met' if abs(rel) <= 0.02 else 'MISSED'})" if label == "bf16" else ""),
                      f"training tokens/s (median of logged intervals, 1 thread): float32 {s32:,.0f}, {label} "
                      f"{so:,.0f}"]  # fmt: skip
            rows.append({**head, "table": "train", "what": "final training loss", "fp32": l32, "other": lo})
            rows.append({**head, "table": "train", "what": "tokens/s", "fp32": s32, "other": so})
            for name, table in sources.items():
                if table is None:
                    continue
                got = rate_rows(table, base, other, ["task", "metric"])
                rows += [{**head, "table": name, **r} for r in got]
                for r in got:
                    lines.append(f"{name:7s} {r['what']:28s} float32 "
                                 f"{pct(r['fp32'], r['fp32_ci_low'], r['fp32_ci_high'])}  {label} "
                                 f"{pct(r['other'], r['other_ci_low'], r['other_ci_high'])}  "
                                 f"{'inside' if r['inside'] else 'OUTSIDE'}")  # fmt: skip
                if got:
                    lines.append(f"{name}: {share(got)}")
            if probes is not None:
                p = probes[probes["status"] == "ok"].rename(columns={"accuracy": "value"})
                got = rate_rows(p, base, other, KEY)
                rows += [{**head, "table": "probe", **r} for r in got]
                if got:
                    lines.append(f"probes: {share(got)}")
                demo = demo_rows(probes[probes["model"].isin([base, other])])
                summary = rate_rows(demo, base, other, ["what"]) if len(demo) else []
                rows += [{**head, "table": "probe summary", **r} for r in summary]
                for r in summary:
                    lines.append(f"  {r['what']:45s} float32 {pct(r['fp32'], r['fp32_ci_low'], r['fp32_ci_high'])}"
                                 f"  {label} {pct(r['other'], r['other_ci_low'], r['other_ci_high'])}"
                                 f"  {'inside' if r['inside'] else 'OUTSIDE'}")  # fmt: skip
                if summary:
                    lines.append(f"probe summary: {share(summary)}")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    results.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    with atomic_path(results / "comparison.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(results / "comparison.txt") as tmp:
        tmp.write_text(text + "\n")
    for name in ("results.csv", "qa.csv", "recall.csv", "timings.csv", "summary.txt"):
        if (run / name).exists():
            with atomic_path(results / name) as tmp:
                shutil.copyfile(run / name, tmp)
    return table


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/precision"),
         Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "results")  # fmt: skip
