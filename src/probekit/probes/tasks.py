"""P-probe and Q-probe task builders: token sequences, read positions, labels and the people-level split.

Tokens come from the tokenizer of the model being probed (``probekit.data.tokens.TokenView``; the dataset's
own tokenizer when none is given): its start tokens, and the dataset's character spans mapped to its tokens.

P-probing (position-based): every biography entry is read as ``start + ids(entry.text)`` (probekit: start =
``<|endoftext|>``). For each attribute a, the read position is the token immediately BEFORE the first token of
a's first value occurrence (the first token that overlaps the value's character span, offsets trimmed of the
leading space a byte-level or metaspace tokenizer attaches to a word). Positions are named by the attribute whose
value follows. The token after each read position is, by construction, the value's first token
(``ProbeTaskSet.next_tokens`` lets tests check it).

Q-probing (query-based): ``start + ids(full_name)``, read at the last name token (position ``name``).

Targets per attribute: ``first_token`` and ``value`` (the index of the whole value in
``ds.pools.values(attr)``). ``first_token`` is the id of the value's first token *as the model writes it in
that place*: for P-probes the token that follows the read position in the biography; for Q-probes the token at
the value's first character when the value follows its QA question (``... Answer: <value>``), with its leading
space. Under probekit's word-level tokenizer that is the value's first word; under a subword tokenizer it is
the first subword, which may be shared by several values (``" Mar"`` for March and May): fewer classes than
values, and the ``value`` target is the one to compare across tokenizers.

Rows are split by people: entries and names of P_train people train
the probes (a seeded ``val_fraction`` of those people choose the L2 strength), P_test people test them; no person
is on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probekit.data.qa import ANSWER_MARK, QUESTIONS
from probekit.data.tokens import TokenView
from probekit.errors import UserError
from probekit.probes.engine import Split

NAME_POSITION = "name"


@dataclass
class PeopleSplit:
    train: list[int]  # P_train pids that train probes (including the validation people)
    val: list[int]  # P_train pids held out to choose the L2 strength
    test: list[int]  # P_test pids


@dataclass
class ProbeTaskSet:
    """Everything the activations and the engine need for one probe kind."""

    kind: str  # "p" or "q"
    sequences: list[list[int]]  # N token sequences, each starting with the view's start tokens
    positions: np.ndarray  # [N, P] token index read in each sequence
    position_names: list[str]  # P names (attributes for P; ["name"] for Q)
    pids: np.ndarray  # [N] person of each row
    next_tokens: np.ndarray  # [N, P] token after each read position (-1 past the end)
    label_keys: list[tuple[str, str]]  # K (attribute, target_kind)
    labels: np.ndarray  # [K, N] int64 class ids (token ids or pool indices)
    split: Split
    view: TokenView | None = None  # the tokenizer the sequences were made with

    @property
    def n(self) -> int:
        return len(self.sequences)


def people_split(ds: object, val_fraction: float = 0.2, seed: int = 0, max_people: int | None = None) -> PeopleSplit:
    """P_train / validation / P_test people of a dataset (``ds.split``), optionally subsampled to ``max_people``."""
    rng = np.random.default_rng(seed)
    train = sorted(int(p) for p in ds.split["train"])  # type: ignore[attr-defined]
    test = sorted(int(p) for p in ds.split["test"])  # type: ignore[attr-defined]
    if set(train) & set(test):
        raise UserError("the dataset's split puts some people in both P_train and P_test; regenerate it")
    if not train or not test:
        raise UserError(f"the dataset's split needs people on both sides (train {len(train)}, test {len(test)})")
    if max_people is not None and max_people < len(train) + len(test):
        n_train = max(2, round(max_people * len(train) / (len(train) + len(test))))
        n_test = max(1, max_people - n_train)
        train = sorted(rng.choice(train, size=min(n_train, len(train)), replace=False).tolist())
        test = sorted(rng.choice(test, size=min(n_test, len(test)), replace=False).tolist())
    n_val = int(round(val_fraction * len(train)))
    val = sorted(rng.choice(train, size=n_val, replace=False).tolist()) if n_val else []
    return PeopleSplit(train, val, test)


def split_rows(pids: np.ndarray, people: PeopleSplit) -> Split:
    """Row indices of each side for rows belonging to ``pids`` [N]."""
    pids = np.asarray(pids)
    return Split(
        train=np.flatnonzero(np.isin(pids, people.train)),
        val=np.flatnonzero(np.isin(pids, people.val)),
        test=np.flatnonzero(np.isin(pids, people.test)),
    )


def _value_classes(ds: object, attributes: Sequence[str]) -> dict[str, dict[str, int]]:
    return {a: {v: i for i, v in enumerate(ds.pools.values(a))} for a in attributes}  # type: ignore[attr-defined]


def _value_class(classes: dict[str, dict[str, int]], attr: str, value: str) -> int:
    try:
        return classes[attr][value]
    except KeyError:
        raise UserError(
            f"{attr} value {value!r} is not in the dataset's pool (pools.json); the dataset is inconsistent, "
            "regenerate it"
        ) from None


def entry_read_positions(
    view: TokenView, text: str, spans: dict[str, tuple[int, int]]
) -> tuple[list[int], dict[str, int]]:
    """``(start + ids(text), {attr: read position})`` where the read position is the sequence index of the
    token right before the value's first token (character span ``spans[attr]``)."""
    seq, offsets = view.sequence(text)
    shift = len(view.start_ids)  # text token i = sequence index i + shift
    out: dict[str, int] = {}
    for attr, (start, end) in spans.items():
        i, _ = view.span(offsets, start, end)
        if i + shift < 1:
            raise UserError(f"the {attr} value starts the text and this tokenizer adds no start token, so there is "
                            "no token before it to read; use a tokenizer with a BOS or EOS token")  # fmt: skip
        out[attr] = i + shift - 1  # the token before the value's first token
    return seq, out


