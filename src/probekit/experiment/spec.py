"""An experiment's settings: the YAML schema of ``experiments/<name>/config.yaml``, torch-free.

``ExperimentConfig`` names datasets (``DatasetSpec``), models trained on them (``ModelSpec``: a ``TrainConfig``
section), a probe spec, and the optional stages (QA extraction, inverse search, the reversal curse, patching,
memorisation); ``resources`` (``ResourceSpec`` per stage) says what each job asks a cluster for under
``probekit run --executor slurm``. ``load_experiment(path)`` reads and validates one; ``DEMO`` is the built-in
demo's config.
``probekit.experiment.runner`` runs it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probekit.data.bios import PersonGroup
from probekit.data.reversal import ReversalConfig
from probekit.errors import MAX_SEED, UserError, UserFileNotFoundError, check_seed
from probekit.patching.config import PatchConfig
from probekit.probes.spec import ProbeSpec
from probekit.serde import Section, from_dict, init_sections, section, to_dict
from probekit.training.config import FinetuneConfig, TrainConfig


@dataclass
class DatasetSpec:
    name: str
    n_people: int = 500
    augmentation: str = "single"
    seed: int = 0
    pool_limits: dict[str, int] = field(default_factory=dict)
    # seeded subsets of the name pools ({first: 12, middle: 12, last: 12}) so that people share name parts
    name_pools: dict[str, int] = field(default_factory=dict)
    # shares of the people rendered under their own augmentation (replacing ``augmentation``), e.g. celebrities
    # (multi5+permute) and minorities (single) in one corpus; each group is split 50/50 like the whole
    groups: list[PersonGroup] = field(default_factory=list)


@dataclass
class ModelSpec:
    name: str
    data: str  # a DatasetSpec name
    train: Section[TrainConfig] = section(TrainConfig)  # TrainConfig fields (data and out are filled in)

    def __post_init__(self) -> None:
        init_sections(self)


@dataclass
class QASpec:
    models: list[str] = field(default_factory=list)  # ModelSpec names; empty = all
    finetune: Section[FinetuneConfig] = section(FinetuneConfig)  # FinetuneConfig fields
    # per model: FinetuneConfig fields that replace ``finetune``'s, e.g. {mixed: {method: none}} for a model
    # trained with QA mixed into its biographies
    model_finetune: dict[str, Section[FinetuneConfig]] = field(default_factory=dict)
    # finetune on the P_train people of these dataset groups only (empty: all of P_train); P_test is answered
    # in full and the results are also broken down by group
    finetune_groups: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        init_sections(self)

    def finetune_for(self, model: str) -> dict[str, Any]:
        """The finetune settings of ``model``: ``finetune`` updated by its ``model_finetune`` entry."""
        return {**self.finetune, **self.model_finetune.get(model, {})}


@dataclass
class InverseSpec:
    """Inverse search (attributes -> full name, the reversal direction on bioS) as a stage of the experiment."""

    models: list[str] = field(default_factory=list)  # ModelSpec names; empty = all
    finetune: Section[FinetuneConfig] = section(FinetuneConfig)  # FinetuneConfig fields
    attributes: list[str] = field(default_factory=list)  # the attributes in the prompt; empty = all six

    def __post_init__(self) -> None:
        init_sections(self)


@dataclass
class ReversalSpec:
    """The reversal curse (Berglund et al.) as a stage: one model per objective trained from scratch on the same
    fictitious name <-> description facts (``probekit data reversal``), evaluated on N2D, D2N and their reverses."""

    objectives: list[str] = field(default_factory=lambda: ["ntp", "bico"])
    data: Section[ReversalConfig] = section(ReversalConfig)  # ReversalConfig fields (n_per_group, templates, seed)
    train: Section[TrainConfig] = section(TrainConfig)  # TrainConfig fields; objective is set per model

    def __post_init__(self) -> None:
        init_sections(self)


@dataclass
class PatchSpec:
    """Activation patching (causal tracing) as a stage: name-swap maps of every model the stage names, on QA prompts
    of P_test people with the model the QA stage finetuned (or, with ``prompts: bio``, on biography prefixes with
    the pretrained model). ``config``: ``probekit.patching.patch.PatchConfig`` fields."""

    models: list[str] = field(default_factory=list)  # ModelSpec names; empty = all
    config: Section[PatchConfig] = section(PatchConfig)  # PatchConfig fields

    def __post_init__(self) -> None:
        init_sections(self)


@dataclass
class ResourceSpec:
    """What one job of a stage (one model's share) asks the scheduler for under ``probekit run --executor slurm``
    (or ``submitit-local``); the local pool (``--executor local``, the default) ignores it. An experiment's
    ``resources: {default: {...}, <stage>: {...}}`` gives these fields; a stage's entry overrides ``default``'s."""

    cpus: int = 1  # CPU cores per job (its torch threads)
    gpus: int = 0  # GPUs per job; more than 1 only for train: one model data-parallel over that many GPUs of a node
    mem: str = ""  # memory per job in Slurm's units, e.g. 8G or 500M ("": the partition's default)
    time: int = 60  # wall-clock limit per job in minutes; a job that reaches it is requeued and resumes
    partition: str = ""  # Slurm partition ("": the cluster's default)
    retries: int = 2  # resubmissions of a job that fails or is killed (each resumes from its checkpoint)

    def validate(self, where: str = "resources") -> None:
        """Refuse values no scheduler can take (one-line ``UserError`` naming ``where``)."""
        if self.cpus < 1:
            raise UserError(f"{where}.cpus must be at least 1, got {self.cpus}")
        if not 0 <= self.gpus <= 64:
            raise UserError(f"{where}.gpus must be between 0 and 64 (GPUs of one node), got {self.gpus}")
        if self.gpus > 1 and where != "resources.train":
            raise UserError(f"{where}.gpus is {self.gpus}, but only training runs over several GPUs (one process "
                            "each); set gpus > 1 under resources.train, and 0 or 1 here")  # fmt: skip
        if self.mem and not re.fullmatch(r"[1-9][0-9]*[KMGT]", self.mem):
            raise UserError(f"{where}.mem must be a whole number with a unit K, M, G or T (e.g. 8G, 500M), or "
                            f"empty for the partition's default; got {self.mem!r}")  # fmt: skip
        if self.time < 1:
            raise UserError(f"{where}.time is the wall-clock limit in minutes and must be at least 1, got {self.time}")
        if self.partition and not re.fullmatch(r"[A-Za-z0-9_.,-]+", self.partition):
            raise UserError(f"{where}.partition must be a Slurm partition name (letters, digits, _ . , -), "
                            f"got {self.partition!r}")  # fmt: skip
        if not 0 <= self.retries <= 100:
            raise UserError(f"{where}.retries must be between 0 and 100, got {self.retries}")


@dataclass(frozen=True)
class Run:
    """One model trained with one seed (``seed`` None: the seed of the model's train section)."""

    model: ModelSpec
    seed: int | None = None

    @property
    def key(self) -> str:
        """Its directory under ``models/``, ``probes/`` and ``qa/``: the model name (+ ``/seed_<s>`` with seeds)."""
        return self.model.name if self.seed is None else f"{self.model.name}/seed_{self.seed}"

    @property
    def train(self) -> dict[str, Any]:
        """The model's train section with this run's seed."""
        return {**self.model.train, **({"seed": self.seed} if self.seed is not None else {})}

    @property
    def train_seed(self) -> int:
        return int(self.train.get("seed", 0))


@dataclass
class ExperimentConfig:
    name: str
    datasets: list[DatasetSpec]
    models: list[ModelSpec]
    probe: Section[ProbeSpec] = section(ProbeSpec)  # ProbeSpec fields (name: the experiment's)
    # a second probe spec for the paper's embedding-update probe (ProbeSpec fields with an ``embed_probe``
    # section); its rows (hook ``embed_update``) go to ``embed_update/results.parquet``
    embed_probe: Section[ProbeSpec] | None = None
    control_random: bool = True  # also probe a randomly initialised model of each shape
    qa: QASpec | None = None
    inverse: InverseSpec | None = None  # inverse search on P_test after finetuning on P_train's inverse prompts
    reversal: ReversalSpec | None = None  # the reversal curse per objective, on its own fictitious-people data
    patch: PatchSpec | None = None  # activation patching maps per model (after QA finetuning, on QA prompts)
    recall: bool = False  # memorisation check: each model reproduces the values of its training biographies
    figures_layer: int | None = None  # layer of the position x attribute grids (None = last)
    notes: str = ""
    # seeds as an axis: train every model once per seed (its train.seed replaced); None = one run per model with
    # the seed of its train section. Tables carry the seed; summaries and figures aggregate over seeds.
    seeds: list[int] | None = None
    seed_data: bool = False  # with seeds: also draw each dataset anew per seed (new people and biographies)
    # settings of stages registered beyond the built-in ones (``probekit.experiment.stage``), by stage name
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    # what each job asks a cluster for under `probekit run --executor slurm` (ResourceSpec fields): `default`
    # and per stage name, e.g. {default: {cpus: 2, time: 30}, train: {gpus: 1, mem: 16G}}; the local pool ignores
    # it, and it is not part of the experiment's record (changing it never refuses a resume)
    resources: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        init_sections(self)
        self.resources = {k: Section(ResourceSpec, v, f"resources.{k}") for k, v in self.resources.items()}
        self.datasets = [d if isinstance(d, DatasetSpec) else from_dict(DatasetSpec, d) for d in self.datasets]
        self.models = [m if isinstance(m, ModelSpec) else from_dict(ModelSpec, m) for m in self.models]
        if isinstance(self.qa, dict):
            self.qa = from_dict(QASpec, self.qa)
        if isinstance(self.inverse, dict):
            self.inverse = from_dict(InverseSpec, self.inverse)
        if isinstance(self.reversal, dict):
            self.reversal = from_dict(ReversalSpec, self.reversal)
        if isinstance(self.patch, dict):
            self.patch = from_dict(PatchSpec, self.patch)
        self.validate()

    def runs(self) -> list[Run]:
        """Every model x seed to train, probe and evaluate, in config order."""
        return [Run(m, s) for m in self.models for s in (self.seeds if self.seeds is not None else [None])]

    def dataset(self, name: str) -> DatasetSpec:
        return next(d for d in self.datasets if d.name == name)

    def resources_for(self, stage: str) -> ResourceSpec:
        """The resources of one job of ``stage``: ``resources.default`` updated by ``resources.<stage>``."""
        return from_dict(ResourceSpec, {**self.resources.get("default", {}), **self.resources.get(stage, {})})

    def data_key(self, run: Run) -> str:
        """The dataset directory a run trains on (relative to ``<out>/data``)."""
        return f"{run.model.data}/seed_{run.seed}" if self.seed_data and run.seed is not None else run.model.data

    def validate(self) -> None:
        """Cross-references and every stage's settings, checked before any work starts."""
        from probekit.data.bios import entries_per_person
        from probekit.probes.spec import ProbeSpec
        from probekit.training.config import FinetuneConfig, TrainConfig

        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names) or len({m.name for m in self.models}) != len(self.models):
            raise UserError(f"experiment {self.name}: dataset and model names must be unique")
        if self.seeds is not None:
            if (
                not isinstance(self.seeds, list)
                or not self.seeds
                or len(set(self.seeds)) != len(self.seeds)
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in self.seeds)
            ):
                raise UserError(f"seeds must be a non-empty list of distinct non-negative integers, e.g. [0, 1, 2], "
                                f"got {self.seeds!r}")  # fmt: skip
        elif self.seed_data:
            raise UserError("seed_data: true needs a list of seeds (seeds: [0, 1, 2]); add one or drop seed_data")
        for d in self.datasets:
            multi = entries_per_person(d.augmentation, d.groups)
            if d.n_people < 1:
                raise UserError(f"dataset {d.name!r}: n_people must be at least 1, got {d.n_people}")
            check_seed(d.seed, f"dataset {d.name!r}: seed")
            from probekit.data.integrity import check_memory
            from probekit.data.pools import LIMITABLE, NAME_PARTS, check_name_space, load_pools

            check_memory(d.n_people, multi)
            if d.name_pools:
                wrong = sorted(set(d.name_pools) - set(NAME_PARTS))
                if wrong:
                    raise UserError(f"dataset {d.name!r}: name_pools {wrong}: the name parts are "
                                    f"{', '.join(NAME_PARTS)}")  # fmt: skip
                check_name_space(d.n_people, d.name_pools, load_pools())
            bad = {k: v for k, v in d.pool_limits.items() if k not in LIMITABLE or v < 2}
            if bad:
                raise UserError(f"dataset {d.name!r}: pool_limits {bad}: only {', '.join(LIMITABLE)} can be "
                                "limited, each to at least 2 values")  # fmt: skip
        for m in self.models:
            if m.data not in names:
                raise UserError(f"model {m.name!r} trains on unknown dataset {m.data!r}; datasets: {names}")
            from_dict(TrainConfig, {**m.train, "data": "x", "out": "x"}).validate()
            if self.figures_layer is not None and not m.train.get("init_from"):
                from probekit.model.config import ModelConfig

                n_layers = dict(m.train.get("model") or {}).get("n_layers", ModelConfig.n_layers)
                if not 0 <= self.figures_layer <= n_layers:
                    raise UserError(f"figures_layer {self.figures_layer}: model {m.name!r} has layers "
                                    f"0..{n_layers} (0 = embeddings, {n_layers} = last block's output); "
                                    "choose one of those")  # fmt: skip
        from_dict(ProbeSpec, {"name": self.name, **self.probe})
        for name in self.resources:
            self.resources_for(name).validate(f"resources.{name}")
        if self.embed_probe is not None:
            espec = from_dict(ProbeSpec, {"name": f"{self.name}_embed_update", **self.embed_probe})
            if espec.embed_probe is None:
                raise UserError("embed_probe: give the paper's probe settings under embed_probe.embed_probe "
                                "(e.g. {rank: 0, epochs: 20}); see probes/embed_update.yaml")  # fmt: skip
        for what, ev in (("qa", self.qa), ("inverse", self.inverse)):
            if ev is None:
                continue
            unknown = sorted(set(ev.models) - {m.name for m in self.models})
            if unknown:
                raise UserError(f"{what}.models names unknown model(s) {unknown}; models: "
                                f"{[m.name for m in self.models]}")  # fmt: skip
            from_dict(FinetuneConfig, ev.finetune)
        if self.qa is not None:
            unknown = sorted(set(self.qa.model_finetune) - {m.name for m in self.models})
            if unknown:
                raise UserError(f"qa.model_finetune names unknown model(s) {unknown}; models: "
                                f"{[m.name for m in self.models]}")  # fmt: skip
            for name in self.qa.model_finetune:
                from_dict(FinetuneConfig, self.qa.finetune_for(name))
            for m in self.models:
                if self.qa.models and m.name not in self.qa.models:
                    continue
                have = {g.name for g in self.dataset(m.data).groups}
                missing = [g for g in self.qa.finetune_groups if g not in have]
                if missing:
                    raise UserError(f"qa.finetune_groups {missing}: model {m.name!r}'s dataset {m.data!r} has "
                                    f"groups {sorted(have) or 'none'}; give every dataset those groups")  # fmt: skip
        if self.reversal is not None:
            from probekit.data.reversal import ReversalConfig
            from probekit.objectives import OBJECTIVES

            objectives = self.reversal.objectives
            unknown = [o for o in objectives if o not in OBJECTIVES]
            if unknown or not objectives or len(set(objectives)) != len(objectives):
                raise UserError(f"reversal.objectives {self.reversal.objectives}: choose distinct objectives from "
                                f"{list(OBJECTIVES)}")  # fmt: skip
            from_dict(ReversalConfig, self.reversal.data)
            from_dict(TrainConfig, {**self.reversal.train, "data": "x", "out": "x"}).validate()
        if self.inverse is not None:
            from probekit.data.pools import ATTRIBUTES

            unknown = [a for a in self.inverse.attributes if a not in ATTRIBUTES]
            if unknown or len(set(self.inverse.attributes)) != len(self.inverse.attributes):
                raise UserError(f"inverse.attributes {self.inverse.attributes}: choose distinct attributes from "
                                f"{list(ATTRIBUTES)} (empty: all six)")  # fmt: skip
        if self.patch is not None:
            pc = self.patch.config.build()
            unknown = sorted(set(self.patch.models) - {m.name for m in self.models})
            if unknown:
                raise UserError(f"patch.models names unknown model(s) {unknown}; models: "
                                f"{[m.name for m in self.models]}")  # fmt: skip
            if pc.prompts == "qa":
                chosen = self.patch.models or [m.name for m in self.models]
                no_qa = [m for m in chosen if self.qa is None or (self.qa.models and m not in self.qa.models)]
                if no_qa:
                    raise UserError(f"patch on QA prompts uses the models the qa stage finetuned, but {no_qa} "
                                    "have no qa stage; add them to qa (or patch biography prefixes: "
                                    "patch.config.prompts: bio)")  # fmt: skip


