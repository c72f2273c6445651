"""The memorisation check's items: the value's tokens sit exactly where the biography has them."""

from __future__ import annotations

from pathlib import Path

from probekit.data.store import build_dataset, load_dataset
from probekit.data.tokenizer import EOS_ID, encode_with_offsets
from probekit.evaluate.recall import recall_items, recall_table


def test_recall_items_cut_each_entry_at_the_value(tmp_path: Path) -> None:
    build_dataset(tmp_path / "d", n_people=12, augmentation="multi2+permute", seed=3)
    ds = load_dataset(tmp_path / "d")
    items = recall_items(ds)
    assert len(items) == 12 * 6  # first entry only, six attributes
    tok = ds.tokenizer
    for it in items:
        person = ds.person(it["pid"])
        entry = next(e for e in ds.entries if e.pid == it["pid"] and e.idx == 0)
        ids, _ = encode_with_offsets(tok, entry.text)
        assert it["before"][0] == EOS_ID and it["before"][1:] + it["value"] + it["after"] == ids
        assert tok.decode(it["value"]).strip() == person.attrs[it["attribute"]].strip()
        assert it["split"] in ("train", "test")


def test_recall_table_rates_and_intervals() -> None:
    recs = [{"pid": p, "attribute": a, "split": "train", "exact": (p + k) % 2 == 0}
            for p in range(10) for k, a in enumerate(["company", "major"])]  # fmt: skip
    t = recall_table(recs, "m", "ntp", n_boot=200).set_index("task")
    assert t.loc["overall", "value"] == 0.5 and t.loc["company", "value"] == 0.5 and t.loc["company", "n"] == 10
    # each person gets exactly one of two right: resampling people cannot move the overall rate (clustered), while
    # per attribute it can
    assert t.loc["overall", "ci_low"] == t.loc["overall", "ci_high"] == 0.5
    assert t.loc["company", "ci_low"] < 0.5 < t.loc["company", "ci_high"]