def _finish(kind: str, seqs: list[list[int]], pos: list[list[int]], names: list[str], pids: list[int],
            keys: list[tuple[str, str]], labels: list[list[int]], people: PeopleSplit,
            view: TokenView) -> ProbeTaskSet:  # fmt: skip
    positions = np.asarray(pos, dtype=np.int64).reshape(len(seqs), len(names))
    nxt = np.full(positions.shape, -1, dtype=np.int64)
    for r, s in enumerate(seqs):
        for j, p in enumerate(positions[r]):
            if p + 1 < len(s):
                nxt[r, j] = s[p + 1]
    pid_arr = np.asarray(pids, dtype=np.int64)
    return ProbeTaskSet(
        kind=kind, sequences=seqs, positions=positions, position_names=names, pids=pid_arr, next_tokens=nxt,
        label_keys=keys, labels=np.asarray(labels, dtype=np.int64).reshape(len(keys), len(seqs)),
        split=split_rows(pid_arr, people), view=view,
    )  # fmt: skip


def build_p_tasks(
    ds: object,
    people: PeopleSplit,
    positions: Sequence[str],
    attributes: Sequence[str],
    targets: Sequence[str],
    entries_per_person: int | None = None,
    view: TokenView | None = None,
) -> ProbeTaskSet:
    """P-probe rows: one per biography entry of the split's people (each person's first ``entries_per_person``
    entries, all if None); read positions before each attribute in ``positions``; labels for every
    (attribute, target) pair. Tokens from ``view`` (default: the dataset's tokenizer)."""
    if not positions or not attributes or not targets:
        raise UserError("P-probing needs at least one position, one attribute and one target")
    wanted = set(people.train) | set(people.test)
    view = view or TokenView(ds.tokenizer)  # type: ignore[attr-defined]
    classes = _value_classes(ds, attributes)
    need = list(dict.fromkeys([*positions, *attributes]))
    keys = [(a, t) for a in attributes for t in targets]
    seqs: list[list[int]] = []
    pos: list[list[int]] = []
    pids: list[int] = []
    labels: list[list[int]] = [[] for _ in keys]
    for e in ds.entries:  # type: ignore[attr-defined]
        if e.pid not in wanted or (entries_per_person is not None and e.idx >= entries_per_person):
            continue
        try:
            spans = {a: (e.first_span(a).start, e.first_span(a).end) for a in need}
        except KeyError as err:
            raise UserError(
                f"biography entry {e.idx} of person {e.pid} has no character span for an attribute ({err}); "
                "P-probing needs a dataset with attribute spans (regenerate it with `probekit data bios`)"
            ) from None
        seq, read = entry_read_positions(view, e.text, spans)
        if view.unk_id is not None and view.unk_id in seq:
            view.check_encodable([e.text], f"biography entry {e.idx} of person {e.pid}")
        person = ds.person(e.pid)  # type: ignore[attr-defined]
        seqs.append(seq)
        pos.append([read[a] for a in positions])
        pids.append(e.pid)
        for k, (a, t) in enumerate(keys):
            labels[k].append(seq[read[a] + 1] if t == "first_token" else _value_class(classes, a, person.attrs[a]))
    if not seqs:
        raise UserError("no biography entries for the chosen people; is the dataset empty?")
    return _finish("p", seqs, pos, list(positions), pids, keys, labels, people, view)


