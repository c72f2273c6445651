"""What the trainer trains on: sequence sources, window packing, QA items, and the data stream position.

A ``SequenceSource`` hands the trainer, for each epoch, a list of ``TrainItem`` (token ids that start with
``EOS_ID``, plus an optional per-token loss mask). The list is a pure function of the source's seed and the epoch
number, so a resumed run rebuilds exactly the epoch it stopped in and skips to the same item: the data position
in a checkpoint is just ``(epoch, offset)``. Two sources ship:

- ``PackedSource`` (pretraining on biographies, optionally mixed with QA): every epoch the entry sequences
  ``[EOS_ID] + ids(text)`` are shuffled across the whole corpus (seeded by ``(seed, epoch)``; Physics of LMs 3.1: a
  person's entries must not stay adjacent), concatenated into one stream and cut into windows of exactly
  ``seq_len`` tokens (consecutive entries are thus separated by ``EOS_ID``; an entry may continue into the next
  window, as in GPT-style packing). The last, partial window is completed by wrapping around to the start of the
  epoch's stream, so every entry is trained on every epoch. Mixed training adds P_train QA sequences
  ``[EOS_ID] + ids(prompt) + ids(answer)`` to the shuffle until they make up ``qa_mix`` of the epoch's tokens.
- ``ItemSource`` (explicit sequences, e.g. QA finetuning): the items themselves, shuffled each epoch; each is one
  (right-padded) sequence in the batch. ``answer_item`` builds a QA item whose loss covers only the answer.

The trainer consumes a global stream ``epoch 0 items, epoch 1 items, ...`` in batches of ``batch_size`` (a batch
may straddle two epochs); ``DataStream`` tracks the position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from probekit.data.tokenizer import EOS_ID
from probekit.errors import UserError
from probekit.model.batch import ItemLike, ModelBatch, TrainItem, answer_item, as_item
from probekit.objectives.abi import ABIObjective

EVAL_EPOCH = 1_000_003  # the eval set is drawn as if it were this (never trained) epoch: disjoint random stream


@runtime_checkable
class SequenceSource(Protocol):
    """What the trainer needs from a data source (see module docstring)."""

    name: str

    def epoch_items(self, epoch: int) -> Sequence[TrainItem]:
        """The items of ``epoch`` in training order (a list, or any sequence supporting ``len`` and slicing);
        deterministic, and the same count every epoch."""
        ...

    def eval_items(self, n: int) -> list[TrainItem]:
        """A fixed evaluation set of (at most) ``n`` items."""
        ...

    def max_len(self) -> int:
        """The longest item (tokens) this source can produce."""
        ...


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


class Corpus:
    """Token sequences stored flat (one int32 array plus offsets): cheap for tens of millions of tokens."""

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        lens = np.fromiter((len(q) for q in sequences), dtype=np.int64, count=len(sequences))  # [N]
        self._set(np.fromiter((t for q in sequences for t in q), dtype=np.int32, count=int(lens.sum())), lens)

    def _set(self, flat: np.ndarray, lens: np.ndarray) -> None:
        self.flat, self.lens = flat, lens  # [n_tokens] int32, [N] int64
        self.starts = np.cumsum(lens) - lens  # [N]

    @classmethod
    def join(cls, a: Corpus, b: Corpus) -> Corpus:
        """``a``'s sequences then ``b``'s (ids ``len(a) + i``)."""
        out = cls([])
        out._set(np.concatenate((a.flat, b.flat)), np.concatenate((a.lens, b.lens)))
        return out

    def __len__(self) -> int:
        return len(self.lens)

    def __getitem__(self, i: int) -> list[int]:
        return self.flat[self.starts[i] : self.starts[i] + self.lens[i]].tolist()

    @property
    def n_tokens(self) -> int:
        return int(self.lens.sum())

    def subset(self, idx: np.ndarray) -> Corpus:
        return Corpus([self[int(i)] for i in idx])

    def stream(self, order: np.ndarray) -> np.ndarray:
        """The sequences ``order`` concatenated: [sum of their lengths] int32."""
        lens = self.lens[order]
        out_starts = np.cumsum(lens) - lens
        idx = np.repeat(self.starts[order] - out_starts, lens) + np.arange(int(lens.sum()))
        return self.flat[idx]


def pack_stream(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut a token stream into windows [n, seq_len] of exactly ``seq_len`` (the last one wraps to the start)."""
    if len(stream) == 0:
        raise UserError("nothing to pack: the corpus has no tokens")
    n = math.ceil(len(stream) / seq_len)
    return stream[np.arange(n * seq_len) % len(stream)].reshape(n, seq_len)


