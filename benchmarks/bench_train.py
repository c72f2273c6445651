"""Training throughput: our trainer step against transformers' LlamaForCausalLM of the same shape.

Usage: python benchmarks/bench_train.py [--d-model 128 --layers 4 --heads 4 --d-mlp 512 --vocab 2000
                                         --seq-len 256 --batch 16 --steps 10 --rounds 3 --threads 2]

Measured side by side in one process, on the same random token windows:

1. NTP tokens/s of ``probekit.train.Trainer`` (batch build + ``train_step``: forward, loss, ``accelerator.backward``,
   clipping, AdamW) against ``LlamaForCausalLM`` (``attn_implementation="sdpa"``, same d_model, layers, heads, d_mlp,
   vocab, untied embeddings; loss through its own ``labels=``; the same clipping and fused AdamW as the trainer).
   Target: ratio >= 1.0.
2. BICO step cost / NTP step cost through the full trainer step (batch building included), for a BICO batch
   (``bico_prob`` 1: every batch bidirectional with placeholders) and, derived from it, for the default objective
   whose batches are BICO with probability 0.5 (the rest are NTP). Target: <= 1.6.

Rounds alternate the models so drift in machine load hits all of them alike; each figure is the median step
time after warm-up steps, with the fastest step beside it (the least disturbed one on a shared machine). On a GPU, ``--precision bf16`` autocasts both models.
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
from probekit.train import TrainConfig, Trainer
from probekit.train_data import ItemSource, TrainItem


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(step: Callable[[int], None], n: int, start: int) -> list[float]:
    """Seconds of each of ``n`` steps."""
    out = []
    for i in range(n):
        _sync()
        t0 = time.perf_counter()
        step(start + i)
        _sync()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-mlp", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=2000, help="vocabulary size (bioS word-level: a few thousand)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave torch's default)")
    ap.add_argument("--precision", choices=("no", "bf16"), default="no")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    tok = build_tokenizer([" ".join(f"w{i}" for i in range(args.vocab - 6))])
    V = len(tok)
    g = torch.Generator().manual_seed(0)
    n_windows = args.batch * (args.steps + args.warmup) * 2
    windows = torch.randint(6, V, (n_windows, args.seq_len), generator=g)
    windows[:, 0] = EOS_ID
    items = [TrainItem(w.tolist()) for w in windows]
    model_cfg = {"d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads, "d_mlp": args.d_mlp}

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    trainers: dict[str, Trainer] = {}
    for name, objective, settings in (("ntp", "ntp", {}), ("bico", "bico", {"bico_prob": 1.0})):
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

    lcfg = LlamaConfig(vocab_size=V, hidden_size=args.d_model, intermediate_size=args.d_mlp,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.heads, max_position_embeddings=args.seq_len, rms_norm_eps=1e-5,
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

    ours = trainers["ntp"].accelerator.unwrap_model(trainers["ntp"].model)
    n_ours, n_llama = ours.num_params(), sum(p.numel() for p in llama.parameters())
    print(f"device {device}, threads {torch.get_num_threads()}, precision {args.precision}")
    print(f"shape: d_model {args.d_model}, layers {args.layers}, heads {args.heads}, d_mlp {args.d_mlp}, vocab {V}, "
          f"seq_len {args.seq_len}, batch {args.batch}; params ours {n_ours:,} / llama {n_llama:,}")  # fmt: skip
    assert n_ours == n_llama, "shapes differ"

    runs: dict[str, Callable[[int], None]] = {"llama": llama_step, **{k: trainer_step(t) for k, t in trainers.items()}}
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
    print(f"\n{'step':<34}{'ms/step':>10}{'tokens/s':>12}{'min ms':>10}")
    labels = {"llama": "LlamaForCausalLM (sdpa), NTP", "ntp": "probekit trainer, NTP",
              "bico": "probekit trainer, BICO batch"}  # fmt: skip
    for k in runs:
        print(f"{labels[k]:<34}{med[k] * 1e3:>10.1f}{tok_step / med[k]:>12,.0f}{best[k] * 1e3:>10.1f}")
    print("\n(median steps; min steps in brackets)")
    print(f"NTP tokens/s, ours / Llama:    {med['llama'] / med['ntp']:.2f} [{best['llama'] / best['ntp']:.2f}]"
          "  (target >= 1.0)")
    bico, bico_min = med["bico"] / med["ntp"], best["bico"] / best["ntp"]
    print(f"BICO batch step / NTP step:    {bico:.2f} [{bico_min:.2f}]  (target <= 1.6)")
    print(f"BICO objective (bico_prob 0.5, half the batches BICO) / NTP step: {(1 + bico) / 2:.2f} "
          f"[{(1 + bico_min) / 2:.2f}]")


if __name__ == "__main__":
    main()
