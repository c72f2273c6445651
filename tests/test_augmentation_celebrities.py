"""experiments/augmentation and experiments/celebrities shrunk to seconds: every stage, table and figure of the
shipped configs (pipeline, not science), including mixed training answered without finetuning and QA finetuned
on one group of people and reported per group."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from probekit.errors import UserError
from probekit.experiment.runner import run_experiment
from probekit.experiment.spec import ExperimentConfig
from probekit.serde import from_dict
from tests.quick import quick_config, quick_record


@pytest.mark.slow
def test_quick_augmentation_experiment(tmp_path: Path) -> None:
    cfg = quick_config("augmentation")
    augs = {d.augmentation for d in cfg.datasets}
    assert augs == {"single", "single+permute", "multi5", "multi5+permute", "single+fullname"}
    mixed = [m for m in cfg.models if m.train.get("qa_mix")]
    assert [m.name for m in mixed] == ["ntp_single_mixed"] and mixed[0].data == "single"
    # three of the six models (the others differ only in their data): finetuned, mixed, and a comparison
    rec = quick_record("augmentation")
    rec["models"] = [m for m in rec["models"] if m["name"] in ("ntp_single", "ntp_multi5_permute", "ntp_single_mixed")]
    rec["datasets"] = [d for d in rec["datasets"] if d["name"] in {m["data"] for m in rec["models"]}]
    cfg = from_dict(ExperimentConfig, rec)
    out = tmp_path / "augmentation"
    res = run_experiment(cfg, out, progress=False, png=False, jobs=2)
    names = {m.name for m in cfg.models}
    assert len(names) == 3
    qa = pd.read_csv(out / "qa.csv")
    assert set(qa["model"]) == names
    assert set(qa.loc[qa["model"] == "ntp_single_mixed", "finetune"]) == {"none"}  # answered as trained
    assert set(qa.loc[qa["model"] != "ntp_single_mixed", "finetune"]) == {"full"}
    assert not (out / "qa" / "ntp_single_mixed" / "finetune").exists()
    corr = pd.read_csv(out / "comparison" / "correlations.csv")
    assert {"pearson", "spearman"} <= set(corr["method"]) and "qa" in set(corr["versus"])
    assert "Storage at the name vs extraction" in res.summary
    patch = pd.read_csv(out / "patch.csv")
    assert set(patch["model"]) == names and set(patch["prompts"]) == {"qa"}
    assert "Activation patching on QA prompts" in res.summary
    assert (out / "figures" / "patch_route.html").exists() and (out / "report.html").exists()


@pytest.mark.slow
def test_quick_celebrities_experiment_finetunes_on_celebrities_and_reports_groups(tmp_path: Path) -> None:
    cfg = quick_config("celebrities")
    assert cfg.qa is not None and cfg.qa.finetune_groups == ["celebrity"]
    out = tmp_path / "celebrities"
    res = run_experiment(cfg, out, progress=False, png=False, jobs=2)
    groups = json.loads((out / "data" / "celebrities_minorities" / "groups.json").read_text())
    control = json.loads((out / "data" / "single_control" / "groups.json").read_text())
    assert groups == control  # the same people in each group in both corpora
    for model in ("ntp_celebrities", "ntp_single_control"):
        preds = [json.loads(line) for line in (out / "qa" / model / "predictions.jsonl").read_text().splitlines()]
        trained = {p["pid"] for p in preds if p["split"] == "train"}
        assert trained and trained <= set(groups["celebrity"])  # no minority question was finetuned on
    by_group = pd.read_csv(out / "qa_by_group.csv")
    test = by_group[(by_group["split"] == "test") & (by_group["task"] == "overall")]
    assert set(zip(test["model"], test["group"])) == {(m, g) for m in ("ntp_celebrities", "ntp_single_control")
                                                      for g in ("celebrity", "minority")}  # fmt: skip
    assert set(by_group.loc[by_group["split"] == "train", "group"]) == {"celebrity"}
    minority_test = 6 * len(set(groups["minority"]) & set(json.loads(
        (out / "data" / "single_control" / "split.json").read_text())["test"]))  # fmt: skip
    assert set(test.loc[test["group"] == "minority", "n"]) == {minority_test}
    assert "QA extraction by group" in res.summary


def test_finetune_groups_must_exist_in_every_evaluated_dataset() -> None:
    rec = quick_record("celebrities")
    rec["datasets"][1].pop("groups")
    with pytest.raises(UserError, match="finetune_groups"):
        from_dict(ExperimentConfig, rec)
    rec = quick_record("augmentation")
    rec["qa"]["model_finetune"] = {"no_such_model": {"method": "none"}}
    with pytest.raises(UserError, match="model_finetune names unknown"):
        from_dict(ExperimentConfig, rec)


@pytest.mark.slow
def test_a_stage_added_to_a_started_experiment_runs_alone(tmp_path: Path) -> None:
    """Adding a whole stage (here patching) to an experiment whose models are trained keeps them; changing a
    setting of a finished stage is still refused."""
    rec = quick_record("augmentation")
    rec["models"] = rec["models"][:2]
    rec["datasets"] = [d for d in rec["datasets"] if d["name"] in {m["data"] for m in rec["models"]}]
    rec["qa"]["model_finetune"] = {}
    rec["control_random"] = False  # what is tested is the stage added, not the probes
    patch = rec.pop("patch")
    out = tmp_path / "run"
    run_experiment(from_dict(ExperimentConfig, rec), out, progress=False, png=False)
    stamp = (out / "models" / "ntp_single" / ".complete").stat().st_mtime_ns
    res = run_experiment(from_dict(ExperimentConfig, {**rec, "patch": patch}), out, progress=False, png=False)
    assert (out / "models" / "ntp_single" / ".complete").stat().st_mtime_ns == stamp  # not retrained
    assert set(pd.read_csv(out / "patch.csv")["model"]) == {"ntp_single", "ntp_single_permute"}
    assert "Activation patching" in res.summary
    changed = {**rec, "patch": patch, "probe": {**rec["probe"], "max_iter": 11}}
    with pytest.raises(UserError, match="changed: probe"):
        run_experiment(from_dict(ExperimentConfig, changed), out, progress=False, png=False)
