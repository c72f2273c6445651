"""``probekit run --executor``: the stages' jobs through submitit, on real subprocesses and a real Slurm.

The local Slurm: ``slurm_cluster`` starts munged, slurmctld and slurmd on localhost (Debian's ``slurm-wlm`` and
``munge``) with a minimal ``slurm.conf`` in a temporary directory, and the Slurm test is skipped, with the reason
printed, where they are not installed, this is not root (slurmd starts jobs as their user), or the node does not
come up within 30 seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from probekit.cli import main
from probekit.errors import UserError
from probekit.experiment.executor import PoolExecutor, SubmititExecutor, job_dir
from probekit.experiment.runner import run_experiment
from probekit.experiment.spec import ExperimentConfig, config_record
from probekit.experiment.stage import Context, Job, Stage, done, mark_done
from probekit.io import atomic_write_json
from probekit.serde import from_dict
from tests.test_experiments import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[1]
# 60 steps with a checkpoint every 10: a few seconds in which a job can be killed after its first checkpoint
TRAIN = {**TINY_TRAIN, "max_steps": 60, "save_every": 10}


def two_models(**extra: Any) -> dict[str, Any]:
    """A quick experiment of two models (data, train, probe)."""
    return {
        "name": "two",
        "datasets": [{"name": "s", "n_people": 30, "augmentation": "single", "pool_limits": {"major": 4}}],
        "models": [{"name": m, "data": "s", "train": {**TRAIN, "seed": seed}} for m, seed in (("a", 0), ("b", 1))],
        "probe": {"kinds": ["q"], "targets": ["first_token"], "l2_grid": [0.01], "max_iter": 10, "bootstrap": 20},
        "control_random": False,
        **extra,
    }


def write_config(tmp_path: Path, rec: dict[str, Any]) -> Path:
    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump(rec))
    return f


# ------------------------------------------------------------------------------------------- bad input, fast


def test_an_unknown_executor_is_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", str(write_config(tmp_path, two_models())), "--out", str(out), "--executor", "pbs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "probekit: error: --executor 'pbs': unknown executor; choose one of local, slurm, submitit-local"
    assert not out.exists()


@pytest.mark.parametrize("resources, message", [
    ({"trian": {"cpus": 2}}, "resources: unknown stage(s) trian; give resources for default or a stage: data, "),
    ({"default": {"cpu": 2}}, "resources.default: unknown ResourceSpec field(s) ['cpu']"),
    ({"probe": {"gpus": 2}}, "resources.probe.gpus is 2, but only training runs over several GPUs"),
    ({"default": {"gpus": 4}}, "resources.default.gpus is 4, but only training runs over several GPUs"),
    ({"train": {"gpus": 65}}, "resources.train.gpus must be between 0 and 64 (GPUs of one node), got 65"),
    ({"train": {"gpus": "one"}}, "resources.train.gpus must be an integer, got 'one'"),
    ({"default": {"mem": "8 GB"}}, "resources.default.mem must be a whole number with a unit K, M, G or T"),
    ({"probe": {"time": 0}}, "resources.probe.time is the wall-clock limit in minutes and must be at least 1"),
    ({"default": {"cpus": 0}}, "resources.default.cpus must be at least 1, got 0"),
    ({"default": {"partition": "a b"}}, "resources.default.partition must be a Slurm partition name"),
    ({"default": {"retries": -1}}, "resources.default.retries must be between 0 and 100, got -1"),
])  # fmt: skip
def test_bad_resources_are_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    resources: dict[str, Any], message: str) -> None:  # fmt: skip
    out = tmp_path / "run"
    cfg = write_config(tmp_path, two_models(resources=resources))
    assert main(["run", str(cfg), "--out", str(out), "--executor", "submitit-local"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_slurm_without_its_commands_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "run"
    assert main(["run", str(write_config(tmp_path, two_models())), "--out", str(out), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probekit: error: --executor slurm: sbatch, srun, squeue, scancel not found on PATH")
    assert not out.exists()


def test_resources_are_how_jobs_run_not_part_of_the_record() -> None:
    """A changed resource never refuses a resume: experiment.json leaves the section out, and a stage's entry
    overrides the default's."""
    plain = from_dict(ExperimentConfig, two_models())
    cluster = from_dict(ExperimentConfig, two_models(resources={"default": {"cpus": 2, "mem": "4G"},
                                                                "train": {"gpus": 1, "time": 120}}))  # fmt: skip
    assert config_record(cluster) == config_record(plain) and "resources" not in config_record(cluster)
    train, probe = cluster.resources_for("train"), cluster.resources_for("probe")
    assert (train.cpus, train.gpus, train.mem, train.time) == (2, 1, "4G", 120)
    assert (probe.cpus, probe.gpus, probe.time, probe.retries) == (2, 0, 60, 2)


