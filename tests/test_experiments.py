"""The stage runner: a tiny experiment end to end, resume by skipping finished stages, config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probekit.experiment.runner import run_experiment
from probekit.experiment.spec import demo_config, load_experiment

pytestmark = pytest.mark.slow  # runs whole experiments

TINY_TRAIN = {"objective": "ntp", "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64, "n_ctx": 128},
              "seq_len": 64, "batch_size": 8, "max_steps": 12, "warmup_steps": 2, "save_every": 6,
              "seed": 0}  # fmt: skip


def tiny_config(**kw):
    base = dict(
        datasets=[{"name": "s", "n_people": 40, "augmentation": "single", "pool_limits": {"major": 5}}],
        models=[{"name": "m", "data": "s", "train": TINY_TRAIN}],
        probe={"kinds": ["p", "q"], "targets": ["first_token"], "l2_grid": [0.01], "max_iter": 20},
        reversal=None,  # the demo's reversal stage trains two models for minutes
    )
    base.update(kw)
    return demo_config(**base)


@pytest.mark.slow
def test_tiny_experiment_runs_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    res = run_experiment(tiny_config(), out, progress=False, png=False)
    assert (out / "results.parquet").exists() and (out / "summary.txt").exists()
    models = set(res.probe_table["model"])
    assert models == {"m", "m (random init)"}
    # 2-layer model: 3 resid points; P: 6 positions x 6 attributes, Q: 6 attributes, per point and model
    assert len(res.probe_table) == 2 * 3 * (36 + 6)
    assert "P own pos" in res.summary and any(f.suffix == ".html" for f in res.figures)
    weights = out / "models" / "m" / "checkpoints"
    mtime = max(p.stat().st_mtime for p in weights.rglob("model.safetensors"))
    again = run_experiment(tiny_config(), out, progress=False, png=False)  # every stage is skipped
    assert max(p.stat().st_mtime for p in weights.rglob("model.safetensors")) == mtime
    assert again.probe_table.equals(res.probe_table)
    with pytest.raises(ValueError, match="different experiment config"):
        run_experiment(tiny_config(probe={"kinds": ["q"]}), out, progress=False, png=False)


def test_config_errors_before_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        tiny_config(models=[{"name": "m", "data": "nope", "train": TINY_TRAIN}])
    with pytest.raises(ValueError, match="unknown augmentation"):
        tiny_config(datasets=[{"name": "s", "n_people": 10, "augmentation": "multi2+shuffle"}])
    with pytest.raises(ValueError, match="budget"):
        tiny_config(models=[{"name": "m", "data": "s", "train": {**TINY_TRAIN, "max_steps": None}}])
    with pytest.raises(ValueError, match=r"unknown probe kinds|probe kinds"):
        tiny_config(probe={"kinds": ["z"]})
    with pytest.raises(FileNotFoundError):
        load_experiment(tmp_path / "missing.yaml")


def test_shipped_experiment_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[1] / "experiments"
    configs = sorted(root.glob("*/config.yaml"))
    for c in configs:
        load_experiment(c)


def test_seeds_axis_trains_probes_and_aggregates_each_seed(tmp_path: Path) -> None:
    out = tmp_path / "seeds"
    cfg = tiny_config(seeds=[3, 4], seed_data=True, control_random=False,
                      probe={"kinds": ["q"], "targets": ["first_token"], "l2_grid": [0.01], "max_iter": 20,
                             "bootstrap": 50})  # fmt: skip
    res = run_experiment(cfg, out, progress=False, png=False)
    for s in (3, 4):
        assert (out / "models" / "m" / f"seed_{s}" / ".complete").exists()
        assert (out / "data" / "s" / f"seed_{s}" / "manifest.json").exists()
    assert sorted(res.probe_table["seed"].unique()) == [3, 4]
    assert set(res.probe_table["model"]) == {"m"}  # one model name, two seeds
    assert "(n=2)" in res.summary  # mean +- sd over the seeds
    from probekit.model.checkpoint import load_checkpoint

    w = [load_checkpoint(out / "models" / "m" / f"seed_{s}")[0].state_dict() for s in (3, 4)]
    # different seeds: different people (so vocabularies) and different weights
    assert any(w[0][k].shape != w[1][k].shape or not (w[0][k] == w[1][k]).all() for k in w[0])
    q = w[0]["blocks.0.attn.q_proj.weight"], w[1]["blocks.0.attn.q_proj.weight"]
    assert not (q[0] == q[1]).all()
    with pytest.raises(ValueError, match="seeds"):
        tiny_config(seeds=[1, 1])
    with pytest.raises(ValueError, match="seed_data"):
        tiny_config(seed_data=True)


def test_qa_and_inverse_search_are_stages(tmp_path: Path) -> None:
    ft = {"method": "full", "max_steps": 3, "batch_size": 8, "warmup_steps": 1}
    cfg = tiny_config(control_random=False, probe={"kinds": ["q"], "targets": ["first_token"], "l2_grid": [0.01],
                                                   "max_iter": 10, "bootstrap": 20},
                      qa={"finetune": ft},
                      inverse={"finetune": ft, "attributes": ["birth_city", "company"]})  # fmt: skip
    res = run_experiment(cfg, tmp_path / "ev", progress=False, png=False)
    assert res.inverse_table is not None and res.qa_table is not None
    assert set(res.inverse_table["task"]) == {"birth_city+company", "overall"}
    assert {"ci_low", "ci_high", "seed"} <= set(res.inverse_table.columns)
    assert (tmp_path / "ev" / "inverse" / "m" / "predictions.jsonl").exists()
    assert "Inverse search (attributes -> full name) on P_test" in res.summary and "QA extraction" in res.summary
    with pytest.raises(ValueError, match=r"inverse.attributes"):
        tiny_config(inverse={"attributes": ["shoe_size"]})
    with pytest.raises(ValueError, match=r"inverse.models"):
        tiny_config(inverse={"models": ["nope"]})


def test_reversal_stage_trains_and_evaluates_each_objective(tmp_path: Path) -> None:
    tiny = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64, "n_ctx": 64}, "seq_len": 48,
            "batch_size": 16, "max_steps": 4, "warmup_steps": 1, "save_every": 2, "seed": 0}  # fmt: skip
    rv = {"objectives": ["ntp", "bico"], "data": {"n_per_group": 4, "n_train_templates": 3, "n_test_templates": 2},
          "train": tiny}  # fmt: skip
    cfg = tiny_config(control_random=False, probe={"kinds": ["q"], "targets": ["first_token"], "l2_grid": [0.01],
                                                   "max_iter": 10, "bootstrap": 20}, reversal=rv)  # fmt: skip
    res = run_experiment(cfg, tmp_path / "rv", progress=False, png=False)
    t = res.reversal_table
    assert t is not None and set(t["model"]) == {"ntp", "bico"}
    assert {"N2D", "D2N", "N2D-reverse", "D2N-reverse"} <= set(t["task"])
    assert (tmp_path / "rv" / "reversal.csv").exists() and "Reversal curse" in res.summary
    assert any(f.stem == "reversal_exact_match" for f in res.figures)
    with pytest.raises(ValueError, match=r"reversal.objectives"):
        tiny_config(reversal={"objectives": ["mlm"]})


@pytest.mark.slow
def test_models_can_be_added_to_a_finished_experiment(tmp_path: Path) -> None:
    out = tmp_path / "grow"
    run_experiment(tiny_config(control_random=False), out, progress=False, png=False)
    weights = out / "models" / "m" / "checkpoints"
    mtime = max(p.stat().st_mtime for p in weights.rglob("model.safetensors"))
    two = [{"name": "m", "data": "s", "train": TINY_TRAIN},
           {"name": "m2", "data": "s", "train": {**TINY_TRAIN, "seed": 1}}]
    relabelled = tiny_config(control_random=False, models=two, name="grown", notes="m and a second seed")
    res = run_experiment(relabelled, out, progress=False, png=False)  # a new name or notes invalidates nothing
    assert set(res.probe_table["model"]) == {"m", "m2"}
    record = json.loads((out / "experiment.json").read_text())
    assert (record["name"], record["notes"]) == ("grown", "m and a second seed")
    assert max(p.stat().st_mtime for p in weights.rglob("model.safetensors")) == mtime  # m was not retrained
    changed = [{"name": "m", "data": "s", "train": {**TINY_TRAIN, "seed": 5}}]
    with pytest.raises(ValueError, match="different experiment config"):  # changing a finished model is refused
        run_experiment(tiny_config(control_random=False, models=changed), out, progress=False, png=False)


@pytest.mark.slow
def test_models_on_a_new_dataset_can_be_added_but_a_changed_dataset_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "grow"
    run_experiment(tiny_config(control_random=False), out, progress=False, png=False)
    s = {"name": "s", "n_people": 40, "augmentation": "single", "pool_limits": {"major": 5}}
    p = {"name": "p", "n_people": 40, "augmentation": "single+permute", "pool_limits": {"major": 5}}
    two = [{"name": "m", "data": "s", "train": TINY_TRAIN}, {"name": "mp", "data": "p", "train": TINY_TRAIN}]
    res = run_experiment(tiny_config(control_random=False, datasets=[s, p], models=two), out, progress=False,
                         png=False)  # fmt: skip
    assert set(res.probe_table["model"]) == {"m", "mp"}
    changed = [{**s, "n_people": 41}, p]
    with pytest.raises(ValueError, match="changed: datasets"):
        run_experiment(tiny_config(control_random=False, datasets=changed, models=two), out, progress=False,
                       png=False)  # fmt: skip


@pytest.mark.slow
def test_part_of_an_experiment_runs_first_and_the_rest_joins_later(tmp_path: Path) -> None:
    import json

    out = tmp_path / "part"
    s = {"name": "s", "n_people": 40, "augmentation": "single", "pool_limits": {"major": 5}}
    p = {"name": "p", "n_people": 40, "augmentation": "single+permute", "pool_limits": {"major": 5}}
    two = [{"name": "m", "data": "s", "train": TINY_TRAIN}, {"name": "mp", "data": "p", "train": TINY_TRAIN}]
    cfg = tiny_config(control_random=False, datasets=[s, p], models=two, qa={"models": ["mp"], "finetune":
                      {"method": "full", "epochs": 1, "warmup_steps": 1}})  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown model.*nope.*m, mp"):  # checked before any work
        run_experiment(cfg, out, progress=False, png=False, models=["nope"])
    assert not out.exists()
    res = run_experiment(cfg, out, progress=False, png=False, models=["m"])
    assert set(res.probe_table["model"]) == {"m"} and res.qa_table is None  # qa names only mp
    assert not (out / "models" / "mp").exists() and not (out / "data" / "p").exists()  # mp's dataset not built
    assert res.summary.startswith("this run covered models m (--models); not in these tables: mp")
    recorded = json.loads((out / "experiment.json").read_text())
    assert [m["name"] for m in recorded["models"]] == ["m", "mp"]  # the whole config is the experiment's record
    weights = out / "models" / "m" / "checkpoints"
    mtime = max(f.stat().st_mtime for f in weights.rglob("model.safetensors"))
    full = run_experiment(cfg, out, progress=False, png=False)  # the rest joins; m is kept
    assert set(full.probe_table["model"]) == {"m", "mp"} and set(full.qa_table["model"]) == {"mp"}
    assert max(f.stat().st_mtime for f in weights.rglob("model.safetensors")) == mtime
    assert not full.summary.startswith("this run covered")
    assert full.probe_table[full.probe_table["model"] == "m"].reset_index(drop=True).equals(
        res.probe_table.reset_index(drop=True))  # fmt: skip


def test_cli_run_passes_its_options_to_the_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import probekit.experiment.runner as experiments
    from probekit.cli import main

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake(cfg: object, out: object, **kw: object) -> None:
        seen.update(kw, out=out)
        raise Stop

    monkeypatch.setattr(experiments, "run_experiment", fake)
    root = Path(__file__).resolve().parents[1] / "experiments"
    with pytest.raises(Stop):
        main(["run", str(root / "objectives"), "--out", str(tmp_path / "x"), "--no-progress", "--jobs", "2",
              "--no-png"])
    assert seen["progress"] is False and seen["jobs"] == 2 and seen["png"] is False and seen["models"] is None
    with pytest.raises(Stop):
        main(["run", str(root / "objectives"), "--out", str(tmp_path / "x"), "--models", "a,b", "c"])
    assert seen["models"] == ["a", "b", "c"]
    with pytest.raises(Stop):
        main(["run", str(root / "objectives"), "--out", str(tmp_path / "x")])
    assert seen["progress"] is True and seen["jobs"] == 1


def test_a_model_added_with_its_own_finetuning_keeps_the_finished_ones(tmp_path: Path) -> None:
    """Adding a model together with its ``qa.model_finetune`` entry is adding a model; changing the entry of a
    model that exists is a changed setting (checked read-only, as ``probekit run --dry-run`` checks it)."""
    import json

    from probekit.experiment.runner import dry_run
    from probekit.experiment.spec import config_record

    qa = {"finetune": {"method": "full", "epochs": 1, "warmup_steps": 1}, "model_finetune": {}}
    one = [{"name": "m", "data": "s", "train": TINY_TRAIN}]
    out = tmp_path / "run"
    (out / "models" / "m").mkdir(parents=True)  # a started experiment
    (out / "experiment.json").write_text(json.dumps(config_record(tiny_config(models=one, qa=qa))))
    two = [*one, {"name": "mixed", "data": "s", "train": {**TINY_TRAIN, "qa_mix": 0.5}}]
    grown = {**qa, "model_finetune": {"mixed": {"method": "none"}}}
    assert "train mixed" in dry_run(tiny_config(models=two, qa=grown), out)
    changed = {**qa, "model_finetune": {"m": {"method": "none"}, "mixed": {"method": "none"}}}
    with pytest.raises(ValueError, match="changed: models, qa"):
        dry_run(tiny_config(models=two, qa=changed), out)


def _bar_job(n: int, command: list[str] | None) -> None:
    """A job as the stages write them: bars only when run here (no command line of a parent)."""
    from tqdm.auto import tqdm

    for _ in tqdm(range(n), desc="bar job", disable=command is not None):
        pass


def test_jobs_run_here_draw_no_bars_under_no_progress(capsys: pytest.CaptureFixture[str]) -> None:
    """A stage's jobs run in this process (--jobs 1, or one job left) draw their own bars; --no-progress hides
    them too (the job gets this process's command line, as a worker gets its parent's)."""
    from probekit.experiment.stage import in_pool

    in_pool([("one", _bar_job, (3,))], 1, progress=False)
    assert "bar job" not in capsys.readouterr().err
    in_pool([("one", _bar_job, (3,))], 1, progress=True)
    assert "bar job" in capsys.readouterr().err
