"""Experiment stages as plug-ins: a new stage is one class; ``probekit run`` schedules, resumes and reports it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from probekit.cli import main
from probekit.errors import UserError
from probekit.experiment.stage import Context, Job, Stage, done, mark_done
from probekit.experiment.stages import STAGES, register_stage, unregister_stage
from probekit.io import atomic_path
from tests.test_experiments import TINY_TRAIN

pytestmark = pytest.mark.slow  # runs whole experiments through probekit run

CALLS: list[str] = []


def count_parameters(model_dir: Path, dest: Path, scale: float, command: list[str] | None = None) -> None:
    """The toy stage's work for one model: its parameter count (times ``scale``), from the saved weights."""
    from safetensors.torch import load_file

    from probekit.model.checkpoint import weights_file

    CALLS.append(dest.name)
    n = sum(t.numel() for t in load_file(str(weights_file(model_dir))).values())
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest / "results.csv") as tmp:
        pd.DataFrame([{"model": dest.name, "parameters": n * scale}]).to_csv(tmp, index=False)
    mark_done(dest)


class ParameterCount(Stage):
    """The whole of a new stage: what it writes, when it runs, its work per model, its table, its summary."""

    name = "toy"
    directory = "toy"

    def validate(self, cfg: Any) -> None:
        if float(cfg.stages["toy"].get("scale", 1.0)) <= 0:
            raise UserError("stages.toy.scale must be positive")

    def jobs(self, ctx: Context) -> list[Job]:
        scale = float(self.settings(ctx).get("scale", 1.0))
        return [(f"toy {r.key}", count_parameters, (ctx.runs[r.key], self.dest(ctx, r.key), scale))
                for r in ctx.cfg.runs() if not done(self.dest(ctx, r.key))]  # fmt: skip

    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        return {"toy": pd.concat([pd.read_csv(self.dest(ctx, r.key) / "results.csv") for r in ctx.cfg.runs()])}

    def summary(self, ctx: Context) -> list[str]:
        t = ctx.tables["toy"]
        assert t is not None
        return [f"toy: {r.model} has {r.parameters:.0f} parameters" for r in t.itertuples()]


@pytest.fixture
def toy_stage() -> Iterator[None]:
    register_stage(ParameterCount(), after="probe")
    CALLS.clear()
    try:
        yield
    finally:
        unregister_stage("toy")


def _config(tmp_path: Path, **extra: Any) -> Path:
    cfg = {
        "name": "toy_exp",
        "datasets": [{"name": "s", "n_people": 30, "augmentation": "single", "pool_limits": {"major": 4}}],
        "models": [{"name": "m", "data": "s", "train": {**TINY_TRAIN, "max_steps": 4}}],
        "probe": {"kinds": ["q"], "targets": ["first_token"], "l2_grid": [0.01], "max_iter": 10, "bootstrap": 20},
        "control_random": False,
        **extra,
    }
    f = tmp_path / "toy.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def test_a_stage_added_in_one_class_runs_resumes_and_reports(toy_stage: None, tmp_path: Path) -> None:
    assert [s.name for s in STAGES].index("toy") == [s.name for s in STAGES].index("probe") + 1
    out = tmp_path / "run"
    assert main(["run", str(_config(tmp_path, stages={"toy": {"scale": 2}})), "--out", str(out), "--no-progress",
                 "--no-png"]) == 0  # fmt: skip
    table = pd.read_csv(out / "toy.csv")
    assert table["model"].tolist() == ["m"] and table["parameters"].iloc[0] > 0
    assert "toy: m has" in (out / "summary.txt").read_text()
    assert CALLS == ["m"]
    times = pd.read_csv(out / "timings.csv")  # where the time went: every stage and model that ran
    assert list(times["stage"]) == ["data", "train", "probe", "toy"]
    assert list(times["job"]) == ["data s", "train m", "probes m", "toy m"]
    assert (times["wall_s"] >= 0).all() and (times["cpu_s"] >= 0).all()
    assert times.set_index("stage").loc["train", "wall_s"] > 0  # a training takes measurable time
    assert "Time per stage" in (out / "report.html").read_text()
    assert "Time per stage" not in (out / "summary.txt").read_text()  # the summary stays reproducible
    summary = (out / "summary.txt").read_text()
    # resume: the finished share is skipped, its time kept
    assert main(["run", str(_config(tmp_path, stages={"toy": {"scale": 2}})), "--out", str(out), "--no-progress",
                 "--no-png"]) == 0  # fmt: skip
    assert CALLS == ["m"]
    assert pd.read_csv(out / "timings.csv").equals(times) and (out / "summary.txt").read_text() == summary


def test_a_stage_added_to_a_finished_experiment_keeps_the_rest(toy_stage: None, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", str(_config(tmp_path)), "--out", str(out), "--no-progress", "--no-png"]) == 0
    assert CALLS == [] and not (out / "toy").exists()  # not asked for: not run
    weights = max(p.stat().st_mtime for p in (out / "models").rglob("model.safetensors"))
    assert main(["run", str(_config(tmp_path, stages={"toy": {}})), "--out", str(out), "--no-progress",
                 "--no-png"]) == 0  # fmt: skip
    assert CALLS == ["m"]
    assert max(p.stat().st_mtime for p in (out / "models").rglob("model.safetensors")) == weights


def test_unknown_or_invalid_stage_settings_are_refused_before_work(toy_stage: None, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", str(_config(tmp_path, stages={"nope": {}})), "--out", str(out), "--no-progress"]) == 2
    assert "unknown stage(s) nope; registered plug-in stages: toy" in capsys.readouterr().err
    assert main(["run", str(_config(tmp_path, stages={"toy": {"scale": -1}})), "--out", str(out),
                 "--no-progress"]) == 2  # fmt: skip
    assert not out.exists()


def test_watch_shows_each_workers_step_and_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The progress line of jobs in worker processes (reversal trainings, QA finetuning under --jobs)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from probekit.experiment.stage import watch

    run = tmp_path / "model"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 3, "loss": 0.5}\n')
    with ThreadPoolExecutor(2) as pool:
        futures = {"reversal ntp": pool.submit(time.sleep, 2.5), "reversal bico": pool.submit(time.sleep, 0)}
        watch(futures, {"reversal ntp": run, "reversal bico": tmp_path / "none"}, True, "reversal")
    err = capsys.readouterr().err
    assert "reversal ntp step 3 loss 0.500" in err and "reversal bico done" in err