def test_job_folders_are_per_stage_and_model(tmp_path: Path) -> None:
    from probekit.experiment.stages.probe import ProbeStage

    ctx = Context(from_dict(ExperimentConfig, two_models()), tmp_path)
    assert job_dir(ctx, ProbeStage(), "probes a/seed_1") == tmp_path / "jobs" / "probe" / "a" / "seed_1"
    assert job_dir(ctx, ProbeStage(), "embed_update a") == tmp_path / "jobs" / "probe" / "embed_update" / "a"
    assert job_dir(ctx, ProbeStage(), "probe ../x y") == tmp_path / "jobs" / "probe" / "x_y"


# ------------------------------------------------------------------ a toy stage: killed, preempted, failing


def count_slowly(dest: Path, steps: int, fail: bool, command: list[str] | None = None) -> None:
    """The toy stage's work: ``steps`` steps of 0.2 s, each checkpointed to ``checkpoint.json``, resumed from it;
    ``attempts.txt`` gets one line per start (pid and the step it starts from)."""
    if fail:
        raise ValueError("boom")
    dest.mkdir(parents=True, exist_ok=True)
    ck = dest / "checkpoint.json"
    state = json.loads(ck.read_text()) if ck.exists() else {"step": 0, "total": 0}
    with open(dest / "attempts.txt", "a") as f:
        f.write(f"{os.getpid()} {state['step']}\n")
    while state["step"] < steps:
        time.sleep(0.2)
        state = {"step": state["step"] + 1, "total": state["total"] + state["step"] ** 2}
        atomic_write_json(ck, state)
    atomic_write_json(dest / "result.json", state)
    mark_done(dest)


class Countdown(Stage):
    name = "countdown"
    directory = "countdown"

    def jobs(self, ctx: Context) -> list[Job]:
        s = self.settings(ctx)
        return [(f"countdown {r.key}", count_slowly, (self.dest(ctx, r.key), s.get("steps", 12),
                                                     r.key in s.get("fail", [])))
                for r in ctx.cfg.runs() if not done(self.dest(ctx, r.key))]  # fmt: skip

    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        return {}


def attempts(dest: Path) -> list[tuple[int, int]]:
    lines = (dest / "attempts.txt").read_text().split("\n") if (dest / "attempts.txt").exists() else []
    return [(int(p), int(s)) for p, s in (line.split() for line in lines if line)]


def signal_at_step(dest: Path, sig: int, step: int, sent: list[int]) -> threading.Thread:
    """Send ``sig`` to the toy job writing ``dest`` once its checkpoint reaches ``step``."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ck = dest / "checkpoint.json"
            try:
                at = json.loads(ck.read_text())["step"] if ck.exists() else 0
            except (OSError, ValueError):
                at = 0
            if at >= step and attempts(dest):
                pid = attempts(dest)[-1][0]
                os.kill(pid, sig)
                sent.append(pid)
                return
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.slow
def test_a_killed_job_is_resubmitted_and_a_preempted_one_requeued(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """submitit's local executor, real subprocesses: model a's job is killed (SIGKILL) at step 3, so the runner
    submits it again; model b's job gets submitit's preemption signal (SIGUSR2), so submitit requeues it itself.
    Both resume from their checkpoints, and their results are those of the local pool, uninterrupted."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the jobs unpickle this module's stage
    cfg = from_dict(ExperimentConfig, two_models(stages={"countdown": {"steps": 12}}))
    stage = Countdown()
    ctx = Context(cfg, tmp_path / "jobs_run", progress=False, jobs=2)
    a, b = stage.dest(ctx, "a"), stage.dest(ctx, "b")
    sent: list[int] = []
    watchers = [signal_at_step(a, signal.SIGKILL, 3, sent), signal_at_step(b, signal.SIGUSR2, 3, sent)]
    times = SubmititExecutor("local", poll_s=0.2, max_poll_s=0.5).run(stage, ctx)
    for w in watchers:
        w.join(timeout=1)
    assert len(sent) == 2
    assert [t.label for t in times] == ["countdown a", "countdown b"] and all(t.wall_s > 0 for t in times)
    for dest in (a, b):
        (first, _), (second, resumed_at) = attempts(dest)  # two starts: the second one from the checkpoint
        assert first != second and resumed_at >= 3
    # a: the runner submitted it again; b: submitit requeued the same job
    assert len(list(job_dir(ctx, stage, "countdown a").glob("*_submitted.pkl"))) == 2
    assert len(list(job_dir(ctx, stage, "countdown b").glob("*_submitted.pkl"))) == 1
    assert "this job is preempted" in "".join(p.read_text() for p in job_dir(ctx, stage, "countdown b").glob("*.err"))
    ref = Context(cfg, tmp_path / "pool_run", progress=False)
    PoolExecutor().run(stage, ref)
    for key in ("a", "b"):
        assert (stage.dest(ref, key) / "result.json").read_text() == (stage.dest(ctx, key) / "result.json").read_text()
        assert attempts(stage.dest(ref, key))[0][1] == 0 and len(attempts(stage.dest(ref, key))) == 1


