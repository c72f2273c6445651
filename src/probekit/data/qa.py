"""QA data for knowledge extraction, the P_train/P_test split, and inverse-search prompts.

Each of the six questions is followed by ``Answer:`` and the value (Allen-Zhu & Li, Physics of LMs 3.1). A
training/evaluation sequence is
``<|endoftext|> {prompt} {answer} <|endoftext|>``; exact match is judged on the answer's token ids.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from probekit.data.bios import Person
from probekit.data.pools import ATTRIBUTES
from probekit.errors import UserError

QUESTIONS: dict[str, str] = {
    "birth_date": "What is the birth date of {name}?",
    "birth_city": "What is the birth city of {name}?",
    "university": "Which university did {name} study?",
    "major": "What major did {name} study?",
    "company": "Which company did {name} work for?",
    "company_city": "Where did {name} work?",
}
ANSWER_MARK = "Answer:"
INVERSE_CLAUSES: dict[str, str] = {
    "birth_date": "was born on {}",
    "birth_city": "was born in {}",
    "university": "studied at {}",
    "major": "majored in {}",
    "company": "worked for {}",
    "company_city": "worked in {}",
}


@dataclass(frozen=True)
class QAItem:
    pid: int
    attr: str
    prompt: str
    answer: str

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.answer}"


def qa_items(people: Sequence[Person]) -> list[QAItem]:
    """Six questions per person."""
    return [
        QAItem(p.pid, a, f"{QUESTIONS[a].format(name=p.full_name)} {ANSWER_MARK}", p.attrs[a])
        for p in people
        for a in ATTRIBUTES
    ]


def inverse_prompt(person: Person, attrs: Sequence[str] = ATTRIBUTES) -> str:
    """Attributes -> name: ``Who was born on ..., studied at ... and worked for ...? Answer:``."""
    if not attrs:
        raise UserError("inverse prompt needs at least one attribute")
    bad = [a for a in attrs if a not in INVERSE_CLAUSES]
    if bad:
        raise UserError(f"unknown attribute(s) {bad}; valid: {', '.join(ATTRIBUTES)}")
    clauses = [INVERSE_CLAUSES[a].format(person.attrs[a]) for a in attrs]
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return f"Who {body}? {ANSWER_MARK}"


def split_people(pids: Sequence[int], seed: int, train_fraction: float = 0.5) -> dict[str, list[int]]:
    """Seeded people-level split into P_train ("train") and P_test ("test")."""
    order = sorted(pids)
    random.Random(f"split-{seed}").shuffle(order)
    k = int(round(len(order) * train_fraction))
    return {"train": sorted(order[:k]), "test": sorted(order[k:])}
