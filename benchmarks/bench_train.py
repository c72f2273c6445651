"""Training throughput: our trainer step against transformers' LlamaForCausalLM of the same shape.

Usage: python benchmarks/bench_train.py [--shapes 4x128,8x256 --vocab 2000 --seq-len 256 --batch 16
                                         --steps 4 --rounds 6 --threads 2]

For each model shape LAYERSxWIDTH (heads of 32 dimensions, d_mlp = 4 x width), measured side by side in one
process, on the same random token windows, one contender after another within every round (the order reversed
every other round, so drift in machine load hits all of them alike):

1. NTP tokens/s of ``probekit.training.trainer.Trainer`` (batch build + ``train_step``: forward, loss, ``accelerator.backward``,
   clipping, AdamW) with ``ModelConfig.fast_path`` on (the default: fused BICO attention, fused RMSNorm, chunked
   fused unembedding + cross-entropy) and off (the reference path), against ``LlamaForCausalLM``
   (``attn_implementation="sdpa"``, same shape, untied embeddings; loss through its own ``labels=``; the same
   clipping and fused AdamW as the trainer). Target: fast / Llama >= 1.3.
2. BICO step cost / NTP step cost through the full trainer step (batch building included), for a BICO batch
   (``bico_prob`` 1: every batch bidirectional with placeholders), fast path and reference path, and derived from
   it the default objective (half of the batches BICO). Target (fast path): <= 1.4.
3. The fraction of this CPU's float32 matrix-multiply peak that the fast NTP step reaches: the step's matrix
   multiply work (forward + backward of every projection, the unembedding and attention's two products; causal
   attention counted in full, as the CPU kernel computes it) divided by the step time, over the rate of a large
   ``torch.mm`` timed in the same rounds.

Each figure is the median over all timed steps (the fastest step in brackets: the least disturbed one on a shared
machine). Steps are timed in CPU seconds of this process by default (``--clock cpu``, ``time.process_time``):
on a machine whose cores other jobs share, wall time mostly measures how long the step waited for a core, CPU
time what it cost (at 2 threads it also counts the threads' spin-waiting; ``--clock wall`` on an idle machine). On a GPU, ``--precision bf16`` autocasts both models (the fast path applies to float32 on CPU only).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from probekit.data.tokenizer import EOS_ID, build_tokenizer
from probekit.errors import cpu_bf16_units, cpu_model
from probekit.model.batch import TrainItem
from probekit.training.config import TrainConfig
from probekit.training.data import ItemSource
from probekit.training.trainer import Trainer


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


CLOCK: Callable[[], float] = time.process_time


def _time(step: Callable[[int], None], n: int, start: int) -> list[float]:
    """Seconds of each of ``n`` steps on ``CLOCK``."""
    out = []
    for i in range(n):
        _sync()
        t0 = CLOCK()
        step(start + i)
        _sync()
        out.append(CLOCK() - t0)
    return out


def step_flops(layers: int, d: int, d_mlp: int, vocab: int, batch: int, seq: int) -> float:
    """Matrix-multiply FLOPs of one training step (forward 1x, backward 2x)."""
    tokens = batch * seq
    proj = layers * (4 * d * d + 3 * d * d_mlp) + d * vocab  # multiply-adds per token
    attn = layers * 2 * seq * d  # q k^T and p v per token, full T x T
    return 3 * 2 * tokens * (proj + attn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4x128,8x256", help="comma-separated LAYERSxWIDTH model shapes")
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=2000, help="vocabulary size (bioS word-level: a few thousand)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per contender per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave torch's default)")
    ap.add_argument("--precision", choices=("no", "bf16"), default="no")
    ap.add_argument("--no-bico", action="store_true", help="skip the BICO contenders")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: CPU seconds of this process (time.process_time; not inflated by other processes "
                         "waiting for the same cores), wall: elapsed time (use on an idle machine or a GPU)")  # fmt: skip
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precision == "bf16" and not torch.cuda.is_available() and not cpu_bf16_units():
        print(f"bf16 not measured: no bf16 unit on this CPU ({cpu_model()}: neither AMX-BF16 nor AVX-512-BF16)")
        return
    print(f"CPU {cpu_model()}, bf16 units: {', '.join(cpu_bf16_units()) or 'none'}")
    print(f"threads {torch.get_num_threads()}, precision {args.precision}, batch {args.batch} x {args.seq_len} tokens, "
          f"vocab {args.vocab}, clock {args.clock}")  # fmt: skip
    for shape in args.shapes.split(","):
        layers, width = (int(x) for x in shape.lower().split("x"))
        run_shape(args, layers, width)


def run_shape(args: argparse.Namespace, layers: int, width: int) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    heads, d_mlp = max(1, width // args.head_dim), 4 * width
    tok = build_tokenizer([" ".join(f"w{i}" for i in range(args.vocab - 6))])
    V = len(tok)
    g = torch.Generator().manual_seed(0)
    n_windows = args.batch * (args.steps * args.rounds + args.warmup) + args.batch
    windows = torch.randint(6, V, (n_windows, args.seq_len), generator=g)
    windows[:, 0] = EOS_ID
    items = [TrainItem(w.tolist()) for w in windows]

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    trainers: dict[str, Trainer] = {}
    contenders = [("ntp", "ntp", {}, True), ("ntp_ref", "ntp", {}, False)]
    if not args.no_bico:
        contenders += [("bico", "bico", {"bico_prob": 1.0}, True), ("bico_ref", "bico", {"bico_prob": 1.0}, False)]
    for name, objective, settings, fast in contenders:
        model_cfg = {"d_model": width, "n_layers": layers, "n_heads": heads, "d_mlp": d_mlp, "fast_path": fast}
        cfg = TrainConfig(out=str(tmp / name), objective=objective, objective_settings=settings, model=model_cfg,
                          seq_len=args.seq_len, batch_size=args.batch, max_steps=10**6, warmup_steps=10,
                          eval_windows=0, precision=args.precision)  # fmt: skip
        trainers[name] = Trainer(cfg, ItemSource(items, seed=0), tokenizer=tok, progress=False)

    def trainer_step(tr: Trainer) -> Callable[[int], None]:
        def step(i: int) -> None:
            gen = torch.Generator().manual_seed(i)
            k = (i * args.batch) % (len(items) - args.batch)
            tr.train_step(tr.build_batch(items[k : k + args.batch], gen))

        return step

    lcfg = LlamaConfig(vocab_size=V, hidden_size=width, intermediate_size=d_mlp,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=heads, max_position_embeddings=args.seq_len, rms_norm_eps=1e-5,
                       rope_theta=10000.0, tie_word_embeddings=False, attn_implementation="sdpa")  # fmt: skip
    llama = LlamaForCausalLM(lcfg).to(device).train()
    opt = torch.optim.AdamW(llama.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1,
                            fused=device.type in ("cpu", "cuda"))  # the trainer's optimiser

    def llama_step(i: int) -> None:
        k = (i * args.batch) % (len(items) - args.batch)
        ids = windows[k : k + args.batch].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = llama(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llama.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    big = torch.randn(1024, 1024, device=device)

    def mm_step(i: int) -> None:  # ~2.1 GFLOP per call
        big @ big

    ours = trainers["ntp"].accelerator.unwrap_model(trainers["ntp"].model)
    n_ours, n_llama = ours.num_params(), sum(p.numel() for p in llama.parameters())
    print(f"\n== model {layers} x {width} ({heads} heads of {width // heads}, d_mlp {d_mlp}), device {device}; "
          f"params ours {n_ours:,} / llama {n_llama:,}")  # fmt: skip
    assert n_ours == n_llama, "shapes differ"

    runs: dict[str, Callable[[int], None]] = {"llama": llama_step, **{k: trainer_step(t) for k, t in trainers.items()},
                                              "mm": mm_step}  # fmt: skip
    for fn in runs.values():
        _time(fn, args.warmup, 0)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            times[name] += _time(runs[name], args.steps, args.warmup + r * args.steps)
    # median: typical step; min: the least disturbed step (robust when other processes share the cores)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    tok_step = args.batch * args.seq_len
    labels = {"llama": "LlamaForCausalLM (sdpa), NTP", "ntp": "probekit, NTP, fast path",
              "ntp_ref": "probekit, NTP, reference path", "bico": "probekit, BICO batch, fast path",
              "bico_ref": "probekit, BICO batch, reference path"}  # fmt: skip
    print(f"{'step':<38}{'ms/step':>10}{'tokens/s':>12}{'min ms':>10}")
    for k in runs:
        if k != "mm":
            print(f"{labels[k]:<38}{med[k] * 1e3:>10.1f}{tok_step / med[k]:>12,.0f}{best[k] * 1e3:>10.1f}")

    def ratio(a: str, b: str) -> str:
        return f"{med[a] / med[b]:.2f} [{best[a] / best[b]:.2f}]"

    print("(median steps; fastest steps in brackets)")
    print(f"NTP tokens/s, fast path / Llama:       {ratio('llama', 'ntp')}  (target >= 1.3)")
    print(f"NTP tokens/s, reference path / Llama:  {ratio('llama', 'ntp_ref')}")
    print(f"NTP tokens/s, fast / reference path:   {ratio('ntp_ref', 'ntp')}")
    if "bico" in runs:
        b, b_min = med["bico"] / med["ntp"], best["bico"] / best["ntp"]
        print(f"BICO batch step / NTP step, fast path: {b:.2f} [{b_min:.2f}]  (target <= 1.4); "
              f"half-BICO objective {(1 + b) / 2:.2f}")
        print(f"BICO batch step / NTP step, reference: {ratio('bico_ref', 'ntp_ref')}")
        print(f"BICO step, fast / reference path:      {ratio('bico_ref', 'bico')} (speed-up)")
    peak = 2 * 1024**3 / med["mm"]
    flops = step_flops(layers, width, d_mlp, V, args.batch, args.seq_len)
    print(f"matmul peak (1024^3 torch.mm, same rounds): {peak / 1e9:.1f} GFLOP/s [{2 * 1024**3 / best['mm'] / 1e9:.1f}]")
    print(f"fast NTP step: {flops / 1e9:.1f} GFLOP of matrix multiplies, {flops / med['ntp'] / 1e9:.1f} GFLOP/s = "
          f"{flops / med['ntp'] / peak:.0%} of the peak (Llama {flops / med['llama'] / peak:.0%}, "
          f"reference {flops / med['ntp_ref'] / peak:.0%})")


if __name__ == "__main__":
    main()
