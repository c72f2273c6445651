"""The tidy probe-results table: one row per probe, written as Parquet and CSV.

Columns (``COLUMNS``, in this order): ``model``, ``objective``, ``dataset``, ``probe_kind`` (``p``/``q``),
``hook`` (``resid``...), ``layer`` (resid: 0 = embeddings ... L = output of the last block), ``position``
(P: the attribute whose value follows the read token; Q: ``name``), ``attribute`` (what is predicted),
``target_kind`` (``first_token``/``value``), ``accuracy`` (test people; classes unseen in training count as
errors), ``baseline`` (training majority class scored on the test people), ``n_train``, ``n_test``,
``n_classes`` (distinct training classes), ``status`` (``ok`` or ``skipped: <reason>``), then the extras
``EXTRA_COLUMNS``: ``n_test_unseen``, ``examples_per_class``, ``train_accuracy``, ``val_accuracy``, ``l2``,
``engine``, then the rigour columns ``STAT_COLUMNS``: ``ci_low``/``ci_high`` (person-clustered bootstrap
interval of the accuracy, ``probekit.stats``), ``control_accuracy`` (the same probe trained on a per-person
random control labelling), ``selectivity`` (accuracy - control accuracy) with ``selectivity_ci_low``/``_high``,
``n_test_people``, ``seed`` (the model's training seed) and ``reading`` (``causal`` or ``abi``: how the model
was read, ``probekit.probes.activations``), and the tokenizer the model was read with (``TOKENIZER_COLUMNS``:
``tokenizer``, its name or ``probekit``; ``tokenizer_type``, e.g. ``probekit word-level`` or ``byte-level BPE``;
``tokenizer_vocab``, its size). Tables written before these columns existed read back with them empty (and
``reading`` causal).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from probekit.errors import UserError, UserFileNotFoundError
from probekit.io import atomic_path, read_table

COLUMNS: tuple[str, ...] = (
    "model", "objective", "dataset", "probe_kind", "hook", "layer", "position", "attribute", "target_kind",
    "accuracy", "baseline", "n_train", "n_test", "n_classes", "status",
)  # fmt: skip
EXTRA_COLUMNS: tuple[str, ...] = (
    "n_test_unseen", "examples_per_class", "train_accuracy", "val_accuracy", "l2", "engine",
)  # fmt: skip
STAT_COLUMNS: tuple[str, ...] = (
    "ci_low", "ci_high", "control_accuracy", "selectivity", "selectivity_ci_low", "selectivity_ci_high",
    "n_test_people", "seed", "reading",
)  # fmt: skip
TOKENIZER_COLUMNS: tuple[str, ...] = ("tokenizer", "tokenizer_type", "tokenizer_vocab")
RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
_INT_COLUMNS = ("layer", "n_train", "n_test", "n_classes", "n_test_unseen", "n_test_people", "seed", "tokenizer_vocab")
_FLOAT_COLUMNS = ("accuracy", "baseline", "examples_per_class", "train_accuracy", "val_accuracy", "l2", "ci_low",
                  "ci_high", "control_accuracy", "selectivity", "selectivity_ci_low",
                  "selectivity_ci_high")  # fmt: skip


def make_table(rows: Iterable[dict[str, object]]) -> pd.DataFrame:
    """Rows (dicts with at least ``COLUMNS``) -> a DataFrame with the standard column order and dtypes."""
    df = pd.DataFrame(list(rows))
    return normalise(df)


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"results table lacks column(s) {missing}; expected at least {list(COLUMNS)}")
    known = COLUMNS + EXTRA_COLUMNS + STAT_COLUMNS + TOKENIZER_COLUMNS
    for c in EXTRA_COLUMNS + STAT_COLUMNS + TOKENIZER_COLUMNS:
        if c not in df.columns:
            df[c] = pd.NA
    order = list(known) + [c for c in df.columns if c not in known]
    df = df[order].copy()
    for c in _INT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    df["reading"] = df["reading"].fillna("causal")  # tables from before the abi reading: all causal
    for c in _FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("model", "objective", "dataset", "probe_kind", "hook", "position", "attribute", "target_kind",
              "status", "engine", "reading", "tokenizer", "tokenizer_type"):  # fmt: skip
        df[c] = df[c].astype("string")
    return df.reset_index(drop=True)


def write_results(df: pd.DataFrame, out_dir: str | Path, provenance: dict | None = None) -> tuple[Path, Path]:
    """Write ``results.parquet`` and ``results.csv`` into ``out_dir`` atomically; returns both paths.

    ``provenance`` (a ``probekit.provenance.record``; default: a record of this process without inputs) goes into
    the Parquet schema metadata (key ``probekit_provenance``) and, with both files' SHA-256, into
    ``results.provenance.json`` beside them.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as papq

    from probekit import provenance as prov

    df = normalise(df)
    out = Path(out_dir)
    rec = provenance if provenance is not None else prov.record()
    pq, csv = out / RESULTS_PARQUET, out / RESULTS_CSV
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"probekit_provenance": json.dumps(rec, sort_keys=True).encode()}
    with atomic_path(pq) as tmp:
        papq.write_table(table.replace_schema_metadata(meta), tmp)
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    prov.write_table_sidecar(out, rec, [pq, csv])
    return pq, csv


