"""Where an experiment's jobs run: ``probekit run --executor local|slurm|submitit-local``.

``local`` (the default) is today's runner: each stage's own ``run`` (``--jobs`` worker processes on this machine,
or one job after the other in this process). ``slurm`` sends every job of a stage (one model's share, as
``Stage.jobs`` lists them) to Slurm through submitit (https://github.com/facebookincubator/submitit), asking for
the stage's ``resources`` from the config (``probekit.experiment.spec.ResourceSpec``), waits for them, and the
runner then reads the stage's tables back exactly as after the local pool. ``submitit-local`` runs the same jobs
as subprocesses of this machine through submitit's ``LocalExecutor`` (at most ``--jobs`` at once): no cluster
needed, the same logs, resubmission and requeueing, for trying a config before sending it to a cluster.

A training job with ``resources.train.gpus`` > 1 trains its model data-parallel over that many GPUs of its node
(``probekit.experiment.stages.train.train_launched``: one process per GPU under torchrun, joined by accelerate).
``probekit run --dry-run`` lists the jobs with their resources and estimated GPU-hours without submitting any
(``probekit.experiment.plan``).

Stages run in order, as locally: a stage's jobs are all submitted, and the next stage starts when they have all
finished. A stage with no jobs left (and the data stage, which builds its datasets in seconds) runs in this
process through its ``run``. Each job's submitit folder is ``<out>/jobs/<stage>/<run key>/`` (the probe stage's
embedding-update jobs under ``<out>/jobs/probe/embed_update/<run key>/``): its batch script, the pickled call and
its result, and its log, ``<job id>_0_log.out`` and ``<job id>_0_log.err``, one pair per submission.

Resubmission: a job is a ``StageJob``, which carries the stage and the run's context rather than the job's
arguments, and finds its work in the job process by calling ``stage.jobs(ctx)`` again, as a new ``probekit run``
would. A job that fails or is killed is therefore submitted again (up to ``retries`` times, from the stage's
resources) and resumes from its checkpoint (training continues from its last checkpoint to the same weights);
a job that Slurm requeues (preemption, ``scontrol requeue``) runs again under its job id, and one that nears its
time limit is requeued by submitit (``StageJob.checkpoint``, up to 3 times), each resuming the same way; and a
share that an earlier attempt finished is not done again. Every node must see
``--out`` at the same path (a shared filesystem), and run the same Python environment.

Why submitit: it is maintained, pure Python and needs nothing on the cluster but Slurm; it submits a pickled
Python call, which is what a stage's job already is (a top-level function and its arguments, as the local
process pool needs), with one API for Slurm and local subprocesses; and it handles Slurm's preemption and time-
limit signals by requeueing a checkpointable call. dask-jobqueue and parsl keep long-lived workers that pull
tasks (a preempted worker loses its task, and a job's resources are the worker's, not the stage's); snakemake and
nextflow would mean rewriting the pipeline as rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probekit.errors import UserError
from probekit.experiment.stage import Context, Stage, Timing, run_job

if TYPE_CHECKING:
    from probekit.experiment.spec import ResourceSpec

log = logging.getLogger("probekit.experiment.runner")

EXECUTORS: dict[str, str] = {
    "local": "this machine: --jobs worker processes (the default)",
    "slurm": "one Slurm job per model and stage, through submitit, with the config's resources",
    "submitit-local": "one subprocess per model and stage through submitit's local executor (--jobs at once)",
}


class Executor(ABC):
    """Runs the jobs of one stage and returns their times; the runner walks the stages and reads the tables."""

    name: str  # as --executor names it

    def check(self) -> None:  # noqa: B027 (optional to override)
        """Refuse, before any work, an executor that cannot run here (one-line ``UserError``)."""

    @abstractmethod
    def run(self, stage: Stage, ctx: Context) -> list[Timing]:
        """Run what is left of ``stage`` and wait for it; each job's wall and CPU time."""

    def record(self, ctx: Context) -> dict[str, Any]:
        """What the run's provenance records about this executor (nothing for the local pool)."""
        return {}


