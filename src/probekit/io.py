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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from probekit.errors import UserError, UserFileExistsError, UserFileNotFoundError, one_line


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
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line); the file is "
                    "corrupt or in another encoding: re-create it or save it as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON line ({e.msg}); fix or remove that line") from e
    return rows


def prepare_output_dir(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an existing non-empty directory unless ``overwrite``; return the path (not yet created).

    ``overwrite`` replaces only probekit's own output: a non-empty directory without one of probekit's marker
    files (``PROBEKIT_MARKERS``: its lock, provenance, manifest, ...) is refused either way, so a user's files are
    never deleted. Call before any work starts, so a refused run costs nothing.
    """
    path = Path(path)
    if not os.fspath(path).strip():
        raise UserError("the output path is empty; give a directory")
    if path.exists() and not path.is_dir():
        raise UserFileExistsError(f"output {path} is a file; give a directory (new, empty, or probekit's own output)")
    entries = _foreign(path) if path.is_dir() else []
    if entries:
        ours = is_probekit_output(path) or all((path / e).is_dir() and is_probekit_output(path / e) for e in entries)
        if not ours:  # (a directory holding only probekit outputs, e.g. an evaluation's train/, is probekit's)
            shown = ", ".join(_foreign(path)[:3])
            raise UserFileExistsError(f"output directory {path} is not empty and holds no probekit output ({shown}"
                                      f"{', ...' if len(_foreign(path)) > 3 else ''}); choose a new or empty "
                                      "directory (--overwrite replaces only what probekit wrote)")  # fmt: skip
        if not overwrite:
            raise UserFileExistsError(f"output directory {path} exists and is not empty; pass --overwrite to "
                                      "replace probekit's output there")  # fmt: skip
    return path


def _written_names(directory: Path) -> set[str] | None:
    """The top-level names a directory's ``OUTPUT_MARKER`` says probekit wrote (None: no readable marker)."""
    try:
        names = json.loads((directory / OUTPUT_MARKER).read_text(encoding="utf-8")).get("entries")
    except (OSError, ValueError, AttributeError):
        return None
    return {str(n) for n in names} if isinstance(names, list) else None


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
        written = sorted(e.name for e in os.scandir(tmp) if e.name != OUTPUT_MARKER)
        atomic_write_json(tmp / OUTPUT_MARKER, {"written_by": "probekit", "entries": written})
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            ours = _written_names(path)  # what the output being replaced wrote (None: unknown, keep the rest)
            for e in os.scandir(path):  # --overwrite replaces probekit's files only: the user's move along
                if e.name == LOCK_FILE:
                    os.link(e.path, tmp / LOCK_FILE)  # the same inode: a writer holding it keeps holding it
                elif (e.name not in written and e.name != OUTPUT_MARKER and (ours is None or e.name not in ours)
                      and not _TEMP_NAME.match(e.name)):  # fmt: skip
                    os.replace(e.path, tmp / e.name)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
            shutil.rmtree(path.with_name(f".{path.name}.old"), ignore_errors=True)  # left by a kill mid-swap
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------ inputs and outputs

LOCK_FILE = ".probekit.lock"
"""The advisory lock file a writer holds in its output directory (``output_lock``); kept after a successful run
as the mark that probekit wrote there."""
OUTPUT_MARKER = ".probekit-output.json"
"""Written by ``atomic_dir`` into every directory it builds: the names it wrote (``--overwrite`` replaces those,
nothing else)."""
PROBEKIT_MARKERS = (LOCK_FILE, OUTPUT_MARKER, "provenance.json", "manifest.json", "train_config.json",
                    "experiment.json", "run.json", "summary.json")  # fmt: skip
"""Files whose presence says a directory is probekit's output (so ``--overwrite`` may replace what it wrote)."""


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path)))))


def check_output(
    out: str | os.PathLike[str] | None,
    inputs: Mapping[str, str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None],
    flag: str = "--out",
) -> Path:
    """Refuse an output path that is empty, equal to, inside, or containing any input; return it.

    ``inputs`` maps a flag (``"--data"``) to the path(s) the command reads (None: not given). Symlinks and
    relative spellings are resolved first, so ``--out ./ds`` and ``--data ds`` are the same path. Call before
    any work: probekit never writes into, replaces or deletes what it reads.
    """
    if out is None or not os.fspath(out).strip():
        raise UserError(f"{flag} is empty; give the output directory's path")
    o = _resolved(out)
    for name, given in inputs.items():
        if given is None:
            continue
        paths = [given] if isinstance(given, (str, os.PathLike)) else list(given)
        for p in paths:
            if p is None or not os.fspath(p).strip():
                continue
            i = _resolved(p)
            if i.parent.name == "checkpoints" and i.name.startswith("step_"):
                i = i.parent.parent  # a run's checkpoint: the whole run directory is the input
            if o == i:
                how = "is"
            elif i in o.parents:
                how = "is inside"
            elif o in i.parents:
                how = "contains"
            else:
                continue
            raise UserError(f"{flag} {out} {how} the input {name} {p}; probekit never writes into what it reads: "
                            f"choose a {flag} outside {p}")  # fmt: skip
    return Path(out)


