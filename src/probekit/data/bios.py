"""bioS: synthetic biographies (Allen-Zhu & Li, Physics of Language Models 3.1).

``generate_people`` draws N individuals with unique full names and six independent, uniform attributes;
``render_entries`` writes their biography entries under an augmentation such as ``single``, ``multi5``,
``permute``, ``fullname`` or combinations (``multi5+permute+fullname``). Every entry records the character span
of the name and of every attribute occurrence, so later stages find exact token positions.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from probekit.data.pools import ATTRIBUTES, DAYS, MONTHS, YEARS, Pools, Template
from probekit.errors import UserError

AUGMENTATIONS: tuple[str, ...] = ("single", "multiM", "permute", "fullname")
PRONOUNS: dict[str, dict[str, str]] = {
    "female": {"Subj": "She", "subj": "she", "Poss": "Her", "poss": "her", "obj": "her"},
    "male": {"Subj": "He", "subj": "he", "Poss": "His", "poss": "his", "obj": "him"},
}


@dataclass(frozen=True)
class Person:
    pid: int
    first: str
    middle: str
    last: str
    gender: str
    attrs: dict[str, str] = field(hash=False)

    @property
    def full_name(self) -> str:
        return f"{self.first} {self.middle} {self.last}"


@dataclass(frozen=True)
class Span:
    kind: str  # "name" or an attribute
    start: int  # character offsets into the entry text, [start, end)
    end: int


@dataclass
class Entry:
    pid: int
    idx: int  # 0..M-1: which of the person's entries
    text: str
    order: tuple[str, ...]  # attributes in sentence order
    spans: list[Span]

    def first_span(self, kind: str) -> Span:
        """The first occurrence of ``kind`` ("name" or an attribute) in the text."""
        for s in self.spans:
            if s.kind == kind:
                return s
        raise KeyError(f"entry of person {self.pid} has no span for {kind!r}")


@dataclass(frozen=True)
class Augmentation:
    multi: int = 1
    permute: bool = False
    fullname: bool = False

    @property
    def name(self) -> str:
        parts = [f"multi{self.multi}"] if self.multi > 1 else []
        parts += ["permute"] * self.permute + ["fullname"] * self.fullname
        return "+".join(parts) or "single"


def parse_augmentation(spec: str) -> Augmentation:
    """Parse ``single``, ``multi5``, ``permute``, ``multi5+permute+fullname``... (order of parts is free)."""
    multi, permute, fullname = 1, False, False
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    if not parts:
        raise UserError(f"empty augmentation {spec!r}; valid parts: {', '.join(AUGMENTATIONS)} (e.g. multi5+permute)")
    kinds = ["multi" if p.startswith("multi") or p == "single" else p for p in parts]  # single is multi1
    if len(set(kinds)) < len(kinds):
        twice = sorted({p for p, k in zip(parts, kinds, strict=True) if kinds.count(k) > 1})
        raise UserError(f"augmentation {spec!r} gives {' and '.join(twice)}: the parts contradict or repeat each "
                        "other; give each part once (one multiM), e.g. multi5+permute")  # fmt: skip
    for p in parts:
        if p == "single":
            continue
        if p == "permute":
            permute = True
        elif p == "fullname":
            fullname = True
        elif p.startswith("multi") and p[5:].isdigit():
            multi = int(p[5:])
            if multi < 1:
                raise UserError(f"augmentation {p!r}: M must be at least 1 (multi0 gives no biographies)")
        else:
            raise UserError(
                f"unknown augmentation {p!r} in {spec!r}; valid parts: single, multiM (M >= 1, e.g. multi5), "
                "permute, fullname, joined with '+'"
            )
    return Augmentation(multi=multi, permute=permute, fullname=fullname)


def generate_people(n: int, pools: Pools, seed: int) -> list[Person]:
    """N people with unique full names and uniformly drawn attributes (company city follows the company)."""
    space = pools.name_space
    if n < 2:
        raise UserError(f"number of people must be at least 2 (one P_train and one P_test person), got {n}")
    if n > space:
        raise UserError(
            f"N={n} exceeds the {space:,} unique full names the name pools allow "
            f"({len(pools.first_names)} x {len(pools.middle_names)} x {len(pools.last_names)}); "
            "lower N or give larger name pools"
        )
    rng = random.Random(seed)
    nm, nl = len(pools.middle_names), len(pools.last_names)
    people = []
    for pid, code in enumerate(rng.sample(range(space), n)):
        fi, rest = divmod(code, nm * nl)
        mi, li = divmod(rest, nl)
        gender = pools.first_genders[fi] or rng.choice(("female", "male"))
        company = rng.choice(pools.companies)
        attrs = {
            "birth_date": f"{rng.choice(MONTHS)} {rng.randint(1, DAYS)}, {rng.randint(*YEARS)}",
            "birth_city": rng.choice(pools.birth_cities),
            "university": rng.choice(pools.universities),
            "major": rng.choice(pools.majors),
            "company": company,
            "company_city": pools.company_city[company],
        }
        people.append(Person(pid, pools.first_names[fi], pools.middle_names[mi], pools.last_names[li], gender, attrs))
    return people


def _render(template: Template, value: str, subject: dict[str, str], attr: str, offset: int,
            spans: list[Span]) -> str:  # fmt: skip
    """Render one sentence starting at character ``offset``; append the spans of the value and any name."""
    pieces: list[str] = []
    pos = offset
    for i, part in enumerate(template.parts):
        if i % 2 == 0:
            text = part
        elif part == "value":
            text = value
            spans.append(Span(attr, pos, pos + len(text)))
        else:
            text = subject[part]
            if subject.get("_name"):
                spans.append(Span("name", pos, pos + len(subject["_name"])))
        pieces.append(text)
        pos += len(text)
    return "".join(pieces)


def render_entries(people: Sequence[Person], pools: Pools, augmentation: Augmentation, seed: int) -> list[Entry]:
    """All biography entries: M per person, templates re-drawn per entry, order shuffled if ``permute``.

    The same text and spans as rendering each sentence with ``_render`` (the random draws are the same calls in
    the same order), with each template's parts unpacked once and equal spans shared (``Span`` is frozen);
    ``benchmarks/bench_data.py`` times it against that loop.
    """
    rng = random.Random(seed + 1_000_003)
    # random.Random.choice(seq) is seq[_randbelow(len(seq))] and shuffle swaps x[i] with x[_randbelow(i + 1)] for
    # i from the end: calling _randbelow directly makes the same draws without the wrappers' overhead (tested
    # against rng.choice / rng.shuffle in tests/test_data_fast_build.py)
    randbelow = rng._randbelow  # type: ignore[attr-defined]
    # per attribute: the templates as (literal 0, slot 1, literal 1, slot 2, literal 2), the same objects' order
    templates = {a: [_unpack(t) for t in pools.templates[a]] for a in ATTRIBUTES}
    n_templates = {a: len(t) for a, t in templates.items()}
    if not all(n_templates.values()):
        raise IndexError("Cannot choose from an empty sequence")
    swaps = range(len(ATTRIBUTES) - 1, 0, -1)
    span_cache: dict[tuple[str, int, int], Span] = {}

    def span(kind: str, start: int, end: int) -> Span:
        key = (kind, start, end)
        sp = span_cache.get(key)
        if sp is None:
            sp = span_cache[key] = Span(kind, start, end)
        return sp

    entries: list[Entry] = []
    for person in people:
        name = person.full_name
        attrs = person.attrs
        as_name = {"Subj": name, "subj": name, "Poss": f"{name}'s", "poss": f"{name}'s", "obj": name}
        pronoun = PRONOUNS[person.gender]
        n_name = len(name)
        for idx in range(augmentation.multi):
            order = list(ATTRIBUTES)
            if augmentation.permute:
                for i in swaps:
                    j = randbelow(i + 1)
                    order[i], order[j] = order[j], order[i]
            spans: list[Span] = []
            sentences: list[str] = []
            offset = 0
            for k, attr in enumerate(order):
                named = k == 0 or augmentation.fullname
                subject = as_name if named else pronoun
                lit0, slot1, lit1, slot2, lit2 = templates[attr][randbelow(n_templates[attr])]
                value = attrs[attr]
                if slot1 == "value":
                    text1, text2 = value, subject[slot2]
                else:
                    text1, text2 = subject[slot1], value
                start1 = offset + len(lit0)
                end1 = start1 + len(text1)
                start2 = end1 + len(lit1)
                if slot1 == "value":
                    spans.append(span(attr, start1, end1))
                    if named:
                        spans.append(span("name", start2, start2 + n_name))
                else:
                    if named:
                        spans.append(span("name", start1, start1 + n_name))
                    spans.append(span(attr, start2, start2 + len(text2)))
                sentence = f"{lit0}{text1}{lit1}{text2}{lit2}"
                sentences.append(sentence)
                offset += len(sentence) + 1
            entries.append(Entry(person.pid, idx, " ".join(sentences), tuple(order), spans))
    return entries


def _unpack(template: Template) -> tuple[str, str, str, str, str]:
    """A template's parts as exactly (literal, slot, literal, slot, literal): one subject slot and the value."""
    parts = template.parts
    if len(parts) != 5:
        raise ValueError(f"template {template.text!r} must have exactly two slots (the subject and {{value}})")
    return parts[0], parts[1], parts[2], parts[3], parts[4]


