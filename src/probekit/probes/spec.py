"""Probe specifications: what a probing run reads and predicts, loaded from ``probes/*.yaml``.

A spec is validated completely when it is built (unknown probe kinds, targets, hooks, attributes, positions or
engines raise ``ValueError`` naming the valid ones), so a typo fails before any activation is collected. Layers
are checked against the model with ``resolve_layers`` once the model is loaded (still before any work).

Vocabulary:
- kinds: ``p`` (position-based: read a biography entry at the token right before each attribute's value) and
  ``q`` (query-based: read the last token of the bare full name).
- positions (P only): named by the attribute whose value follows, e.g. ``company`` = the token right before
  the company's first token.
- attributes: the attributes to predict. targets: ``first_token`` (the value's first token id) and ``value``
  (the whole value as a class over the dataset's pool).
- hooks: ``resid`` = the residual stream at every layer boundary (L+1 points: layer l < L is the input of block
  l, ``blocks.{l}.hook_resid_pre``; layer L is the output of the last block); ``resid_mid``, ``attn_out`` and
  ``mlp_out`` are per block (layers 0..L-1).
- control_task: also train every probe on a control labelling (a random label per person drawn from the task's
  class distribution, fixed per person and seed: Hewitt & Liang's control task) and report ``control_accuracy``
  and ``selectivity`` = accuracy - control accuracy (with its interval). Doubles the probing time.
- bootstrap / ci_level: resamples of the person-clustered bootstrap behind the ``ci_low``/``ci_high`` columns
  (``probekit.stats``; 0 turns intervals off) and the interval's level.
- threads: torch CPU threads while collecting activations and fitting probes (default 1). Matrix products split
  their sums across threads differently at different thread counts, and the probes' optimiser amplifies those
  last-bit differences into different fits, so a fixed count makes the table the same whatever ``--threads`` the
  process runs with. ``null`` uses the process's thread count (faster on many cores; then tables move slightly
  between thread counts).
- readings: how each model is read (``probekit.probes.activations``): ``causal`` (the prefix, causally; every model),
  ``abi`` (the prefix as one bidirectional ABI Part A, a pass per read position; probekit models), or ``auto``
  (the default): causal, plus abi for models trained with ABI. Rows carry the ``reading``; the
  embedding-update probe reads causally.
- engine: ``torch`` (the batched engine with its default solver, ``fast``), ``torch-fast`` (the same: loose
  validation-path fits, a refreshed per-class curvature preconditioner, the L2 path left once a strength
  scores below the best so far), ``torch-classic`` (the solver before
  issue 11, which made the tables committed before the switch) or ``sklearn`` (the reference); all choose the
  L2 strength on validation people by ``l2_rule`` and refit at ``max_iter`` / tol 1e-4
  (``probekit.probes.engine``).
- embed_probe: settings of the paper's probe (``probekit.probes.embed_probe``: the frozen model plus a trained
  low-rank update of its input embedding, read at the last layer through LayerNorm + linear heads), run beside
  the frozen-feature probes; its rows have hook ``embed_update``. ``{}`` takes the defaults; absent or null: off.
- frozen: fit the frozen-feature probes (default true); false with ``embed_probe`` runs the paper's probe alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probekit.data.pools import ATTRIBUTES
from probekit.errors import UserError, UserFileNotFoundError, check_seed
from probekit.probes.config import BACKENDS, EmbedProbeConfig, EngineConfig
from probekit.serde import from_dict, load_mapping

PROBE_KINDS: tuple[str, ...] = ("p", "q")
TARGET_KINDS: tuple[str, ...] = ("first_token", "value")
HOOKS: tuple[str, ...] = ("resid", "resid_mid", "attn_out", "mlp_out")
STORAGE: tuple[str, ...] = ("auto", "memory", "disk")


def _names(value: Any, valid: tuple[str, ...], what: str) -> tuple[str, ...]:
    """``"all"`` or a list of names -> a validated tuple (order kept, duplicates removed)."""
    if value == "all" or value is None:
        return valid
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise UserError(f"{what} must be 'all' or a non-empty list of {list(valid)}, got {value!r}")
    bad = [v for v in value if v not in valid]
    if bad:
        raise UserError(f"unknown {what} {bad}; valid {what} are {list(valid)} (or 'all')")
    return tuple(dict.fromkeys(value))


@dataclass
class ProbeSpec:
    """One probing run. See the module docstring for the vocabulary."""

    name: str = "default"  # the spec's name in the run metadata (a spec file: its file name)
    kinds: tuple[str, ...] = PROBE_KINDS  # p (at the token before each value) and/or q (at the last name token)
    positions: Any = "all"  # P positions: 'all' or attribute names
    attributes: Any = "all"  # attributes to predict: 'all' or names
    targets: tuple[str, ...] = TARGET_KINDS  # first_token (the value's first token) and/or value (whole value)
    layers: Any = "all"  # 'all' or a list of layer indices (resid: 0..L, other hooks: 0..L-1)
    hooks: tuple[str, ...] = ("resid",)  # resid (every layer boundary), resid_mid, attn_out, mlp_out
    engine: str = "torch"  # torch (batched L-BFGS, probekit.probes.solver), torch-fast, torch-classic or sklearn
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)  # L2 strengths tried, chosen on the validation people
    l2_rule: str = "one_se"  # one_se (strongest L2 within one standard error of the best) or best
    val_fraction: float = 0.2  # share of P_train people held out to choose the L2 strength
    max_iter: int = 100  # optimiser iterations per probe fit
    seed: int = 0  # seed of the validation split, the control labelling and the bootstrap
    batch_size: int = 64  # sequences per forward pass while collecting activations
    entries_per_person: int | None = None  # P: use each person's first k entries (None = all)
    max_people: int | None = None  # subsample people (train and test alike) for quick runs
    storage: str = "auto"  # activations: memory, disk (float16 memmaps) or auto (disk above memory_limit_mb)
    memory_limit_mb: float = 2048.0  # storage auto: activations above this size go to disk
    engine_memory_mb: float = 1024.0  # memory budget of the probe engine's batched fits
    # also train the paper's probe (frozen model + low-rank embedding update, read at the last layer) with these
    # settings ({} in YAML = the defaults); None = frozen-feature probes only
    embed_probe: EmbedProbeConfig | None = None
    control_task: bool = False  # also fit each probe on a per-person random control labelling (selectivity)
    frozen: bool = True  # the frozen-feature probes; false (with embed_probe) runs only the paper's probe
    threads: int | None = 1  # torch threads for activations and probes: fixed, so tables do not depend on --threads
    readings: Any = "auto"  # 'auto' (causal, + abi for ABI-trained models) or a list of READINGS
    bootstrap: int = 1000  # person-clustered bootstrap resamples for the intervals (0 = no intervals)
    ci_level: float = 0.95  # level of the bootstrap intervals
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into the run metadata

    def __post_init__(self) -> None:
        self.kinds = _names(self.kinds, PROBE_KINDS, "probe kinds")
        self.positions = _names(self.positions, ATTRIBUTES, "positions")
        self.attributes = _names(self.attributes, ATTRIBUTES, "attributes")
        self.targets = _names(self.targets, TARGET_KINDS, "targets")
        self.hooks = _names(self.hooks, HOOKS, "hooks")
        if self.engine not in BACKENDS:
            raise UserError(f"unknown engine {self.engine!r}; valid engines are {list(BACKENDS)}")
        check_seed(self.seed, "probe seed")
        if self.storage not in STORAGE:
            raise UserError(f"unknown storage {self.storage!r}; valid storage modes are {list(STORAGE)}")
        if self.layers != "all":
            layers = [self.layers] if isinstance(self.layers, int) else self.layers
            if (
                not isinstance(layers, (list, tuple))
                or not layers
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in layers)
            ):
                raise UserError(
                    f"layers must be 'all' or a non-empty list of non-negative integers, got {self.layers!r}"
                )
            self.layers = tuple(sorted(set(layers)))
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_fraction == 0.0 and len(tuple(self.l2_grid)) > 1:
            raise UserError(f"val_fraction 0 leaves no validation people to choose among the {len(self.l2_grid)} "
                            "l2_grid strengths; set val_fraction > 0 (e.g. 0.2) or give one l2_grid value")  # fmt: skip
        for name in ("batch_size", "max_iter"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not isinstance(self.bootstrap, int) or isinstance(self.bootstrap, bool) or self.bootstrap < 0:
            raise UserError(f"bootstrap must be a non-negative integer (0 = no intervals), got {self.bootstrap!r}")
        if not isinstance(self.ci_level, (int, float)) or not 0.0 < float(self.ci_level) < 1.0:
            raise UserError(f"ci_level must be a number in (0, 1), e.g. 0.95, got {self.ci_level!r}")
        if self.readings != "auto":
            from probekit.probes.activations import READINGS

            self.readings = _names(self.readings, READINGS, "readings")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or self.threads < 1):  # fmt: skip
            raise UserError(f"threads must be a positive integer or null (the process's count), got {self.threads!r}")
        if not isinstance(self.control_task, bool):
            raise UserError(f"control_task must be true or false, got {self.control_task!r}")
        for name in ("entries_per_person", "max_people"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UserError(f"{name} must be a positive integer or null, got {v!r}")
        if self.max_people is not None and self.max_people < 3:
            raise UserError(f"max_people {self.max_people} is too few to split: a probe needs at least 2 P_train "
                            "people to fit and 1 P_test person to score; use 3 or more (or null for "
                            "everyone)")  # fmt: skip
        self.engine_config()  # validates the L2 grid
        if isinstance(self.embed_probe, dict):
            self.embed_probe = from_dict(EmbedProbeConfig, self.embed_probe)
        if not isinstance(self.frozen, bool) or (not self.frozen and self.embed_probe is None):
            raise UserError(f"frozen: {self.frozen!r}: give true or false; false needs an embed_probe section "
                            "(otherwise nothing would be probed)")  # fmt: skip

    def engine_config(self, backend: str | None = None) -> EngineConfig:
        return EngineConfig(
            backend=backend or self.engine,  # type: ignore[arg-type]
            l2_grid=tuple(self.l2_grid),
            l2_rule=self.l2_rule,
            max_iter=self.max_iter,
            memory_budget_mb=self.engine_memory_mb,
        )

    def resolve_layers(self, hook: str, n_layers: int) -> list[int]:
        """The layer indices for ``hook`` on a model with ``n_layers`` blocks (error if out of range)."""
        n_points = n_layers + 1 if hook == "resid" else n_layers
        if self.layers == "all":
            return list(range(n_points))
        bad = [v for v in self.layers if v >= n_points]
        if bad:
            raise UserError(
                f"spec {self.name!r}: layers {bad} do not exist for hook {hook!r} on a {n_layers}-layer model "
                f"(valid: 0..{n_points - 1})"
            )
        return list(self.layers)


def load_spec(path: str | Path) -> ProbeSpec:
    """Read and validate a probe spec YAML file (the file name gives the default ``name``)."""
    path = Path(path)
    if not path.exists():
        raise UserFileNotFoundError(f"probe spec {path} does not exist; see probes/default.yaml for an example")
    data = load_mapping(path, "probe spec")  # duplicate keys, bad encoding, malformed YAML: one line
    data.setdefault("name", path.stem)
    try:
        return from_dict(ProbeSpec, data)
    except UserError as e:
        raise UserError(f"probe spec {path}: {e}") from e