def pack_windows(seqs: Sequence[Sequence[int]], seq_len: int) -> list[list[int]]:
    """Concatenate ``seqs`` and cut into windows of exactly ``seq_len`` (the last one wraps to the start)."""
    stream = np.fromiter((t for q in seqs for t in q), dtype=np.int64)
    return pack_stream(stream, seq_len).tolist()


class Windows(Sequence[TrainItem]):
    """Packed windows [n, seq_len] as a sequence of ``TrainItem`` made on access (no per-token Python objects)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [TrainItem(row) for row in self.array[i].tolist()]
        return TrainItem(self.array[i].tolist())


class PackedSource:
    """Windows of ``seq_len`` tokens packed from shuffled sequences (see module docstring).

    ``sequences`` are the biography entries (each ``[EOS_ID] + ids(text)``); ``extra`` optional QA sequences mixed
    in so that they make up ``extra_fraction`` of each epoch's tokens (drawn by cycling through shuffled copies).
    ``holdout`` withholds the eval windows' sequences from training (default: the eval set is a fixed re-packing
    of training sequences, i.e. it measures memorisation, which is what bioS training is for).
    """

    def __init__(
        self,
        sequences: Sequence[Sequence[int]],
        seq_len: int,
        seed: int,
        extra: Sequence[Sequence[int]] = (),
        extra_fraction: float = 0.0,
        eval_windows: int = 0,
        holdout: bool = False,
        name: str = "packed",
    ) -> None:
        if seq_len < 2:
            raise UserError(f"seq_len must be >= 2, got {seq_len}")
        if not sequences:
            raise UserError("PackedSource needs at least one sequence")
        if not 0.0 <= extra_fraction < 1.0:
            raise UserError(f"qa_mix must be in [0, 1), got {extra_fraction}")
        if extra_fraction > 0 and not extra:
            raise UserError("qa_mix > 0 but there are no QA sequences to mix in (P_train has no QA items)")
        self.name, self.seq_len, self.seed = name, seq_len, seed
        self.sequences = Corpus(sequences)  # the biographies, stored flat
        self.extra = [list(q) for q in extra]  # the QA sequences that can be mixed in
        self._extra = Corpus(self.extra)
        self._eval = np.zeros((0, seq_len), dtype=np.int32)
        if eval_windows > 0:
            order = _rng(seed, EVAL_EPOCH).permutation(len(self.sequences))
            n_used = int(np.searchsorted(np.cumsum(self.sequences.lens[order]), eval_windows * seq_len)) + 1
            if holdout:
                if n_used >= len(self.sequences):
                    raise UserError(
                        f"eval_holdout: {eval_windows} eval windows of {seq_len} tokens need the whole corpus; "
                        "lower eval_windows or set eval_holdout: false"
                    )
                held = self.sequences.stream(order[:n_used])
                self.sequences = self.sequences.subset(np.sort(order[n_used:]))
            else:
                held = self.sequences.stream(order[: min(n_used, len(order))])
            self._eval = pack_stream(held, seq_len)[:eval_windows]
        if extra_fraction > 0:
            mean_extra = self._extra.n_tokens / len(self.extra)
            ratio = extra_fraction / (1 - extra_fraction)
            self.n_extra = max(1, round(ratio * self.sequences.n_tokens / mean_extra))
            self._joint = Corpus.join(self.sequences, self._extra)
        else:
            self.n_extra, self._joint = 0, self.sequences

    def epoch_items(self, epoch: int) -> Windows:
        rng = _rng(self.seed, epoch)
        ids = np.arange(len(self.sequences))
        if self.n_extra:  # QA sequences are ids >= len(sequences) in the joint corpus
            reps = math.ceil(self.n_extra / len(self.extra))
            picks = np.concatenate([rng.permutation(len(self.extra)) for _ in range(reps)])[: self.n_extra]
            ids = np.concatenate((ids, len(self.sequences) + picks))
        order = ids[rng.permutation(len(ids))]
        return Windows(pack_stream(self._joint.stream(order), self.seq_len))

    def eval_items(self, n: int) -> list[TrainItem]:
        return [TrainItem(w) for w in self._eval[:n].tolist()]

    def max_len(self) -> int:
        return self.seq_len


class ItemSource:
    """Explicit training items (e.g. QA finetuning), reshuffled every epoch; one item = one padded sequence.

    ``eval`` items (optional) form the held-out set; otherwise ``eval_items(n)`` is a fixed sample of the items.
    """

    def __init__(
        self, items: Sequence[ItemLike], seed: int, eval: Sequence[ItemLike] | None = None, name: str = "items"
    ) -> None:
        if not items:
            raise UserError("ItemSource needs at least one item")
        self.items, self.seed, self.name = [as_item(it) for it in items], seed, name
        self._eval = [as_item(it) for it in eval] if eval is not None else None

    def epoch_items(self, epoch: int) -> list[TrainItem]:
        return [self.items[i] for i in _rng(self.seed, epoch).permutation(len(self.items))]

    def eval_items(self, n: int) -> list[TrainItem]:
        if self._eval is not None:
            return self._eval[:n]
        return [self.items[i] for i in _rng(self.seed, EVAL_EPOCH).permutation(len(self.items))[:n]]

    def max_len(self) -> int:
        return max(len(it.ids) for it in self.items)


def qa_answer_items(dataset: Any, pids: Sequence[int] | None = None, loss_on_eos: bool = True) -> list[TrainItem]:
    """QA finetuning items of a ``BioDataset`` for ``pids`` (default: P_train), loss on the answers only."""
    keep = set(dataset.split["train"] if pids is None else pids)
    qa = [q for q in dataset.qa if q.pid in keep]
    if not qa:
        raise UserError("no QA items for the requested people")
    tok = dataset.tokenizer
    prompts = tok([q.prompt for q in qa], add_special_tokens=False)["input_ids"]
    answers = tok([q.answer for q in qa], add_special_tokens=False)["input_ids"]
    return [answer_item(p, a, loss_on_eos) for p, a in zip(prompts, answers)]


def tokenize_texts(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[list[int]]:
    """``[EOS_ID] + ids(text)`` for every text."""
    if not texts:
        return []
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[EOS_ID, *ids] for ids in enc]


def bios_source(dataset: Any, seq_len: int, seed: int, qa_mix: float = 0.0, eval_windows: int = 0,
                eval_holdout: bool = False, tokenizer: Any = None) -> PackedSource:  # fmt: skip
    """The pretraining source of a ``BioDataset``: all biographies, plus P_train QA when ``qa_mix`` > 0, in the
    tokens of ``tokenizer`` (default: the dataset's; a model trained elsewhere brings its own)."""
    tok = tokenizer if tokenizer is not None else dataset.tokenizer
    bios = tokenize_texts(tok, [e.text for e in dataset.entries])
    extra: list[list[int]] = []
    if qa_mix > 0:
        train_pids = set(dataset.split["train"])
        qa = [q for q in dataset.qa if q.pid in train_pids]
        prompts = tokenize_texts(tok, [q.prompt for q in qa])
        answers = tok([q.answer for q in qa], add_special_tokens=False)["input_ids"] if qa else []
        extra = [p + list(a) for p, a in zip(prompts, answers)]
    return PackedSource(bios, seq_len, seed, extra, qa_mix, eval_windows, eval_holdout, name=dataset.name)


class DataStream:
    """Position ``(epoch, offset)`` in the endless stream of a source's epochs; ``take(n)`` returns the next n."""

    def __init__(self, source: SequenceSource, epoch: int = 0, offset: int = 0) -> None:
        self.source, self.epoch, self.offset = source, epoch, offset
        self._items: Sequence[TrainItem] | None = None
        items = self._epoch()
        self.epoch_size = len(items)  # the same every epoch
        if self.epoch_size == 0:
            raise UserError(f"data source {source.name!r} yields no items")
        self.epoch_tokens = items.array.size if isinstance(items, Windows) else sum(len(it.ids) for it in items)

    def seek(self, epoch: int, offset: int) -> None:
        """Move to ``(epoch, offset)`` (a resumed run's data position)."""
        if epoch != self.epoch:
            self._items = None
        self.epoch, self.offset = epoch, offset

    def _epoch(self) -> Sequence[TrainItem]:
        if self._items is None:
            self._items = self.source.epoch_items(self.epoch)
        return self._items

    def take(self, n: int) -> list[TrainItem]:
        out: list[TrainItem] = []
        while len(out) < n:
            items = self._epoch()
            k = min(n - len(out), len(items) - self.offset)
            out += items[self.offset : self.offset + k]
            self.offset += k
            if self.offset >= len(items):
                self.epoch, self.offset, self._items = self.epoch + 1, 0, None
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}


def abi_answer_batch(items: Sequence[TrainItem]) -> ModelBatch:
    """ABI batch in which each item's loss-masked run is the single blank: ``ABIObjective().answer_batch``."""
    return ABIObjective().answer_batch(items, torch.Generator())
