"""Checks that a dataset directory read from disk is whole and self-consistent (one-line errors, no KeyError).

``load_dataset`` calls these after reading the files: every row must have its fields, every person referenced by
a biography, QA item or the split must exist in ``people.jsonl``, the split must be two lists of people, and
``pools.json`` must list every attribute's values. A dataset edited or truncated by hand fails here with the
file and the fix, instead of deep inside probing or training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from probekit.errors import UserError

T = TypeVar("T")
_FIX = "regenerate the dataset with `probekit data bios`"


def read_json(path: Path) -> Any:
    """A JSON file of a dataset, or a ``UserError`` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; {_FIX}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); {_FIX}") from None


def rows_of(path: Path, rows: Iterable[dict[str, Any]], make: Callable[[dict[str, Any]], T]) -> list[T]:
    """``make(row)`` for every row; a missing field or a value of the wrong shape names the file and row."""
    out = []
    for i, r in enumerate(rows, start=1):
        try:
            if not isinstance(r, dict):
                raise TypeError("not a JSON object")
            out.append(make(r))
        except KeyError as e:
            raise UserError(f"{path}: row {i} lacks the field {e.args[0]!r}; {_FIX}") from None
        except (TypeError, ValueError) as e:
            raise UserError(f"{path}: row {i} is malformed ({e}); {_FIX}") from None
    return out


def check_dataset(root: Path, people: Sequence[Any], entries: Sequence[Any], qa: Sequence[Any],
                  split: Any, pools: Any) -> None:  # fmt: skip
    """Cross-references between the files of dataset ``root`` (see the module docstring)."""
    from probekit.data.pools import ATTRIBUTES

    pids = {p.pid for p in people}
    if len(pids) != len(people):
        raise UserError(f"{root / 'people.jsonl'} lists some person id twice; {_FIX}")
    for p in people:
        missing = [a for a in ATTRIBUTES if not isinstance(p.attrs, Mapping) or a not in p.attrs]
        if missing:
            raise UserError(f"{root / 'people.jsonl'}: person {p.pid} lacks attribute(s) {missing}; {_FIX}")
    for what, items in (("bios.jsonl", entries), ("qa.jsonl", qa)):
        for it in items:
            if it.pid not in pids:
                raise UserError(f"{root / what} refers to person {it.pid!r}, who is missing from "
                                f"{root / 'people.jsonl'}; {_FIX}")  # fmt: skip
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "test")):
        raise UserError(f"{root / 'split.json'} must hold 'train' and 'test' lists of person ids; {_FIX}")
    for k in ("train", "test"):
        unknown = [pid for pid in split[k] if pid not in pids]
        if unknown:
            raise UserError(f"{root / 'split.json'}: {k} person {unknown[0]!r} is missing from "
                            f"{root / 'people.jsonl'}; {_FIX}")  # fmt: skip
    need = [a for a in ATTRIBUTES if a != "birth_date"]
    if not isinstance(pools, dict) or any(not isinstance(pools.get(a), list) for a in need):
        raise UserError(f"{root / 'pools.json'} must list the values of {need}; {_FIX}")


# Peak memory of build_dataset, measured (ru_maxrss, N = 2,000 and 10,000): about 16 KB per person with one entry
# (``single``) and 44 KB with five (``multi5+permute``), i.e. ~9 KB per person plus ~7 KB per entry; the estimate
# below rounds both up.
BYTES_PER_PERSON = 10_000
BYTES_PER_ENTRY = 8_000


def check_memory(n_people: int, entries_per_person: int, available: int | None = None) -> None:
    """Refuse a dataset whose generation would not fit in the memory available now (instead of running out)."""
    from probekit.errors import available_memory_bytes

    avail = available_memory_bytes() if available is None else available
    need = n_people * (BYTES_PER_PERSON + BYTES_PER_ENTRY * entries_per_person)
    if avail is not None and need > avail:
        fit = max(1, avail // (BYTES_PER_PERSON + BYTES_PER_ENTRY * entries_per_person))
        raise UserError(f"N={n_people:,} people with {entries_per_person} entries each needs about "
                        f"{need / 2**30:.1f} GiB of memory to generate, but {avail / 2**30:.1f} GiB is available; "
                        f"lower N to at most {fit:,} (or free memory)")  # fmt: skip
