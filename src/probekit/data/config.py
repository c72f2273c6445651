"""``BiosConfig``: the settings of one bioS dataset (``probekit data bios``), torch-free, so that the command's
``--help`` and its flags (generated from these fields by ``probekit.cli.flags``) need no model code."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BiosConfig:
    n_people: int = 1000  # number of people
    augmentation: str = "single"  # single, multiM, permute, fullname joined with '+', e.g. multi5+permute
    seed: int = 0  # seed of the people, their biographies, the P_train/P_test split and the subsets below
    pool_limits: dict[str, int] = field(default_factory=dict)  # seeded subset of K values per attribute
    name_pools: dict[str, int] = field(default_factory=dict)  # seeded subset of K names per part (first, middle, last)
    pool_files: dict[str, str] = field(default_factory=dict)  # built-in pools replaced by text files (NAME=FILE)
    distract_vocab: bool = False  # add the distractor opinions' words to the tokenizer (for `probekit eval distract`)
