"""Training throughput: our trainer step against transformers' LlamaForCausalLM of the same shape, in float32 and
(``--precision bf16``) in bfloat16 mixed precision beside it.

Usage: python benchmarks/bench_train.py [--shapes 4x128,8x256 --vocab 2000 --seq-len 256 --batch 16
                                         --steps 4 --rounds 6 --threads 2 --precision no|bf16 --loss-steps 200]

For each model shape LAYERSxWIDTH (heads of 32 dimensions, d_mlp = 4 x width), measured side by side in one
run, on the same random token windows, one contender after another within every round (the order reversed
every other round, so drift in machine load hits all of them alike):

1. NTP tokens/s of ``probekit.training.trainer.Trainer`` (batch build + ``train_step``: forward, loss,
   ``accelerator.backward``, clipping, AdamW) with ``ModelConfig.fast_path`` on (the default: fused BICO
   attention, fused RMSNorm, chunked fused unembedding + cross-entropy) and off (the reference path), against
   ``LlamaForCausalLM`` (``attn_implementation="sdpa"``, same shape, untied embeddings; loss through its own
   ``labels=``; the same clipping and fused AdamW as the trainer). Target: fast / Llama >= 1.3.
2. BICO step cost / NTP step cost through the full trainer step (batch building included), for a BICO batch
   (``bico_prob`` 1: every batch bidirectional with placeholders), fast path and reference path, and derived from
   it the default objective (half of the batches BICO). Target (fast path): <= 1.4.
3. The fraction of this CPU's matrix-multiply peak that the fast NTP step reaches: the step's matrix
   multiply work (forward + backward of every projection, the unembedding and attention's two products; causal
   attention counted in full, as the CPU kernel computes it) divided by the step time, over the rate of a large
   ``torch.mm`` timed in the same rounds.

``--precision bf16`` measures every contender (ours, Llama, the BICO step, the ``torch.mm`` peak) in float32 and in
bfloat16 mixed precision (the trainer's ``precision: bf16``: float32 master weights, autocast; Llama under
``torch.autocast``) side by side. Accelerate keeps one mixed-precision setting per process, so each precision
lives in its own worker process; the rounds still alternate between them, one contender at a time (the other
process waits), so both see the same machine. It prints bf16 / float32 tokens/s for ours (target >= 1.5) and for
Llama, and ours / Llama in bf16; then the loss check: the same model trained from the same seed on bioS
biographies for ``--loss-steps`` steps in each precision, final training loss (mean over the last tenth of the
steps) compared (target: bf16 within 2% of float32). On a CPU without bfloat16 matrix units (AMX-BF16 or
AVX-512-BF16) it says so and measures nothing. On a GPU both precisions run there.

Each figure is the median over all timed steps (the fastest step in brackets: the least disturbed one on a shared
machine). Steps are timed in CPU seconds of the timing process by default (``--clock cpu``, ``time.process_time``):
on a machine whose cores other jobs share, wall time mostly measures how long the step waited for a core, CPU
time what it cost (at 2 threads it also counts the threads' spin-waiting; ``--clock wall`` on an idle machine).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from probekit.data.tokenizer import EOS_ID, build_tokenizer
from probekit.errors import cpu_bf16_units, cpu_model
from probekit.io import read_jsonl
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


def model_settings(layers: int, width: int, head_dim: int, fast: bool = True) -> dict[str, int | bool]:
    return {"d_model": width, "n_layers": layers, "n_heads": max(1, width // head_dim), "d_mlp": 4 * width,
            "fast_path": fast}  # fmt: skip


def build_runs(args: argparse.Namespace, layers: int, width: int, precision: str,
               names: list[str]) -> tuple[dict[str, Callable[[int], None]], dict[str, int]]:  # fmt: skip
    """The step function of each contender in ``names`` (``llama``, ``ntp``, ``ntp_ref``, ``bico``, ``bico_ref``,
    ``mm``) at ``precision``, and the parameter counts of ours and Llama's model."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = build_tokenizer([" ".join(f"w{i}" for i in range(args.vocab - 6))])
    V = len(tok)
    g = torch.Generator().manual_seed(0)
    n_windows = args.batch * (args.steps * args.rounds + args.warmup) + args.batch
    windows = torch.randint(6, V, (n_windows, args.seq_len), generator=g)
    windows[:, 0] = EOS_ID
    items = [TrainItem(w.tolist()) for w in windows]

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    bico = {"bico_prob": 1.0}
    contenders = {"ntp": ("ntp", {}, True), "ntp_ref": ("ntp", {}, False), "bico": ("bico", bico, True),
                  "bico_ref": ("bico", bico, False)}  # fmt: skip
    trainers: dict[str, Trainer] = {}
    for name in names:
        if name in contenders:
            objective, settings, fast = contenders[name]
            cfg = TrainConfig(out=str(tmp / name), objective=objective, objective_settings=settings,
                              model=model_settings(layers, width, args.head_dim, fast), seq_len=args.seq_len,
                              batch_size=args.batch, max_steps=10**6, warmup_steps=10, eval_windows=0,
                              precision=precision)  # fmt: skip
            trainers[name] = Trainer(cfg, ItemSource(items, seed=0), tokenizer=tok, progress=False)

    def trainer_step(tr: Trainer) -> Callable[[int], None]:
        def step(i: int) -> None:
            gen = torch.Generator().manual_seed(i)
            k = (i * args.batch) % (len(items) - args.batch)
            tr.train_step(tr.build_batch(items[k : k + args.batch], gen))

        return step

    ms = model_settings(layers, width, args.head_dim)
    lcfg = LlamaConfig(vocab_size=V, hidden_size=width, intermediate_size=ms["d_mlp"],
                       num_hidden_layers=layers, num_attention_heads=ms["n_heads"],
                       num_key_value_heads=ms["n_heads"], max_position_embeddings=args.seq_len, rms_norm_eps=1e-5,
                       rope_theta=10000.0, tie_word_embeddings=False, attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    llama = LlamaForCausalLM(lcfg).to(device).train()
    opt = torch.optim.AdamW(llama.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1,
                            fused=device.type in ("cpu", "cuda"))  # the trainer's optimiser

    def llama_step(i: int) -> None:
        k = (i * args.batch) % (len(items) - args.batch)
        ids = windows[k : k + args.batch].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = llama(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llama.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    big = torch.randn(1024, 1024, device=device, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)

    def mm_step(i: int) -> None:  # ~2.1 GFLOP per call
        big @ big

    runs: dict[str, Callable[[int], None]] = {k: trainer_step(t) for k, t in trainers.items()}
    runs["llama"], runs["mm"] = llama_step, mm_step
    ours = next(iter(trainers.values()))
    n_ours = ours.accelerator.unwrap_model(ours.model).num_params()
    return {k: runs[k] for k in names}, {"ours": n_ours, "llama": sum(p.numel() for p in llama.parameters())}


def loss_curve(args: argparse.Namespace, layers: int, width: int, precision: str) -> list[float]:
    """Training losses (every 10 steps) of the model of this shape trained from seed 0 on bioS ``single`` (200
    people) for ``args.loss_steps`` steps of ``args.batch`` x ``args.seq_len`` tokens at ``precision``."""
    from probekit.data.bios import generate
    from probekit.training.data import PackedSource, tokenize_texts

    _, entries = generate(200, seed=0, augmentation="single")
    texts = [e.text for e in entries]
    tok = build_tokenizer(texts)
    source = PackedSource(tokenize_texts(tok, texts), args.seq_len, seed=0)
    out = Path(tempfile.mkdtemp(prefix="bench_loss_")) / "run"
    cfg = TrainConfig(out=str(out), objective="ntp", model=model_settings(layers, width, args.head_dim),
                      seq_len=args.seq_len, batch_size=args.batch, max_steps=args.loss_steps,
                      warmup_steps=max(1, args.loss_steps // 10), lr=1e-3, min_lr=1e-4, eval_windows=0,
                      log_every=10, save_every=0, seed=0, precision=precision)  # fmt: skip
    result = Trainer(cfg, source, tokenizer=tok, progress=False).run()
    return [float(r["loss"]) for r in read_jsonl(result.metrics_path)]


def worker(conn: Connection, args: argparse.Namespace, layers: int, width: int, precision: str,
           names: list[str]) -> None:  # fmt: skip
    """One precision's contenders in their own process: answers ("time", name, n, start), ("loss",), ("stop",)."""
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    runs, params = build_runs(args, layers, width, precision, names)
    for fn in runs.values():
        _time(fn, args.warmup, 0)
    conn.send(params)
    while True:
        msg = conn.recv()
        if msg[0] == "time":
            conn.send(_time(runs[msg[1]], msg[2], msg[3]))
        elif msg[0] == "loss":
            conn.send(loss_curve(args, layers, width, precision))
        else:
            return


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
    ap.add_argument("--precision", choices=("no", "bf16"), default="no",
                    help="no: float32 only, with the reference path; bf16: float32 and bf16 side by side")  # fmt: skip
    ap.add_argument("--loss-steps", type=int, default=200,
                    help="--precision bf16: training steps of the loss check per shape (0: skip it)")  # fmt: skip
    ap.add_argument("--no-bico", action="store_true", help="skip the BICO contenders")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: CPU seconds of the timing process (time.process_time; not inflated by other "
                         "processes waiting for the same cores), wall: elapsed (idle machine, GPU)")  # fmt: skip
    args = ap.parse_args()
    if args.precision == "bf16" and not torch.cuda.is_available() and not cpu_bf16_units():
        print(f"bf16 not measured: no bf16 unit on this CPU ({cpu_model()}: neither AMX-BF16 nor AVX-512-BF16)")
        return
    print(f"CPU {cpu_model()}, bf16 units: {', '.join(cpu_bf16_units()) or 'none'}")
    threads = args.threads or torch.get_num_threads()
    print(f"threads {threads}, precision {args.precision}, batch {args.batch} x {args.seq_len} tokens, "
          f"vocab {args.vocab}, clock {args.clock}")  # fmt: skip
    for shape in args.shapes.split(","):
        layers, width = (int(x) for x in shape.lower().split("x"))
        run_shape(args, layers, width)


LABELS = {"llama": "LlamaForCausalLM (sdpa), NTP", "ntp": "probekit, NTP, fast path",
          "ntp_ref": "probekit, NTP, reference path", "bico": "probekit, BICO batch, fast path",
          "bico_ref": "probekit, BICO batch, reference path"}  # fmt: skip


def run_shape(args: argparse.Namespace, layers: int, width: int) -> None:
    bico = [] if args.no_bico else ["bico"]
    if args.precision == "bf16":
        plan = {"fp32": ["llama", "ntp", *bico, "mm"], "bf16": ["llama", "ntp", *bico, "mm"]}
    else:
        plan = {"fp32": ["llama", "ntp", "ntp_ref", *bico, *[f"{b}_ref" for b in bico], "mm"]}
    ctx = mp.get_context("spawn")
    pipes: dict[str, Connection] = {}
    procs = []
    for prec, names in plan.items():
        here, there = ctx.Pipe()
        p = ctx.Process(target=worker, args=(there, args, layers, width, "bf16" if prec == "bf16" else "no", names))
        p.start()
        pipes[prec] = here
        procs.append(p)
    params = {prec: pipe.recv() for prec, pipe in pipes.items()}
    ms = model_settings(layers, width, args.head_dim)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\n== model {layers} x {width} ({ms['n_heads']} heads of {args.head_dim}, d_mlp {ms['d_mlp']}), device "
          f"{device}; params ours {params['fp32']['ours']:,} / llama {params['fp32']['llama']:,}")  # fmt: skip
    assert params["fp32"]["ours"] == params["fp32"]["llama"], "shapes differ"

    keys = [(prec, name) for prec, names in plan.items() for name in names]
    times: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    for r in range(args.rounds):
        for prec, name in keys if r % 2 == 0 else list(reversed(keys)):
            pipes[prec].send(("time", name, args.steps, args.warmup + r * args.steps))
            times[(prec, name)] += pipes[prec].recv()
    curves: dict[str, list[float]] = {}
    if args.precision == "bf16" and args.loss_steps > 0:
        for prec, pipe in pipes.items():  # one after the other: each run has the cores to itself
            pipe.send(("loss",))
            curves[prec] = pipe.recv()
    for pipe in pipes.values():
        pipe.send(("stop",))
    for p in procs:
        p.join()

    # median: typical step; min: the least disturbed step (robust when other processes share the cores)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    tok_step = args.batch * args.seq_len
    print(f"{'step':<46}{'ms/step':>10}{'tokens/s':>12}{'min ms':>10}")
    for prec, name in keys:
        if name != "mm":
            label = LABELS[name] if prec == "fp32" else LABELS[name].replace(", fast path", "") + ", bf16"
            k = (prec, name)
            print(f"{label:<46}{med[k] * 1e3:>10.1f}{tok_step / med[k]:>12,.0f}{best[k] * 1e3:>10.1f}")

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> str:
        """How many times faster ``b`` is than ``a`` (median steps; fastest steps in brackets)."""
        return f"{med[a] / med[b]:.2f} [{best[a] / best[b]:.2f}]"

    print("(median steps; fastest steps in brackets)")
    f32 = "fp32"
    print(f"NTP tokens/s, fast path / Llama:       {ratio((f32, 'llama'), (f32, 'ntp'))}  (target >= 1.3)")
    if args.precision == "bf16":
        print(f"NTP tokens/s, bf16 / float32, ours:    {ratio((f32, 'ntp'), ('bf16', 'ntp'))}  (target >= 1.5)")
        print(f"NTP tokens/s, bf16 / float32, Llama:   {ratio((f32, 'llama'), ('bf16', 'llama'))}")
        print(f"NTP tokens/s, ours / Llama, bf16:      {ratio(('bf16', 'llama'), ('bf16', 'ntp'))}")
        if bico:
            print(f"BICO step, bf16 / float32 (speed-up):  {ratio((f32, 'bico'), ('bf16', 'bico'))}")
            print(f"BICO batch step / NTP step, bf16:      {ratio(('bf16', 'bico'), ('bf16', 'ntp'))}")
        print(f"matmul peak, bf16 / float32 (1024^3):  {ratio((f32, 'mm'), ('bf16', 'mm'))}")
    else:
        print(f"NTP tokens/s, reference path / Llama:  {ratio((f32, 'llama'), (f32, 'ntp_ref'))}")
        print(f"NTP tokens/s, fast / reference path:   {ratio((f32, 'ntp_ref'), (f32, 'ntp'))}")
    if bico:
        b, b_min = med[(f32, "bico")] / med[(f32, "ntp")], best[(f32, "bico")] / best[(f32, "ntp")]
        print(f"BICO batch step / NTP step, fast path: {b:.2f} [{b_min:.2f}]  (target <= 1.4); "
              f"half-BICO objective {(1 + b) / 2:.2f}")
        if args.precision != "bf16":
            print(f"BICO batch step / NTP step, reference: {ratio((f32, 'bico_ref'), (f32, 'ntp_ref'))}")
            print(f"BICO step, fast / reference path:      {ratio((f32, 'bico_ref'), (f32, 'bico'))} (speed-up)")
    flops = step_flops(layers, width, int(ms["d_mlp"]), args.vocab, args.batch, args.seq_len)
    for prec in plan:
        peak = 2 * 1024**3 / med[(prec, "mm")]
        others = f"Llama {flops / med[(prec, 'llama')] / peak:.0%}"
        if (prec, "ntp_ref") in med:
            others += f", reference {flops / med[(prec, 'ntp_ref')] / peak:.0%}"
        print(f"{prec}: matmul peak (1024^3 torch.mm, same rounds) {peak / 1e9:.1f} GFLOP/s "
              f"[{2 * 1024**3 / best[(prec, 'mm')] / 1e9:.1f}]; fast NTP step {flops / 1e9:.1f} GFLOP of matrix "
              f"multiplies, {flops / med[(prec, 'ntp')] / 1e9:.1f} GFLOP/s = {flops / med[(prec, 'ntp')] / peak:.0%} "
              f"of the peak ({others})")  # fmt: skip
    if curves:
        n_last = max(1, len(curves[f32]) // 10)
        final = {p: statistics.fmean(c[-n_last:]) for p, c in curves.items()}
        rel = final["bf16"] / final[f32] - 1
        gap = max(abs(a - b) / b for a, b in zip(curves["bf16"], curves[f32]))
        print(f"loss check ({args.loss_steps} steps on bioS single, 200 people, seed 0; mean of the last "
              f"{n_last * 10} steps): float32 {final[f32]:.4f}, bf16 {final['bf16']:.4f}, bf16 / float32 - 1 = "
              f"{rel:+.2%} (target within 2%: {'met' if abs(rel) <= 0.02 else 'MISSED'}); largest gap along the "
              f"curve (10-step means) {gap:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