def build_q_tasks(ds: object, people: PeopleSplit, attributes: Sequence[str], targets: Sequence[str],
                  view: TokenView | None = None) -> ProbeTaskSet:  # fmt: skip
    """Q-probe rows: one per person of the split, ``start + ids(full_name)`` read at the last name token; the
    ``first_token`` target is the value's first token as it follows its QA question (module docstring)."""
    if not attributes or not targets:
        raise UserError("Q-probing needs at least one attribute and one target")
    view = view or TokenView(ds.tokenizer)  # type: ignore[attr-defined]
    classes = _value_classes(ds, attributes)
    keys = [(a, t) for a in attributes for t in targets]
    first_ids: dict[tuple[str, str], int] = {}
    seqs: list[list[int]] = []
    pos: list[list[int]] = []
    pids = sorted(set(people.train) | set(people.test))
    labels: list[list[int]] = [[] for _ in keys]
    for pid in pids:
        person = ds.person(pid)  # type: ignore[attr-defined]
        seq, _ = view.sequence(person.full_name)
        if len(seq) < 1:
            raise UserError(f"person {pid}'s name encodes to no token under this tokenizer")
        if view.unk_id is not None and view.unk_id in seq:
            view.check_encodable([person.full_name], f"the name of person {pid}")
        seqs.append(seq)
        pos.append([len(seq) - 1])
        for k, (a, t) in enumerate(keys):
            v = person.attrs[a]
            if t == "first_token":
                if (a, v) not in first_ids:  # as the value follows its question, leading space included
                    context = f"{QUESTIONS[a].format(name=person.full_name)} {ANSWER_MARK} " if a in QUESTIONS else " "
                    first_ids[(a, v)] = view.first_token(context, v)
                labels[k].append(first_ids[(a, v)])
            else:
                labels[k].append(_value_class(classes, a, v))
    return _finish("q", seqs, pos, [NAME_POSITION], pids, keys, labels, people, view)


def person_uniform(pids: np.ndarray, key: str, seed: int) -> np.ndarray:
    """[N] floats in [0, 1): one fixed draw per (person, ``key``, ``seed``), the same whichever other people are
    present and in whatever order (a keyed hash of the three, so a person keeps their draw across task sets)."""
    out = np.empty(len(pids))
    cache: dict[int, float] = {}
    for i, pid in enumerate(np.asarray(pids).tolist()):
        if pid not in cache:
            h = hashlib.blake2b(f"{seed}/{key}/{pid}".encode(), digest_size=8).digest()
            cache[pid] = int.from_bytes(h, "little") / 2.0**64
        out[i] = cache[pid]
    return out


def control_labels(task: ProbeTaskSet, seed: int) -> np.ndarray:
    """Control-task labels [K, N] (Hewitt & Liang, 2019): for each label set, every person gets a random label
    drawn from the task's class distribution (the labels of the training people, one per person), fixed per
    person and seed; all rows of a person share it. A probe trained on these labels has nothing to read but
    what it can memorise, so ``accuracy - control accuracy`` (selectivity) is what the representation adds."""
    train = task.split.train
    out = np.empty_like(task.labels)
    for k, (attr, target) in enumerate(task.label_keys):
        # one label per training person (their rows agree; the first row speaks for them)
        _, first = np.unique(task.pids[train], return_index=True)
        person_labels = task.labels[k, train[first]]
        classes, counts = np.unique(person_labels, return_counts=True)
        if not len(classes):  # no training people: nothing to draw from (the probe is skipped anyway)
            out[k] = task.labels[k]
            continue
        cdf = np.cumsum(counts) / counts.sum()  # [C]
        u = person_uniform(task.pids, f"{attr}/{target}", seed)  # [N]
        out[k] = classes[np.minimum(np.searchsorted(cdf, u, side="right"), len(classes) - 1)]
    return out
