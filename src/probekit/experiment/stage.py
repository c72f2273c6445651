"""The ``Stage`` protocol: one step of an experiment, run per model, resumable.

A stage says what it needs (``enabled``: whether the config asks for it), what it writes (``directory`` under the
experiment's output, one sub-directory per model marked complete by a ``.complete`` file), whether a model's share
is done (``done``), the work still to do (``jobs``: one picklable ``(label, function, arguments)`` per model, so
``--jobs N`` can run them in worker processes) and its tables (``collect``). The runner
(``probekit.experiment.runner.run_experiment``) does the rest: it walks ``probekit.experiment.stages.STAGES`` in
order, skips finished shares, schedules the rest across ``--jobs``, resumes, and refuses changed settings.

Where the jobs run is the executor's (``probekit.experiment.executor``): ``run`` in this process or a local pool,
or one cluster job per entry of ``jobs``; such a job calls ``jobs`` again in its own process and runs the entry with
its label, so ``jobs`` must depend only on the context and what is on disk (a label missing there means done).

A new stage is one class in one module of ``probekit/experiment/stages/`` added to ``STAGES`` (or, outside the
package, ``register_stage``). Its settings live in the experiment config's ``stages: {<name>: {...}}`` section
(``settings(ctx)``) unless it is a built-in stage with a section of its own.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from probekit.experiment.spec import ExperimentConfig
from probekit.io import atomic_write_json

if TYPE_CHECKING:
    from probekit.reporting.report import SummaryPart

log = logging.getLogger("probekit.experiment.runner")

Job = tuple[str, Callable[..., None], tuple[Any, ...]]  # (label, top-level function, its arguments)


@dataclass(frozen=True)
class Planned:
    """One job a run would give a stage (``probekit run --dry-run``): its label, its output directory relative to
    the experiment's, and, for a job that trains a model, that model's train section and its dataset directory
    (relative too), to estimate its compute."""

    label: str
    dest: Path
    train: dict[str, Any] | None = None
    data: Path | None = None


@dataclass
class Context:
    """What the stages of one run share: the config, the output directory, how to run, and what earlier stages
    made (``data``: dataset directory per data key, ``runs``: model directory per run key, ``tables``)."""

    cfg: ExperimentConfig
    out: Path
    progress: bool = True
    png: bool = True
    jobs: int = 1
    data: dict[str, Path] = field(default_factory=dict)
    runs: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame | None] = field(default_factory=dict)


def done(path: Path) -> bool:
    """Whether a stage's share in ``path`` finished (its ``.complete`` marker exists)."""
    return (path / ".complete").exists()


def mark_done(path: Path, info: dict[str, Any] | None = None) -> None:
    atomic_write_json(path / ".complete", info or {})


class Stage(ABC):
    """One experiment stage (see the module docstring). Subclasses set ``name`` and ``directory`` and implement
    ``jobs`` and ``collect``; ``sections`` are the config keys whose appearance in a started experiment adds this
    stage's outputs without invalidating the others (``probekit run`` then keeps what is finished)."""

    name: ClassVar[str]
    directory: ClassVar[str]
    sections: ClassVar[tuple[str, ...]] = ()

    def enabled(self, cfg: ExperimentConfig) -> bool:
        """Whether ``cfg`` asks for this stage (a plug-in stage: when ``stages`` names it)."""
        return self.name in cfg.stages

    def settings(self, ctx: Context) -> dict[str, Any]:
        """This stage's entry of the config's ``stages`` section."""
        return dict(ctx.cfg.stages.get(self.name) or {})

    def validate(self, cfg: ExperimentConfig) -> None:
        """Refuse settings that cannot work, before any stage runs (one-line ``UserError``); the default accepts
        any settings."""
        return None

    def dest(self, ctx: Context, key: str) -> Path:
        """The output directory of one run's share."""
        return ctx.out / self.directory / key

    @abstractmethod
    def jobs(self, ctx: Context) -> list[Job]:
        """The work still to do, one job per model whose share is not done."""

    def planned(self, cfg: ExperimentConfig) -> list[Planned]:
        """Every job a run of ``cfg`` gives this stage, done or not, from the config alone (nothing need exist on
        disk): ``probekit run --dry-run`` lists them. The default: one job per run (model x seed)."""
        return [Planned(f"{self.name} {r.key}", Path(self.directory) / r.key) for r in cfg.runs()]

    def run(self, ctx: Context) -> list[Timing]:
        """Run the jobs (``ctx.jobs`` at once in worker processes, else here in order); their times."""
        return in_pool(self.jobs(ctx), ctx.jobs, ctx.progress)

    @abstractmethod
    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        """The stage's tables, read back from its outputs (by table name: ``<out>/<name>.csv``)."""

    def summary(self, ctx: Context) -> list[str]:
        """Lines this stage adds to the experiment's summary (after the probe tables)."""
        return []

    def summary_parts(self, ctx: Context) -> list[SummaryPart]:
        """This stage's part of the summary: ``probekit.reporting.report.SummaryTable`` objects (a title and a
        DataFrame: an HTML table in ``report.html``, its ``to_string`` in ``summary.txt``) and lines of text. The
        default is ``summary``'s lines, shown as text in both."""
        return list(self.summary(ctx))


