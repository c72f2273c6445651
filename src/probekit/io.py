"""Atomic, crash-safe file output shared by every stage.

Every artefact probekit writes goes through these helpers: content is written to a temporary file in the
destination directory and renamed into place, so an interrupted run never leaves a half-written file that
looks complete. Directories are built under a temporary name and renamed at the end.

Temporary names carry the writer's process id (``.<name>.pid<PID>.<random><suffix>``). A process killed
mid-write (SIGKILL, power loss) leaves its temporary file or directory behind; the next atomic write into the
same directory removes every such leftover whose process is gone (``clean_stale_temps``), so a re-run cleans up
after the run it replaces, without touching the temporary files of writers still alive.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from probekit.errors import UserError, UserFileExistsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_TEMP_NAME = re.compile(r"^\..+\.pid(?P<pid>\d+)\.[A-Za-z0-9_]+(\.[^.]*)?$")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.pid{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files/directories left in ``directory`` by atomic writers that no longer run.

    Only names of the form this module makes (``.<name>.pid<PID>.<random><suffix>``) whose process is gone are
    removed; returns what was removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP_NAME.match(e.name)
        if m is None or _alive(int(m.group("pid"))):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            pass
    return removed


def _publish(tmp: str | os.PathLike[str], path: Path) -> None:
    """Give the temp file ordinary permissions (mkstemp makes it 0600), then rename it onto ``path``."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds.

    For writers that insist on a filename (safetensors, pandas, plotly): ``with atomic_path(p) as tmp:
    df.to_parquet(tmp)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file; a malformed line raises ``ValueError`` naming the file and line number."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON line ({e.msg}); fix or remove that line") from e
    return rows


def prepare_output_dir(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an existing non-empty directory unless ``overwrite``; return the path (not yet created).

    Call before any work starts, so a refused run costs nothing.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise UserFileExistsError(f"output directory {path} exists and is not empty; pass --overwrite to replace it")
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temp name and move it to ``path`` when the block succeeds."""
    path = prepare_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
            shutil.rmtree(path.with_name(f".{path.name}.old"), ignore_errors=True)  # left by a kill mid-swap
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