@dataclass(frozen=True)
class PersonGroup:
    """A share of the people rendered under their own augmentation (Allen-Zhu & Li, Physics of LMs 3.1, "celebrity
    helps minority": half
    the people ``multi5+permute``, the other half ``single``, in one corpus)."""

    name: str
    augmentation: str = "single"
    fraction: float = 0.5


def check_groups(groups: Sequence[PersonGroup]) -> None:
    """Distinct non-empty names, valid augmentations, fractions in (0, 1] that add up to 1."""
    names = [g.name for g in groups]
    if not groups or len(set(names)) != len(names) or not all(n and n.isidentifier() for n in names):
        raise UserError(f"groups {names}: give one or more groups with distinct names made of letters, digits and "
                        "underscores (e.g. celebrity, minority)")  # fmt: skip
    for g in groups:
        parse_augmentation(g.augmentation)
        if not 0 < g.fraction <= 1:
            raise UserError(f"group {g.name!r}: fraction must be in (0, 1], got {g.fraction}")
    total = sum(g.fraction for g in groups)
    if abs(total - 1) > 1e-9:
        raise UserError(f"group fractions {[g.fraction for g in groups]} add up to {total:g}; they must add up to 1")


def entries_per_person(augmentation: str, groups: Sequence[PersonGroup] = ()) -> int:
    """The most biography entries one person gets: the augmentation's M or, with ``groups`` (all checked), the
    largest of the groups' (what the memory check needs)."""
    multi = parse_augmentation(augmentation).multi  # checked even where groups replace it
    if groups:
        check_groups(groups)
        return max(parse_augmentation(g.augmentation).multi for g in groups)
    return multi