@dataclass(frozen=True)
class Timing:
    """Where an experiment's time went: one job (a model's share of a stage), wall and CPU seconds of the
    process that ran it (a worker's own CPU time under ``--jobs``; this process's, all its threads, otherwise)."""

    label: str
    wall_s: float
    cpu_s: float


def run_job(fn: Callable[..., None], args: tuple[Any, ...], command: list[str] | None) -> tuple[float, float]:
    """``fn(*args, command)`` with its wall and CPU seconds (a top-level function: worker processes run it)."""
    import time

    w0, c0 = time.perf_counter(), time.process_time()
    fn(*args, command)
    return time.perf_counter() - w0, time.process_time() - c0


def last_metrics(run: Path) -> dict[str, Any]:
    """The last line of a training run's ``metrics.jsonl`` (empty while it has none)."""
    import json

    try:
        lines = (run / "metrics.jsonl").read_text().strip().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, json.JSONDecodeError):
        return {}


def watch(futures: dict[str, Any], runs: dict[str, Path], progress: bool, desc: str) -> None:
    """One live progress line for jobs running in worker processes: each job's training step and loss, read from
    its run directory's ``metrics.jsonl`` every two seconds, until every job has finished."""
    from concurrent.futures import wait

    from tqdm.auto import tqdm

    with tqdm(desc=desc, unit="step", disable=not progress, bar_format="{desc} {postfix} [{elapsed}]") as bar:
        while True:
            _, pending = wait(list(futures.values()), timeout=2.0)
            parts = []
            for name, fut in futures.items():
                m = last_metrics(runs[name]) if name in runs else {}
                state = "done" if fut.done() else (f"step {m.get('step')} loss {m.get('loss', float('nan')):.3f}"
                                                   if m else "starting")  # fmt: skip
                parts.append(f"{name} {state}")
            bar.set_postfix_str(" | ".join(parts))
            if not pending:
                return


def in_pool(todo: list[Job], jobs: int, progress: bool = True, runs: dict[str, Path] | None = None,
            desc: str = "models") -> list[Timing]:  # fmt: skip
    """Run ``fn(*args)`` for each ``(label, fn, args)``: in ``jobs`` worker processes (one torch thread each; the
    last argument of each call, the parent's command line, is filled in) or, with ``jobs`` 1, here in order.
    ``runs``: the training run directory of a job's label, whose step and loss the progress line then shows
    while the workers run (a job in this process shows its own bars). Returns each job's wall and CPU time."""
    times: list[Timing] = []
    if jobs > 1 and len(todo) > 1:
        from tqdm.auto import tqdm

        from probekit.provenance import command_line

        cmd = command_line()
        with worker_pool(jobs) as pool:
            futures = [(label, pool.submit(run_job, fn, args, cmd)) for label, fn, args in todo]
            if runs:
                watch(dict(futures), runs, progress, desc)
            for label, fut in tqdm(futures, desc=desc, unit="model", disable=not progress or bool(runs)):
                times.append(Timing(label, *fut.result()))
                log.info(f"  {label} done")
    else:  # a job learns it runs here from a None command line and then draws its own bars: not under --no-progress
        from probekit.provenance import command_line

        here = None if progress else command_line()
        for label, fn, args in todo:
            times.append(Timing(label, *run_job(fn, args, here)))
    return times


def _worker_init(parent: int) -> None:
    """A pool worker: one torch thread, and its life bound to the run's process ``parent``."""
    import torch

    torch.set_num_threads(1)
    die_with_parent(parent)


def die_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """End this worker process when the run that started it is gone. A run killed (not shut down) leaves its
    spawned workers alive, and they would go on taking the jobs already queued to them, training into the run's
    directories beside the next run; a daemon thread watches the parent and exits the worker once it changes
    (``parent`` is the pid the run had when it made the pool: a worker whose run died while it started exits too)."""
    import os
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="probekit-parent-watch", daemon=True).start()


_POOLS: dict[int, ProcessPoolExecutor] | None = None  # the worker pools kept for a run (``shared_workers``)


@contextmanager
def shared_workers() -> Iterator[None]:
    """Keep ``worker_pool``'s processes for every stage inside this block (``run_experiment`` wraps its stages in
    it): a fresh worker spends seconds importing torch, transformer-lens and torch's compiler (which the first
    optimizer pulls in), once per worker instead of once per stage. The pools close when the block ends."""
    global _POOLS
    outer, _POOLS = _POOLS, {} if _POOLS is None else _POOLS
    try:
        yield
    finally:
        if outer is None:
            pools, _POOLS = _POOLS, None
            for pool in pools.values():
                pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def worker_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """``jobs`` worker processes (spawned, one torch thread each): inside ``shared_workers`` the run's own, kept
    for the next stage; else a pool of this call's. (A worker that crashes breaks its pool, and the error ends the
    run, which closes the pool.)"""
    import multiprocessing as mp
    import os

    def new() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                   initargs=(os.getpid(),))  # fmt: skip

    if _POOLS is None:
        with new() as own:
            yield own
    else:
        if jobs not in _POOLS:
            _POOLS[jobs] = new()
        yield _POOLS[jobs]
