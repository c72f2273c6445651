"""The settings of the evaluations, in a module without torch, so that configs (and the CLI's ``eval --help``, whose
flags are generated from these fields) can be read without importing the evaluation: ``DistractEvalConfig``
(``probekit.evaluate.distract.run_distract``, which re-exports it) and ``ReversalEvalConfig``
(``probekit.evaluate.reversal.run_reversal``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from probekit.data.distract import FALLBACKS, KINDS, DistractConfig
from probekit.data.pools import ATTRIBUTES
from probekit.errors import UserError
from probekit.training.config import FinetuneConfig

S2A_CHOICES: tuple[str, ...] = ("rule", "learned")
REVERSAL_TESTS: tuple[str, ...] = ("wilcoxon", "ttest", "permutation")


@dataclass
class ReversalEvalConfig:
    """How ``probekit eval reversal`` scores a model (``run_reversal``'s settings)."""

    tasks: tuple[str, ...] = ()  # tasks to score (N2D, D2N, N2D-reverse, D2N-reverse, both); empty: all available
    test: str = field(default="wilcoxon", metadata={"choices": REVERSAL_TESTS})  # paired test: log p(right) vs other
    seed: int = 0  # seed of the random other completions, the permutation test and the bootstrap
    batch_size: int = 64  # prompts per generation batch


def _ft(epochs: float) -> FinetuneConfig:
    return FinetuneConfig(method="full", epochs=epochs)


@dataclass
class DistractEvalConfig:
    """Everything ``run_distract`` depends on (YAML/JSON via ``probekit.serde``)."""

    distract: DistractConfig = field(default_factory=DistractConfig)  # how distractor contexts are drawn
    finetune: FinetuneConfig = field(default_factory=lambda: _ft(10.0))  # the distractable QA regime
    s2a: tuple[str, ...] = S2A_CHOICES  # regenerators to evaluate: rule, learned
    rewrite_finetune: FinetuneConfig = field(default_factory=lambda: _ft(10.0))  # the learned regenerator
    regenerator: str | None = None  # a finished regenerator checkpoint to use instead of finetuning one
    reuse_regenerations: str | None = None  # an earlier run's directory whose learned regenerations to re-parse
    kinds: tuple[str, ...] = KINDS  # distractor kinds tested: clean, irrelevant, hint_right, hint_wrong, refute_right
    attrs: tuple[str, ...] = ATTRIBUTES  # attributes asked about ('all': the six)
    fallback: str = "original"  # malformed learned regeneration: original (answer the distracted prompt) | question
    n_boot: int = 1000  # bootstrap resamples of test people
    ci_level: float = 0.95  # level of the bootstrap intervals
    batch_size: int = 64  # prompts per generation batch
    probes: bool = True  # frozen linear probes at the name and the answer position, with and without distractors
    patching: bool = True  # patch right-hint states into the wrong-hint run (layer x position slot)
    unseen_test: int = 0  # also ask this many new people (never trained on) under each kind: are hints copied there?
    seed: int = 0  # seed of the test prompts, the bootstrap and the probes

    def __post_init__(self) -> None:
        self.s2a = tuple(self.s2a)
        self.kinds = tuple(self.kinds)
        self.attrs = tuple(self.attrs)
        bad = [s for s in self.s2a if s not in S2A_CHOICES]
        if bad:
            raise UserError(f"--s2a: unknown regenerator(s) {bad}; choose from {', '.join(S2A_CHOICES)}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise UserError(f"distractor kinds {list(self.kinds)}: choose a non-empty subset of {', '.join(KINDS)}")
        bad = [a for a in self.attrs if a not in ATTRIBUTES]
        if bad or not self.attrs:
            raise UserError(f"attributes {list(self.attrs)}: choose a non-empty subset of {', '.join(ATTRIBUTES)}")
        if self.fallback not in FALLBACKS:
            raise UserError(f"fallback {self.fallback!r}: choose one of {FALLBACKS}")
        if self.unseen_test < 0:
            raise UserError(f"unseen_test must be >= 0, got {self.unseen_test}")
        if self.n_boot < 0 or not 0 < self.ci_level < 1:
            raise UserError("n_boot must be >= 0 and ci_level in (0, 1)")

    @property
    def regimes(self) -> tuple[str, ...]:
        return ("baseline", *(f"s2a_{s}" for s in S2A_CHOICES if s in self.s2a), "oracle")