def assign_groups(split: dict[str, list[int]], groups: Sequence[PersonGroup], seed: int) -> dict[str, list[int]]:
    """``{group name: sorted pids}``: each half of the P_train / P_test split is cut by the groups' fractions
    after a seeded shuffle, so every group is split 50/50 like the whole and the split itself is the one a
    dataset of the same people without groups has."""
    check_groups(groups)
    rng = random.Random(f"groups-{seed}")
    out: dict[str, list[int]] = {g.name: [] for g in groups}
    for half in ("train", "test"):
        order = sorted(split[half])
        rng.shuffle(order)
        # cumulative rounding: the group sizes add up to the half exactly
        edges = [0] + [int(round(len(order) * c)) for c in itertools.accumulate(g.fraction for g in groups)]
        for g, a, b in zip(groups, edges, edges[1:]):
            out[g.name] += order[a:b]
    return {k: sorted(v) for k, v in out.items()}


def render_grouped(people: Sequence[Person], pools: Pools, groups: Sequence[PersonGroup],
                   members: dict[str, list[int]], seed: int) -> list[Entry]:  # fmt: skip
    """Each person's entries under their group's augmentation, in pid order. Every augmentation renders all
    people with the dataset's seed, so a person's entries are exactly those of a dataset of the same people and
    seed under that augmentation alone (the minorities' ``single`` biographies equal a ``single`` control's)."""
    group_of = {pid: g.name for g in groups for pid in members[g.name]}
    aug_of = {g.name: parse_augmentation(g.augmentation) for g in groups}
    rendered: dict[Augmentation, dict[int, list[Entry]]] = {}
    for aug in dict.fromkeys(aug_of.values()):
        by_pid: dict[int, list[Entry]] = {}
        for e in render_entries(people, pools, aug, seed):
            by_pid.setdefault(e.pid, []).append(e)
        rendered[aug] = by_pid
    return [e for p in people for e in rendered[aug_of[group_of[p.pid]]][p.pid]]


def generate(n_people: int, seed: int, augmentation: str = "single", pools: Pools | None = None
             ) -> tuple[list[Person], list[Entry]]:  # fmt: skip
    """People and their entries in one call (built-in pools unless given)."""
    from probekit.data.pools import load_pools

    aug = parse_augmentation(augmentation)
    pools = pools or load_pools()
    people = generate_people(n_people, pools, seed)
    return people, render_entries(people, pools, aug, seed)
