"""PNG export with a time bound: kaleido runs in a child process that is killed, browser included, at a deadline.

Kaleido drives a headless Chromium; when the browser never answers, its export blocks forever (a long-standing
upstream problem). ``export_pngs`` therefore writes all figures of one call in a single child process (one
browser for all of them, which is also faster than one browser per figure) and waits at most ``timeout``
seconds (default: ``PROBEKIT_PNG_TIMEOUT`` from the environment, else 60 s + 5 s per figure). On timeout the
child and every process it started (the browser starts in its own session) are killed, and the caller gets an
error message instead of a hang; figures' HTML and CSV are written before PNG export starts, so they are never
lost. Run as ``python -m probekit.reporting.png_export JOB.json`` by ``export_pngs`` only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIMEOUT_ENV = "PROBEKIT_PNG_TIMEOUT"


@dataclass
class PngJob:
    fig_json: str  # plotly figure as JSON (fig.to_json())
    path: Path  # where the child writes the PNG
    width: int
    height: int
    scale: float = 1.0


def default_timeout(n_figures: int) -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if value > 0:
            return value
        from probekit.errors import UserError

        raise UserError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds, e.g. {TIMEOUT_ENV}=120")
    return 60.0 + 5.0 * n_figures


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return kids
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        if len(fields) > 1:
            kids.setdefault(int(fields[1]), []).append(int(e))
    return kids


def _descendants(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL ``proc``, its process group and every descendant (and their process groups)."""
    victims = _descendants(proc.pid)
    groups = set()
    for pid in [proc.pid, *victims]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            groups.add(os.getpgid(pid))
    groups.discard(os.getpgid(0))  # never our own group
    for pid in [proc.pid, *victims]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def export_pngs(jobs: Sequence[PngJob], timeout: float | None = None) -> str | None:
    """Write every job's PNG in one child process within ``timeout`` seconds; None on success, else why not.

    Every file is checked to exist and be non-empty; on any failure no PNG is trusted (the caller discards them).
    """
    if not jobs:
        return None
    limit = default_timeout(len(jobs)) if timeout is None else timeout
    with tempfile.TemporaryDirectory(prefix="probekit-png-") as work:
        job_file = Path(work) / "job.json"
        job_file.write_text(json.dumps([{"fig": j.fig_json, "path": str(j.path), "width": j.width,
                                         "height": j.height, "scale": j.scale} for j in jobs]),
                            encoding="utf-8")  # fmt: skip
        log_file = Path(work) / "stderr.txt"
        with open(log_file, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "probekit.reporting.png_export", str(job_file)],
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=True)  # fmt: skip
            t0 = time.monotonic()
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                kill_tree(proc)
                return (f"PNG export did not finish within {limit:.0f} s (the browser kaleido drives did not "
                        f"answer) and was stopped; set {TIMEOUT_ENV}=SECONDS to allow longer, or pass "
                        "--no-png")  # fmt: skip
            except BaseException:  # interrupted (Ctrl-C): leave no browser behind
                kill_tree(proc)
                raise
        if rc != 0:
            lines = [ln for ln in log_file.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else f"exit status {rc}"
            return f"PNG export failed after {time.monotonic() - t0:.0f} s ({last[:300]})"
    for j in jobs:
        if not j.path.exists() or j.path.stat().st_size == 0:
            return f"kaleido wrote no image to {j.path}"
    return None


def write_pngs(
    figures: Sequence[tuple[Any, Path, int, int, float]],
    provenance: dict[str, Any] | None = None,
    timeout: float | None = None,
) -> str | None:
    """Write ``(plotly figure, png path, width, height, scale)`` items atomically with one bounded export.

    Returns None when every PNG was written, else the reason none was (no partial set is published: the temp
    files are removed). With ``provenance``, each PNG carries it as a ``tEXt`` chunk
    (``probekit.provenance.PNG_KEY``).
    """
    from contextlib import ExitStack

    from probekit.io import atomic_path
    from probekit.provenance import PNG_KEY, png_with_text

    if not figures:
        return None
    try:
        with ExitStack() as stack:
            tmps = [stack.enter_context(atomic_path(path)) for _, path, _, _, _ in figures]
            jobs = [PngJob(fig.to_json(), tmp, int(w), int(h), float(sc))
                    for (fig, _, w, h, sc), tmp in zip(figures, tmps)]  # fmt: skip
            error = export_pngs(jobs, timeout)
            if error is not None:
                raise _Abandon(error)  # leaving the stack removes every temp file; nothing is published
            if provenance is not None:
                text = json.dumps(provenance, sort_keys=True, ensure_ascii=True)
                for tmp in tmps:
                    tmp.write_bytes(png_with_text(tmp.read_bytes(), PNG_KEY, text))
    except _Abandon as e:
        return str(e)
    return None


class _Abandon(Exception):
    pass


def _child(job_file: str) -> int:
    import logging

    import plotly.io as pio

    for name in ("choreographer", "kaleido"):
        logging.getLogger(name).setLevel(logging.WARNING)
    jobs = json.loads(Path(job_file).read_text(encoding="utf-8"))
    figs = [pio.from_json(j["fig"], skip_invalid=True) for j in jobs]
    try:
        pio.write_images(figs, [j["path"] for j in jobs], format="png", width=[j["width"] for j in jobs],
                         height=[j["height"] for j in jobs], scale=[j.get("scale", 1.0) for j in jobs])  # fmt: skip
    except Exception as e:  # reported to the parent as one line
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"{type(e).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
