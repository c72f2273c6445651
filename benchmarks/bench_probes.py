"""Benchmark the probing stage: batched torch engine vs a scikit-learn per-probe loop, and activation throughput.

A full P+Q sweep (6 positions x 6 attributes x 2 targets per layer for P; 6 attributes x 2 targets per layer
for Q) on a randomly initialised 4-layer model (weights do not change the cost) and a fresh bioS dataset:

1. activation collection (``probekit.probes.activations.collect_activations``) vs a plain forward pass over the same
   batches (sequences/s; target >= 0.8x);
2. ``run_probes`` with ``backend="torch"`` (each solver of ``--solvers``: ``fast`` and ``classic``, the solver
   before issue 11) vs ``backend="sklearn"`` (one ``LogisticRegression`` per probe and L2 value) on the same
   features, split, L2 grid and stopping rule (tol 1e-4, 100 iterations): time ratio (target >= 8x on this CPU,
   CPU seconds of this process by default), loss evaluations per fit, and the max / mean absolute accuracy
   difference over probes (target <= 2 points);
3. both against a *converged* scikit-learn reference (float64, tol 1e-7, up to 2,000 iterations) on the feature
   groups where the two engines disagree most: the difference each engine's default settings make. L-BFGS stopped at
   tol 1e-4 / 100 iterations is not at the optimum on weakly regularised probes, and near-chance probes flip
   between classes on tiny changes, so (2) mixes the two engines' truncation errors; (3) tells whose they are.
4. the protocol's own noise on those groups (``--val-resamples N``, default 8): a tightly converged torch reference
   refitted under the run's validation split and N - 1 redrawn ones (training and test people fixed): how far a
   probe's test accuracy moves when only the people who choose its L2 strength change, set beside each engine's
   deviation from the converged reference.

    python benchmarks/bench_probes.py                 # 2,000 people, 4 layers x 128 (about 40 minutes)
    python benchmarks/bench_probes.py --people 300    # quick check

``--sklearn-groups N`` times scikit-learn on N evenly spaced feature groups per task set only and scales its time
to all groups (the accuracy comparison then covers those groups); the default runs it on everything.
``--reference-groups N``: groups per task set for (3) (0 skips it). ``--csv``: every probe's accuracies and L2.

It also reports the torch engine's *matrix-multiply floor*: the floating-point work of the two batched matrix
products in every loss/gradient evaluation it made (logits ``X W^T`` and gradient ``P^T X``, 4 n d C flops per task),
divided by this core's measured ``torch.bmm`` rate on the same shapes. No implementation that takes as many
iterations can be faster than that, so scikit-learn's time over the floor bounds the ratio any L-BFGS with this
iteration count can reach here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def spaced(G: int, n: int) -> list[int]:
    """n evenly spaced indices of range(G) (all of them for n = 0 or n >= G)."""
    return list(range(G)) if not n or n >= G else sorted(set(np.linspace(0, G - 1, n).round().astype(int).tolist()))


class FlopCounter:
    """Counts the matrix-multiply work of ``Problem.loss_grad`` (patched in for the benchmark's duration)."""

    def __init__(self) -> None:
        from probekit.probes import solver

        self.flops = 0.0
        self.evals = 0  # task-evaluations: one task's loss and gradient on its n rows (or a curvature refresh)
        self.refreshes = 0  # of which curvature refreshes (the fast solver's preconditioner)
        self.shapes: dict[tuple[int, int, int, int], float] = {}  # (T, n, d, C) -> flops at that shape
        self._orig = solver.Problem.loss_grad
        counter = self

        def counted(prob: solver.Problem, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            work = 4.0 * prob.T * prob.n * prob.d * prob.C
            counter.flops += work
            counter.evals += prob.T
            key = (prob.T, prob.n, prob.d, prob.C)
            counter.shapes[key] = counter.shapes.get(key, 0.0) + work
            return counter._orig(prob, theta)

        self._orig_curv = solver.Problem.refresh_curvature

        def curv(prob: solver.Problem, theta: torch.Tensor) -> None:
            # a refresh of the fast solver's preconditioner: two products of a gradient's size (logits, P^T X^2),
            # counted as one task-evaluation
            work = 4.0 * prob.T * prob.n * prob.d * prob.C
            counter.flops += work
            counter.evals += prob.T
            counter.refreshes += prob.T
            key = (prob.T, prob.n, prob.d, prob.C)
            counter.shapes[key] = counter.shapes.get(key, 0.0) + work
            counter._orig_curv(prob, theta)

        solver.Problem.loss_grad = counted  # type: ignore[method-assign]
        solver.Problem.refresh_curvature = curv  # type: ignore[method-assign]

    def close(self) -> None:
        from probekit.probes import solver

        solver.Problem.loss_grad = self._orig  # type: ignore[method-assign]
        solver.Problem.refresh_curvature = self._orig_curv  # type: ignore[method-assign]

    def floor_seconds(
        self, device: str = "cpu", top: int = 6, clock: Callable[[], float] = time.perf_counter
    ) -> tuple[float, float]:
        """(seconds, GFLOP/s): the counted work at ``device``'s ``bmm`` rate, measured on the ``top`` shapes that
        carry the most work (forward ``[T, n, d] x [T, d, C]`` and gradient ``[T, C, n] x [T, n, d]``), timed
        with ``clock`` (the engines' clock: in CPU seconds on a loaded machine, wall time would understate it)."""
        heavy = sorted(self.shapes, key=lambda k: -self.shapes[k])[:top]
        work = secs = 0.0
        for T, n, d, C in heavy:
            X, W, P = (torch.randn(*shape, device=device) for shape in ((T, n, d), (T, C, d), (T, n, C)))
            best = float("inf")
            for _ in range(3):
                t0 = clock()
                torch.bmm(X, W.transpose(1, 2))
                torch.bmm(P.transpose(1, 2), X)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                best = min(best, clock() - t0)
            work += 4.0 * T * n * d * C
            secs += best
        rate = work / secs
        return self.flops / rate, rate / 1e9


def val_noise(t, X: torch.Tensor, rg: list[int], by: dict, solvers: list[str], n: int, device: str,  # type: ignore[no-untyped-def]
              spec, report: dict[str, object]) -> None:  # fmt: skip
    """The protocol's own noise on the reference groups ``rg``: a tightly converged torch reference (classic
    solver, float32, tol 1e-6, up to 1,500 iterations; the full L2 path) refitted with the task set's validation
    people and ``n - 1`` redrawn ones (the same number, drawn by person from the training people). The training and
    test people never change, so a probe's spread is what the L2 choice on validation people alone does to its test
    accuracy; each engine's deviation from the converged reference is set beside its probe's spread."""
    from probekit.probes.config import EngineConfig
    from probekit.probes.engine import Split, run_probes

    cfg = dataclasses.replace(EngineConfig(solver="classic", tol=1e-6, max_iter=1500, device=device),
                              l2_grid=spec.l2_grid, l2_rule=spec.l2_rule)  # fmt: skip
    train_people = np.unique(t.pids[t.split.train])
    n_val_people = len(np.unique(t.pids[t.split.val]))
    accs = []
    for seed in range(n):
        if seed == 0:
            val = t.split.val
        else:
            rng = np.random.default_rng(1000 + seed)
            people = rng.choice(train_people, size=n_val_people, replace=False)
            val = t.split.train[np.isin(t.pids[t.split.train], people)]
        fits = run_probes(X[rg], t.labels, Split(t.split.train, t.split.test, val), cfg)
        accs.append({(rg[f.group], f.label): f.accuracy for f in fits if f.status == "ok"})
    keys = sorted(accs[0])
    A = 100 * np.array([[a[k] for k in keys] for a in accs])  # [n, probes] points
    lo, hi = A.min(0), A.max(0)  # [probes] each probe's range over the splits
    spread = hi - lo
    w = int(spread.argmax())
    wg, wk = keys[w]
    print(f"  validation noise: the converged torch reference under {n} validation splits on groups {rg}: a probe's "
          f"test accuracy spans max {spread.max():.1f} / mean {spread.mean():.2f} points (sd over splits: max "
          f"{A.std(0).max():.2f}; widest: group {wg}, {'/'.join(t.label_keys[wk])}, {lo[w]:.1f}-{hi[w]:.1f}); "
          f"{int((spread >= 1.0).sum())} of {len(keys)} probes move by >= 1 point")  # fmt: skip
    report[f"{t.kind}_val_noise_span_max_points"] = round(float(spread.max()), 2)
    report[f"{t.kind}_val_noise_span_mean_points"] = round(float(spread.mean()), 3)
    ref = by.get("reference", {})
    for name in solvers:
        dev = [(abs(by[name][k].accuracy - ref[k].accuracy) * 100, j) for j, k in enumerate(keys) if k in ref]
        if not dev:
            continue
        worst, j = max(dev)
        inside = sum(lo[jj] - 1e-9 <= 100 * by[name][keys[jj]].accuracy <= hi[jj] + 1e-9 for _, jj in dev)
        g, k = keys[j]
        print(f"  {name}: largest deviation from the converged reference {worst:.1f} points (group {g}, "
              f"{'/'.join(t.label_keys[k])}), whose accuracy spans {lo[j]:.1f}-{hi[j]:.1f} over "
              f"the validation splits; {inside} of {len(dev)} {name} accuracies lie within their probe's span")  # fmt: skip
        report[f"{t.kind}_{name}_within_val_span"] = f"{inside}/{len(dev)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=2000)
    ap.add_argument("--augmentation", default="single")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and for scikit-learn's BLAS")
    ap.add_argument("--device", default="cpu",
                    help="device of the model and the torch engine (scikit-learn runs on the CPU)")  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sklearn-groups", type=int, default=0, help="0 = every group")
    ap.add_argument("--reference-groups", type=int, default=2, help="groups per task set for the converged reference")
    ap.add_argument("--val-resamples", type=int, default=8,
                    help="validation splits (the run's own and N - 1 redrawn) under which a tightly converged torch "
                         "reference is refitted on the reference groups: how far a probe's accuracy moves when only "
                         "the validation people that choose its L2 change (0 skips it)")  # fmt: skip
    ap.add_argument("--solvers", default="fast,classic",
                    help="torch solvers to time side by side (EngineConfig.solver), comma-separated; the first is "
                         "the one whose disagreement with scikit-learn picks the reference groups")  # fmt: skip
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: CPU seconds of this process (time.process_time; other processes on the same cores "
                         "inflate it far less than wall time; 1 thread); wall: time.perf_counter")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--csv", type=Path, default=None, help="also write every probe's accuracies and L2 here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    solvers = [v.strip() for v in args.solvers.split(",") if v.strip()]

    from probekit.data.store import build_dataset
    from probekit.model.config import ModelConfig
    from probekit.model.transformer import HookedLM
    from probekit.probes.activations import collect_activations, hook_points
    from probekit.probes.engine import TensorFeatures, run_probes
    from probekit.probes.runner import build_tasks
    from probekit.probes.spec import ProbeSpec

    spec = ProbeSpec()  # the default spec: P and Q, both targets, all layers, l2 grid of 4
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds = build_dataset(Path(tmp) / "ds", n_people=args.people, augmentation=args.augmentation, seed=0)
        print(f"dataset: {args.people} people ({args.augmentation}), {len(ds.entries)} entries, "
              f"vocab {len(ds.tokenizer)} ({time.perf_counter() - t0:.1f}s)")  # fmt: skip
        tasks = build_tasks(spec, ds)
    cfg = ModelConfig(vocab_size=len(ds.tokenizer), d_model=args.d_model, n_layers=args.layers,
                      n_heads=max(2, args.d_model // 32), d_mlp=4 * args.d_model, n_ctx=512)  # fmt: skip
    model = HookedLM(cfg).to(args.device).eval()
    points = hook_points(cfg.n_layers)
    report: dict[str, object] = {"people": args.people, "layers": args.layers, "d_model": args.d_model,
                                 "threads": args.threads, "clock": args.clock, "solvers": solvers}  # fmt: skip

    # 1. activation throughput vs a plain forward pass over identical batches
    for t in tasks:
        order = np.argsort([-len(s) for s in t.sequences], kind="stable")
        batches = []
        for s in range(0, t.n, args.batch_size):
            rows = order[s : s + args.batch_size]
            T = max(len(t.sequences[r]) for r in rows)
            ids = torch.zeros(len(rows), T, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(t.sequences[r])] = torch.tensor(t.sequences[r])
            batches.append((ids.to(args.device), (ids != 0).to(args.device)))

        def sync() -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        def plain() -> None:
            with torch.no_grad():
                for ids, km in batches:
                    model(ids, key_mask=km)
            sync()

        def collect() -> None:
            collect_activations(model, t.sequences, t.positions, points, batch_size=args.batch_size)
            sync()

        times = {}
        for name, fn in (("forward", plain), ("collect", collect)):
            fn()  # warm-up
            best = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            times[name] = best
        ratio = times["forward"] / times["collect"]
        print(f"{t.kind.upper()} activations: {t.n} seqs x {len(points)} points x {len(t.position_names)} positions: "
              f"plain forward {t.n / times['forward']:.0f} seq/s, collection {t.n / times['collect']:.0f} seq/s "
              f"-> collection/forward throughput {ratio:.2f}x (target >= 0.8x)")  # fmt: skip
        report[f"{t.kind}_activation_throughput_ratio"] = round(ratio, 3)

    # 2. engines on the same features: each torch solver and scikit-learn, one after the other on each task set
    total = dict.fromkeys([*solvers, "sklearn"], 0.0)
    floor_total = dict.fromkeys(solvers, 0.0)
    evals_total = dict.fromkeys(solvers, 0)
    fits_total = 0
    diffs: dict[str, list[float]] = {name: [] for name in solvers}
    ref_diffs: dict[str, list[float]] = {name: [] for name in solvers + ["sklearn"]}
    rows: list[dict[str, object]] = []  # one per probe: every engine's (and the reference's) accuracy and L2
    n_probes = 0
    n_fit = len(spec.l2_grid) + 1  # fits per probe: each L2 value, and the refit
    for t in tasks:
        acts = collect_activations(model, t.sequences, t.positions, points, batch_size=args.batch_size)
        X = torch.stack([acts.get(i, p) for i in range(acts.n_points) for p in range(acts.n_positions)])  # [G, N, d]
        G, K = X.shape[0], t.labels.shape[0]
        groups = spaced(G, args.sklearn_groups)
        by: dict[str, dict[tuple[int, int], object]] = {}
        secs: dict[str, float] = {}
        floors: dict[str, float] = {}
        for name in solvers:
            cfg_t = dataclasses.replace(spec.engine_config("torch"), device=args.device, solver=name)
            counter = FlopCounter()
            t0 = clock()
            fits_t = run_probes(X, t.labels, t.split, cfg_t)
            secs[name] = clock() - t0
            counter.close()
            floor, gflops = counter.floor_seconds(args.device, clock=clock)
            by[name] = {(f.group, f.label): f for f in fits_t}
            n_ok = sum(f.status == "ok" for f in fits_t)
            print(f"{t.kind.upper()} probes, torch {name}: {G} groups x {K} label sets = {G * K} probes "
                  f"({n_ok} fitted, {len(spec.l2_grid)} L2 values + refit each; n_train {len(t.split.train)}, n_test "
                  f"{len(t.split.test)}): {secs[name]:.1f}s; {counter.evals / (n_ok * n_fit):.1f} loss evaluations "
                  f"per fit ({counter.evals / n_ok:.0f} per probe; {counter.refreshes} of {counter.evals} "
                  f"task-evaluations are curvature refreshes); matrix-multiply floor {counter.flops / 1e12:.2f} TFLOP "
                  f"at this core's bmm rate of {gflops:.0f} GFLOP/s = {floor:.1f}s ({100 * floor / secs[name]:.0f}% "
                  f"of its time)")  # fmt: skip
            floors[name] = floor
            floor_total[name] += floor
            evals_total[name] += counter.evals
            total[name] += secs[name]
            report[f"{t.kind}_torch_{name}_s"] = round(secs[name], 2)
            report[f"{t.kind}_torch_{name}_evals_per_fit"] = round(counter.evals / (n_ok * n_fit), 2)
            report[f"{t.kind}_torch_{name}_matmul_floor_s"] = round(floor, 2)
        fits_total += sum(f.status == "ok" for f in by[solvers[0]].values()) * n_fit  # type: ignore[attr-defined]
        t0 = clock()
        # the sklearn backend limits its BLAS threads to torch's count, set to args.threads above
        fits_s = run_probes(TensorFeatures(X[groups]), t.labels, t.split, spec.engine_config("sklearn"))
        ts = (clock() - t0) * G / len(groups)
        total["sklearn"] += ts
        report[f"{t.kind}_sklearn_s"] = round(ts, 2)
        by["sklearn"] = {(groups[f.group], f.label): f for f in fits_s}
        keys = [k for k, f in by["sklearn"].items() if f.status == "ok"]  # type: ignore[attr-defined]
        scaled = f" (scaled from {len(groups)} groups)" if len(groups) < G else ""
        d_first: list[float] = []
        for name in solvers:
            d = [abs(by[name][k].accuracy - by["sklearn"][k].accuracy) for k in keys]  # type: ignore[attr-defined]
            diffs[name] += d
            d_first = d_first or d
            print(f"  sklearn {ts:.1f}s{scaled} -> {name} {ts / secs[name]:.1f}x faster (sklearn / its floor "
                  f"{ts / floors[name]:.1f}x); |acc diff| {name} vs sklearn max {100 * max(d):.2f} / mean "
                  f"{100 * np.mean(d):.3f} points")  # fmt: skip
        if args.reference_groups:
            # the groups where the first solver and scikit-learn disagree most: whose truncation error is it?
            worst = {g: max(dd for k, dd in zip(keys, d_first) if k[0] == g) for g in groups}
            rg = sorted(sorted(worst, key=lambda g: -worst[g])[: args.reference_groups])
            ref_cfg = dataclasses.replace(spec.engine_config("sklearn"), tol=1e-7, max_iter=2000)
            fits_r = run_probes(TensorFeatures(X[rg]), t.labels, t.split, ref_cfg)
            by["reference"] = {(rg[f.group], f.label): f for f in fits_r}
            for name in solvers + ["sklearn"]:
                dd = [abs(by[name][k].accuracy - f.accuracy)  # type: ignore[attr-defined]
                      for k, f in by["reference"].items() if f.status == "ok"]  # type: ignore[attr-defined]  # fmt: skip
                ref_diffs[name] += dd
                print(f"  {name} vs the converged reference (scikit-learn, tol 1e-7, 2,000 iterations) on the "
                      f"{len(rg)} groups of largest disagreement {rg}: |acc diff| max {100 * max(dd):.2f} / mean "
                      f"{100 * np.mean(dd):.3f} points over {len(dd)} probes")  # fmt: skip
            if args.val_resamples:
                val_noise(t, X, rg, by, solvers, args.val_resamples, args.device, spec, report)
        for k in sorted(by[solvers[0]]):
            row: dict[str, object] = {"kind": t.kind, "group": k[0], "label": "/".join(t.label_keys[k[1]])}
            for name, fits in by.items():
                f = fits.get(k)
                row[f"{name}_acc"] = f.accuracy if f else math.nan  # type: ignore[attr-defined]
                row[f"{name}_l2"] = f.l2 if f else math.nan  # type: ignore[attr-defined]
            rows.append(row)
        n_probes += G * K
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
    print(f"\nfull P+Q sweep, {n_probes} probes ({args.clock} seconds, {args.threads} thread(s)): "
          f"sklearn {total['sklearn']:.1f}s")  # fmt: skip
    for name in solvers:
        ratio = total["sklearn"] / total[name]
        print(f"  torch {name}: {total[name]:.1f}s -> {ratio:.1f}x faster than sklearn (target >= 8x on this CPU); "
              f"{evals_total[name] / fits_total:.1f} loss evaluations per fit; matrix-multiply floor "
              f"{floor_total[name]:.1f}s ({100 * floor_total[name] / total[name]:.0f}% of its time): at its iteration "
              f"counts no implementation on this core beats {total['sklearn'] / floor_total[name]:.1f}x; accuracy vs "
              f"sklearn max {100 * max(diffs[name]):.2f} / mean {100 * np.mean(diffs[name]):.3f} points over "
              f"{len(diffs[name])} probes (target <= 2)")  # fmt: skip
        report.update({f"torch_{name}_s": round(total[name], 2), f"speed_ratio_{name}": round(ratio, 2),
                       f"evals_per_fit_{name}": round(evals_total[name] / fits_total, 2),
                       f"torch_{name}_matmul_floor_s": round(floor_total[name], 2),
                       f"acc_diff_max_points_{name}": round(100 * max(diffs[name]), 3),
                       f"acc_diff_mean_points_{name}": round(100 * float(np.mean(diffs[name])), 4)})  # fmt: skip
    if len(solvers) > 1:
        a, b = solvers[0], solvers[1]
        print(f"  {a} / {b}: {total[b] / total[a]:.2f}x faster, {evals_total[b] / evals_total[a]:.2f}x fewer "
              "task-evaluations")  # fmt: skip
    report.update({"probes": n_probes, "sklearn_s": round(total["sklearn"], 2),
                   "sklearn_groups_timed": args.sklearn_groups or "all"})  # fmt: skip
    for name, dd in ref_diffs.items():
        if dd:
            print(f"{name} vs converged reference: max {100 * max(dd):.2f} / mean {100 * np.mean(dd):.3f} points "
                  f"over {len(dd)} probes")  # fmt: skip
            report[f"{name}_vs_reference_max_points"] = round(100 * max(dd), 3)
            report[f"{name}_vs_reference_mean_points"] = round(100 * float(np.mean(dd)), 4)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
