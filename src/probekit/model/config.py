"""``ModelConfig``: the hooked model's shape and settings, in a module without torch, so that configs (and the
CLI's ``--help``) can be read without importing the model. ``probekit.model.transformer`` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass

from probekit.errors import UserError


@dataclass
class ModelConfig:
    vocab_size: int  # token embeddings and unembedding rows (in training: the tokenizer's size)
    d_model: int = 128  # width of the residual stream
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads per block (must divide d_model into an even head size)
    d_mlp: int = 512  # hidden width of each SwiGLU MLP
    n_ctx: int = 512  # longest input (rotary positions; ABI's span-position table has n_ctx rows)
    rope_theta: float = 10000.0  # rotary embedding base
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = False  # share the token embedding with the unembedding
    span_positions: bool = False  # ABI: learned intra-span position table (n_ctx rows) added to the embeddings
    init_range: float = 0.02  # standard deviation of the normal weight initialisation
    seed: int = 0  # initialisation seed
    # Fused CPU training kernels (probekit.model.kernels): the loss as a chunked fused unembedding + cross-entropy over
    # the labelled rows only (forward(labels=...), used by objectives.compute_loss), BICO attention in cache-sized
    # blocks with a hand-written backward, RMSNorm with a hand-written backward. Same function as the reference
    # path up to float32 rounding (tolerance in tests/test_fast_path.py). Used only for float32 on CPU without
    # autocast, and only where no hook is attached to a hook point it would skip (hook_normalized,
    # hook_attn_scores / hook_pattern) and the unembedding is a plain nn.Linear; everything else runs the
    # reference path. False = reference path everywhere. Not a property of the weights: toggling it is free.
    fast_path: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_mlp", "n_ctx"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads != 0:
            raise UserError(
                f"ModelConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                f"choose n_heads dividing d_model (e.g. n_heads={_divisor_hint(self.d_model, self.n_heads)})"
            )
        if self.d_head % 2 != 0:
            raise UserError(
                f"ModelConfig: head size d_model/n_heads = {self.d_head} is odd, but rotary embeddings rotate "
                "pairs of dimensions; choose d_model and n_heads so that d_model/n_heads is even"
            )
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_range <= 0:
            raise UserError("ModelConfig: rope_theta, norm_eps and init_range must be positive")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


def _divisor_hint(d_model: int, n_heads: int) -> int:
    divisors = [h for h in range(1, d_model + 1) if d_model % h == 0 and (d_model // h) % 2 == 0]
    return min(divisors, key=lambda h: abs(h - n_heads)) if divisors else 1
