"""Distractor contexts for biography QA, and the rewrite targets of System 2 Attention (Weston & Sukhbaatar, arXiv
2311.11829).

A distracted prompt is ``context + " " + question``: the question is the dataset's QA prompt, verbatim
(``What is the birth city of X? Answer:``), and the context is a few sentences in front of it. Sentences are of
three roles:

- ``relevant``: a biography sentence about the queried person (another attribute than the one asked, so the
  context never states the answer), rendered from the bioS templates with the full name as subject;
- ``irrelevant``: biography sentences about other people of the dataset (their true values; the first one states
  the asked attribute, the most distracting kind of irrelevant sentence);
- ``opinion``: ``I think the answer is V, but I'm not sure.`` (suggest) or ``I don't think the answer is V, but
  I'm not sure.`` (refute), always the last sentence before the question.

Test kinds (``KINDS``), all sharing the item's relevant sentence (drawn once per person and attribute):
``clean`` (the oracle: relevant context + question), ``irrelevant``, ``hint_right`` (suggests the correct value),
``hint_wrong`` (suggests another value of the same pool), ``refute_right`` (refutes the correct value).

Training contexts for the distractable finetuning regime (``train_items``): a share ``context_ratio`` of prompts
carries a context (irrelevant sentences, a relevant one, and with probability ``hint_ratio`` a hint that suggests
the correct value with probability ``hint_accuracy``), the rest are clean. ``unseen_people`` > 0 adds people the
model never read about (``unseen_people``: new full names from the dataset's name parts, attributes from its value
lists) whose questions carry a hint with probability ``unseen_hint_ratio``: for them the hint is the only source of
the answer, so the finetuned model learns that the context helps where retrieval fails (``unseen_train_items``).

S2A rewrite task (``rewrite_prompt`` -> ``rewrite_target``): input = the distracted prompt + `` Rewrite:``; target =
the relevant sentences + the question. ``rule_regenerate`` is the rule-based reference: keep every sentence that
names the queried person, drop opinions and sentences about others, keep the question apart and unaltered.

Every draw is seeded by (seed, role, person, attribute, variant), so the same settings give the same items in
any order or subset of people. The dataset's tokenizer must know the opinion and rewrite words: build the
dataset with ``extra_vocab=DISTRACT_VOCAB`` (``probekit data bios --distract-vocab``).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from probekit.data.bios import Person, _render
from probekit.data.pools import ATTRIBUTES, Pools, load_pools
from probekit.data.qa import ANSWER_MARK, QUESTIONS
from probekit.errors import UserError

KINDS: tuple[str, ...] = ("clean", "irrelevant", "hint_right", "hint_wrong", "refute_right")
SUGGEST = "I think the answer is {value}, but I'm not sure."
REFUTE = "I don't think the answer is {value}, but I'm not sure."
REWRITE_MARK = "Rewrite:"
# The words the distractor phrases add to a bioS vocabulary (fixed strings: changing them changes tokenizers).
DISTRACT_VOCAB: tuple[str, ...] = (
    "I think the answer is X, but I'm not sure.",
    "I don't think the answer is X, but I'm not sure.",
    REWRITE_MARK,
)
# Sentence boundary: ". " before a capital letter, except after an abbreviation inside a value ("St. Louis").
_SENTENCE_END = re.compile(r"(?<=\.)(?<!\bSt\.)\s+(?=[A-Z])")
_OPINION = re.compile(r"^I (?:don't )?think the answer is ")
_QUESTION_RES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (attr, re.compile(r"(?P<question>" + re.escape(q).replace(re.escape("{name}"), r"(?P<name>[^?]+?)")
                      + r" " + re.escape(ANSWER_MARK) + r")$"))
    for attr, q in QUESTIONS.items()
)  # fmt: skip


@dataclass(frozen=True)
class Sentence:
    """One context sentence; ``pid``/``attr``/``value`` say what it is about (``pid`` None for opinions)."""

    text: str
    role: str  # relevant | irrelevant | opinion
    pid: int | None
    attr: str | None
    value: str | None


@dataclass(frozen=True)
class DistractItem:
    """A QA item with a context. ``question`` is the dataset's QA prompt, never altered."""

    pid: int
    attr: str
    kind: str  # one of KINDS, or "train"
    question: str
    answer: str
    context: tuple[Sentence, ...]
    suggested: str | None  # the wrong value a distractor pushes (hint value, same-attribute irrelevant value)

    @property
    def prompt(self) -> str:
        """The distracted prompt: context sentences, then the question."""
        return join_prompt([s.text for s in self.context], self.question)

    @property
    def relevant(self) -> tuple[str, ...]:
        """The sentences about the queried person, in context order."""
        return tuple(s.text for s in self.context if s.role == "relevant")

    @property
    def oracle_prompt(self) -> str:
        """The prompt with every distractor removed: relevant sentences + question."""
        return join_prompt(self.relevant, self.question)

    @property
    def rewrite_prompt(self) -> str:
        """Input of the learned S2A regenerator."""
        return f"{self.prompt} {REWRITE_MARK}"

    @property
    def rewrite_target(self) -> str:
        """Target of the learned S2A regenerator: relevant context + question."""
        return self.oracle_prompt