class PoolExecutor(Executor):
    """``--executor local``: the stage's own ``run``, as before executors existed (outputs byte for byte the same)."""

    name = "local"

    def run(self, stage: Stage, ctx: Context) -> list[Timing]:
        return stage.run(ctx)


class StageJob:
    """One job of a stage as submitit runs it: the stage, the run's context (without its tables) and the job's
    label. Called in the job process, it asks the stage for its jobs again (``stage.jobs(ctx)``) and runs the one
    with its label, so every attempt, first, resubmitted or requeued, starts from what is on disk: training resumes
    from its last checkpoint, and a share already finished is skipped (its time is then 0)."""

    def __init__(self, stage: Stage, ctx: Context, label: str, cpus: int, command: list[str]) -> None:
        self.stage = stage
        self.ctx = dataclasses.replace(ctx, tables={}, progress=False, data=dict(ctx.data), runs=dict(ctx.runs))
        self.label = label
        self.cpus = cpus
        self.command = command

    def __call__(self) -> tuple[float, float]:
        logging.basicConfig(level=logging.INFO, format="%(message)s")  # the stage's log lines go to the job's log
        os.environ["OMP_NUM_THREADS"] = str(self.cpus)  # torch's threads, where it is not imported yet
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(self.cpus)
        level = log.level
        log.setLevel(logging.WARNING)  # the stage names every share it has left; this job runs one of them
        try:
            todo = {label: (fn, args) for label, fn, args in self.stage.jobs(self.ctx)}
        finally:
            log.setLevel(level)
        if self.label not in todo:
            log.info(f"{self.label}: finished by an earlier attempt; nothing left to do")
            return 0.0, 0.0
        log.info(f"{self.label}: {self.cpus} CPU thread(s), output {self.ctx.out}")
        fn, args = todo[self.label]
        return run_job(fn, args, self.command)

    def checkpoint(self) -> Any:
        """submitit calls this when the job gets its signal (its time limit nears, or a preemption the cluster
        signals): requeue the same call, which finds its work anew from the checkpoints on disk."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def job_dir(ctx: Context, stage: Stage, label: str) -> Path:
    """The submitit folder of one job: ``<out>/jobs/<stage>/<run key>`` for a label ``"<stage> <run key>"`` (or
    ``"<stage directory> <run key>"``), else ``<out>/jobs/<stage>/<first word>/<rest>``."""
    what, _, key = label.partition(" ")
    rel = key if key and what in (stage.name, stage.directory) else f"{what}/{key}" if key else what
    parts = [re.sub(r"[^A-Za-z0-9._=+-]", "_", p) for p in rel.split("/") if p not in ("", ".", "..")]
    return ctx.out.joinpath("jobs", stage.name, *parts)


class SubmititExecutor(Executor):
    """``--executor slurm`` (``cluster="slurm"``) or ``submitit-local`` (``cluster="local"``): see the module
    docstring. ``poll_s``: seconds between looks at the running jobs, growing to ``max_poll_s`` as they run on;
    ``result_grace_s``: how long an ended Slurm job's result file may take to show up (submitit's own margin)."""

    def __init__(self, cluster: str = "slurm", poll_s: float = 2.0, max_poll_s: float = 30.0,
                 result_grace_s: float = 15.0) -> None:  # fmt: skip
        if cluster not in ("slurm", "local"):
            raise ValueError(f"cluster must be slurm or local, got {cluster!r}")
        self.cluster = cluster
        self.name = "slurm" if cluster == "slurm" else "submitit-local"
        self.poll_s = poll_s
        self.max_poll_s = max_poll_s
        self.result_grace_s = result_grace_s

    def check(self) -> None:
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError(f"--executor {self.name} needs submitit: pip install submitit") from None
        if self.cluster == "slurm":
            missing = [c for c in ("sbatch", "srun", "squeue", "scancel") if shutil.which(c) is None]
            if missing:
                raise UserError(f"--executor slurm: {', '.join(missing)} not found on PATH; run probekit on a node "
                                "that can submit Slurm jobs (or try the jobs here with --executor "
                                "submitit-local)")  # fmt: skip

    def record(self, ctx: Context) -> dict[str, Any]:
        return {"executor": self.name, "resources": {k: dict(v) for k, v in ctx.cfg.resources.items()}}

    def run(self, stage: Stage, ctx: Context) -> list[Timing]:
        todo = stage.jobs(ctx)
        if not todo:
            return stage.run(ctx)  # nothing left, or work done in this process (the data stage)
        from probekit.provenance import command_line

        res = ctx.cfg.resources_for(stage.name)
        cmd = command_line()
        jobs = {label: StageJob(stage, ctx, label, res.cpus, cmd) for label, _, _ in todo}
        return self._wait_all(stage, ctx, jobs, res)

    def _submit(self, sj: StageJob, folder: Path, res: ResourceSpec) -> Any:
        import submitit

        params: dict[str, Any]
        if self.cluster == "slurm":
            ex: Any = submitit.SlurmExecutor(folder=folder)
            params = {"job_name": f"probekit-{sj.label.replace(' ', '-').replace('/', '-')}", "time": res.time,
                      "cpus_per_task": res.cpus, "signal_delay_s": min(90, max(10, res.time * 12))}  # fmt: skip
            params.update({k: v for k, v in (("gpus_per_node", res.gpus), ("mem", res.mem),
                                             ("partition", res.partition)) if v})  # fmt: skip
        else:
            ex = submitit.LocalExecutor(folder=folder)
            params = {"timeout_min": res.time, "gpus_per_node": res.gpus,
                      "signal_delay_s": min(90, max(10, res.time * 12))}  # fmt: skip
        ex.update_parameters(**params)
        return ex.submit(sj)

    def _wait_all(self, stage: Stage, ctx: Context, jobs: dict[str, StageJob], res: ResourceSpec) -> list[Timing]:
        """Submit the jobs (at most ``--jobs`` at once under ``submitit-local``), resubmit each one that fails up
        to ``res.retries`` times, and wait for all; raise a one-line error naming the log of a job that failed
        every time (after the others have finished, as the local pool does)."""
        cap = ctx.jobs if self.cluster == "local" else len(jobs)
        pending = deque(jobs)
        attempts = dict.fromkeys(jobs, 0)
        running: dict[str, Any] = {}
        times: dict[str, Timing] = {}
        failed: list[str] = []
        t0 = time.monotonic()
        try:
            while pending or running:
                while pending and len(running) < cap and not failed:
                    label = pending.popleft()
                    attempts[label] += 1
                    folder = job_dir(ctx, stage, label)
                    try:
                        running[label] = self._submit(jobs[label], folder, res)
                    except Exception as e:  # sbatch refused it: a partition, memory or time the cluster lacks
                        raise UserError(f"{label}: {self.name} refused the job ({_last_line(e)}); check "
                                        f"resources.{stage.name} (or resources.default)") from e  # fmt: skip
                    again = f" (attempt {attempts[label]} of {res.retries + 1})" if attempts[label] > 1 else ""
                    log.info(f"  {label}: {self.name} job {running[label].job_id} submitted{again}; log in "
                             f"{folder}")  # fmt: skip
                if failed:
                    pending.clear()
                time.sleep(min(self.max_poll_s, max(self.poll_s, (time.monotonic() - t0) / 20)))
                ended = self._ended(running)
                for label in ended:
                    job = running.pop(label)
                    try:
                        times[label] = Timing(label, *self._result(job))
                        log.info(f"  {label} done")
                    except Exception as e:  # the job raised, was killed, or ended without a result
                        reason = _last_line(e)
                        if attempts[label] <= res.retries:
                            log.warning(f"  {label}: job {job.job_id} failed ({reason}); submitting it again, to "
                                        "resume from its checkpoint")  # fmt: skip
                            pending.append(label)
                        else:
                            log.error(f"  {label}: job {job.job_id} failed ({reason}); log: {job.paths.stderr}")
                            failed.append(f"{label} failed {attempts[label]} time(s) (last: {reason}); its log: "
                                          f"{job.paths.stderr}")  # fmt: skip
        except BaseException:
            for job in running.values():  # a run stopped here stops its jobs (rerun to resume them)
                with contextlib.suppress(Exception):  # already gone
                    job.cancel(check=False)
            raise
        if failed:
            raise UserError(f"{stage.name}: " + "; ".join(failed))
        return [times[label] for label in jobs]

    def _ended(self, running: dict[str, Any]) -> list[str]:
        """The labels of the jobs that are no longer pending or running."""
        ended = [label for label, job in running.items() if job.done()]
        if self.cluster == "slurm":
            # without Slurm accounting (sacct), submitit cannot tell a job that died without a result from one
            # still queued: ask squeue about those whose state it does not know
            unknown = {job.job_id: label for label, job in running.items()
                       if label not in ended and job.state.upper() in ("UNKNOWN", "")}  # fmt: skip
            ended += [unknown[j] for j in _gone_from_squeue(list(unknown))]
        return ended

    def _result(self, job: Any) -> tuple[float, float]:
        """The ended job's times, or the exception it raised; a job that ended without a result (killed, out of
        memory or time) raises a ``RuntimeError``. A local job writes its result before its process ends; a Slurm
        job's may show up on a shared filesystem a little later (given ``result_grace_s``)."""
        pickle = job.paths.result_pickle
        deadline = time.monotonic() + (self.result_grace_s if self.cluster == "slurm" else 0)
        while not pickle.exists() and time.monotonic() < deadline:
            time.sleep(1)
        if not pickle.exists():
            raise RuntimeError("the job ended without a result: killed, or out of memory or time?")
        wall, cpu = job.result()
        return float(wall), float(cpu)


