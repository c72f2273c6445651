"""The paper's embedding-update probe: its cost before and after issue 28's cut, side by side, and what it computes.

Usage: python benchmarks/bench_embed_probe.py --model RUN_DIR --data DATA_DIR [--kinds p,q --epochs 20
                                              --no-control --threads 1 --clock cpu]
       python benchmarks/bench_embed_probe.py --people 300     # fresh bioS data, random-init 4 x 128 model

The probe as the committed configs run it (``probes/embed_update.yaml``, ``experiments/objectives``: first-token
targets, rank 2 for P and 16 for Q, 20 epochs, patience 4, heads read at their own best validation epoch), on a
trained model (``--model``/``--data``: a probekit run directory and its dataset) or, without one, on a fresh
``multi5+permute`` dataset and a random-init model of the same shape (the cost per pass is the same, but an
untrained model's curves stop early and say nothing about the accuracies). For each probe kind (P: every
attribute's position; Q: the name) and each labelling (the real one and, unless ``--no-control``, the control
task), in one process, one after the other (the order swapped between the two labellings, so drift in machine
load hits both alike), with 1 torch thread by default:

* before: the probe as it was before issue 28 (``old_train_embed_probe``, kept here only): every pass through
  the model's hooks over the whole padded sequences and every layer, in batches in the people's order, and test
  and training people scored at every epoch in which some head's validation accuracy improved;
* after: ``probekit.probes.embed_probe.train_embed_probe``: sequences cut after the last read position, the
  first block's projections once per distinct token, the last block at the read positions only, rows grouped by
  length, test and training people scored once per distinct chosen epoch at the end.

Prints the seconds of each (CPU seconds of this process by default, ``--clock``; other jobs on the same cores
inflate wall time far more), their ratio, the epochs run and the distinct chosen epochs, and how the results
compare: per head (position x attribute), whether the chosen epoch is the same, the accuracy difference, whether
the after-accuracy lies in the before-accuracy's 95% person-bootstrap interval, and the paired interval of the
difference (the same people resampled for both); with the control task, the same for the selectivity.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from probekit.errors import UserError, cpu_model
from probekit.probes.activations import _is_hooked_lm, _Stop, hook_points, model_dims, padded_batch, run_causal
from probekit.probes.config import EmbedProbeConfig
from probekit.probes.embed_probe import PAPER_RANK, Heads, LowRankEmbedding, _batches, train_embed_probe
from probekit.probes.engine import ProbeFit, _base_fit, _map_labels
from probekit.probes.runner import _control_task, build_tasks
from probekit.probes.spec import load_spec
from probekit.probes.tasks import ProbeTaskSet
from probekit.stats import person_bootstrap

ROOT = Path(__file__).resolve().parents[1]
CLOCK: Callable[[], float] = time.process_time


# ---------------------------------------------------------------------------------------------------------------
# before: the probe as it was (src/probekit/probes/embed_probe.py before issue 28), for the side-by-side only


def old_probe_states(model: Any, delta: LowRankEmbedding, task: ProbeTaskSet, rows: np.ndarray, read: str) -> Tensor:
    """Hidden states [B, P, d] at hook ``read``, ``delta`` added at ``hook_embed``: the whole padded sequences
    through every layer up to ``read``."""
    device = next(model.parameters()).device
    ids, key_mask = padded_batch(task.sequences, rows, device)  # [B, T] each
    pos = torch.as_tensor(task.positions[rows], device=device)  # [B, P]
    got: dict[str, Tensor] = {}

    def add_delta(act: Tensor, hook: Any) -> Tensor:
        return act + delta(ids)  # [B, T, d]

    def gather(act: Tensor, hook: Any) -> None:
        got["h"] = act[torch.arange(len(rows), device=device)[:, None], pos]  # [B, P, d]
        if _is_hooked_lm(model):
            raise _Stop

    run_causal(model, ids, key_mask, [("hook_embed", add_delta), (read, gather)])
    return got["h"]


def old_train_embed_probe(
    model: Any, task: ProbeTaskSet, cfg: EmbedProbeConfig
) -> tuple[list[ProbeFit], dict[str, Any]]:
    """``train_embed_probe`` before issue 28 (verbatim but for the progress callback)."""
    if "hook_embed" not in model.hook_dict:
        raise UserError("the embedding-update probe needs a model with a 'hook_embed' hook (a probekit HookedLM)")
    dims = model_dims(model)
    rank = cfg.rank or PAPER_RANK[task.kind]
    read = hook_points(dims.n_layers, ["resid"], [dims.n_layers])[0].name
    split = task.split
    labs = [_map_labels(task.labels[k], split.train) for k in range(len(task.label_keys))]
    P, K = len(task.position_names), len(labs)
    fits = [_base_fit(p, k, labs[k], split) for p in range(P) for k in range(K)]
    live = [k for k in range(K) if fits[k].status == "ok"]
    log: dict[str, Any] = {"rank": rank, "select": cfg.select, "epochs": [], "chosen_epochs": []}
    if not live:
        return fits, log
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        delta = LowRankEmbedding(dims.vocab_size, dims.d_model, rank).to(device)
        heads = Heads(dims.d_model, P, [len(labs[k].classes) for k in live]).to(device)
    Y = torch.as_tensor(np.stack([labs[k].y for k in live]), device=device)  # [K', N]
    params = list(delta.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)

    def forward(rows: np.ndarray) -> Tensor:
        return heads(old_probe_states(model, delta, task, rows, read))  # [B, P, sum C]

    def losses(logits: Tensor, rows: np.ndarray) -> Tensor:
        y = Y[:, torch.as_tensor(rows, device=device)]  # [K', B]
        out = []
        for j in range(len(live)):
            lo, hi = heads.bounds[j], heads.bounds[j + 1]
            target = y[j][:, None].expand(-1, P)  # [B, P]
            out.append(nn.functional.cross_entropy(logits[..., lo:hi].transpose(1, 2), target, ignore_index=-1))
        return torch.stack(out).mean()

    @torch.no_grad()
    def correctness(rows: np.ndarray) -> np.ndarray:
        out = np.zeros((P, len(live), len(rows)), dtype=bool)  # [P, K', len(rows)]
        start = 0
        for b in _batches(rows, 4 * cfg.batch_size, None):
            logits = forward(b)
            y = Y[:, torch.as_tensor(b, device=device)]
            for j in range(len(live)):
                pred = logits[..., heads.bounds[j] : heads.bounds[j + 1]].argmax(-1)  # [B, P]
                out[:, j, start : start + len(b)] = (pred == y[j][:, None]).T.cpu().numpy()
            start += len(b)
        return out

    def accuracies(rows: np.ndarray) -> np.ndarray:
        return correctness(rows).mean(-1) if len(rows) else np.full((P, len(live)), np.nan)

    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
    fit_rows, val_rows = split.fit, split.val
    per_head = cfg.select == "per_head" and len(val_rows) > 0
    shape = (P, len(live))
    best = np.full(shape, -np.inf)
    chosen = np.zeros(shape, dtype=np.int64)
    test, train, val_acc = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    test_ok = np.zeros((*shape, len(split.test)), dtype=bool)
    best_score, best_state, since = -math.inf, None, 0
    try:
        for epoch in range(1, cfg.epochs + 1):
            delta.train(), heads.train()
            total = 0.0
            for b in _batches(fit_rows, cfg.batch_size, rng):
                loss = losses(forward(b), b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            delta.eval(), heads.eval()
            val = accuracies(val_rows) if len(val_rows) else None
            score = float(val.mean()) if val is not None else -total
            log["epochs"].append({"epoch": epoch, "train_loss": total / len(fit_rows),
                                  "val_accuracy": score if val is not None else math.nan,
                                  "val_accuracy_heads": val.tolist() if val is not None else None})  # fmt: skip
            if per_head:
                better = val > best
                if better.any():
                    te_ok, tr = correctness(split.test), accuracies(split.train)
                    te = te_ok.mean(-1)
                    best[better], chosen[better] = val[better], epoch
                    test[better], train[better], val_acc[better] = te[better], tr[better], val[better]
                    test_ok[better] = te_ok[better]
                improved = bool(better.any())
            else:
                improved = score > best_score
                if improved:
                    best_score, chosen[:] = score, epoch
                    best_state = [p.detach().clone() for p in params]
            since = 0 if improved else since + 1
            if since >= cfg.patience:
                break
        if not per_head:
            with torch.no_grad():
                for p, v in zip(params, best_state or []):
                    p.copy_(v)
            test_ok = correctness(split.test)
            test, train = test_ok.mean(-1), accuracies(split.train)
            if len(val_rows):
                val_acc = accuracies(val_rows)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    log["chosen_epochs"] = chosen.tolist()
    for p in range(P):
        for j, k in enumerate(live):
            f = fits[p * K + k]
            f.accuracy, f.train_accuracy, f.val_accuracy = float(test[p, j]), float(train[p, j]), float(val_acc[p, j])
            f.test_correct = test_ok[p, j]
    return fits, log


# ---------------------------------------------------------------------------------------------------------------


VARIANTS = {"before": old_train_embed_probe, "after": train_embed_probe}


def load(args: argparse.Namespace, tmp: Path) -> tuple[Any, Any, str]:
    """(model, dataset, description): the trained run of ``--model``/``--data``, or a random-init 4 x 128 model on
    fresh data."""
    from probekit.data.store import build_dataset, load_dataset

    if args.model:
        from probekit.probes.runner import load_probe_model

        if not args.data:
            raise SystemExit("--model needs --data (the dataset the model was trained on)")
        pm = load_probe_model(args.model)
        return pm.model, load_dataset(args.data), f"trained model {args.model}"
    from probekit.model.config import ModelConfig
    from probekit.model.transformer import HookedLM

    ds = build_dataset(tmp / "data", n_people=args.people, augmentation="multi5+permute", seed=0,
                       pool_limits=dict.fromkeys(["birth_city", "university", "major", "company"], 15))  # fmt: skip
    cfg = ModelConfig(vocab_size=len(ds.tokenizer), d_model=128, n_layers=4, n_heads=4, d_mlp=512, n_ctx=160)
    return HookedLM(cfg), ds, f"random-init 4 x 128 model, fresh multi5+permute data ({args.people} people)"


def timed(variant: str, model: Any, task: ProbeTaskSet, cfg: EmbedProbeConfig) -> dict[str, Any]:
    t0 = CLOCK()
    fits, log = VARIANTS[variant](model, task, cfg)
    seconds = CLOCK() - t0
    chosen = [e for row in log["chosen_epochs"] for e in row]
    return {"seconds": seconds, "fits": fits, "epochs": len(log["epochs"]), "distinct": len(set(chosen)),
            "chosen": chosen}  # fmt: skip


def compare(t: ProbeTaskSet, runs: dict[tuple[str, str], dict[str, Any]], n_boot: int, seed: int) -> None:
    """Per head: the chosen epoch, accuracy and (with the control task) selectivity of after against before."""
    pids = t.pids[t.split.test]  # [n_test]
    live = [i for i, f in enumerate(runs["real", "before"]["fits"]) if f.test_correct is not None]

    def correct(label: str, variant: str) -> np.ndarray:  # [F, n_test] 0/1 of the live heads
        return np.stack([runs[label, variant]["fits"][i].test_correct for i in live]).astype(np.float64)

    def report(what: str, before: np.ndarray, after: np.ndarray) -> None:
        """before, after: [F, n_test] per-row scores (correctness, or its difference from the control's)."""
        a_b, a_a = before.mean(1), after.mean(1)
        iv = person_bootstrap(before, pids, n_boot, 0.95, seed)  # the before-value's interval
        dv = person_bootstrap(after - before, pids, n_boot, 0.95, seed)  # paired: the same people for both
        diff = 100 * (a_a - a_b)
        inside = int(((a_a >= iv.low - 1e-12) & (a_a <= iv.high + 1e-12)).sum())
        zero = int(((dv.low <= 1e-12) & (dv.high >= -1e-12)).sum())
        n = len(live)
        print(f"  {what}: {int((a_a == a_b).sum())} of {n} heads identical; after - before: mean "
              f"{diff.mean():+.2f}, max |{np.abs(diff).max():.1f}| points; after inside before's 95% interval: "
              f"{inside} of {n}; paired interval of the difference contains 0: {zero} of {n}")  # fmt: skip

    same = sum(a == b for a, b in zip(runs["real", "before"]["chosen"], runs["real", "after"]["chosen"]))
    print(f"  chosen epochs equal (real labels): {same} of {len(runs['real', 'before']['chosen'])} heads")
    report("accuracy", correct("real", "before"), correct("real", "after"))
    if ("control", "before") in runs:
        report("selectivity", correct("real", "before") - correct("control", "before"),
               correct("real", "after") - correct("control", "after"))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a probekit training run or checkpoint directory (default: a random-init model)")
    ap.add_argument("--data", help="its dataset directory")
    ap.add_argument("--people", type=int, default=300, help="people of the fresh dataset (without --model)")
    ap.add_argument("--kinds", default="p,q", help="probe kinds: p, q or p,q")
    ap.add_argument("--epochs", type=int, default=0, help="epochs (0: the spec's, 20)")
    ap.add_argument("--no-control", action="store_true", help="skip the control-task runs")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (probekit runs use --threads 1)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="person-bootstrap resamples")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: CPU seconds of this process (time.process_time), wall: elapsed time")  # fmt: skip
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    spec = load_spec(ROOT / "probes" / "embed_update.yaml")
    cfg = spec.embed_probe
    assert cfg is not None
    if args.epochs:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    spec = dataclasses.replace(spec, kinds=args.kinds.split(","), control_task=not args.no_control, embed_probe=cfg)
    with tempfile.TemporaryDirectory() as tmp:
        model, ds, what = load(args, Path(tmp))
        print(f"CPU {cpu_model()}, threads {torch.get_num_threads()}, clock {args.clock}")
        print(f"{what}; probe {cfg}")
        torch.optim.AdamW([nn.Parameter(torch.zeros(1))])  # the optimizer's first use imports torch._dynamo: not timed
        total = {"before": 0.0, "after": 0.0}
        for t in build_tasks(spec, ds):
            labellings = [("real", t)] + ([] if args.no_control else [("control", _control_task(t, spec))])
            L = np.array([len(s) for s in t.sequences])
            print(f"\n== {t.kind.upper()}-probe: {t.n} rows ({len(t.split.fit)} fit, {len(t.split.val)} validation, "
                  f"{len(t.split.test)} test), {len(t.position_names)} position(s) x {len(t.label_keys)} label sets, "
                  f"tokens per row {L.mean():.1f} (up to the last read position "
                  f"{t.positions.max(1).mean() + 1:.1f})")  # fmt: skip
            runs: dict[tuple[str, str], dict[str, Any]] = {}
            for i, (label, task) in enumerate(labellings):
                for variant in ("before", "after") if i % 2 == 0 else ("after", "before"):
                    r = runs[label, variant] = timed(variant, model, task, cfg)
                    total[variant] += r["seconds"]
                    print(f"  {label:<8}{variant:<7}{r['seconds']:>8.1f} s  {r['epochs']} epochs, "
                          f"{r['distinct']} distinct chosen epochs", flush=True)  # fmt: skip
                ratio = runs[label, "before"]["seconds"] / runs[label, "after"]["seconds"]
                print(f"  {label:<8}before / after: {ratio:.2f}x")
            compare(t, runs, args.bootstrap, spec.seed)
        print(f"\nall runs: before {total['before']:.1f} s, after {total['after']:.1f} s: "
              f"{total['before'] / total['after']:.2f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