@pytest.mark.slow
def test_a_job_that_fails_every_time_is_one_line_naming_its_log(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    cfg = from_dict(ExperimentConfig, two_models(stages={"countdown": {"steps": 2, "fail": ["b"]}},
                                                 resources={"countdown": {"retries": 1}}))  # fmt: skip
    stage = Countdown()
    ctx = Context(cfg, tmp_path / "run", progress=False, jobs=2)
    with pytest.raises(UserError) as e:
        SubmititExecutor("local", poll_s=0.2, max_poll_s=0.5).run(stage, ctx)
    folder = job_dir(ctx, stage, "countdown b")
    assert re.fullmatch(rf"countdown: countdown b failed 2 time\(s\) \(last: ValueError: boom\); its log: "
                        rf"{re.escape(str(folder))}/\d+_0_log\.err", str(e.value)), str(e.value)  # fmt: skip
    assert len(list(folder.glob("*_submitted.pkl"))) == 2  # retried once
    assert done(stage.dest(ctx, "a"))  # the other job finished


# --------------------------------------------------------------- a two-model experiment, one job killed


def job_pids(folder: Path) -> list[int]:
    """The Python processes running a submitit job from ``folder`` (by their command line; not srun's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if argv and Path(argv[0]).name.startswith("python") and "submitit.core._submit" in argv \
                and str(folder) in argv:  # fmt: skip
            pids.append(int(proc.name))
    return pids


def kill_after_first_checkpoint(run: Path, folder: Path, killed: list[int]) -> threading.Thread:
    """SIGKILL the training job of ``run`` (submitted from ``folder``) once its first checkpoint is written."""
    from probekit.model.checkpoint import list_checkpoints

    def watch() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not killed:
            if list_checkpoints(run) and not done(run):
                for pid in job_pids(folder):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-model experiment through the local pool, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_experiment(from_dict(ExperimentConfig, two_models()), out, progress=False, png=False)
    return out


def weights(run: Path) -> dict[str, bytes]:
    from probekit.model.checkpoint import weights_file

    return {m: weights_file(run / "models" / m).read_bytes() for m in ("a", "b")}


def run_killing_one(executor: SubmititExecutor, out: Path, resources: dict[str, Any] | None = None) -> list[int]:
    """The two-model experiment through ``executor``, model a's training killed after its first checkpoint."""
    killed: list[int] = []
    watcher = kill_after_first_checkpoint(out / "models" / "a", out / "jobs" / "train" / "a", killed)
    cfg = from_dict(ExperimentConfig, two_models(resources=resources or {}))
    run_experiment(cfg, out, progress=False, png=False, executor=executor, jobs=2)
    watcher.join(timeout=1)
    return killed


def check_resumed_to_the_reference(out: Path, reference: Path, killed: list[int]) -> None:
    assert killed, "model a's training finished before it could be killed"
    sessions = json.loads((out / "models" / "a" / "provenance.json").read_text())["sessions"]
    assert sessions[0].get("resumed_at_step") is None and sessions[-1]["resumed_at_step"] >= 10
    assert len(list((out / "jobs" / "train" / "a").glob("*_submitted.pkl"))) == 2  # submitted again
    assert len(list((out / "jobs" / "train" / "b").glob("*_submitted.pkl"))) == 1
    assert list((out / "jobs" / "probe" / "a").glob("*_log.err"))  # every job has its log
    for table in ("results.csv", "summary.txt"):
        assert (out / table).read_text() == (reference / table).read_text(), table
    assert weights(out) == weights(reference)
    times = pd.read_csv(out / "timings.csv")
    assert list(times["job"]) == ["data s", "train a", "train b", "probes a", "probes b"]
    assert json.loads((out / "provenance.json").read_text())["sessions"][-1]["executor"] in ("slurm", "submitit-local")


@pytest.mark.slow
def test_submitit_local_resumes_a_killed_training_to_the_local_pools_tables(
    tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    out = tmp_path / "run"
    killed = run_killing_one(SubmititExecutor("local", poll_s=0.2, max_poll_s=0.5), out)
    check_resumed_to_the_reference(out, reference, killed)


# ------------------------------------------------------------------------------------ a real local Slurm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/usr/bin", "/sbin")
                                       if (p := Path(d) / name).exists()), None)  # fmt: skip


