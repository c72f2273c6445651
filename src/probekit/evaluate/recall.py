"""Memorisation check: does a pretrained model reproduce the attribute values of its own training biographies?

For each person's first biography entry and each attribute, the model is asked for the value where it stands in
the text, the way the model was trained to predict it:

* causal models (NTP, BICO): greedy continuation of ``[EOS] + text up to the value`` (teacher-forced prefix);
* ABI models: the value as one blank, ``[EOS] + text before + [MASK] + text after`` as Part A, the answer
  generated as its Part B span.

Exact match on token ids. Every person's biographies are in pretraining (P_train and P_test alike; the split only
matters for QA finetuning), so this measures memorisation, not extraction. Records carry the person and split,
and rates carry person-bootstrap intervals (``probekit.stats``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from probekit.data.pools import ATTRIBUTES
from probekit.data.tokenizer import EOS_ID
from probekit.data.tokens import TokenView
from probekit.objectives import as_objective
from probekit.objectives.base import Objective
from probekit.stats import DEFAULT_N_BOOT, person_bootstrap_table


def recall_items(dataset: Any, attrs: Sequence[str] = ATTRIBUTES, tokenizer: Any = None) -> list[dict[str, Any]]:
    """One item per (person, attribute) on the person's first entry: the token ids before the value (with the
    leading [EOS]), the value's ids and the ids after it, in the tokens of ``tokenizer`` (the model's; default: the
    dataset's)."""
    view = TokenView(tokenizer if tokenizer is not None else dataset.tokenizer)
    split = dict.fromkeys(dataset.split.get("train", []), "train")
    split |= dict.fromkeys(dataset.split.get("test", []), "test")
    items = []
    for e in dataset.entries:
        if e.idx != 0:
            continue
        ids, offsets = view.encode(e.text)
        for a in attrs:
            sp = e.first_span(a)
            i, j = view.span(offsets, sp.start, sp.end)
            items.append({"pid": e.pid, "attribute": a, "split": split.get(e.pid, "none"),
                          "before": [EOS_ID, *ids[:i]], "value": ids[i:j], "after": ids[j:]})  # fmt: skip
    return items


@torch.no_grad()
def biography_recall(model: torch.nn.Module, objective: Objective | str, items: Sequence[dict[str, Any]],
                     batch_size: int = 64) -> list[dict[str, Any]]:  # fmt: skip
    """Each item with ``exact`` (bool): whether the model reproduced the value (see the module docstring)."""
    obj = as_objective(objective)
    out = []
    if obj.infilling:  # the value as a blank: the text after it differs per item, so one Part A each
        gen = [obj.generate(model, [it["before"]], len(it["value"]) + 1, suffix=it["after"])[0] for it in items]
    else:  # a continuation, teacher-forced up to the value; items needing equal numbers of tokens share a batch
        by_index: dict[int, list[int]] = {}
        for n in sorted({len(it["value"]) for it in items}):
            idx = [k for k, it in enumerate(items) if len(it["value"]) == n]
            prompts = [items[k]["before"] for k in idx]
            by_index.update(zip(idx, obj.generate(model, prompts, n, batch_size=batch_size)))
        gen = [by_index[k] for k in range(len(items))]
    for it, g in zip(items, gen):
        out.append({"pid": it["pid"], "attribute": it["attribute"], "split": it["split"],
                    "exact": list(g[: len(it["value"])]) == list(it["value"])})  # fmt: skip
    return out


def recall_table(records: Sequence[dict[str, Any]], model_name: str, objective: str,
                 n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Recall rate per attribute and overall, with 95% person-bootstrap intervals (all people together)."""
    df = pd.DataFrame(records)
    correct = df["exact"].to_numpy(dtype=np.float64)
    pids = df["pid"].to_numpy()
    groups = np.concatenate([df["attribute"].to_numpy(dtype=object), np.full(len(df), "overall", dtype=object)])
    iv = person_bootstrap_table(np.concatenate([correct, correct]), np.concatenate([pids, pids]), groups, n_boot,
                                0.95, seed)  # fmt: skip
    rows = []
    for task in [*dict.fromkeys(df["attribute"]), "overall"]:
        v = correct if task == "overall" else correct[(df["attribute"] == task).to_numpy()]
        lo, hi = iv[task]
        rows.append({"model": model_name, "objective": objective, "task": task, "metric": "recall",
                     "value": float(v.mean()), "n": len(v), "ci_low": lo, "ci_high": hi})  # fmt: skip
    return pd.DataFrame(rows)
