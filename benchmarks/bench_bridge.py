"""Benchmark activation collection through TransformerLens's ``TransformerBridge`` against a plain ``transformers``
forward on the same token batches.

Two Hugging Face directories, both built here (no downloads):

- ``gpt2``: a ``GPT2LMHeadModel`` from ``GPT2Config`` (random init), saved with ``save_pretrained`` beside a
  byte-level BPE tokenizer trained with the ``tokenizers`` library on the biographies of a fresh bioS dataset;
- ``llama``: a probekit ``HookedLM`` (random init, weights do not change the cost) written by
  ``probekit.model.hf.export_llama`` with the dataset's word-level tokenizer.

On each, the biographies (each starting with ``<|endoftext|>``) are read at 3 positions (first, middle, last
token) at every layer boundary (``hook_points``: L + 1 points), timed side by side in alternating rounds:

1. ``bridge``: ``collect_activations`` over ``probekit.model.hf.load_bridge(dir)`` (what ``probekit probe`` runs
   on a Hugging Face directory);
2. ``plain``: ``AutoModelForCausalLM.from_pretrained(dir)`` (transformers' default attention, ``sdpa``) called
   with ``output_hidden_states=True`` on the same batches (sorted longest first, right-padded, ``batch_size`` rows,
   no attention mask: under causal attention right padding cannot change real positions, and the bridge gets no
   mask either), gathering the same positions;
3. ``plain-eager``: the same with ``attn_implementation="eager"``, the attention the bridge forces on its model so
   its attention-pattern hooks fire;
4. ``native`` (Llama only): ``collect_activations`` over the ``HookedLM`` itself, for reference.

Every contender runs in float32 on the same threads. It prints real tokens/s of each (padding excluded), the ratio
bridge/plain (target >= 0.8x) and the largest absolute difference between the bridge's states and the plain
forward's ``hidden_states`` at the read positions (the last boundary after the final norm, which is where
``hidden_states[-1]`` is taken), so both compute the same thing.

    python benchmarks/bench_bridge.py                    # 200 people, 4 layers x 128 (about a minute, 1 thread)
    python benchmarks/bench_bridge.py --people 1000 --layers 8 --d-model 256 --rounds 7

``--clock cpu`` (default) measures CPU seconds of this process (``time.process_time``), which other processes on
the same cores inflate far less than wall time; use ``--clock wall`` on an idle machine or with several threads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probekit.errors import cpu_model

CLOCK: Callable[[], float] = time.process_time


def bpe_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A GPT-2-style byte-level BPE tokenizer trained on ``texts``, ``<|endoftext|>`` at id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(texts, trainer=trainer)
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot, pad_token=eot)


def batches_of(seqs: Sequence[Sequence[int]], batch_size: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """The batches ``collect_activations`` builds: rows sorted longest first, right-padded with id 0."""
    from probekit.probes.activations import padded_batch

    order = np.argsort([-len(s) for s in seqs], kind="stable")
    out = []
    for s in range(0, len(seqs), batch_size):
        rows = order[s : s + batch_size]
        ids, _ = padded_batch(seqs, rows, "cpu")
        out.append((rows, ids))
    return out


def final_norm(model: Any) -> torch.nn.Module:
    """The norm a causal LM applies before ``hidden_states[-1]`` (Llama ``model.norm``, GPT-2 ``transformer.ln_f``)."""
    base = model.base_model
    for name in ("norm", "ln_f", "final_layer_norm"):
        if hasattr(base, name):
            return getattr(base, name)
    raise AttributeError(f"no final norm found on {type(base).__name__}")


def bench_dir(name: str, directory: Path, seqs: list[list[int]], args: argparse.Namespace,
              native: Any = None) -> dict[str, float]:  # fmt: skip
    from transformers import AutoModelForCausalLM

    from probekit.model.hf import load_bridge
    from probekit.probes.activations import collect_activations, hook_points

    bridge = load_bridge(directory)
    plain = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    eager = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32,
                                                 attn_implementation="eager").eval()  # fmt: skip
    n_layers = plain.config.num_hidden_layers
    points = hook_points(n_layers)
    pos = np.array([[0, len(s) // 2, len(s) - 1] for s in seqs], dtype=np.int64)  # [N, 3]
    batches = batches_of(seqs, args.batch_size)
    n_tokens = sum(map(len, seqs))
    attn = {"plain": plain.config._attn_implementation, "plain-eager": eager.config._attn_implementation,
            "bridge": bridge.original_model.config._attn_implementation}  # fmt: skip

    def forward(model: Any) -> torch.Tensor:
        out = torch.empty(len(points), len(seqs), pos.shape[1], plain.config.hidden_size)  # [L+1, N, 3, d]
        with torch.no_grad():
            for rows, ids in batches:
                hs = model(input_ids=ids, output_hidden_states=True).hidden_states  # L+1 x [B, T, d]
                p = torch.as_tensor(pos[rows])  # [B, 3]
                b = torch.arange(len(rows))[:, None]
                for i, h in enumerate(hs):
                    out[i, torch.as_tensor(rows)] = h[b, p]
        return out

    def collect(model: Any) -> torch.Tensor:
        acts = collect_activations(model, seqs, pos, points, batch_size=args.batch_size)
        return torch.stack(list(acts.data))

    contenders: dict[str, Callable[[], torch.Tensor]] = {
        "plain": lambda: forward(plain), "plain-eager": lambda: forward(eager), "bridge": lambda: collect(bridge),
    }  # fmt: skip
    if native is not None:
        contenders["native"] = lambda: collect(native)

    # agreement first: the bridge's states against the plain forward's hidden_states
    ref, got = forward(plain), collect(bridge)
    with torch.no_grad():
        got[-1] = final_norm(plain)(got[-1])  # hidden_states[-1] is taken after the final norm
    diff = (ref - got).abs().max().item()
    scale = ref.abs().max().item()

    times: dict[str, list[float]] = {k: [] for k in contenders}
    for fn in contenders.values():
        fn()  # warm-up
    for r in range(args.rounds):
        names = list(contenders) if r % 2 == 0 else list(reversed(contenders))  # drift hits all alike
        for k in names:
            t0 = CLOCK()
            contenders[k]()
            times[k].append(CLOCK() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: n_tokens / v for k, v in med.items()}
    print(f"{name}: {len(seqs)} sequences, {n_tokens} tokens ({n_tokens / len(seqs):.0f} per sequence), "
          f"{n_layers} layers x {plain.config.hidden_size}, vocab {plain.config.vocab_size}, {len(points)} points x "
          f"{pos.shape[1]} positions, batch {args.batch_size}")  # fmt: skip
    for k in contenders:
        note = f" ({attn[k]} attention)" if k in attn else " (probekit HookedLM)"
        print(f"  {k:12s} {tps[k]:9.0f} tokens/s  median {med[k]:.3f}s of {args.rounds}{note}")
    print(f"  bridge / plain {tps['bridge'] / tps['plain']:.2f}x (target >= 0.8x), bridge / plain-eager "
          f"{tps['bridge'] / tps['plain-eager']:.2f}x; max |bridge - plain hidden_states| {diff:.2e} "
          f"(largest |state| {scale:.1f})")  # fmt: skip
    return {"ratio": tps["bridge"] / tps["plain"], "diff": diff, **{f"{k}_tok_s": v for k, v in tps.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=200, help="bioS people (one biography each)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--bpe-vocab", type=int, default=1000, help="GPT-2 byte-level BPE vocabulary size")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per contender (median reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: CPU seconds of this process (time.process_time), wall: time.perf_counter")  # fmt: skip
    ap.add_argument("--models", default="gpt2,llama", help="comma-separated: gpt2, llama")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    from importlib.metadata import version

    from probekit.data.store import build_dataset
    from probekit.data.tokenizer import EOS_ID
    from probekit.model.config import ModelConfig
    from probekit.model.hf import export_llama
    from probekit.model.transformer import HookedLM

    print(f"CPU {cpu_model()}, {args.threads} thread(s), clock {args.clock}; torch {torch.__version__}, "
          f"transformers {version('transformers')}, transformer-lens {version('transformer-lens')}")  # fmt: skip
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    d, L = args.d_model, args.layers
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ds = build_dataset(tmp / "ds", n_people=args.people, augmentation="single", seed=0)
        texts = [e.text for e in ds.entries]
        if "gpt2" in models:
            from transformers import GPT2Config, GPT2LMHeadModel

            tok = bpe_tokenizer(texts, args.bpe_vocab)
            cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=d, n_layer=L, n_head=max(2, d // 32),
                             bos_token_id=0, eos_token_id=0)  # fmt: skip
            torch.manual_seed(0)
            GPT2LMHeadModel(cfg).save_pretrained(str(tmp / "gpt2"))
            tok.save_pretrained(str(tmp / "gpt2"))
            seqs = [[0, *ids] for ids in tok(texts, add_special_tokens=False)["input_ids"]]
            bench_dir("gpt2 (byte-level BPE)", tmp / "gpt2", seqs, args)
        if "llama" in models:
            mcfg = ModelConfig(vocab_size=len(ds.tokenizer), d_model=d, n_layers=L, n_heads=max(2, d // 32),
                               d_mlp=4 * d, n_ctx=512)  # fmt: skip
            model = HookedLM(mcfg).eval()
            export_llama(model, ds.tokenizer, tmp / "llama")
            seqs = [[EOS_ID, *ids] for ids in ds.tokenizer(texts, add_special_tokens=False)["input_ids"]]
            bench_dir("llama (export of a probekit HookedLM, word-level)", tmp / "llama", seqs, args, native=model)


if __name__ == "__main__":
    main()
