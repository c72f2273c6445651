"""bioS: synthetic biographies (Allen-Zhu & Li, Physics of Language Models 3.1).

``generate_people`` draws N individuals with unique full names and six independent, uniform attributes;
``render_entries`` writes their biography entries under an augmentation such as ``single``, ``multi5``,
``permute``, ``fullname`` or combinations (``multi5+permute+fullname``). Every entry records the character span
of the name and of every attribute occurrence, so later stages find exact token positions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from probekit.data.pools import ATTRIBUTES, DAYS, MONTHS, YEARS, Pools, Template

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
        raise ValueError(f"empty augmentation {spec!r}; valid parts: {', '.join(AUGMENTATIONS)} (e.g. multi5+permute)")
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
                raise ValueError(f"augmentation {p!r}: M must be at least 1 (multi0 gives no biographies)")
        else:
            raise ValueError(
                f"unknown augmentation {p!r} in {spec!r}; valid parts: single, multiM (M >= 1, e.g. multi5), "
                "permute, fullname, joined with '+'"
            )
    return Augmentation(multi=multi, permute=permute, fullname=fullname)


def generate_people(n: int, pools: Pools, seed: int) -> list[Person]:
    """N people with unique full names and uniformly drawn attributes (company city follows the company)."""
    space = pools.name_space
    if n < 1:
        raise ValueError(f"number of people must be at least 1, got {n}")
    if n > space:
        raise ValueError(
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
    """All biography entries: M per person, templates re-drawn per entry, order shuffled if ``permute``."""
    rng = random.Random(seed + 1_000_003)
    entries: list[Entry] = []
    for person in people:
        name = person.full_name
        as_name = {"Subj": name, "subj": name, "Poss": f"{name}'s", "poss": f"{name}'s", "obj": name, "_name": name}
        pronoun = PRONOUNS[person.gender]
        for idx in range(augmentation.multi):
            order = list(ATTRIBUTES)
            if augmentation.permute:
                rng.shuffle(order)
            spans: list[Span] = []
            sentences: list[str] = []
            offset = 0
            for k, attr in enumerate(order):
                subject = as_name if (k == 0 or augmentation.fullname) else pronoun
                tpl = rng.choice(pools.templates[attr])
                s = _render(tpl, person.attrs[attr], subject, attr, offset, spans)
                sentences.append(s)
                offset += len(s) + 1
            entries.append(Entry(person.pid, idx, " ".join(sentences), tuple(order), spans))
    return entries


def generate(n_people: int, seed: int, augmentation: str = "single", pools: Pools | None = None
             ) -> tuple[list[Person], list[Entry]]:  # fmt: skip
    """People and their entries in one call (built-in pools unless given)."""
    from probekit.data.pools import load_pools

    aug = parse_augmentation(augmentation)
    pools = pools or load_pools()
    people = generate_people(n_people, pools, seed)
    return people, render_entries(people, pools, aug, seed)
