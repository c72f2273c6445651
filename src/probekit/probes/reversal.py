"""Where the reversed fact lives: read-outs of names and descriptions on reversal-curse prompts.

Two read-outs, each on prompts that end right before the answer, so the answer is not in the context:

- ``n2d`` (name -> description): name-first prompts up to the description's first word (``<name> is the``), read
  at the name's last token (``name``) and the prompt's last token (``answer``, where the next token is the role);
  targets: the description's ``role`` word (``the {role} who ...``) and its ``deed`` word (``... who {deed} ...``).
- ``d2n`` (description -> name): description-first prompts (``The <description> is``), read at the
  description's last token (``description``) and the prompt's last token (``answer``); targets: the
  ``first_name`` and ``last_name`` tokens.

What a read-out measures. Every person has one name and one description, so a probe that predicts "which person"
learns a lookup table that cannot generalise to unseen people. Instead the read-out predicts a *token* in the
model's own vocabulary: a ridge-regression map from the residual state to the unembedding vector of the target's
first token (``W_U[target]``), trained on some people and scored on other people as a choice among every value
the target takes in the data (nearest unembedding by cosine; chance = 1 / number of values). A person's role,
deed or name token is shared with other people, and the map transfers to unseen people only if the model writes
the association into its residual stream in the same (unembedding-aligned) code for everyone.

People. ``train`` people fit the map (a seeded quarter of them chooses the ridge strength); two test sets:

- ``same_direction``: held-out people whose facts were trained in the read-out's direction (``n2d``: ``p2d`` and
  ``both`` people; ``d2n``: ``d2p`` and ``both``), a third of them, seeded;
- ``reversed``: the people seen only in the other direction (``n2d``: ``d2p``, the D2N-reverse people; ``d2n``:
  ``p2d``, the N2D-reverse people). A map trained on the trained direction reads the reversed association here
  only if the model stored it the same way.

Floors: ``chance`` (one over the number of values) and ``baseline`` (always answering the training people's
most common value, scored on the test people: a state that carries nothing, such as the embedding of the same
token in every prompt, lands here). Controls (as for the biography probes): a **control task** (each person gets
a random value of the target, fixed per person and seed; the same map trained on it shows what the read-out
learns without the model's knowledge: chance on unseen people), and a **random-init** copy of the model.
Intervals resample people.

Templates: ``templates="test"`` reads the held-out test templates, ``"train"`` the training paraphrases (the
prompt formats the model was trained on), ``"both"`` each in turn (a ``templates`` column); the map is always
fitted on the same kind of prompts it is scored on. The per-person link uses the held-out templates, which are
the prompts the reversal evaluation asks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from probekit.data.reversal import ReversalConfig, ReversalData, _split, template_split
from probekit.data.tokens import TokenView
from probekit.errors import UserError
from probekit.probes.activations import collect_activations, hook_points, model_dims
from probekit.stats import person_bootstrap

READOUTS: dict[str, tuple[str, ...]] = {"n2d": ("role", "deed"), "d2n": ("first_name", "last_name")}
POSITIONS: dict[str, tuple[str, ...]] = {"n2d": ("name", "answer"), "d2n": ("description", "answer")}
TRAINED_GROUPS: dict[str, tuple[str, ...]] = {"n2d": ("p2d", "both"), "d2n": ("d2p", "both")}
REVERSED_GROUP: dict[str, str] = {"n2d": "d2p", "d2n": "p2d"}
REVERSAL_TASK: dict[str, str] = {"n2d": "D2N-reverse", "d2n": "N2D-reverse"}  # the task on the reversed people
SAME_TASK: dict[str, str] = {"n2d": "N2D", "d2n": "D2N"}


@dataclass
class ReversalProbeSpec:
    """Settings of the reversal read-outs (``probekit probe --data <reversal dir>``)."""

    readouts: tuple[str, ...] = ("n2d", "d2n")
    templates: str = "both"  # "test": held-out templates; "train": the training paraphrases; "both": each in turn
    layers: list[int] | None = None  # residual layers (None: all, 0 = embeddings ... L)
    ridge_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)  # chosen on validation people
    test_fraction: float = 1 / 3  # of the trained-direction people: the same_direction test set
    val_fraction: float = 0.25  # of the training people: choose the ridge strength
    bootstrap: int = 1000
    seed: int = 0
    batch_size: int = 64
    kind: str = field(default="reversal", repr=False)

    def __post_init__(self) -> None:
        bad = [r for r in self.readouts if r not in READOUTS]
        if bad or not self.readouts:
            raise UserError(f"reversal readouts {bad or '[]'}: choose from {list(READOUTS)}")
        if self.templates not in ("test", "train", "both"):
            raise UserError(f"templates {self.templates!r}: use 'test' (held-out), 'train' (trained formats) or "
                            "'both'")  # fmt: skip
        if not 0 < self.test_fraction < 1 or not 0 < self.val_fraction < 1:
            raise UserError("test_fraction and val_fraction must be in (0, 1)")
        if not self.ridge_grid or min(self.ridge_grid) <= 0:
            raise UserError("ridge_grid needs positive strengths")


@dataclass
class ReversalTask:
    """Token sequences of one read-out with read positions, persons and target token ids."""

    readout: str
    sequences: list[list[int]]
    positions: np.ndarray  # [N, P]
    position_names: list[str]
    pids: np.ndarray  # [N] person index in ``data.people``
    targets: dict[str, np.ndarray]  # target -> [N] token id of the target's first token


def _person_key(seed: int, text: str) -> float:
    h = hashlib.blake2b(f"{seed}/{text}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def _parts(p: Any) -> dict[str, tuple[str, str]]:
    """Each target's (context, value): the value's first token is read as it follows its context."""
    first, last = p.name.split(" ", 1)
    role, deed_place = p.description[len("the ") :].split(" who ", 1)
    return {
        "role": ("the ", role), "deed": (f"the {role} who ", deed_place.split(" ")[0]),
        "first_name": ("is ", first), "last_name": (f"is {first} ", last),
    }  # fmt: skip


def build_reversal_tasks(data: ReversalData, view: TokenView, spec: ReversalProbeSpec,
                         templates_kind: str = "test") -> list[ReversalTask]:  # fmt: skip
    """The read-out prompts of every person (the ``templates_kind`` templates: ``test`` or ``train``), read
    positions found from the characters of the name / description in the prompt."""
    if not data.people:
        raise UserError(f"{data.root} has no people.jsonl: the read-outs need each person's name, description and "
                        "group; use a directory made by `probekit data reversal`")  # fmt: skip
    cfg = data.manifest.get("config")
    if not cfg:
        raise UserError(f"{data.root}/manifest.json has no config: the template split is unknown")
    templates = template_split(ReversalConfig(**cfg))
    tasks = []
    for readout in spec.readouts:
        kind, at = ("p2d", "<description>") if readout == "n2d" else ("d2p", "<name>")
        seqs: list[list[int]] = []
        pos: list[list[int]] = []
        pids: list[int] = []
        targets: dict[str, list[int]] = {t: [] for t in READOUTS[readout]}
        first_ids: dict[tuple[str, str, str], int] = {}
        for pid, p in enumerate(data.people):
            parts = _parts(p)
            for t in templates[f"{kind}_{templates_kind}"]:
                prompt = _split(t, p.name, p.description, at).prompt
                if readout == "n2d":  # the description starts with "the": its role word is the next token
                    prompt += " the"
                span_text = p.name if readout == "n2d" else p.description
                start = prompt.find(span_text)
                if start < 0:  # a description at the start of a sentence may be capitalised
                    start = prompt.lower().find(span_text.lower())
                if start < 0:
                    raise UserError(f"cannot find {span_text!r} in the prompt {prompt!r}")
                seq, offsets = view.sequence(prompt)
                _, j = view.span(offsets, start, start + len(span_text))
                shift = len(view.start_ids)
                seqs.append(seq)
                pos.append([j - 1 + shift, len(seq) - 1])
                pids.append(pid)
                for target in targets:
                    context, value = parts[target]
                    key = (target, context, value)
                    if key not in first_ids:
                        first_ids[key] = view.first_token(context, value)
                    targets[target].append(first_ids[key])
        tasks.append(ReversalTask(readout, seqs, np.asarray(pos), list(POSITIONS[readout]), np.asarray(pids),
                                  {t: np.asarray(v) for t, v in targets.items()}))  # fmt: skip
    return tasks


def person_sets(data: ReversalData, readout: str, spec: ReversalProbeSpec) -> dict[str, list[int]]:
    """``train``, ``val`` (inside train), ``same_direction`` and ``reversed`` person indices of a read-out."""
    trained = [i for i, p in enumerate(data.people) if p.group in TRAINED_GROUPS[readout]]
    order = sorted(trained, key=lambda i: _person_key(spec.seed, f"{readout}/{data.people[i].name}"))
    n_test = max(1, round(spec.test_fraction * len(order)))
    test, train = sorted(order[:n_test]), order[n_test:]
    n_val = max(1, round(spec.val_fraction * len(train)))
    if len(train) - n_val < 2:
        raise UserError(f"{readout}: only {len(train)} training people; use a reversal dataset with more people")
    val = sorted(train[:n_val])
    reversed_ = [i for i, p in enumerate(data.people) if p.group == REVERSED_GROUP[readout]]
    return {"train": sorted(train), "val": val, "same_direction": test, "reversed": reversed_}


def unembedding(model: Any) -> Tensor:
    """The model's output embedding [V, d] (a HookedLM's ``unembed``; a bridge's ``W_U`` transposed)."""
    if hasattr(model, "unembed") and hasattr(model.unembed, "weight"):
        return model.unembed.weight.detach().float().cpu()
    w_u = getattr(model, "W_U", None)
    if w_u is None:
        raise UserError("the model exposes no unembedding (unembed.weight or W_U); the read-out needs it")
    return w_u.detach().float().cpu().T


