"""Residual-stream activations at chosen token positions, in memory or streamed to disk.

``collect_activations(model, sequences, positions, points)`` runs the model over token sequences in batches and
keeps, for every hook point, only the hidden states at the requested positions: ``[N, P, d]`` per point
(N sequences, P positions each). Nothing else is cached: each hook gathers its P rows per sequence and the
forward pass of a probekit ``HookedLM`` stops as soon as the last requested hook has fired (the final norm and
unembedding are never computed).

Models: a probekit ``HookedLM`` or a TransformerLens ``TransformerBridge`` over any Hugging Face causal LM
(``probekit.model.hf.load_bridge``); both expose TransformerLens hook names. ``hook_points(n_layers)`` gives the
L+1 layer boundaries: ``blocks.{l}.hook_resid_pre`` for l < L (layer 0 = the embeddings) and
``blocks.{L-1}.hook_resid_post`` as layer L.

Padding: sequences are sorted by length, batched and padded on the right with ``<pad>``. In a causal model a
token never attends to later tokens, so right padding cannot change the states at real positions; our model
additionally gets ``key_mask`` (pads are never keys).

Readings (``READINGS``): every model can be read in the *causal* reading (``attn_mode="causal"``: the state at a
position depends only on the prefix, the input a causal model sees). An ABI model never attends causally inside
Part A (its prompts are Part A, bidirectional), so a causal read of it is out of distribution; the *abi* reading
gives it the prefix up to the read position as Part A, bidirectional within it (``attn_mode="abi"``,
``prefix_len`` = the prefix's length), one forward pass per read position. In both readings a state depends on
the tokens up to the read position and on nothing after it.

Storage: ``storage="memory"`` returns float32 tensors; ``storage="disk"`` streams each point into its own
float16 ``.npy`` memmap under ``out_dir`` (bounded memory: one batch at a time), written atomically;
``load_activations(out_dir)`` reopens it. 100,000 people x 13 points x 1 position x 768 dims is 2 GB on disk.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from probekit.data.tokenizer import PAD_ID
from probekit.errors import UserError, UserFileNotFoundError
from probekit.io import atomic_dir, atomic_write_json
from probekit.model.batch import pad_right

log = logging.getLogger(__name__)

READINGS: tuple[str, ...] = ("causal", "abi")
HOOK_FAMILIES: dict[str, str] = {
    "resid": "hook_resid_pre",  # + the last block's hook_resid_post as layer L
    "resid_mid": "hook_resid_mid",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}
_ORDER_IN_BLOCK = {
    "hook_resid_pre": 0, "hook_attn_out": 1, "hook_resid_mid": 2, "hook_mlp_out": 3, "hook_resid_post": 4,
}  # fmt: skip
META_FILE = "activations.json"


@dataclass(frozen=True)
class HookPoint:
    """One place to read: a hook family (``resid``...), its layer index, and the TransformerLens hook name."""

    hook: str
    layer: int
    name: str


def hook_points(
    n_layers: int, hooks: Sequence[str] = ("resid",), layers: Sequence[int] | None = None
) -> list[HookPoint]:
    """Hook points for a model with ``n_layers`` blocks. ``resid`` has layers 0..L (L+1 boundaries); the other
    families 0..L-1. ``layers`` restricts the layers (None = all; out-of-range layers are an error)."""
    points: list[HookPoint] = []
    for hook in hooks:
        if hook not in HOOK_FAMILIES:
            raise UserError(f"unknown hook {hook!r}; valid hooks are {list(HOOK_FAMILIES)}")
        n = n_layers + 1 if hook == "resid" else n_layers
        chosen = list(range(n)) if layers is None else list(layers)
        bad = [v for v in chosen if not 0 <= v < n]
        if bad:
            raise UserError(f"layers {bad} do not exist for hook {hook!r} on a {n_layers}-layer model (0..{n - 1})")
        for layer in chosen:
            if hook == "resid" and layer == n_layers:
                name = f"blocks.{n_layers - 1}.hook_resid_post"
            else:
                name = f"blocks.{layer}.{HOOK_FAMILIES[hook]}"
            points.append(HookPoint(hook, layer, name))
    return points


@dataclass(frozen=True)
class ModelDims:
    n_layers: int
    d_model: int
    n_ctx: int
    vocab_size: int


def model_dims(model: Any) -> ModelDims:
    """Shape facts of a ``HookedLM`` or a ``TransformerBridge``."""
    cfg = model.cfg
    vocab = getattr(cfg, "vocab_size", None) or getattr(cfg, "d_vocab", None)
    if vocab is None:
        raise TypeError(f"model config {type(cfg).__name__} has neither vocab_size nor d_vocab")
    return ModelDims(int(cfg.n_layers), int(cfg.d_model), int(cfg.n_ctx), int(vocab))


def _is_hooked_lm(model: Any) -> bool:
    from probekit.model.transformer import HookedLM

    return isinstance(model, HookedLM)


class _Stop(Exception):
    """Raised by the last hook to end a forward pass early (nothing after it is needed)."""


def padded_batch(
    sequences: Sequence[Sequence[int]], rows: Sequence[int] | np.ndarray, device: Any
) -> tuple[Tensor, Tensor]:
    """Token ids [B, T] of ``sequences[rows]`` padded on the right with ``<pad>``, and the key mask [B, T] (True on
    real tokens), on ``device``."""
    ids = pad_right([sequences[r] for r in rows], PAD_ID)  # [B, T]
    lengths = torch.tensor([len(sequences[r]) for r in rows])
    key_mask = torch.arange(ids.shape[1])[None] < lengths[:, None]  # [B, T]
    return ids.to(device), key_mask.to(device)


def run_causal(
    model: Any, ids: Tensor, key_mask: Tensor, fwd_hooks: list[tuple[str, Callable[..., Any]]], reading: str = "causal"
) -> None:
    """One forward pass of a ``HookedLM`` or ``TransformerBridge`` with ``fwd_hooks``, in the causal reading (our
    model also gets ``key_mask``), or with ``reading="abi"`` each row's real tokens as one bidirectional Part A; a
    hook may raise ``_Stop`` to end the pass once it has what it needs."""
    try:
        if reading == "abi":
            prefix_len = key_mask.sum(1)  # [B]: the whole prompt is Part A
            model.run_with_hooks(ids, fwd_hooks=fwd_hooks, attn_mode="abi", key_mask=key_mask, prefix_len=prefix_len)
        elif _is_hooked_lm(model):
            model.run_with_hooks(ids, fwd_hooks=fwd_hooks, attn_mode="causal", key_mask=key_mask)
        else:
            model.run_with_hooks(ids, fwd_hooks=fwd_hooks)
    except _Stop:
        pass


@dataclass
class Activations:
    """Activations of N sequences at P positions for several hook points.

    ``data[i]`` is point i's array ``[N, P, d]``: a float32 tensor in memory, or a read-only float16 numpy memmap
    on disk. Groups for the probe engine are (point, position) pairs, ``g = i * P + p``.
    """

    points: list[HookPoint]
    position_names: list[str]
    data: list[Any]
    root: Path | None = None

    @property
    def n_points(self) -> int:
        return len(self.points)

    @property
    def n(self) -> int:
        return int(self.data[0].shape[0]) if self.data else 0

    @property
    def n_positions(self) -> int:
        return len(self.position_names)

    @property
    def d(self) -> int:
        return int(self.data[0].shape[2]) if self.data else 0

    def get(self, point: int, position: int) -> Tensor:
        """[N, d] float32 activations of one point at one position."""
        a = self.data[point][:, position, :]
        return a.float() if isinstance(a, Tensor) else torch.from_numpy(np.asarray(a, dtype=np.float32))

    def group(self, g: int) -> tuple[HookPoint, str]:
        """The (hook point, position name) of engine group ``g``."""
        return self.points[g // self.n_positions], self.position_names[g % self.n_positions]

    def features(self) -> ActivationFeatures:
        return ActivationFeatures(self)

    def to_tensor(self) -> Tensor:
        """Everything as one float32 tensor [n_points, N, P, d] (small runs)."""
        return torch.stack(
            [
                a.float() if isinstance(a, Tensor) else torch.from_numpy(np.asarray(a, dtype=np.float32))
                for a in self.data
            ]
        )


class ActivationFeatures:
    """A probe-engine ``FeatureSource`` over ``Activations``: group g = (point g // P, position g % P)."""

    def __init__(self, acts: Activations) -> None:
        self.acts = acts
        self.n_groups = acts.n_points * acts.n_positions
        self.n_rows = acts.n
        self.d = acts.d

    def load(self, groups: Sequence[int]) -> Tensor:
        P = self.acts.n_positions
        return torch.stack([self.acts.get(g // P, g % P) for g in groups])  # [G, N, d]


def _validate(sequences: Sequence[Sequence[int]], positions: np.ndarray, dims: ModelDims) -> None:
    if len(sequences) != positions.shape[0]:
        raise ValueError(f"{len(sequences)} sequences but {positions.shape[0]} rows of positions")
    lengths = np.array([len(s) for s in sequences])
    if len(lengths) and lengths.min() < 1:
        raise UserError("empty sequence given; every sequence needs at least one token")
    if len(lengths) and lengths.max() > dims.n_ctx:
        i = int(lengths.argmax())
        raise UserError(
            f"sequence {i} has {lengths[i]} tokens but the model's context is {dims.n_ctx}; "
            "positions beyond the context cannot be read (use a model with a larger n_ctx or shorter inputs)"
        )
    if positions.size and (positions.min() < 0 or (positions >= lengths[:, None]).any()):
        bad = int(np.argwhere((positions < 0) | (positions >= lengths[:, None]))[0][0])
        raise UserError(f"sequence {bad}: a requested position {positions[bad].tolist()} is outside its "
                        f"{lengths[bad]} tokens")  # fmt: skip
    if len(sequences):
        top = max(max(s) for s in sequences)
        if top >= dims.vocab_size:
            raise UserError(f"token id {top} is outside the model's vocabulary of {dims.vocab_size}; "
                            "the data was tokenized with a different tokenizer")  # fmt: skip


@torch.no_grad()
def collect_activations(
    model: Any,
    sequences: Sequence[Sequence[int]],
    positions: np.ndarray | Sequence[Sequence[int]],
    points: Sequence[HookPoint],
    *,
    position_names: Sequence[str] | None = None,
    batch_size: int = 64,
    storage: str = "memory",
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[int], object] | None = None,
    reading: str = "causal",
) -> Activations:
    """Hidden states of ``model`` at ``positions`` ([N, P] token indices) of ``sequences`` for every point.

    ``storage="memory"``: float32 tensors. ``storage="disk"``: float16 memmaps under ``out_dir`` (created
    atomically; existing non-empty dirs need ``overwrite``). ``progress(n)`` is called with the number of
    sequences done after each batch. The model is put in eval mode. ``reading``: ``causal`` (one pass per
    sequence) or ``abi`` (a probekit model only: one pass per read position over the prefix up to it, as a
    bidirectional Part A; see the module docstring).
    """
    pos = np.asarray(positions, dtype=np.int64)
    if pos.ndim != 2:
        raise ValueError(f"positions must be [N, P], got shape {pos.shape}")
    N, P = pos.shape
    names = list(position_names) if position_names is not None else [str(p) for p in range(P)]
    if len(names) != P:
        raise ValueError(f"{len(names)} position names for {P} positions")
    dims = model_dims(model)
    _validate(sequences, pos, dims)
    hook_dict = model.hook_dict
    missing = [p.name for p in points if p.name not in hook_dict]
    if missing:
        raise UserError(f"the model has no hook(s) {missing}; is it a TransformerLens-hooked model?")
    if storage not in ("memory", "disk"):
        raise UserError(f"unknown storage {storage!r}; use 'memory' or 'disk'")
    if storage == "disk" and out_dir is None:
        raise UserError("storage='disk' needs out_dir")
    if reading not in READINGS:
        raise UserError(f"unknown reading {reading!r}; valid readings are {list(READINGS)}")
    model.eval()
    ours = _is_hooked_lm(model)
    if reading == "abi" and not ours:
        raise UserError("the abi reading needs a probekit HookedLM (its attention modes); read Hugging Face models "
                        "in the causal reading")  # fmt: skip
    device = next(model.parameters()).device
    d = dims.d_model
    order = np.argsort([-len(s) for s in sequences], kind="stable")  # longest first: least padding
    names_needed = list(dict.fromkeys(p.name for p in points))
    last = max(names_needed, key=lambda n: (int(n.split(".")[1]), _ORDER_IN_BLOCK.get(n.split(".")[-1], 9)))

    def run(write: Callable[[int, np.ndarray, dict[str, Tensor]], None]) -> None:
        for s in range(0, N, batch_size):
            rows = order[s : s + batch_size]
            B = len(rows)
            ids, key_mask = padded_batch(sequences, rows, device)  # [B, T] each
            p_idx = torch.as_tensor(pos[rows], device=device)  # [B, P]
            b_idx = torch.arange(B, device=device)[:, None]  # [B, 1]
            got: dict[str, Tensor] = {}
            if reading == "causal":
                _gather_pass(model, ids, key_mask, p_idx, b_idx, names_needed, last, ours, got, reading)
            else:  # one pass per read position: the prefix up to it, read at its last token
                parts: list[dict[str, Tensor]] = []
                for j in range(P):
                    ids_j, mask_j = padded_batch([sequences[r][: pos[r, j] + 1] for r in rows], range(B), device)
                    last_j = (mask_j.sum(1) - 1)[:, None]  # [B, 1]
                    parts.append({})
                    _gather_pass(model, ids_j, mask_j, last_j, b_idx, names_needed, last, ours, parts[-1], reading)
                got = {n: torch.cat([p[n] for p in parts], dim=1) for n in names_needed}  # [B, P, d]
            write(s, rows, got)
            if progress:
                progress(B)

    if storage == "memory":
        data = [torch.empty(N, P, d, dtype=torch.float32) for _ in points]

        def write_mem(s: int, rows: np.ndarray, got: dict[str, Tensor]) -> None:
            r = torch.as_tensor(rows)
            for i, p in enumerate(points):
                data[i][r] = got[p.name]

        run(write_mem)
        return Activations(list(points), names, data)

    root = Path(out_dir)  # type: ignore[arg-type]
    with atomic_dir(root, overwrite=overwrite) as tmp:
        mms = [
            np.lib.format.open_memmap(tmp / f"point_{i:03d}.npy", mode="w+", dtype=np.float16, shape=(N, P, d))
            for i in range(len(points))
        ]

        def write_disk(s: int, rows: np.ndarray, got: dict[str, Tensor]) -> None:
            for i, p in enumerate(points):
                mms[i][rows] = got[p.name].numpy().astype(np.float16)

        run(write_disk)
        for mm in mms:
            mm.flush()
        mms.clear()  # drop the memmaps (closes their files) before the directory is renamed
        atomic_write_json(tmp / META_FILE, {
            "points": [asdict(p) for p in points], "position_names": names, "n": N, "n_positions": P, "d": d,
            "dtype": "float16", "files": [f"point_{i:03d}.npy" for i in range(len(points))],
        })  # fmt: skip
    return load_activations(root)


def _gather_pass(
    model: Any,
    ids: Tensor,
    key_mask: Tensor,
    p_idx: Tensor,
    b_idx: Tensor,
    names: list[str],
    last: str,
    ours: bool,
    got: dict[str, Tensor],
    reading: str,
) -> None:
    """One forward pass that stores, for every hook in ``names``, the states at ``p_idx`` [B, P'] into ``got``
    ([B, P', d] float32 on the CPU); our model stops after the ``last`` hook."""

    def gather(act: Tensor, hook: Any) -> None:
        got[hook.name] = act[b_idx, p_idx].detach().float().cpu()  # [B, P', d]
        if ours and hook.name == last:
            raise _Stop

    # a bridge registers resid_pre/post under aliases (hook_in/hook_out): key by the requested name
    fwd = [(n, (lambda a, hook, n=n: gather(a, _Named(n)))) for n in names]
    run_causal(model, ids, key_mask, fwd, reading)
    lost = [n for n in names if n not in got]
    if lost:
        raise RuntimeError(f"hooks {lost} did not fire during the forward pass")


class _Named:
    """Stands in for a HookPoint in ``gather`` so results are keyed by the requested hook name."""

    def __init__(self, name: str) -> None:
        self.name = name


def load_activations(root: str | Path) -> Activations:
    """Reopen activations written with ``storage="disk"`` (read-only memmaps)."""
    root = Path(root)
    meta_file = root / META_FILE
    if not meta_file.exists():
        raise UserFileNotFoundError(
            f"{root} holds no activations ({META_FILE} missing); collect them with storage='disk'"
        )
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    data = [np.load(root / f, mmap_mode="r") for f in meta["files"]]
    return Activations([HookPoint(**p) for p in meta["points"]], list(meta["position_names"]), data, root)


def estimate_bytes(n: int, n_positions: int, n_points: int, d: int, dtype_bytes: int = 4) -> int:
    """Memory needed to hold activations of this shape."""
    return n * n_positions * n_points * d * dtype_bytes
