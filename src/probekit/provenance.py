"""Provenance: what made an output, recorded beside it so a table or figure can be traced to its command.

``record(inputs=..., seeds=...)`` is a JSON-able dict: probekit version, git commit of the source checkout (when
probekit runs from one; ``git_dirty`` says whether tracked files differed from it), the command line, seeds,
torch's thread count, torch/python/platform versions, and for every input path its absolute path and SHA-256
(a file's bytes; a directory's regular files, by relative path, hidden temp files and provenance files excluded).
It holds no timestamp, so the same command on the same inputs records the same provenance.

Where it goes:

- run directories (``probekit train``, ``probekit run``/``demo``, ``probekit probe``, ``probekit data bios``):
  ``provenance.json`` = ``{"sessions": [record, ...]}``, one record per invocation that wrote there (a resumed
  run appends its session);
- results tables: ``results.provenance.json`` beside ``results.parquet``/``results.csv`` (the record plus the
  files' checksums) and the same record in the Parquet schema metadata under ``probekit_provenance``;
- figures: ``provenance.json`` in the figures directory (the record, the source tables and every figure file),
  the record in each HTML file (a trailing comment) and in each PNG (a ``tEXt`` chunk keyed
  ``probekit_provenance``), so a PNG copied elsewhere still names its command and table.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
import subprocess
import sys
import zlib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from probekit.io import atomic_write_json

PROVENANCE_FILE = "provenance.json"
PNG_KEY = "probekit_provenance"
_COMMAND: list[str] | None = None
_PACKAGE_DIR = Path(__file__).resolve().parent


def set_command_line(argv: list[str] | None) -> None:
    """Record the command line of this process (the CLI calls it; library use, or None, falls back to
    ``sys.argv``)."""
    global _COMMAND
    _COMMAND = None if argv is None else [str(a) for a in argv]


def command_line() -> list[str]:
    return list(_COMMAND) if _COMMAND is not None else [str(a) for a in sys.argv]


@lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout probekit's source lives in; ``(None, None)`` when not in one."""
    root = _PACKAGE_DIR
    for parent in (root, *root.parents):
        if (parent / ".git").exists():
            break
    else:
        return None, None
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(["git", "-C", str(parent), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, env=env)  # fmt: skip
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(parent), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=20, env=env)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return head.stdout.strip() or None, dirty


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_DIR_CACHE: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def _skip(name: str) -> bool:
    return name.startswith(".") or name == PROVENANCE_FILE or name.endswith(".provenance.json")


def sha256_dir(path: str | Path) -> str:
    """One digest over a directory's regular files (relative path + content), hidden files and provenance
    files excluded; cached per process by (path, sizes, mtimes)."""
    root = Path(path)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _skip(name):
                continue
            p = Path(dirpath) / name
            if p.is_file():
                st = p.stat()
                files.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    key = (str(root.resolve()), tuple(files))
    if key not in _DIR_CACHE:
        h = hashlib.sha256()
        for rel, _, _ in files:
            h.update(rel.encode("utf-8") + b"\0" + sha256_file(root / rel).encode("ascii") + b"\n")
        _DIR_CACHE[key] = h.hexdigest()
    return _DIR_CACHE[key]


def describe_input(path: str | Path) -> dict[str, Any]:
    """``{"path": absolute path, "sha256": digest}`` of a file or directory (``"missing": true`` if absent)."""
    p = Path(path).expanduser()
    info: dict[str, Any] = {"path": str(p.resolve())}
    if p.is_file():
        info["sha256"] = sha256_file(p)
    elif p.is_dir():
        info["sha256"] = sha256_dir(p)
    else:
        info["missing"] = True
    return info