SLURM_CONF = """\
ClusterName=probekit
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal, past pytest's capture (why the Slurm test is skipped)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line(line)


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """munged + slurmctld + slurmd on localhost, one node and one partition; ``SLURM_CONF`` points the Slurm
    commands at it while the session runs. Skipped (reason printed) where it cannot start."""

    def skip(reason: str) -> None:
        _say(request, f"\ntests/test_executor.py: the Slurm test is skipped: {reason}")
        pytest.skip(reason)

    binaries = {n: _binary(n) for n in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo")}
    missing = [n for n, p in binaries.items() if p is None]
    if missing:
        skip(f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        skip("slurmd must run as root to start jobs")
    d = Path(tmp_path_factory.mktemp("slurm"))
    for sub in ("munge", "state", "spool"):
        (d / sub).mkdir(mode=0o700)
    (d / "munge" / "munge.key").write_bytes(os.urandom(1024))
    (d / "munge" / "munge.key").chmod(0o600)
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(d=d, ctld_port=_free_port(), d_port=_free_port(), cpus=os.cpu_count() or 1))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[Path] = []

    def stop() -> None:
        """Cancel what is left, let the jobs' step daemons report their end (they wait for slurmctld and munged
        otherwise), then stop slurmd, slurmctld and munged, each before the next."""
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            p = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=30)
            if p.returncode != 0 or not p.stdout.strip():
                break
            time.sleep(0.5)
        for pidfile in reversed(started):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    os.kill(pid, 0)  # OSError once it is gone
                    time.sleep(0.1)

    try:
        commands = [
            ([binaries["munged"], "--force", f"--key-file={d}/munge/munge.key", f"--socket={d}/munge/munge.socket",
              f"--pid-file={d}/munge/munged.pid", f"--log-file={d}/munge/munged.log", f"--seed-file={d}/munge/seed"],
             d / "munge" / "munged.pid"),
            ([binaries["slurmctld"], "-f", str(conf)], d / "slurmctld.pid"),
            ([binaries["slurmd"], "-f", str(conf), "-N", "localhost"], d / "slurmd.pid"),
        ]  # fmt: skip
        for argv, pidfile in commands:
            p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
            if p.returncode != 0:
                skip(f"{Path(argv[0]).name} did not start: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
            for _ in range(50):
                if pidfile.exists():
                    break
                time.sleep(0.1)
            started.append(pidfile)
        deadline = time.monotonic() + 30
        state = ""
        while time.monotonic() < deadline:
            p = subprocess.run([binaries["sinfo"], "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            state = p.stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            log = (d / "slurmd.log").read_text().strip().splitlines()[-1:] if (d / "slurmd.log").exists() else []
            skip(f"the node did not come up within 30 s (sinfo: {state or p.stderr.strip()!r}; slurmd: {log})")
    except BaseException:
        stop()
        raise
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield d
    finally:
        stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.mark.slow
def test_slurm_resumes_a_killed_training_to_the_local_pools_tables(
    slurm_cluster: Path, tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same experiment as one Slurm job per model and stage on the local cluster, model a's training killed
    after its first checkpoint: resubmitted, resumed, and the tables are the local pool's."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.chdir(tmp_path)  # Slurm jobs start in the submitting directory
    slurm = SubmititExecutor("slurm", poll_s=0.5, max_poll_s=1.0, result_grace_s=2)
    with pytest.raises(UserError) as e:  # a partition the cluster lacks: sbatch's reason, in one line
        run_experiment(from_dict(ExperimentConfig, two_models(resources={"train": {"partition": "nope"}})),
                       tmp_path / "refused", progress=False, png=False, executor=slurm)  # fmt: skip
    assert str(e.value).startswith("train a: slurm refused the job (") and "\n" not in str(e.value)
    assert "resources.train" in str(e.value) and "partition" in str(e.value).lower(), str(e.value)
    out = tmp_path / "run"
    killed = run_killing_one(slurm, out, resources={"default": {"cpus": 1, "time": 10, "mem": "500M"}})
    check_resumed_to_the_reference(out, reference, killed)
    script = next((out / "jobs" / "train" / "b").glob("*_submission.sh")).read_text()
    assert "#SBATCH --cpus-per-task=1" in script and "#SBATCH --time=10" in script and "#SBATCH --mem=500M" in script


def test_pool_workers_end_with_a_killed_run(tmp_path: Path) -> None:
    """Workers of a run killed outright (SIGKILL: no shutdown) exit instead of taking the jobs queued to them."""
    script = tmp_path / "run.py"
    script.write_text(
        "import os, sys, time\n"
        "from probekit.experiment.stage import shared_workers, worker_pool\n"
        "if __name__ == '__main__':\n"
        "    with shared_workers(), worker_pool(2) as pool:\n"
        "        futures = [pool.submit(time.sleep, 60) for _ in range(6)]\n"
        "        time.sleep(1)\n"
        "        print(' '.join(str(p) for p in pool._processes), flush=True)\n"
        "        time.sleep(120)\n"
    )  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped) is gone too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True
