"""Attribute pools and sentence templates: the raw material of bioS biographies.

Every pool is a plain UTF-8 text file, one entry per line; lines starting with ``#`` and blank lines are ignored.
Built-in pools ship as package data in ``probekit/data/pools/``; any of them can be replaced by a user file.

| pool name | file | line format |
|---|---|---|
| first_names | first_names.txt | ``Name<TAB>female`` or ``Name<TAB>male`` (a bare ``Name``: random gender per person) |
| middle_names | middle_names.txt | ``Name`` |
| last_names | last_names.txt | ``Name`` |
| birth_cities | birth_cities.txt | ``City, ST`` |
| universities | universities.txt | ``University name`` |
| majors | majors.txt | ``Field of study`` |
| companies | companies.txt | ``Company name<TAB>Headquarters City, ST`` (the company city attribute) |
| templates_<attribute> | templates/<attribute>.txt | one sentence with ``{value}`` once and one subject slot |

Template subject slots: ``{Subj}`` (sentence-initial subject), ``{subj}``, ``{Poss}`` (sentence-initial
possessive), ``{poss}``, ``{obj}``. The first sentence of an entry renders them with the full name
(``Anya Briar Forger``, ``Anya Briar Forger's``); later sentences with pronouns unless ``fullname`` is on.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from probekit.errors import UserError, UserFileNotFoundError

ATTRIBUTES: tuple[str, ...] = ("birth_date", "birth_city", "university", "major", "company", "company_city")
MONTHS: tuple[str, ...] = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
YEARS: tuple[int, int] = (1900, 2099)
DAYS: int = 28
SLOTS: tuple[str, ...] = ("Subj", "subj", "Poss", "poss", "obj")
POOL_FILES: dict[str, str] = {
    "first_names": "first_names.txt",
    "middle_names": "middle_names.txt",
    "last_names": "last_names.txt",
    "birth_cities": "birth_cities.txt",
    "universities": "universities.txt",
    "majors": "majors.txt",
    "companies": "companies.txt",
    **{f"templates_{a}": f"templates/{a}.txt" for a in ATTRIBUTES},
}
# Attributes whose values can be subsampled (``pool_limits``) to give a probe enough people per value.
LIMITABLE: tuple[str, ...] = ("birth_city", "university", "major", "company")
# Name parts whose pools can be subsampled (``name_pools``) so that people share first, middle and last names, as
# in the paper's 100,000 people drawn from 400 x 400 x 1,000 names: no single name token then identifies a person.
NAME_PARTS: tuple[str, ...] = ("first", "middle", "last")
_SLOT_RE = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class Template:
    """A parsed sentence template: ``parts`` interleaves literal text with slot names."""

    text: str
    subject_slot: str
    parts: tuple[str, ...]  # literal, slot, literal, slot, literal


def parse_template(text: str, where: str) -> Template:
    slots = _SLOT_RE.findall(text)
    if slots.count("value") != 1:
        raise UserError(f"{where}: template {text!r} must contain the value slot {{value}} exactly once")
    subject = [s for s in slots if s != "value"]
    if len(subject) != 1 or subject[0] not in SLOTS:
        raise UserError(
            f"{where}: template {text!r} must contain exactly one subject slot out of "
            f"{', '.join('{' + s + '}' for s in SLOTS)}"
        )
    if text.count("{") != 2 or text.count("}") != 2:
        raise UserError(f"{where}: template {text!r} has stray braces")
    return Template(text=text, subject_slot=subject[0], parts=tuple(_SLOT_RE.split(text)))


def _read_lines(text: str) -> list[str]:
    return [ln.rstrip("\r") for ln in text.split("\n") if ln.strip() and not ln.lstrip().startswith("#")]


@dataclass
class Pools:
    """All pools and templates used to generate a dataset, plus their checksums."""

    first_names: list[str]
    first_genders: list[str | None]
    middle_names: list[str]
    last_names: list[str]
    birth_cities: list[str]
    universities: list[str]
    majors: list[str]
    companies: list[str]
    company_city: dict[str, str]
    templates: dict[str, list[Template]]
    checksums: dict[str, str] = field(default_factory=dict)

    def values(self, attr: str) -> list[str]:
        """The class list of an attribute (whole-value probe targets index into it)."""
        if attr == "birth_date":
            return birth_dates()
        if attr == "company_city":
            return sorted({self.company_city[c] for c in self.companies})
        lists = {"birth_city": self.birth_cities, "university": self.universities, "major": self.majors,
                 "company": self.companies}  # fmt: skip
        if attr not in lists:
            raise UserError(f"unknown attribute {attr!r}; valid: {', '.join(ATTRIBUTES)}")
        return list(lists[attr])

    @property
    def name_space(self) -> int:
        return len(self.first_names) * len(self.middle_names) * len(self.last_names)

    def limited(self, limits: Mapping[str, int], seed: int) -> Pools:
        """A copy whose attribute pools are seeded random subsets of the given sizes (``{"major": 20}``)."""
        rng = random.Random(f"pool-limits-{seed}")
        copied: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in self.__dict__.items()}
        out = Pools(**copied)
        attr_to_field = {"birth_city": "birth_cities", "university": "universities", "major": "majors",
                         "company": "companies"}  # fmt: skip
        for attr, k in sorted(limits.items()):
            if attr not in attr_to_field:
                raise UserError(f"pool limit for {attr!r}: only {', '.join(LIMITABLE)} can be limited")
            full = getattr(self, attr_to_field[attr])
            if not 2 <= k <= len(full):
                raise UserError(f"pool limit {attr}={k}: must be between 2 and the pool size {len(full)}")
            setattr(out, attr_to_field[attr], rng.sample(full, k))
        return out

    def with_name_pools(self, sizes: Mapping[str, int], seed: int) -> Pools:
        """A copy whose first, middle and/or last name pools are seeded random subsets (``{"first": 12}``)."""
        rng = random.Random(f"name-pools-{seed}")
        copied: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in self.__dict__.items()}
        out = Pools(**copied)
        for part, k in sorted(sizes.items()):
            if part not in NAME_PARTS:
                raise UserError(f"name pool {part!r}: the name parts are {', '.join(NAME_PARTS)}")
            full = getattr(self, f"{part}_names")
            if not 1 <= k <= len(full):
                raise UserError(f"name pool {part}={k}: must be between 1 and the pool size {len(full)}")
            keep = sorted(rng.sample(range(len(full)), k))
            setattr(out, f"{part}_names", [full[i] for i in keep])
            if part == "first":
                out.first_genders = [self.first_genders[i] for i in keep]
        return out


def check_name_space(n_people: int, sizes: Mapping[str, int], pools: Pools) -> None:
    """Refuse name pool sizes whose combinations cannot give ``n_people`` unique full names (before any work)."""
    space = 1
    for part in NAME_PARTS:
        space *= int(sizes.get(part, len(getattr(pools, f"{part}_names"))))
    if space < n_people:
        raise UserError(
            f"name pools {dict(sizes)} give {space:,} unique full names, fewer than the {n_people:,} people asked "
            "for; enlarge a name pool or lower the number of people"
        )


def people_per_name(first: list[str], middle: list[str], last: list[str]) -> dict[str, float]:
    """Mean number of people per distinct first, middle and last name (1.0: every name part is unique)."""
    return {part: round(len(names) / max(1, len(set(names))), 3)
            for part, names in (("first", first), ("middle", middle), ("last", last))}  # fmt: skip


def birth_dates() -> list[str]:
    """Every possible birth date, ``"October 2, 1996"``: 200 years x 12 months x 28 days."""
    return [f"{m} {d}, {y}" for y in range(YEARS[0], YEARS[1] + 1) for m in MONTHS for d in range(1, DAYS + 1)]


def _builtin_text(rel: str) -> str:
    return resources.files("probekit.data").joinpath("pools", rel).read_text(encoding="utf-8")


def load_pools(overrides: Mapping[str, str | Path] | None = None) -> Pools:
    """Load the built-in pools, replacing any named in ``overrides`` (pool name -> file path)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(POOL_FILES))
    if unknown:
        raise UserError(f"unknown pool name(s) {unknown}; valid names: {', '.join(POOL_FILES)}")
    raw: dict[str, list[str]] = {}
    checksums: dict[str, str] = {}
    for name, rel in POOL_FILES.items():
        if name in overrides:
            path = Path(overrides[name])
            if path.is_dir():
                raise UserError(f"pool file for {name!r} is a directory: {path}; give the text file itself "
                                f"(or use --pools-dir {path} for a directory of pool files)")  # fmt: skip
            if not path.is_file():
                raise UserFileNotFoundError(f"pool file for {name!r} not found: {path}")
            try:  # utf-8-sig: a byte-order mark (Windows editors) is not part of the first line
                text = path.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError as e:
                raise UserError(f"pool file for {name!r} ({path}) is not UTF-8 text (byte {e.start}); "
                                "save it as UTF-8") from None  # fmt: skip
            where = str(path)
        else:
            text, where = _builtin_text(rel), f"built-in {rel}"
        lines = _read_lines(text)
        if not lines:
            raise UserError(f"pool {name!r} ({where}) is empty; give at least one entry per line")
        if len(set(lines)) != len(lines):
            dup = next(x for x in lines if lines.count(x) > 1)
            raise UserError(f"pool {name!r} ({where}) repeats the entry {dup!r}; entries must be unique")
        raw[name] = lines
        checksums[name] = hashlib.sha256("\n".join(lines).encode()).hexdigest()

    first, genders = [], []
    for ln in raw["first_names"]:
        name, _, gender = ln.partition("\t")
        if gender and gender.strip() not in ("female", "male"):
            raise UserError(f"first_names: gender of {name!r} must be 'female' or 'male', got {gender!r}")
        first.append(name.strip())
        genders.append(gender.strip() or None)
    companies, company_city = [], {}
    for ln in raw["companies"]:
        name, _, city = ln.partition("\t")
        if not city.strip():
            raise UserError(
                f"companies: company {name.strip()!r} has no headquarters city; write 'Company<TAB>City, ST'"
            )
        companies.append(name.strip())
        company_city[name.strip()] = city.strip()
    templates = {a: [parse_template(t, f"templates_{a}") for t in raw[f"templates_{a}"]] for a in ATTRIBUTES}
    return Pools(
        first_names=first, first_genders=genders, middle_names=raw["middle_names"], last_names=raw["last_names"],
        birth_cities=raw["birth_cities"], universities=raw["universities"], majors=raw["majors"],
        companies=companies, company_city=company_city, templates=templates, checksums=checksums,
    )  # fmt: skip
