"""The user-error type and the rule the command line uses to tell user errors from bugs.

``UserError`` is a problem the user fixes (bad input, a missing file, a refused output directory); its message
is one line that names the problem and the fix. It subclasses ``ValueError``, so library callers that catch
``ValueError`` keep working; ``UserFileNotFoundError`` and ``UserFileExistsError`` are also a
``FileNotFoundError``/``FileExistsError`` for callers that catch those.

The command line prints a user error as ``probekit: error: <message>`` and exits with 2; everything else is a
bug and keeps its traceback. ``is_user_error`` decides: a ``UserError`` always is one, and so is an ``OSError``
about a named path that is missing, forbidden, full or read-only (wherever it surfaced). Nothing else is: a plain
``ValueError``, ``KeyError``, ``TypeError``, ... is a bug (or a case probekit failed to check), whether probekit
or a library raised it, so probekit's checks raise ``UserError`` and keep ``ValueError`` for broken invariants.
"""

from __future__ import annotations

import errno
import os

_ENVIRONMENT_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR,
                                  errno.EISDIR, errno.ENOSPC, errno.EROFS, errno.EDQUOT})  # fmt: skip


class UserError(ValueError):
    """A problem with the user's input or environment; the message says what is wrong and how to fix it."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or directory the user named (or must create first) does not exist."""


class UserFileExistsError(UserError, FileExistsError):
    """An output the user named already exists (and probekit will not replace it unasked)."""


_WRITE_ERRNOS = {errno.ENOSPC: "the disk is full: free space there or choose a path on another filesystem",
                 errno.EDQUOT: "the disk quota is exhausted: free space or choose a path on another filesystem",
                 errno.EROFS: "the filesystem is read-only: choose a writable path",
                 errno.EACCES: "permission denied: check the path's permissions or choose another path",
                 errno.EPERM: "not permitted: check the path's permissions or choose another path"}  # fmt: skip
_DISK_FULL_TEXT = ("No space left on device", "enforce fail at inline_container", "file write failed")


def environment_errno(e: BaseException) -> int | None:
    """The errno of a failure of the environment (disk full, read-only, forbidden) behind ``e``, wherever in its
    chain it surfaced (torch reports a full disk as a ``RuntimeError``); None for anything else."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _WRITE_ERRNOS:
            return cur.errno
        if isinstance(cur, RuntimeError) and any(t in str(cur) for t in _DISK_FULL_TEXT):
            return errno.ENOSPC
        cur = cur.__cause__ or cur.__context__
    return None


def is_user_error(e: BaseException) -> bool:
    """True for errors the command line shows as one line (see the module docstring)."""
    if isinstance(e, UserError):
        return True
    if environment_errno(e) is not None:  # disk full, read-only, forbidden: with or without a path
        return True
    # a path that is missing or in the way: the user's to fix wherever it surfaced
    return isinstance(e, OSError) and e.filename is not None and e.errno in _ENVIRONMENT_ERRNOS


def one_line(e: BaseException, where: str | None = None) -> str:
    """The error message on one line (a multi-line message has its lines joined with ' / '). A failure of the
    environment names its path (else ``where``, the output being written) and the fix."""
    code = None if isinstance(e, UserError) else environment_errno(e)
    if code is not None:
        path = next((x.filename for x in _chain(e) if isinstance(x, OSError) and x.filename), None) or where
        return f"{os.strerror(code)}{f': {path}' if path else ''}; {_WRITE_ERRNOS[code]} (nothing half-written is kept)"
    text = str(e)
    if isinstance(e, OSError) and e.filename is not None and not text.strip():
        text = f"{e.strerror}: {e.filename}"
    parts = [p.strip() for p in text.strip().splitlines() if p.strip()]
    return " / ".join(parts) if parts else type(e).__name__


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


MAX_THREADS = 1024
"""The most CPU threads a thread flag accepts (torch crashes on absurd counts)."""


def check_threads(value: int | None, flag: str = "--threads", allow_zero: bool = False) -> None:
    """Refuse a thread count torch cannot use (``allow_zero``: 0 means torch's default)."""
    if value is None:
        return
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_THREADS:
        extra = " (0: torch's default)" if allow_zero else ""
        raise UserError(f"{flag} must be an integer from {low} to {MAX_THREADS}{extra}, got {value!r}")


def check_device(device: str | None, flag: str = "--device") -> None:
    """Refuse a torch device this machine's torch cannot use, before any model is loaded."""
    if device is None or device == "":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"{flag} {device!r} is not a torch device; use cpu, cuda, cuda:0, mps, ...") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no usable CUDA GPU"
            raise UserError(f"{flag} {device}: this machine has {build}; use --device cpu (or run on a GPU machine)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) are visible; "
                            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")  # fmt: skip
        return
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"{flag} {device}: MPS is not available on this machine; use --device cpu")
        return
    raise UserError(f"{flag} {device}: probekit runs on cpu, cuda or mps devices; use --device cpu")


def available_memory_bytes() -> int | None:
    """Memory this process can still allocate (Linux MemAvailable; None where unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            return None
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), to print beside every benchmark figure."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_bf16_units(cpuinfo: str | None = None) -> list[str]:
    """The bfloat16 matrix units of this CPU: ``amx_bf16`` and/or ``avx512_bf16`` from ``/proc/cpuinfo``'s flags
    (``cpuinfo``: that file's text, for tests); empty where it has none or the file cannot be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return [u for u in ("amx_bf16", "avx512_bf16") if u in flags]


def check_precision(precision: str | None, flag: str = "--precision") -> None:
    """Refuse a mixed precision that cannot take effect here (accelerate would silently train in float32 while
    the run's config and provenance record the setting): fp16 needs a CUDA GPU, bf16 a GPU that supports it or a
    CPU with bfloat16 matrix units (AMX-BF16 or AVX-512-BF16; elsewhere bfloat16 is emulated, slower than float32,
    and the run would not be what its setting says)."""
    if precision in (None, "", "no"):
        return
    import torch

    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise UserError(f"{flag} fp16 cannot take effect on this machine (no CUDA GPU: training would run in float32 "
                        "but be recorded as fp16); use --precision no (or bf16 on a CPU)")  # fmt: skip
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError(f"{flag} bf16: this GPU does not support bfloat16; use --precision fp16 or no")
    if precision == "bf16" and not cuda and not cpu_bf16_units():
        raise UserError(f"{flag} bf16: this CPU has no bfloat16 matrix units (neither AMX-BF16 nor AVX-512-BF16), so "
                        "bfloat16 would be emulated and slower than float32; use --precision no here")  # fmt: skip


MAX_SEED = 2**63 - 1  # torch, numpy and Python's random all take seeds up to this


def check_seed(seed: object, name: str = "seed") -> None:
    """Refuse a seed that is not a whole number in [0, 2**63 - 1] (torch's generators reject larger ones mid-run)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{name} must be a whole number from 0 to 2**63 - 1, got {seed!r}; pick a smaller seed")
