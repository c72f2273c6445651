"""``PatchConfig``: what ``probekit.patching.patch.run_patching`` patches and measures, in a module without torch, so
that configs (and the CLI's ``patch --help``) can be read without importing the model. ``probekit.patching.patch``
re-exports it."""

from __future__ import annotations

from dataclasses import dataclass

from probekit.data.pools import ATTRIBUTES
from probekit.errors import UserError

MODES: tuple[str, ...] = ("patch", "restore")
CORRUPTIONS: tuple[str, ...] = ("noise", "swap")
PROMPTS: tuple[str, ...] = ("qa", "bio")
SPLITS: tuple[str, ...] = ("test", "train", "all")


@dataclass
class PatchConfig:
    """What to patch and measure (``probekit patch`` flags are generated from these fields)."""

    attributes: tuple[str, ...] = ATTRIBUTES  # attributes asked about ('all': the six)
    prompts: str = "qa"  # qa | bio (first-sentence biography prefixes)
    modes: tuple[str, ...] = ("patch",)  # patch (name swap, source -> target) and/or restore (corrupt, restore)
    corruption: str = "noise"  # restore mode: noise (Gaussian on the name embeddings) | swap (another name)
    noise_scale: float = 3.0  # restore/noise: noise std = noise_scale x std of the clean name-token embeddings
    hooks: tuple[str, ...] = ("resid",)  # resid (L+1 boundaries), attn_out, mlp_out (L each), resid_mid
    layers: tuple[int, ...] | None = None  # None: every layer of each hook
    split: str = "test"  # people whose prompts are used: test (P_test), train (P_train) or all
    groups: tuple[str, ...] = ()  # only people of these dataset groups (e.g. minority), sources and targets alike
    n_pairs: int = 50  # pairs per attribute (fewer when fewer qualify)
    whole_answer: bool = False  # also teacher-force the whole answer: logp_answer, greedy_answer
    require_correct: bool = True  # keep pairs whose clean (and, swapping, corrupted) run answers right (1st token)
    n_boot: int = 1000  # person-clustered bootstrap resamples (0: no intervals)
    batch_size: int = 256  # sequences per forward pass
    seed: int = 0  # seed of the pairing, the noise and the bootstrap

    def __post_init__(self) -> None:
        self.attributes, self.modes, self.hooks = tuple(self.attributes), tuple(self.modes), tuple(self.hooks)
        self.groups = tuple(self.groups)
        if self.layers is not None:
            self.layers = tuple(int(v) for v in self.layers)
        bad = [a for a in self.attributes if a not in ATTRIBUTES]
        if bad or not self.attributes:
            raise UserError(f"attributes {list(self.attributes)}: choose a non-empty subset of {', '.join(ATTRIBUTES)}")
        if not self.modes or any(m not in MODES for m in self.modes):
            raise UserError(f"modes {list(self.modes)}: choose one or more of {', '.join(MODES)}")
        for name, value, valid in (("corruption", self.corruption, CORRUPTIONS), ("prompts", self.prompts, PROMPTS),
                                   ("split", self.split, SPLITS)):  # fmt: skip
            if value not in valid:
                raise UserError(f"{name} {value!r}: choose one of {', '.join(valid)}")
        if self.n_pairs < 1 or self.batch_size < 1 or self.n_boot < 0:
            raise UserError("n_pairs and batch_size must be at least 1 and n_boot at least 0")
        if self.noise_scale <= 0:
            raise UserError(f"noise_scale must be positive, got {self.noise_scale}")