def _foreign(path: Path) -> list[str]:
    """Top-level entries of a directory that probekit's own bookkeeping does not account for (lock, marker and
    temporary names excluded)."""
    return sorted(e.name for e in os.scandir(path) if e.name not in (LOCK_FILE,) and not _TEMP_NAME.match(e.name)
                  and e.name != f".{path.name}.old")  # fmt: skip


_FRESH_LOCKS: set[Path] = set()  # lock files this process created (they mark nothing yet)


def is_probekit_output(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory holding one of probekit's marker files (``PROBEKIT_MARKERS``; a lock file
    this process has just created does not count)."""
    p = Path(path)
    if not p.is_dir():
        return False
    fresh = _resolved(p / LOCK_FILE) in _FRESH_LOCKS
    return any((p / m).exists() for m in PROBEKIT_MARKERS if not (m == LOCK_FILE and fresh))


class OutputLockedError(UserError):
    """Another live process holds the output directory's lock."""


def _lock_owner(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        cmd = " ".join(info.get("command") or []) or "unknown command"
        return f"pid {info.get('pid')} on {info.get('host')}, `{cmd[:200]}`"
    except (OSError, ValueError, AttributeError):
        return "a process that has not recorded itself yet"


def _single_rank() -> bool:
    """False in every process of a distributed launch but rank 0 (only one of them writes, and locks)."""
    return os.environ.get("RANK", "0") in ("", "0")


@contextmanager
def output_lock(path: str | os.PathLike[str], flag: str = "--out") -> Iterator[Path]:
    """Hold the advisory lock ``<path>/.probekit.lock`` (``fcntl.flock``) for the block: one writer per directory.

    The directory is created if needed. A second writer is refused at once with a one-line ``UserError`` naming
    the owner (pid, host, command line, recorded in the lock file). The kernel releases the lock when its process
    dies, so a lock left by a killed run is taken over. After a successful block the lock file stays (it marks the
    directory as probekit's); after a failed one, a lock file (and a directory) this call created is removed.
    In a distributed launch only rank 0 locks.
    """
    import fcntl
    import socket

    path = Path(path)
    if not _single_rank():
        yield path
        return
    created_dir = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{flag} {path} is a file; give a directory") from None
    lock = path / LOCK_FILE
    while True:
        existed = lock.exists()
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLockedError(f"{flag} {path} is being written by another probekit process "
                                    f"({_lock_owner(lock)}); wait for it to finish, or choose another "
                                    f"{flag}") from None  # fmt: skip
        try:  # the file we locked must still be the one at the path (a finishing writer may have removed it)
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    ok = False
    key = _resolved(lock)
    if not existed:
        _FRESH_LOCKS.add(key)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        _test_pause()
        yield path
        ok = True
    finally:
        _FRESH_LOCKS.discard(key)
        if not ok and not existed:
            try:
                lock.unlink()
                if created_dir:
                    path.rmdir()  # only if empty
            except OSError:
                pass
        os.close(fd)


def _command_line() -> list[str]:
    """The command line provenance records (``probekit.provenance.set_command_line``), else ``sys.argv``; read
    without importing provenance, which imports this module."""
    import sys

    prov = sys.modules.get("probekit.provenance")
    return list(prov.command_line()) if prov is not None else list(sys.argv)


def _test_pause() -> None:
    """Test hook: with ``PROBEKIT_TEST_LOCK_PAUSE=FILE``, a writer that took its lock creates ``FILE.held`` and
    waits (up to 120 s) until ``FILE`` exists, so a test can start a second writer while the first holds the lock."""
    import time

    gate = os.environ.get("PROBEKIT_TEST_LOCK_PAUSE")
    if not gate:
        return
    Path(gate + ".held").write_text(str(os.getpid()), encoding="utf-8")
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)


def read_table(path: str | os.PathLike[str], what: str = "table") -> Any:
    """A Parquet (``.parquet``) or CSV (any other suffix) file as a pandas DataFrame; an empty, truncated, non-UTF-8
    or otherwise unreadable file is a one-line ``UserError`` naming it (never a library traceback)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise UserFileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give the table file (or a directory holding results.parquet)")
    kind = "Parquet" if path.suffix == ".parquet" else "CSV"
    fix = "re-create it with the command that wrote it"
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path} is empty (0 bytes); {fix}")
    try:
        df = pd.read_parquet(path) if kind == "Parquet" else pd.read_csv(path)
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8 or {fix}") from None
    except OSError as e:
        if e.filename is not None and e.errno is not None:
            raise
        raise UserError(f"{what} {path} is not a readable {kind} file ({one_line(e)[:160]}); it is truncated or "
                        f"corrupt: {fix}") from None  # fmt: skip
    except Exception as e:  # pyarrow's ArrowInvalid, pandas' EmptyDataError / ParserError, ...
        raise UserError(f"{what} {path} is not a readable {kind} file ({type(e).__name__}: "
                        f"{one_line(e)[:160]}); it is truncated or corrupt: {fix}") from None  # fmt: skip
    if len(df.columns) == 0:
        raise UserError(f"{what} {path} holds no columns; {fix}")
    return df
