"""Word-level tokenizer for synthetic biographies, built with Hugging Face ``tokenizers``.

Why word-level: bioS is a closed vocabulary (a few thousand pool words plus template words), so every name
part, city and company word is a single token; a value's first token is a real word, character spans map to
token spans exactly, and a small model spends no capacity assembling sub-words. The pre-tokenizer splits on
whitespace and punctuation, so ``"Princeton, NJ."`` becomes ``Princeton , NJ .``. Words never seen when the
tokenizer was built map to ``<unk>``.

Special tokens (fixed ids, the same for every probekit tokenizer):
``<pad>`` 0, ``<|endoftext|>`` 1 (separates entries; also the start marker of every sequence),
``<unk>`` 2 (also BICO's placeholder: an existing token, no new embedding), ``[MASK]`` 3, ``[START]`` 4 and
``[END]`` 5 (GLM blank infilling).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from probekit.errors import UserError, UserFileNotFoundError

PAD = "<pad>"
EOS = "<|endoftext|>"
UNK = "<unk>"
MASK = "[MASK]"
START = "[START]"
END = "[END]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, EOS, UNK, MASK, START, END)
PAD_ID, EOS_ID, UNK_ID, MASK_ID, START_ID, END_ID = range(6)
BICO_PLACEHOLDER = UNK


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on ``texts`` (every word seen becomes a token)."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


_PRINTABLE_ASCII = re.compile(r"[ -~]*")
_ASCII_WORDS = re.compile(r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]")


class WordCounter:
    """Word counts of a corpus given as pieces with multiplicities, for ``tokenizer_from_counts``.

    ``add(piece, n)`` counts the words of ``piece`` (split by the tokenizer's own pre-tokenizer) ``n`` times. A
    corpus whose texts are concatenations of pieces that meet only at whitespace or punctuation (where the
    pre-tokenizer splits anyway) has the same word counts as its texts; counting each distinct piece once with its
    multiplicity is what makes this fast for templated text.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._split = _pre_tokenizer().pre_tokenize_str

    def words(self, piece: str) -> list[str]:
        """The pre-tokenizer's words of ``piece``; printable ASCII is split by a regex that does the same
        (space separates, each of the 32 ASCII punctuation characters is a word), anything else by the
        pre-tokenizer itself."""
        if _PRINTABLE_ASCII.fullmatch(piece):
            return _ASCII_WORDS.findall(piece)
        return [w for w, _ in self._split(piece)]

    def add(self, piece: str, n: int = 1) -> None:
        counts = self.counts
        for word in self.words(piece):
            counts[word] = counts.get(word, 0) + n

    def add_counts(self, pieces: dict[str, int]) -> None:
        for piece, n in pieces.items():
            self.add(piece, n)


def tokenizer_from_counts(counts: dict[str, int]) -> PreTrainedTokenizerFast:
    """The tokenizer ``build_tokenizer`` trains on a corpus with these word counts, without reading the corpus.

    ``WordLevelTrainer`` numbers the special tokens first, then the words by decreasing count, ties in byte
    order of the word (UTF-8 byte order = code point order = Python's string order); the files this writes are
    byte-identical to the trained tokenizer's (tested).
    """
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for word, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])):
        if word not in vocab:
            vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=UNK,
        mask_token=MASK,
        additional_special_tokens=[START, END],
    )
    for name, idx in zip(SPECIAL_TOKENS, range(6)):
        if fast.convert_tokens_to_ids(name) != idx:
            raise UserError(f"tokenizer has {name!r} at id {fast.convert_tokens_to_ids(name)}, expected {idx}")
    return fast


def save_tokenizer(tok: PreTrainedTokenizerFast, directory: str | Path) -> None:
    """Save as ``tokenizer.json`` (+ HF config files) so ``PreTrainedTokenizerFast.from_pretrained`` loads it."""
    tok.save_pretrained(str(directory))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load from a directory holding ``tokenizer.json`` (or the file itself)."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise UserFileNotFoundError(f"no tokenizer.json at {path}; build one with `probekit data bios`")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # the tokenizers library raises its own Exception type for every parse problem
        first = (str(e).strip().splitlines() or ["unreadable"])[0][:200]
        from probekit.errors import UserError

        raise UserError(f"{file} is not a valid tokenizer file ({first}); rebuild the dataset with "
                        "`probekit data bios` (or copy tokenizer.json from it)") from None  # fmt: skip
    return wrap(tok)


def char_span_to_token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Map a character span ``[start, end)`` to the token span ``[i, j)`` that covers exactly those characters.

    ``offsets`` are the tokenizer's per-token character offsets (``return_offsets_mapping=True``). Raises
    ``ValueError`` if the span does not fall on token boundaries (it always does for bioS values, which are
    whole words and punctuation).
    """
    i = next((k for k, (s, e) in enumerate(offsets) if s == start and e > s), None)
    j = next((k for k, (s, e) in enumerate(offsets) if e == end and e > s), None)
    if i is None or j is None or j < i:
        raise ValueError(f"character span [{start}, {end}) does not align with token boundaries")
    return i, j + 1


def encode_with_offsets(tok: PreTrainedTokenizerFast, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text`` (no special tokens added)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