def read_provenance(path: str | Path) -> dict | None:
    """The provenance record stored in a results table (Parquet metadata, else the sidecar JSON), if any."""
    import json

    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_PARQUET
    side = p.parent / "results.provenance.json"
    if p.suffix == ".parquet" and p.exists():
        import pyarrow.parquet as papq

        meta = papq.read_schema(p).metadata or {}
        if b"probekit_provenance" in meta:
            return json.loads(meta[b"probekit_provenance"])
    if side.exists():
        return json.loads(side.read_text(encoding="utf-8"))
    return None


def read_results(paths: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """Read one or more result tables (Parquet or CSV, or a directory holding ``results.parquet``) into one."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / RESULTS_PARQUET
        if not p.exists():
            raise UserFileNotFoundError(f"results table {p} does not exist; run `probekit probe` first")
        if p.suffix in (".csv", ".parquet"):
            frames.append(read_table(p, "results table"))
        else:
            raise UserError(f"{p}: unknown results format {p.suffix!r}; use .parquet or .csv")
    if not frames:
        raise UserError("no results tables given")
    try:
        df = normalise(pd.concat(frames, ignore_index=True))
        check_values(df)
    except UserError as e:  # name the tables: a column or value problem is theirs
        raise UserError(f"{', '.join(map(str, paths))}: {e}") from None
    return df


# The columns that identify one probe: a table holds each at most once.
KEY_COLUMNS: tuple[str, ...] = ("model", "probe_kind", "hook", "layer", "position", "attribute", "target_kind",
                                "reading", "seed", "step")  # fmt: skip
_RATE_COLUMNS = ("accuracy", "baseline", "train_accuracy", "val_accuracy", "ci_low", "ci_high", "control_accuracy")


def check_values(df: pd.DataFrame) -> None:
    """Refuse what no probe writes: rates outside [0, 1] and the same probe twice (a table given twice, or two
    tables of one model concatenated by hand), which would count that probe double in every figure."""
    for col in _RATE_COLUMNS:
        if col in df.columns:
            bad = df[col].notna() & ~df[col].between(0.0, 1.0)
            if bad.any():
                raise UserError(f"column {col!r} holds {int(bad.sum())} value(s) outside [0, 1] (e.g. "
                                f"{df.loc[bad, col].iloc[0]!r}); rates are fractions of test people: fix or "
                                "regenerate the table")  # fmt: skip
    key = [c for c in KEY_COLUMNS if c in df.columns]
    dup = df.duplicated(subset=key, keep=False)
    if dup.any():
        first = df.loc[dup].iloc[0]
        raise UserError(f"{int(dup.sum())} rows repeat the same probe (e.g. model {first['model']!r}, "
                        f"{first['probe_kind']} layer {first['layer']} {first['position']} -> {first['attribute']}); "
                        "give each table once, or name models apart")  # fmt: skip


def _attr_order(values: Iterable[str]) -> list[str]:
    from probekit.data.pools import ATTRIBUTES

    present = list(dict.fromkeys(values))
    return [a for a in ATTRIBUTES if a in present] + [a for a in present if a not in ATTRIBUTES]


def _label(model: str, hook: str) -> str:
    """A model's name in summaries, with the hook family when it is not the residual stream."""
    return model if hook == "resid" else f"{model} [{hook}]"


def reading_labels(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with rows of a non-causal reading renamed ``<model> [<reading> reading]``, so summaries and figures
    keep the readings of one model apart."""
    other = df["reading"].astype(str) != "causal"
    if not other.any():
        return df
    df = df.copy()
    df["model"] = df["model"].astype(str).where(~other, df["model"].astype(str) + " [" + df["reading"].astype(str)
                                                + " reading]").astype("string")  # fmt: skip
    return df


def summary_table(df: pd.DataFrame) -> str:
    """A readable text summary of a results table.

    Q-probes: per model, hook family and target, each attribute's best accuracy over layers, its majority baseline
    and the layer (``acc (baseline) @layer``, in %). P-probes: at each model's last layer, each attribute's accuracy
    when read right before its own value and the mean over the other positions (``own / others``, in %). Hook
    families other than ``resid`` (and the embedding-update probe) get their own rows: ``model [hook]``.
    """
    df = reading_labels(normalise(df))
    ok = df[df["status"] == "ok"]
    lines: list[str] = []
    q = ok[ok["probe_kind"] == "q"]
    if len(q):
        attrs = _attr_order(q["attribute"].astype(str))
        recs = []
        for (model, hook, target), g in q.groupby(["model", "hook", "target_kind"], sort=False):
            rec: dict[str, object] = {"model": _label(model, hook), "target": target}
            for a in attrs:
                ga = g[g["attribute"] == a]
                if len(ga):
                    best = ga.loc[ga["accuracy"].idxmax()]
                    ci = f" [{100 * best.ci_low:.0f}-{100 * best.ci_high:.0f}]" if pd.notna(best.ci_low) else ""
                    sel = f" s{100 * best.selectivity:+.0f}" if pd.notna(best.selectivity) else ""
                    rec[a] = f"{100 * best.accuracy:.0f}{ci} ({100 * best.baseline:.0f}){sel} @{int(best.layer)}"
            recs.append(rec)
        lines.append("Q-probes at the name: best accuracy % over layers [95% person-bootstrap interval] (majority "
                     "baseline %) s<selectivity vs the control task> @layer")  # fmt: skip
        lines.append(pd.DataFrame(recs).fillna("-").to_string(index=False))
    p = ok[ok["probe_kind"] == "p"]
    if len(p):
        attrs = _attr_order(p["attribute"].astype(str))
        recs = []
        for (model, hook, target), g in p.groupby(["model", "hook", "target_kind"], sort=False):
            g = g[g["layer"] == g["layer"].max()]
            rec = {"model": _label(model, hook), "target": f"{target} @{int(g['layer'].max())}"}
            for a in attrs:
                ga = g[g["attribute"] == a]
                own = ga[ga["position"] == a]["accuracy"]
                other = ga[ga["position"] != a]["accuracy"]
                if len(ga):
                    rec[a] = (f"{100 * own.mean():.0f}" if len(own) else "-") + " / " + (
                        f"{100 * other.mean():.0f}" if len(other) else "-")  # fmt: skip
            recs.append(rec)
        if lines:
            lines.append("")
        lines.append("P-probes at the last layer: accuracy % read right before the attribute's own value / "
                     "mean over the other positions")  # fmt: skip
        lines.append(pd.DataFrame(recs).fillna("-").to_string(index=False))
    skipped = df[df["status"] != "ok"]
    if len(skipped):
        counts = skipped.groupby("status").size()
        lines.append("Skipped probes: " + ", ".join(f"{n} x {s}" for s, n in counts.items()))
    if not lines:
        lines.append("(empty results table)")
    return "\n".join(lines)
