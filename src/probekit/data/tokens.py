"""A dataset's text as a given model's tokens: start tokens, character spans and value tokens under any tokenizer.

A dataset stores text and character spans; the tokens come from the tokenizer of the model that reads them.
``TokenView(tokenizer)`` wraps a tokenizer (probekit's word-level one, or any Hugging Face fast tokenizer:
byte-level BPE as in GPT-2, SentencePiece-style metaspace BPE/Unigram as in Llama, word-level) and answers the
three questions every command that reads a model asks:

- **Which tokens start a sequence?** ``start_ids``: probekit's ``<|endoftext|>`` for a probekit tokenizer (every
  probekit sequence starts with it); for another tokenizer its BOS token (Llama's ``<s>``, GPT-2's
  ``<|endoftext|>``, the document separator it was trained with), else its EOS token, else none. Padding uses
  ``pad_id`` (the tokenizer's pad token, else EOS, else 0; right padding never changes a causal model's states).
- **Which tokens cover a character span?** ``encode`` returns ids with offsets *trimmed* of leading whitespace:
  byte-level BPE attaches the space before a word to the word's token (``" Princeton"`` has offsets that start
  at the space) and metaspace tokenizers mark it with ``▁``; after trimming, a token starts at its first visible
  character, so a value's span starts exactly where its first token starts. ``span`` maps ``[start, end)`` to the
  tokens that overlap it (a value of several subwords is several tokens; a token that runs past the end, such as
  a metaspace ``▁NJ.``, is included).
- **What is a value's first token "as the model writes it"?** ``first_token(context, value)``: the token at the
  value's first character when ``value`` follows ``context`` (a word and a space), so a byte-level tokenizer gives
  ``" March"`` (or ``" Mar"``), not the bare ``"March"`` a value encoded on its own would give.

``check_encodable`` refuses texts the tokenizer cannot encode (unknown tokens), which is where a model and a
dataset genuinely do not fit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from probekit.data.tokenizer import EOS_ID, PAD_ID, SPECIAL_TOKENS
from probekit.errors import UserError


@dataclass(frozen=True)
class TokenizerInfo:
    """What the results tables record about the tokenizer a model was read with."""

    name: str  # the tokenizer's name_or_path, or "probekit" for probekit's own
    kind: str  # "probekit word-level", "byte-level BPE", "metaspace BPE", "metaspace Unigram", "word-level", ...
    vocab_size: int


def _is_probekit(tok: Any) -> bool:
    try:
        return all(tok.convert_tokens_to_ids(t) == i for i, t in enumerate(SPECIAL_TOKENS))
    except (AttributeError, TypeError, ValueError):
        return False


def tokenizer_kind(tok: Any) -> str:
    """A short description of the tokenizer's algorithm and pre-tokenization, read from its ``tokenizer.json``."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return type(tok).__name__
    spec = json.loads(backend.to_str())
    model = (spec.get("model") or {}).get("type", "unknown")
    if _is_probekit(tok) and model == "WordLevel" and "@model" not in json.dumps(spec.get("added_tokens")):
        return "probekit word-level"
    text = json.dumps([spec.get("pre_tokenizer"), spec.get("normalizer"), spec.get("decoder")], ensure_ascii=False)
    style = "byte-level " if "ByteLevel" in text else "metaspace " if "Metaspace" in text or "▁" in text else ""
    names = {"BPE": "BPE", "Unigram": "Unigram", "WordLevel": "word-level", "WordPiece": "WordPiece"}
    moved = " (in probekit ids)" if _is_probekit(tok) else ""  # a model trained elsewhere, for evaluation
    return f"{style}{names.get(model, model)}{moved}"


def _model_spec(tok: Any) -> dict[str, Any]:
    backend = getattr(tok, "backend_tokenizer", None)
    return json.loads(backend.to_str()).get("model") or {} if backend is not None else {}


def _model_type(tok: Any) -> str | None:
    return _model_spec(tok).get("type")


def _model_unk(tok: Any) -> int | None:
    """The id the tokenizer's model emits for unencodable text (its ``unk_token`` / ``unk_id``), if any."""
    spec = _model_spec(tok)
    if spec.get("type") == "Unigram":
        return None if spec.get("unk_id") is None else int(spec["unk_id"])
    name = spec.get("unk_token")
    if not name:
        return None
    tid = tok.convert_tokens_to_ids(name)
    return None if tid is None else int(tid)