def load_experiment(path: str | Path, settings: Sequence[str] = ()) -> ExperimentConfig:
    """Read and check an experiment config (a YAML file, or a directory holding ``config.yaml``); ``settings``
    (``KEY=VALUE``, ``probekit run --set``) change it first, e.g. ``datasets.*.name_pools={first: 12, middle: 12,
    last: 12}`` to rerun a committed experiment with shared names (``probekit.serde.apply_settings``)."""
    from probekit.serde import apply_settings, load_mapping

    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.exists():
        raise UserFileNotFoundError(f"experiment config {path} does not exist")
    data = apply_settings(load_mapping(path, "experiment config"), settings)
    data.setdefault("name", path.parent.name if path.name == "config.yaml" else path.stem)
    return from_dict(ExperimentConfig, data)


# The main job: the README's first command runs this, within 15 minutes on 2 CPU cores.
DEMO = {
    "name": "demo",
    "notes": "bioS single vs multi5+permute, NTP, 4x128 Llama-shaped model, P- and Q-probes at every layer; "
             "the reversal curse under NTP vs BICO.",
    "datasets": [
        {"name": "single", "n_people": 400, "augmentation": "single", "seed": 0,
         "pool_limits": {"birth_city": 20, "university": 20, "major": 20, "company": 20}},
        {"name": "multi5_permute", "n_people": 400, "augmentation": "multi5+permute", "seed": 0,
         "pool_limits": {"birth_city": 20, "university": 20, "major": 20, "company": 20}},
    ],
    "models": [
        {"name": "ntp_single", "data": "single", "train": {
            "objective": "ntp", "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "d_mlp": 512},
            "seq_len": 128, "batch_size": 16, "max_steps": 700, "warmup_steps": 50, "lr": 0.002, "min_lr": 0.0002,
            "eval_every": 0, "save_every": 200, "log_every": 20, "seed": 0}},
        {"name": "ntp_multi5_permute", "data": "multi5_permute", "train": {
            "objective": "ntp", "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "d_mlp": 512},
            "seq_len": 128, "batch_size": 16, "max_steps": 700, "warmup_steps": 50, "lr": 0.002, "min_lr": 0.0002,
            "eval_every": 0, "save_every": 200, "log_every": 20, "seed": 0}},
    ],
    "probe": {"kinds": ["p", "q"], "targets": ["first_token", "value"], "l2_grid": [0.001, 0.01, 0.1],
              "max_iter": 60, "control_task": True},
    "control_random": True,
    # the clearest contrast between objectives that fits the demo: the reversal curse under NTP, lifted by BICO
    # (experiments/reversal_objectives at the same settings, without ABI)
    "reversal": {"objectives": ["ntp", "bico"], "data": {"seed": 0}, "train": {
        "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "d_mlp": 512, "n_ctx": 64}, "seq_len": 48,
        "batch_size": 64, "epochs": 25, "lr": 0.001, "min_lr": 0.0001, "warmup_steps": 100, "weight_decay": 0.1,
        "save_every": 500, "log_every": 25, "seed": 0}},
}  # fmt: skip


def config_record(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as written to ``experiment.json`` and compared on resume. Settings added after a run was
    started are left out while they keep their defaults, so such runs still resume."""
    rec = to_dict(cfg)
    for d in rec["datasets"]:  # settings added to sections later, left out at their defaults
        for key in ("groups", "name_pools"):
            if not d.get(key):
                d.pop(key, None)
    if rec.get("qa"):
        for key in ("model_finetune", "finetune_groups"):
            if not rec["qa"].get(key):
                rec["qa"].pop(key, None)
    for key, default in (
        ("seeds", None),
        ("seed_data", False),
        ("embed_probe", None),
        ("reversal", None),
        ("recall", False),
        ("patch", None),
        ("stages", {}),
    ):
        if rec.get(key) == default:
            rec.pop(key, None)
    rec.pop("resources", None)  # how the jobs run, not what they compute: a changed resource never refuses a resume
    return rec


def demo_config(**overrides: Any) -> ExperimentConfig:
    data = copy.deepcopy(DEMO)
    data.update(overrides)
    return from_dict(ExperimentConfig, data)