def _fit(h: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """Ridge map from states h [n, d] to vectors y [n, d]: (mean, A [d, d])."""
    mu = h.mean(0)
    hc = h - mu
    A = torch.linalg.solve(hc.T @ hc + lam * len(h) * torch.eye(h.shape[1]), hc.T @ y)
    return mu, A


def _choose(h: Tensor, mu: Tensor, A: Tensor, cand: Tensor) -> Tensor:
    """Index into ``cand`` [C, d] of the candidate nearest (cosine) to each mapped state [n]."""
    z = torch.nn.functional.normalize((h - mu) @ A, dim=-1)
    return (z @ torch.nn.functional.normalize(cand, dim=-1).T).argmax(-1)


def control_targets(ids: np.ndarray, pids: np.ndarray, seed: int, key: str) -> np.ndarray:
    """Control labelling: each person gets a value drawn from the target's values (one per person), fixed per
    person, target and seed."""
    values = np.unique(ids)
    per_person = {int(p): values[int(_person_key(seed, f"control/{key}/{p}") * len(values))] for p in np.unique(pids)}
    return np.asarray([per_person[int(p)] for p in pids])


def run_reversal_probes(model: Any, data: ReversalData, view: TokenView, spec: ReversalProbeSpec, name: str,
                        objective: str = "unknown", reading: str = "causal",
                        progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Fit and score every (read-out, position, layer, target) map; returns the table (one row per map and test
    set, with intervals, chance, control accuracy and selectivity) and the per-person table (mean correctness
    of each test person's prompts)."""
    kinds = ["train", "test"] if spec.templates == "both" else [spec.templates]
    tasks = [(k, t) for k in kinds for t in build_reversal_tasks(data, view, spec, k)]
    dims = model_dims(model)
    layers = spec.layers if spec.layers is not None else list(range(dims.n_layers + 1))
    points = hook_points(dims.n_layers, ["resid"], layers)
    W = unembedding(model)  # [V, d]
    rows: list[dict[str, Any]] = []
    people_rows: list[dict[str, Any]] = []
    for templates_kind, task in tasks:
        if max(len(s) for s in task.sequences) > dims.n_ctx:
            raise UserError(f"{task.readout} prompts are longer than the model's context ({dims.n_ctx})")
        acts = collect_activations(model, task.sequences, task.positions, points, position_names=task.position_names,
                                   batch_size=spec.batch_size, reading=reading)  # fmt: skip
        sets = person_sets(data, task.readout, spec)
        idx = {k: np.flatnonzero(np.isin(task.pids, v)) for k, v in sets.items()}
        fit_rows = np.setdiff1d(idx["train"], idx["val"])
        for target, ids in task.targets.items():
            values = np.unique(ids)  # candidate tokens: every value of the target in the data
            cand = W[torch.as_tensor(values)]  # [C, d]
            col = {int(v): c for c, v in enumerate(values)}
            for labelling, lab in (("real", ids), ("control", control_targets(ids, task.pids, spec.seed, target))):
                y_all = W[torch.as_tensor(lab)]  # [N, d]
                truth = np.asarray([col[int(v)] for v in lab])
                for k_pt, pt in enumerate(acts.points):
                    for p_i, position in enumerate(task.position_names):
                        h = acts.get(k_pt, p_i)  # [N, d]
                        best, best_acc = spec.ridge_grid[0], -1.0
                        for lam in spec.ridge_grid:  # the ridge strength, on validation people
                            mu, A = _fit(h[fit_rows], y_all[fit_rows], lam)
                            acc = float((_choose(h[idx["val"]], mu, A, cand).numpy() == truth[idx["val"]]).mean())
                            if acc > best_acc:
                                best, best_acc = lam, acc
                        mu, A = _fit(h[idx["train"]], y_all[idx["train"]], best)
                        values_tr, counts_tr = np.unique(truth[idx["train"]], return_counts=True)
                        majority = values_tr[counts_tr.argmax()]  # the training people's most common value
                        for test_set in ("same_direction", "reversed"):
                            r = idx[test_set]
                            correct = (_choose(h[r], mu, A, cand).numpy() == truth[r]).astype(np.float64)
                            rows.append({
                                "model": name, "objective": objective, "readout": task.readout,
                                "position": position, "target": target, "layer": pt.layer, "test_set": test_set,
                                "labelling": labelling, "accuracy": float(correct.mean()), "_correct": correct,
                                "_pids": task.pids[r], "chance": 1.0 / len(values),
                                "baseline": float((truth[r] == majority).mean()), "n_prompts": len(r),
                                "n_people": len(sets[test_set]), "ridge": best, "templates": templates_kind,
                                "reading": reading,
                            })  # fmt: skip
    table = _with_intervals(rows, spec)
    for row in rows:
        if row["labelling"] != "real":
            continue
        df = pd.DataFrame({"pid": row["_pids"], "correct": row["_correct"]}).groupby("pid")["correct"].mean()
        for pid, v in df.items():
            people_rows.append({k: row[k] for k in ("model", "objective", "readout", "position", "target", "layer",
                                                    "test_set", "templates", "reading")}
                               | {"person": data.people[int(pid)].name, "probe_correct": float(v)})  # fmt: skip
    return table, pd.DataFrame(people_rows)


def _with_intervals(rows: Sequence[dict[str, Any]], spec: ReversalProbeSpec) -> pd.DataFrame:
    """Real rows with person-bootstrap intervals, the control accuracy and the selectivity (and its interval)."""
    key = ("model", "readout", "position", "target", "layer", "test_set", "templates", "reading")
    control = {tuple(r[k] for k in key): r for r in rows if r["labelling"] == "control"}
    out = []
    for r in rows:
        if r["labelling"] != "real":
            continue
        c = control[tuple(r[k] for k in key)]
        both = np.stack([r["_correct"], r["_correct"] - c["_correct"]])  # [2, n] accuracy and selectivity
        iv = person_bootstrap(both, r["_pids"], spec.bootstrap, seed=spec.seed)
        out.append({k: v for k, v in r.items() if not k.startswith("_") and k != "labelling"}
                   | {"ci_low": float(iv.low[0]), "ci_high": float(iv.high[0]),
                      "control_accuracy": c["accuracy"], "selectivity": r["accuracy"] - c["accuracy"],
                      "selectivity_ci_low": float(iv.low[1]), "selectivity_ci_high": float(iv.high[1])})  # fmt: skip
    return pd.DataFrame(out)


def reversal_link(people: pd.DataFrame, predictions: pd.DataFrame, data: ReversalData, n_boot: int = 1000,
                  seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Per person: does the reversal succeed exactly when the read-out reads the reversed association?

    ``people``: ``run_reversal_probes``' per-person table (the ``reversed`` test set is used); ``predictions``:
    ``probekit eval reversal``'s ``predictions.jsonl`` (task, target, exact_match). For each read-out, position,
    target and layer: the agreement (share of people where probe_correct > 0.5 and reversal success > 0.5 agree),
    the Pearson r over people of the two rates with a person-bootstrap interval (NaN when either is constant),
    and both means."""
    by_name = {p.name: p for p in data.people}
    by_desc = {p.description: p for p in data.people}
    rows = []
    held_out = people[(people["test_set"] == "reversed") & (people["templates"] == "test")]  # the eval's templates
    for (readout, position, target, layer, model, reading), g in held_out.groupby(
        ["readout", "position", "target", "layer", "model", "reading"]
    ):
        task = REVERSAL_TASK[str(readout)]
        pred = predictions[predictions["task"] == task]
        if pred.empty:
            continue
        who = [(by_name.get(t.strip()) or by_desc.get(t.strip())) for t in pred["target"]]
        success = pd.Series(pred["exact_match"].astype(float).to_numpy(),
                            index=[p.name if p is not None else None for p in who]).groupby(level=0).mean()  # fmt: skip
        merged = g.set_index("person")["probe_correct"].to_frame().join(success.rename("success"), how="inner")
        if merged.empty:
            continue
        a, b = merged["probe_correct"].to_numpy(), merged["success"].to_numpy()
        agree = ((a > 0.5) == (b > 0.5)).astype(np.float64)
        iv = person_bootstrap(agree[None], np.arange(len(agree)), n_boot, seed=seed)
        r, lo, hi = _pearson_ci(a, b, n_boot, seed)
        rows.append({"model": model, "readout": readout, "position": position, "target": target, "layer": layer,
                     "reading": reading, "task": task, "n_people": len(merged), "probe_mean": float(a.mean()),
                     "reversal_mean": float(b.mean()), "agreement": float(agree.mean()),
                     "agreement_ci_low": float(iv.low[0]), "agreement_ci_high": float(iv.high[0]),
                     "pearson_r": r, "r_ci_low": lo, "r_ci_high": hi})  # fmt: skip
    return pd.DataFrame(rows)


def _pearson_ci(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Pearson r of two per-person rates with a percentile interval over resampled people (NaN if constant)."""

    def r_of(x: np.ndarray, y: np.ndarray) -> float:
        if x.std() == 0 or y.std() == 0:
            return float("nan")
        return float(np.corrcoef(x, y)[0, 1])

    r = r_of(a, b)
    if np.isnan(r) or n_boot == 0:
        return r, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = [r_of(a[i], b[i]) for i in (rng.integers(0, len(a), len(a)) for _ in range(n_boot))]
    draws_arr = np.asarray([d for d in draws if not np.isnan(d)])
    if not len(draws_arr):
        return r, float("nan"), float("nan")
    return r, float(np.percentile(draws_arr, 2.5)), float(np.percentile(draws_arr, 97.5))