def tokenizer_record(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer as the output files record it: name, type and vocabulary size."""
    info = TokenView(tokenizer).info
    return {"name": info.name, "type": info.kind, "vocab_size": info.vocab_size}


def check_tokenizer_fits(tokenizer: Any, texts: Iterable[str], what: str) -> None:
    """Refuse a model whose tokenizer cannot encode ``texts`` (the dataset's text: items, prompts, answers). The
    tokenizer need not be the dataset's: the text is tokenized by the model's own."""
    TokenView(tokenizer).check_encodable(texts, what)


class TokenView:
    """Dataset text as the tokens of one tokenizer (see the module docstring)."""

    def __init__(self, tokenizer: Any, name: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.is_probekit = _is_probekit(tokenizer)
        if self.is_probekit:
            self.start_ids: tuple[int, ...] = (EOS_ID,)
            self.eos_id: int | None = EOS_ID
            self.pad_id = PAD_ID
            self.unk_id: int | None = SPECIAL_TOKENS.index("<unk>")
        else:
            bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
            start = bos if bos is not None else eos
            self.start_ids = () if start is None else (int(start),)
            self.eos_id = None if eos is None else int(eos)
            pad = getattr(tokenizer, "pad_token_id", None)
            self.pad_id = int(pad if pad is not None else eos if eos is not None else 0)
            unk = getattr(tokenizer, "unk_token_id", None)
            self.unk_id = None if unk is None or unk in (bos, eos) else int(unk)  # GPT-2 calls its EOS "unk"
        model_unk = _model_unk(tokenizer)  # what the segmentation model emits for text it cannot encode
        if model_unk is not None:
            self.unk_id = model_unk
        elif not self.is_probekit and _model_type(tokenizer) == "BPE":
            self.unk_id = None  # a BPE without an unknown token (byte-level) encodes every text
        label = name or getattr(tokenizer, "name_or_path", "") or ""
        self.info = TokenizerInfo("probekit" if self.is_probekit and not name else str(label) or "unnamed",
                                  tokenizer_kind(tokenizer), len(tokenizer))  # fmt: skip

    @property
    def key(self) -> str:
        """A fingerprint of the vocabulary and start tokens: two views with the same key tokenize alike."""
        vocab = sorted(self.tokenizer.get_vocab().items())
        h = hashlib.sha256(json.dumps([vocab, list(self.start_ids), self.info.kind]).encode()).hexdigest()
        return h[:16]

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` (no special tokens) and their character offsets, trimmed of leading whitespace."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets: list[tuple[int, int]] = []
        for s, e in enc["offset_mapping"]:
            while s < e and text[s].isspace():
                s += 1
            offsets.append((int(s), int(e)))
        return ids, offsets

    def sequence(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """``start_ids + ids(text)`` and the offsets of the text tokens (token i of the text is at sequence index
        ``i + len(start_ids)``)."""
        ids, offsets = self.encode(text)
        return [*self.start_ids, *ids], offsets

    @staticmethod
    def span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
        """The token span ``[i, j)`` of the tokens that overlap characters ``[start, end)``."""
        hit = [k for k, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
        if not hit:
            raise UserError(f"character span [{start}, {end}) covers no token; the tokenizer dropped that text "
                            "(a normalizer that removes characters?); use a tokenizer that keeps it")  # fmt: skip
        return hit[0], hit[-1] + 1

    def first_token(self, context: str, value: str) -> int:
        """The id of the token at ``value``'s first character when it follows ``context`` (e.g. ``"Answer: "``)."""
        ids, offsets = self.encode(context + value)
        i, _ = self.span(offsets, len(context), len(context) + len(value))
        return ids[i]

    def check_encodable(self, texts: Iterable[str], what: str) -> None:
        """Refuse texts that encode to the unknown token (words the tokenizer has never seen)."""
        if self.unk_id is None:
            return
        for text in texts:
            ids, offsets = self.encode(text)
            if self.unk_id in ids:
                s, e = offsets[ids.index(self.unk_id)]
                raise UserError(
                    f"the model's tokenizer ({self.info.kind}, {self.info.vocab_size} tokens) cannot encode "
                    f"{text[s:e]!r} in {what} (it becomes the unknown token): the model was trained on other text; "
                    "use it with data whose words its tokenizer knows (the data it was trained on)"
                )

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Each token's text, for checks and figure labels."""
        return [self.tokenizer.decode([int(i)]) for i in ids]