def join_prompt(sentences: Sequence[str], question: str) -> str:
    return " ".join([*sentences, question])


@dataclass
class DistractConfig:
    """How distractor contexts are drawn (test kinds and the distractable finetuning regime)."""

    n_irrelevant: int = 2  # irrelevant sentences in the `irrelevant` kind; training contexts draw 0..n_irrelevant
    relevant_prob: float = 0.5  # chance that an item's context holds one sentence about the queried person
    context_ratio: float = 0.75  # training: share of prompts that carry a context (the rest are clean)
    hint_ratio: float = 0.8  # training: share of contexts that carry a hint
    hint_accuracy: float = 0.8  # training: share of hints that suggest the correct value (the rest a wrong one)
    train_variants: int = 2  # training: independently drawn prompts per P_train question
    unseen_people: int = 0  # training: people never in pretraining (new names) whose answers only a hint gives
    unseen_hint_ratio: float = 1.0  # training: share of the unseen people's prompts with a hint (right: hint_accuracy)
    seed: int = 0  # seed of the drawn contexts

    def __post_init__(self) -> None:
        for name in ("relevant_prob", "context_ratio", "hint_ratio", "hint_accuracy", "unseen_hint_ratio"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise UserError(f"distract {name} must be in [0, 1], got {v}")
        if self.n_irrelevant < 1:
            raise UserError(f"distract n_irrelevant must be >= 1, got {self.n_irrelevant}")
        if self.train_variants < 1:
            raise UserError(f"distract train_variants must be >= 1, got {self.train_variants}")
        if self.unseen_people < 0:
            raise UserError(f"distract unseen_people must be >= 0, got {self.unseen_people}")


class ContextBuilder:
    """Draws context sentences for the people of a dataset (``people``, value lists ``pools``: attr -> values)."""

    def __init__(self, people: Sequence[Person], values: dict[str, list[str]], cfg: DistractConfig,
                 templates: Pools | None = None) -> None:  # fmt: skip
        if len(people) < 2:
            raise UserError("distractor contexts need at least two people (irrelevant sentences are about others)")
        self.people = list(people)
        self.by_pid = {p.pid: p for p in self.people}
        self.values = values
        self.cfg = cfg
        self.templates = (templates or load_pools()).templates
        for a in ATTRIBUTES:
            if len(set(values.get(a, []))) < 2:
                raise UserError(f"attribute {a} has fewer than two values; a wrong hint needs another value")

    def rng(self, *parts: Any) -> random.Random:
        return random.Random("|".join(map(str, (self.cfg.seed, *parts))))

    def sentence(self, person: Person, attr: str, role: str, rng: random.Random) -> Sentence:
        """A biography sentence about ``person``'s ``attr`` with the full name as subject."""
        text = _render(rng.choice(self.templates[attr]), person.attrs[attr], _as_name(person), attr, 0, [])
        return Sentence(text, role, person.pid, attr, person.attrs[attr])

    def wrong_value(self, person: Person, attr: str, rng: random.Random) -> str:
        """A value of the same pool that is not the person's own."""
        pool = self.values[attr]
        while True:
            v = rng.choice(pool)
            if v != person.attrs[attr]:
                return v

    def relevant(self, person: Person, attr: str, rng: random.Random) -> list[Sentence]:
        """Zero or one sentence about the queried person (another attribute, so the answer is never stated)."""
        if rng.random() >= self.cfg.relevant_prob:
            return []
        other = rng.choice([a for a in ATTRIBUTES if a != attr])
        return [self.sentence(person, other, "relevant", rng)]

    def irrelevant(self, person: Person, attr: str, k: int, rng: random.Random) -> list[Sentence]:
        """``k`` sentences about other people; the first states the asked attribute with a value that differs
        from the queried person's (when k >= 1), the others random attributes."""
        out: list[Sentence] = []
        others = [p for p in self.people if p.pid != person.pid]
        for j in range(k):
            if j == 0:
                cands = [p for p in others if p.attrs[attr] != person.attrs[attr]] or others
                other, a = rng.choice(cands), attr
            else:
                other, a = rng.choice(others), rng.choice(ATTRIBUTES)
            out.append(self.sentence(other, a, "irrelevant", rng))
        return out

    @staticmethod
    def opinion(template: str, value: str) -> Sentence:
        return Sentence(template.format(value=value), "opinion", None, None, value)


def _as_name(person: Person) -> dict[str, str]:
    """Template subject slots filled with the full name (context sentences stand alone: no pronouns)."""
    name = person.full_name
    return {"Subj": name, "subj": name, "Poss": f"{name}'s", "poss": f"{name}'s", "obj": name}


def _question(person: Person, attr: str) -> str:
    return f"{QUESTIONS[attr].format(name=person.full_name)} {ANSWER_MARK}"


def eval_items(builder: ContextBuilder, pids: Sequence[int], attrs: Sequence[str] = ATTRIBUTES,
               kinds: Sequence[str] = KINDS) -> list[DistractItem]:  # fmt: skip
    """One item per (person, attribute, kind). The relevant sentence and the distractor values of a (person,
    attribute) are drawn once and shared by its kinds, so kinds differ only in their distractor."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise UserError(f"distractor kinds {list(kinds)}: choose a non-empty subset of {', '.join(KINDS)}")
    items: list[DistractItem] = []
    for pid in pids:
        person = builder.by_pid[pid]
        for attr in attrs:
            rng = builder.rng("test", pid, attr)
            relevant = builder.relevant(person, attr, rng)
            irrelevant = builder.irrelevant(person, attr, builder.cfg.n_irrelevant, rng)
            wrong = builder.wrong_value(person, attr, rng)
            order = rng.sample(range(len(relevant) + len(irrelevant)), len(relevant) + len(irrelevant))
            true = person.attrs[attr]
            q = _question(person, attr)
            for kind in kinds:
                if kind == "clean":
                    ctx, sug = relevant, None
                elif kind == "irrelevant":
                    pool = relevant + irrelevant
                    ctx, sug = [pool[i] for i in order], irrelevant[0].value
                elif kind == "hint_right":
                    ctx, sug = relevant + [builder.opinion(SUGGEST, true)], None
                elif kind == "hint_wrong":
                    ctx, sug = relevant + [builder.opinion(SUGGEST, wrong)], wrong
                else:  # refute_right
                    ctx, sug = relevant + [builder.opinion(REFUTE, true)], None
                items.append(DistractItem(pid, attr, kind, q, true, tuple(ctx), sug))
    return items


def train_items(builder: ContextBuilder, pids: Sequence[int], attrs: Sequence[str] = ATTRIBUTES) -> list[DistractItem]:
    """The distractable finetuning regime: ``train_variants`` prompts per (person, attribute); each carries a
    context with probability ``context_ratio`` (0..n_irrelevant irrelevant sentences, a relevant one with
    probability ``relevant_prob``, and with probability ``hint_ratio`` a hint that is right with probability
    ``hint_accuracy``)."""
    cfg = builder.cfg
    items: list[DistractItem] = []
    for pid in pids:
        person = builder.by_pid[pid]
        for attr in attrs:
            for v in range(cfg.train_variants):
                rng = builder.rng("train", pid, attr, v)
                if rng.random() >= cfg.context_ratio:
                    items.append(DistractItem(pid, attr, "train", _question(person, attr), person.attrs[attr], (),
                                              None))  # fmt: skip
                    continue
                items.append(_train_item(builder, person, attr, cfg.hint_ratio, rng))
    return items


def _train_item(builder: ContextBuilder, person: Person, attr: str, hint_ratio: float,
                rng: random.Random) -> DistractItem:  # fmt: skip
    """A training prompt with a context: a relevant sentence (``relevant_prob``), 0..n_irrelevant irrelevant ones in
    random order, then with probability ``hint_ratio`` a hint that is right with probability ``hint_accuracy``."""
    cfg = builder.cfg
    q, true = _question(person, attr), person.attrs[attr]
    sents = builder.relevant(person, attr, rng)
    sents += builder.irrelevant(person, attr, rng.randint(0, cfg.n_irrelevant), rng)
    rng.shuffle(sents)
    sug = None
    if rng.random() < hint_ratio:
        right = rng.random() < cfg.hint_accuracy
        value = true if right else builder.wrong_value(person, attr, rng)
        sents.append(builder.opinion(SUGGEST, value))
        sug = None if right else value
    return DistractItem(person.pid, attr, "train", q, true, tuple(sents), sug)


def unseen_people(people: Sequence[Person], values: dict[str, list[str]], n: int, seed: int) -> list[Person]:
    """``n`` people the model never read about: full names that are no one's in ``people``, built from their first,
    middle and last names (so every word is in the tokenizer), attributes drawn from ``values`` (the stored value
    lists), the company city following the company as in ``people``. Person ids continue after the last one."""
    if n == 0:
        return []
    rng = random.Random(f"unseen-people-{seed}")
    firsts = sorted({(p.first, p.gender) for p in people})
    middles, lasts = sorted({p.middle for p in people}), sorted({p.last for p in people})
    taken = {p.full_name for p in people}
    space = len(firsts) * len(middles) * len(lasts) - len(taken)
    if n > space:
        raise UserError(f"unseen_people={n} exceeds the {space} new full names the dataset's name parts allow; "
                        "lower unseen_people")  # fmt: skip
    city = {p.attrs["company"]: p.attrs["company_city"] for p in people}
    companies = [c for c in values["company"] if c in city]
    out: list[Person] = []
    next_pid = max(p.pid for p in people) + 1
    while len(out) < n:
        (first, gender), middle, last = rng.choice(firsts), rng.choice(middles), rng.choice(lasts)
        name = f"{first} {middle} {last}"
        if name in taken:
            continue
        taken.add(name)
        company = rng.choice(companies)
        attrs = {a: rng.choice(values[a]) for a in ATTRIBUTES if a not in ("company", "company_city")}
        attrs.update(company=company, company_city=city[company])
        out.append(Person(next_pid + len(out), first, middle, last, gender, {a: attrs[a] for a in ATTRIBUTES}))
    return out


def unseen_train_items(builder: ContextBuilder, people: Sequence[Person],
                       attrs: Sequence[str] = ATTRIBUTES) -> list[DistractItem]:  # fmt: skip
    """Training prompts for people outside the dataset (``unseen_people``): ``train_variants`` per (person,
    attribute), every one with a context, a hint with probability ``unseen_hint_ratio`` (right with probability
    ``hint_accuracy``). Irrelevant sentences are about the dataset's people; the dataset's own items are
    unchanged by them (their draws do not depend on these people)."""
    cfg = builder.cfg
    return [_train_item(builder, person, attr, cfg.unseen_hint_ratio, builder.rng("unseen", person.pid, attr, v))
            for person in people for attr in attrs for v in range(cfg.train_variants)]  # fmt: skip


def rewrite_train_items(builder: ContextBuilder, pids: Sequence[int],
                        attrs: Sequence[str] = ATTRIBUTES) -> list[DistractItem]:  # fmt: skip
    """Training examples for the learned regenerator: every distractor kind and the training contexts of P_train
    people (pair each ``rewrite_prompt`` with its ``rewrite_target``)."""
    return eval_items(builder, pids, attrs) + train_items(builder, pids, attrs)


def builder_for(dataset: Any, cfg: DistractConfig) -> ContextBuilder:
    """A ``ContextBuilder`` over a loaded ``BioDataset``: its people, its stored value lists (wrong hints come from
    the same pool), built-in templates. Birth dates, whose pool is every date of 200 years, draw wrong values from
    the dataset's own birth dates, so a hint never holds a year the tokenizer has not seen."""
    values = {a: list(dataset.pools.values(a)) for a in ATTRIBUTES if a != "birth_date"}
    values["birth_date"] = sorted({p.attrs["birth_date"] for p in dataset.people})
    return ContextBuilder(
        dataset.people, values, cfg, known_templates(dataset.tokenizer, load_pools(), dataset.people[0])
    )


def known_templates(tokenizer: Any, pools: Pools, person: Person) -> Pools:
    """``pools`` with only the templates whose words ``tokenizer`` knows (a small dataset may not have used all
    50 templates of an attribute, and a template word it never saw would be ``<unk>``)."""
    kept: dict[str, list[Any]] = {}
    for attr, templates in pools.templates.items():
        kept[attr] = [
            t
            for t in templates
            if not unknown_words(tokenizer, [_render(t, person.attrs[attr], _as_name(person), attr, 0, [])])
        ]
        if not kept[attr]:
            raise UserError(f"the tokenizer knows none of the {attr} templates; build the dataset with the built-in "
                            "templates")  # fmt: skip
    return dataclasses.replace(pools, templates=kept)


def unknown_words(tokenizer: Any, texts: Sequence[str], unk_id: int = 2) -> list[str]:
    """The words of ``texts`` that ``tokenizer`` maps to ``<unk>`` (distinct, in order of appearance)."""
    found: dict[str, None] = {}
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for (a, b), i in zip(enc["offset_mapping"], enc["input_ids"]):
            if i == unk_id:
                found[text[a:b]] = None
    return list(found)


# ---------------------------------------------------------------------------------------------------------------
# S2A regeneration from text


def split_sentences(text: str) -> list[str]:
    """Split context text into sentences (". " before a capital letter; "St." inside values is no boundary)."""
    text = text.strip()
    return [s for s in _SENTENCE_END.split(text) if s] if text else []


def split_question(prompt: str) -> tuple[str, str, str, str] | None:
    """``(context, question, attr, name)`` when ``prompt`` ends with a bioS QA question, else None."""
    for attr, pat in _QUESTION_RES:
        m = pat.search(prompt)
        if m and (m.start() == 0 or prompt[m.start() - 1] == " "):
            return prompt[: m.start()].strip(), m.group("question"), attr, m.group("name")
    return None


def is_opinion(sentence: str) -> bool:
    return bool(_OPINION.match(sentence))


def mentions(sentence: str, name: str) -> bool:
    """Whether ``sentence`` names the person ``name`` (whole words: "Ann Lee Moss" is not in "Ann Lee Mossa")."""
    return re.search(r"(?<!\w)" + re.escape(name) + r"(?!\w)", sentence) is not None


@dataclass(frozen=True)
class Regeneration:
    """A regenerated prompt: ``context`` sentences + the ``question`` (kept apart). ``status``: ok,
    question_changed (the regenerator rewrote the question; the original is used), or fallback (malformed
    output; ``reason`` says why, and the fallback rule chose ``context``)."""

    context: tuple[str, ...]
    question: str
    status: str = "ok"
    reason: str = ""
    raw: str = ""

    @property
    def prompt(self) -> str:
        return join_prompt(self.context, self.question)


def rule_regenerate(prompt: str) -> Regeneration:
    """The rule-based S2A reference: keep the sentences that name the queried person (taken from the question),
    drop opinions and sentences about anyone else; the question is kept verbatim. A prompt that does not end with
    a bioS question raises ``ValueError``."""
    parts = split_question(prompt)
    if parts is None:
        raise ValueError(f"prompt does not end with a bioS question: {prompt[-80:]!r}")
    context, question, _, name = parts
    kept = tuple(s for s in split_sentences(context) if not is_opinion(s) and mentions(s, name))
    return Regeneration(kept, question)


FALLBACKS: tuple[str, ...] = ("original", "question")


def tidy(text: str) -> str:
    """Undo the word-level decoder's spacing (``Answer :``, ``I ' m``, ``Name ' s``) so decoded output reads as the
    generator writes it; the tokens are unchanged (whitespace never splits differently around punctuation)."""
    text = " ".join(text.split())
    return re.sub(r"\s*'\s*", "'", re.sub(r"\s+([:?.,])", r"\1", text))


def parse_regeneration(text: str, original_prompt: str, fallback: str = "original",
                       unk_token: str | None = "<unk>") -> Regeneration:  # fmt: skip
    """Parse a learned regenerator's output for ``original_prompt``; never raises on bad output.

    The text is first tidied (``tidy``: the decoder's spacing around punctuation). Well-formed: it ends with a bioS
    question, every context sentence ends with a full stop and the text
    holds no ``unk_token``. The question used is always the original one (the question is never altered); a
    regenerated question that differs is counted as ``question_changed``. Malformed output falls back by the
    stated rule: ``original`` answers from the original prompt unchanged (no S2A), ``question`` from the question
    alone (all context dropped).
    """
    if fallback not in FALLBACKS:
        raise UserError(f"unknown fallback {fallback!r}; choose one of {FALLBACKS}")
    orig = split_question(original_prompt)
    if orig is None:
        raise ValueError(f"prompt does not end with a bioS question: {original_prompt[-80:]!r}")
    orig_context, question = orig[0], orig[1]
    text = tidy(text)
    reason = ""
    parsed = split_question(text)
    if not text:
        reason = "empty output"
    elif unk_token and unk_token in text:
        reason = "unknown token in output"
    elif parsed is None:
        reason = "no question at the end"
    else:
        sents = split_sentences(parsed[0])
        if any(not s.endswith(".") for s in sents):
            reason = "a context sentence without a full stop"
        else:
            status = "ok" if parsed[1] == question else "question_changed"
            return Regeneration(tuple(sents), question, status, "", text)
    ctx = tuple(split_sentences(orig_context)) if fallback == "original" else ()
    return Regeneration(ctx, question, "fallback", reason, text)


__all__ = [
    "DISTRACT_VOCAB", "FALLBACKS", "KINDS", "REFUTE", "REWRITE_MARK", "SUGGEST", "ContextBuilder", "DistractConfig",
    "DistractItem", "Regeneration", "Sentence", "builder_for", "eval_items", "is_opinion", "join_prompt", "mentions",
    "parse_regeneration", "rewrite_train_items", "rule_regenerate", "split_question", "split_sentences",
    "tidy", "train_items", "unknown_words",
]  # fmt: skip