def record(
    inputs: Mapping[str, str | Path] | None = None, seeds: Mapping[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The provenance record of an output made now from ``inputs`` (name -> path) with ``seeds``.

    torch is not imported for it: where this process has not loaded torch (data generation), its installed
    version is read from the package metadata and the thread count is null (torch did not run).
    """
    from probekit import __version__

    torch = sys.modules.get("torch")
    if torch is not None:
        torch_version, threads = str(torch.__version__), int(torch.get_num_threads())
    else:
        from importlib import metadata

        try:
            torch_version, threads = metadata.version("torch"), None
        except metadata.PackageNotFoundError:
            torch_version, threads = None, None

    commit, dirty = git_state()
    rec: dict[str, Any] = {
        "probekit_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "command": command_line(),
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch_version,
        "torch_threads": threads,
        "seeds": dict(seeds or {}),
        "inputs": {k: describe_input(v) for k, v in (inputs or {}).items()},
    }
    rec.update(extra)
    return json.loads(json.dumps(rec, default=str))


def append_session(directory: str | Path, rec: dict[str, Any]) -> Path:
    """Add ``rec`` to ``<directory>/provenance.json`` (one record per session that wrote there)."""
    path = Path(directory) / PROVENANCE_FILE
    sessions: list[dict[str, Any]] = []
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            sessions = list(old.get("sessions", [])) if isinstance(old, dict) else []
        except (OSError, ValueError):
            sessions = []
    sessions.append(rec)
    atomic_write_json(path, {"sessions": sessions})
    return path


def read_sessions(directory: str | Path) -> list[dict[str, Any]]:
    path = Path(directory) / PROVENANCE_FILE
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return list(data.get("sessions", [])) if isinstance(data, dict) else []


def compact(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a record embedded in figures: who made it, from what (checksums, not the whole record)."""
    keep = ("probekit_version", "git_commit", "git_dirty", "command", "torch", "torch_threads", "seeds")
    out = {k: rec.get(k) for k in keep}
    out["inputs"] = {k: v.get("sha256") for k, v in dict(rec.get("inputs", {})).items()}
    if "tables" in rec:
        out["tables"] = rec["tables"]
    return out


# ------------------------------------------------------------------------------------------------ PNG text chunks


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_text(png: bytes, key: str, text: str) -> bytes:
    """``png`` with a ``tEXt`` chunk ``key``=``text`` inserted after the header chunk (Latin-1; other characters
    are escaped by JSON callers)."""
    sig = b"\x89PNG\r\n\x1a\n"
    if not png.startswith(sig) or png[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    ihdr_end = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4
    data = key.encode("latin-1") + b"\0" + text.encode("latin-1", errors="backslashreplace")
    return png[:ihdr_end] + _chunk(b"tEXt", data) + png[ihdr_end:]


def png_text(png: bytes) -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG as a dict."""
    out: dict[str, str] = {}
    pos = 8
    while pos + 8 <= len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        if kind == b"tEXt":
            key, _, value = png[pos + 8 : pos + 8 + n].partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        if kind == b"IEND":
            break
        pos += 12 + n
    return out


def write_table_sidecar(directory: str | Path, rec: dict[str, Any], files: list[Path],
                        stem: str = "results") -> Path:  # fmt: skip
    """``<stem>.provenance.json``: the record plus the SHA-256 of every table file it describes."""
    out = dict(rec)
    out["files"] = {Path(f).name: sha256_file(f) for f in files}
    path = Path(directory) / f"{stem}.provenance.json"
    atomic_write_json(path, out)
    return path


def to_parquet(df: Any, path: str | Path, rec: dict[str, Any]) -> None:
    """Write DataFrame ``df`` as Parquet with ``rec`` in the schema metadata (key ``probekit_provenance``)."""
    import pyarrow as pa
    import pyarrow.parquet as papq

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"probekit_provenance": json.dumps(rec, sort_keys=True).encode()}
    papq.write_table(table.replace_schema_metadata(meta), path)


__all__ = ["PNG_KEY", "PROVENANCE_FILE", "append_session", "command_line", "compact", "describe_input", "git_state",
           "png_text", "png_with_text", "read_sessions", "record", "set_command_line", "sha256_dir", "sha256_file",
           "to_parquet", "write_table_sidecar"]  # fmt: skip
