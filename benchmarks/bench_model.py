"""Forward+backward step time of HookedLM per objective and attention path, measured side by side.

Compares, on the same model and batch shape:
* NTP (causal, SDPA) vs BICO (bidirectional, sin-flipped rotary above the diagonal, placeholder keys masked)
  and ABI (prefix mask, 2D positions; its inputs are ~10% longer than the text), each with
  ``ModelConfig.fast_path`` on (the default: fused loss, blocked BICO kernel, fused RMSNorm) and off (the
  reference path; BICO there with each implementation, "direct": two score matrices, "concat": one SDPA call
  over duplicated keys);
* the SDPA path vs the materialised-pattern path (a no-op hook on every hook_pattern forces the latter).

Timings are interleaved (one step of each variant per round) so load from other processes hits every variant
alike; ratios use the fastest round of each variant (timeit's advice: noise only ever adds time), the median is
printed beside it. Steps are timed in CPU seconds of this process (``time.process_time``), which other jobs on the
same cores do not inflate. Run: ``python benchmarks/bench_model.py [--seq 256 --batch 16]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from probekit.model.batch import ModelBatch
from probekit.model.config import ModelConfig
from probekit.model.transformer import Attention, HookedLM, compute_loss
from probekit.objectives import get_objective


def step_fn(model: HookedLM, batch: ModelBatch, bico_impl: str, materialise: bool, fast: bool = False
            ) -> Callable[[], None]:  # fmt: skip
    hooks = [(lambda n: n.endswith("hook_pattern"), lambda t, hook: None)] if materialise else []

    def step() -> None:
        model.cfg.fast_path = fast
        Attention.bico_impl = bico_impl
        model.zero_grad(set_to_none=True)
        with model.hooks(fwd_hooks=hooks):
            loss = compute_loss(model, batch)
        loss.backward()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the shared machine has 2 cores)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    abi = get_objective("abi")
    cfg = ModelConfig(
        vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
        d_mlp=4 * args.d_model, n_ctx=abi.max_input_len(args.seq), span_positions=True,
    )
    model = HookedLM(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    seqs = [[1] + torch.randint(6, args.vocab, (args.seq - 1,), generator=g).tolist() for _ in range(args.batch)]
    ntp = get_objective("ntp").build(seqs, g).to(device)
    bico = get_objective("bico", bico_prob=1.0).build(seqs, g).to(device)
    abi_batch = abi.build(seqs, g).to(device)

    variants: dict[str, Callable[[], None]] = {
        "ntp  fast": step_fn(model, ntp, "direct", False, True),
        "bico fast": step_fn(model, bico, "direct", False, True),
        "abi  fast": step_fn(model, abi_batch, "direct", False, True),
        "ntp  sdpa": step_fn(model, ntp, "direct", False),
        "bico direct": step_fn(model, bico, "direct", False),
        "bico concat-sdpa": step_fn(model, bico, "concat", False),
        "abi  sdpa": step_fn(model, abi_batch, "direct", False),
        "ntp  materialised": step_fn(model, ntp, "direct", True),
        "bico materialised": step_fn(model, bico, "direct", True),
        "abi  materialised": step_fn(model, abi_batch, "direct", True),
    }
    default_impl = Attention.bico_impl
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, fn in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.process_time()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r > 0:
                times[name].append(time.process_time() - t0)
    Attention.bico_impl = default_impl
    med = {k: min(v) * 1000 for k, v in times.items()}
    median = {k: statistics.median(v) * 1000 for k, v in times.items()}

    print(
        f"HookedLM {cfg.n_layers}x{cfg.d_model} ({model.num_params() / 1e6:.2f}M params), batch {args.batch} x "
        f"seq {args.seq} (ABI inputs {abi_batch.input_ids.shape[1]}), device {device}, threads {args.threads}, "
        f"best of {args.rounds} interleaved rounds"
    )
    print(f"{'variant':<20}{'best ms/step':>14}{'median':>10}{'x NTP sdpa':>12}  (sdpa = reference path)")
    for name, ms in med.items():
        print(f"{name:<20}{ms:>14.1f}{median[name]:>10.1f}{ms / med['ntp  sdpa']:>12.2f}")
    best = min(("direct", "concat-sdpa"), key=lambda k: med[f"bico {k}"])
    print(
        f"BICO/NTP step ratio (default impl {default_impl!r}): {med['bico direct' if default_impl == 'direct' else 'bico concat-sdpa'] / med['ntp  sdpa']:.2f} "
        f"(target <= 1.6); faster BICO impl here: {best}"
    )
    for mode in ("ntp", "bico", "abi"):
        ref = med[f"{mode}  sdpa" if mode != "bico" else f"bico {default_impl.replace('concat', 'concat-sdpa')}"]
        print(f"{mode}: fast path / reference path = {med[f'{mode}  fast' if mode != 'bico' else 'bico fast'] / ref:.2f}")
    print(f"fast path: BICO/NTP {med['bico fast'] / med['ntp  fast']:.2f}, ABI/NTP {med['abi  fast'] / med['ntp  fast']:.2f}")
    for mode in ("ntp", "bico", "abi"):
        fast = med[f"{mode}  sdpa" if mode != "bico" else f"bico {default_impl.replace('concat', 'concat-sdpa')}"]
        print(f"{mode}: materialised / fast path = {med[f'{mode}  materialised' if mode != 'bico' else 'bico materialised'] / fast:.2f}")


if __name__ == "__main__":
    main()
