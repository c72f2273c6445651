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


def is_user_error(e: BaseException) -> bool:
    """True for errors the command line shows as one line (see the module docstring)."""
    if isinstance(e, UserError):
        return True
    # a path that is missing, forbidden, full or read-only: the user's to fix wherever it surfaced
    return isinstance(e, OSError) and e.filename is not None and e.errno in _ENVIRONMENT_ERRNOS


def one_line(e: BaseException) -> str:
    """The error message on one line (a multi-line message has its lines joined with ' / ')."""
    text = str(e)
    if isinstance(e, OSError) and e.filename is not None and not text.strip():
        text = f"{e.strerror}: {e.filename}"
    parts = [p.strip() for p in text.strip().splitlines() if p.strip()]
    return " / ".join(parts) if parts else type(e).__name__


def check_threads(value: int | None, flag: str = "--threads", allow_zero: bool = False) -> None:
    """Refuse a thread count torch cannot use (``allow_zero``: 0 means torch's default)."""
    if value is None:
        return
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        extra = " (0: torch's default)" if allow_zero else ""
        raise UserError(f"{flag} must be an integer >= {low}{extra}, got {value!r}")


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