# squeue states of a job that may still run (PREEMPTED too: a preempted job that Slurm requeues must not also be
# submitted again; one that it cancels leaves squeue after MinJobAge and is then seen as ended)
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                           "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED",
                           "RESV_DEL_HOLD", "PREEMPTED"})  # fmt: skip


def _gone_from_squeue(job_ids: list[str]) -> list[str]:
    """The jobs among ``job_ids`` that squeue no longer lists as pending or running."""
    if not job_ids:
        return []
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return []  # squeue itself failed: ask again later
    states = dict(line.split(maxsplit=1) for line in out.stdout.splitlines() if len(line.split()) == 2)
    return [j for j in job_ids if states.get(j, "GONE").split()[0].upper() not in ACTIVE_STATES]


def _last_line(e: BaseException) -> str:
    """The gist of a job's failure: the last line of its traceback that says what went wrong."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    for line in reversed(lines):
        if not line.startswith(("You can check full logs", "or at paths", "- /")):
            return line[:300]
    return type(e).__name__


def make_executor(executor: str | Executor) -> Executor:
    """The executor ``--executor`` names (or ``executor`` itself), checked: a one-line ``UserError`` for an
    unknown name or one that cannot run here, before any work."""
    if isinstance(executor, Executor):
        ex = executor
    elif executor == "local":
        ex = PoolExecutor()
    elif executor == "slurm":
        ex = SubmititExecutor("slurm")
    elif executor == "submitit-local":
        ex = SubmititExecutor("local", poll_s=0.5, max_poll_s=5.0)
    else:
        raise UserError(f"--executor {executor!r}: unknown executor; choose one of {', '.join(EXECUTORS)}")
    ex.check()
    return ex
