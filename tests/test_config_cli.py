"""Typed config sections and the command-line flags generated from the config dataclasses.

``tests/data/config_records.json`` holds what every committed config under ``experiments/`` and ``probes/``
and the built-in demo serialised to before the sections were typed (``config_record`` for experiments, which
is ``experiment.json``; ``to_dict`` for the rest; and the settings each stage is run with): the typed configs
must give exactly the same, so runs started before keep resuming and give the same numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from probekit.cli import build_parser, main
from probekit.data.distract import DistractConfig
from probekit.data.reversal import ReversalConfig
from probekit.evaluate.config import DistractEvalConfig
from probekit.experiment.spec import ExperimentConfig, config_record, demo_config, load_experiment
from probekit.model.config import ModelConfig
from probekit.patching.config import PatchConfig
from probekit.probes.config import EmbedProbeConfig
from probekit.probes.spec import ProbeSpec, load_spec
from probekit.serde import Section, field_docs, from_dict, load_mapping, to_dict
from probekit.training.config import FinetuneConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RECORDS = json.loads((ROOT / "tests" / "data" / "config_records.json").read_text(encoding="utf-8"))


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _experiment_views(cfg: ExperimentConfig) -> dict[str, Any]:
    """``experiment.json`` and the settings every stage of the experiment runs with."""
    out: dict[str, Any] = {"record": config_record(cfg), "runs": {}, "finetune": {}, "embed": None, "reversal": None}
    for r in cfg.runs():
        out["runs"][r.key] = to_dict(from_dict(TrainConfig, {**r.train, "data": "D", "out": "O"}))
    out["probe"] = to_dict(from_dict(ProbeSpec, {"name": cfg.name, **cfg.probe}))
    if cfg.embed_probe is not None:
        spec = {"name": cfg.name + "_embed_update", "readings": ["causal"], **cfg.embed_probe, "frozen": False}
        out["embed"] = to_dict(from_dict(ProbeSpec, spec))
    for what in ("qa", "inverse"):
        ev = getattr(cfg, what)
        if ev is not None:
            out["finetune"][what] = to_dict(from_dict(FinetuneConfig, dict(ev.finetune)))
    if cfg.reversal is not None:
        rv = cfg.reversal.train
        out["reversal"] = {o: to_dict(from_dict(TrainConfig, {**rv, "objective": o, "data": "D", "out": "O"}))
                           for o in cfg.reversal.objectives}  # fmt: skip
    return json.loads(json.dumps(out))


LOADERS = {
    "ExperimentConfig": lambda f: _experiment_views(load_experiment(f)),
    "TrainConfig": lambda f: to_dict(from_dict(TrainConfig, load_mapping(f))),
    "ProbeSpec": lambda f: to_dict(load_spec(f)),
    "DistractEvalConfig": lambda f: to_dict(from_dict(DistractEvalConfig, load_mapping(f))),
}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_configs_serialise_as_before_sections_were_typed(name: str) -> None:
    for kind, expected in RECORDS[name].items():
        loaded = _experiment_views(demo_config()) if name == "DEMO" else LOADERS[kind](ROOT / name)
        got = json.loads(json.dumps(loaded))
        assert _json(got) == _json(expected), f"{name} as {kind} serialises differently"


def test_every_experiment_section_records_exactly_what_its_yaml_gives() -> None:
    for path in sorted(ROOT.glob("experiments/*/config.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        rec = config_record(load_experiment(path))
        for i, m in enumerate(raw["models"]):
            assert rec["models"][i]["train"] == m.get("train", {}), path
        assert rec["probe"] == raw.get("probe", {}), path
        for stage in ("qa", "inverse"):
            if raw.get(stage) is not None:
                assert rec[stage]["finetune"] == raw[stage].get("finetune", {}), path


def test_a_section_is_typed_keeps_what_was_written_and_builds_the_full_config() -> None:
    cfg = from_dict(TrainConfig, {"model": {"d_model": 64, "rope_theta": "1e4"}, "max_steps": 3})
    assert isinstance(cfg.model, Section) and cfg.model.schema is ModelConfig
    assert dict(cfg.model) == {"d_model": 64, "rope_theta": "1e4"}  # as written: records stay the same
    assert to_dict(cfg)["model"] == {"d_model": 64, "rope_theta": "1e4"}
    built = cfg.model.build(vocab_size=10)
    assert isinstance(built, ModelConfig) and built.rope_theta == 1e4 and built.n_layers == 4
    assert TrainConfig(model={"n_layers": 2}).model == {"n_layers": 2}  # a mapping in code becomes a section
    with pytest.raises(ValueError, match=r"TrainConfig.model: unknown ModelConfig field\(s\) \['d_modle'\]"):
        from_dict(TrainConfig, {"model": {"d_modle": 8}})
    with pytest.raises(ValueError, match=r"TrainConfig.model.n_layers must be an integer, got 'two'"):
        from_dict(TrainConfig, {"model": {"n_layers": "two"}})
    with pytest.raises(ValueError, match=r"ModelSpec.train.model.n_heads must be an integer"):
        bad = {"name": "m", "data": "s", "train": {"model": {"n_heads": []}}}
        from_dict(ExperimentConfig, {"name": "x", "datasets": [{"name": "s"}], "models": [bad]})
    spec = from_dict(ExperimentConfig, {"name": "x", "datasets": [{"name": "s"}], "models": [],
                                        "probe": {"threads": None}})  # fmt: skip
    assert dict(spec.probe) == {"threads": None}  # an explicit null is kept, not dropped as "unset"


DOCUMENTED = [TrainConfig, ModelConfig, FinetuneConfig, ProbeSpec, EmbedProbeConfig, PatchConfig, ReversalConfig,
              DistractEvalConfig, DistractConfig]  # fmt: skip


@pytest.mark.parametrize("cls", DOCUMENTED, ids=[c.__name__ for c in DOCUMENTED])
def test_every_field_behind_a_flag_is_documented(cls: type) -> None:
    missing = [name for name, doc in field_docs(cls).items() if not doc]
    assert not missing, f"{cls.__name__} fields without a doc comment: {missing}"


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


COMMANDS = [(("train",), "train_flags"), (("probe",), "spec_flags"), (("patch",), "patch_flags"),
            (("eval", "qa"), "finetune_flags"), (("eval", "inverse"), "finetune_flags"),
            (("eval", "distract"), "distract_flags"), (("data", "reversal"), "reversal_flags")]  # fmt: skip


@pytest.mark.parametrize("argv,attr", COMMANDS, ids=[" ".join(a) for a, _ in COMMANDS])
def test_help_explains_every_generated_flag(argv: tuple[str, ...], attr: str, capsys) -> None:
    text = _help(capsys, *argv)
    parser = build_parser(only=[argv[0]])
    sub = parser._subparsers._group_actions[0].choices[argv[0]]  # type: ignore[union-attr]
    if len(argv) > 1:
        sub = sub._subparsers._group_actions[0].choices[argv[1]]  # type: ignore[union-attr]
    flags = sub.get_default(attr)
    assert flags is not None and flags.flags
    for flag in flags.flags.values():
        assert flag.doc, f"{flag.option}: its field has no doc"
        assert flag.option in text, flag.option
        assert " ".join(flag.doc.split())[:40] in text, (flag.option, flag.doc)


def test_train_flags_set_the_config_fields(tmp_path: Path) -> None:
    from probekit.cli.train import build_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: {d_model: 32, n_heads: 2}\nmax_steps: 5\nwarmup_steps: 1\nlr: 1e-3\n")
    argv = ["train", "--config", str(cfg_file), "--out", str(tmp_path / "o"), "--model.n-layers", "3",
            "--model.no-fast-path", "--epochs", "2", "--betas", "0.8,0.9", "--lr", "3e-4", "--eval-holdout",
            "--objective-settings", "{mask_ratio: 0.2}", "--init-from", "null", "--set", "seed=4"]  # fmt: skip
    args = build_parser(only=["train"]).parse_args(argv)
    cfg = build_config(args)
    assert dict(cfg.model) == {"d_model": 32, "n_heads": 2, "n_layers": 3, "fast_path": False}
    assert (cfg.max_steps, cfg.epochs, cfg.betas, cfg.lr) == (None, 2.0, (0.8, 0.9), 3e-4)  # one budget replaces
    assert cfg.eval_holdout and cfg.objective_settings == {"mask_ratio": 0.2} and cfg.init_from is None
    assert cfg.seed == 4 and cfg.warmup_steps == 1  # --set still applies; unflagged settings keep the file's
    bad = build_parser(only=["train"]).parse_args(["train", "--config", str(cfg_file), "--model.n-layers", "x"])
    with pytest.raises(ValueError, match=r"--model.n-layers 'x': the setting must be an integer"):
        build_config(bad)
    two = build_parser(only=["train"]).parse_args(["train", "--config", str(cfg_file), "--steps", "3",
                                                   "--tokens", "9"])  # fmt: skip
    with pytest.raises(ValueError, match="give one budget flag, not --steps and --tokens"):
        build_config(two)


def test_eval_finetune_flags_keep_their_names_and_defaults() -> None:
    from probekit.cli.eval import _finetune_cfg

    parser = build_parser(only=["eval"])
    base = ["eval", "qa", "--checkpoint", "c", "--data", "d", "--out", "o"]
    assert _finetune_cfg(parser.parse_args(base)) == FinetuneConfig()
    args = parser.parse_args([*base, "--finetune", "lora", "--steps", "7", "--no-merge", "--lora-targets",
                              "q_proj,k_proj", "--ft-objective", "bico", "--seed", "3"])  # fmt: skip
    ft = _finetune_cfg(args)
    assert (ft.method, ft.max_steps, ft.epochs, ft.merge, ft.lora_targets, ft.objective, ft.seed) == (
        "lora", 7, None, False, ("q_proj", "k_proj"), "bico", 3)  # fmt: skip


def test_eval_distract_settings_are_generated_flags_over_the_config(tmp_path: Path) -> None:
    """``--seed``, ``--eval-batch-size`` and ``--warmup-steps`` of ``eval distract`` are generated from
    DistractEvalConfig (``--seed`` and ``--warmup-steps`` set two fields each): a flag replaces the file's
    value, a flag left out keeps it."""
    from probekit.cli.eval import _distract_cfg

    parser = build_parser(only=["eval"])
    base = ["eval", "distract", "--checkpoint", "c", "--data", "d", "--out", "o"]
    flags = parser.parse_args(base).distract_flags.options()
    assert (flags["seed"], flags["distract.seed"], flags["batch_size"]) == ("--seed", "--seed", "--eval-batch-size")
    assert flags["finetune.warmup_steps"] == "--finetune.warmup-steps"  # each field keeps its own flag too
    assert _distract_cfg(parser.parse_args(base)) == DistractEvalConfig()
    cfg_file = tmp_path / "d.yaml"
    cfg_file.write_text("seed: 3\nbatch_size: 8\ndistract: {seed: 4}\nfinetune: {warmup_steps: 7, epochs: 2}\n")
    cfg = _distract_cfg(parser.parse_args([*base, "--config", str(cfg_file)]))
    assert (cfg.seed, cfg.distract.seed, cfg.batch_size, cfg.finetune.warmup_steps) == (3, 4, 8, 7)
    argv = [*base, "--config", str(cfg_file), "--seed", "5", "--eval-batch-size", "16", "--warmup-steps", "2",
            "--rewrite-epochs", "3"]  # fmt: skip
    cfg = _distract_cfg(parser.parse_args(argv))
    assert (cfg.seed, cfg.distract.seed, cfg.batch_size) == (5, 5, 16)
    assert (cfg.finetune.warmup_steps, cfg.rewrite_finetune.warmup_steps) == (2, 2)
    assert (cfg.finetune.epochs, cfg.rewrite_finetune.epochs) == (2, 3)
    with pytest.raises(ValueError, match=r"--eval-batch-size must be a whole number >= 1"):
        _distract_cfg(parser.parse_args([*base, "--eval-batch-size", "0"]))
    with pytest.raises(ValueError, match=r"--warmup-steps 'x': the setting must be an integer"):
        _distract_cfg(parser.parse_args([*base, "--warmup-steps", "x"]))


def test_command_line_start_imports_no_torch() -> None:
    code = ("import sys\nfrom probekit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'probekit --help imported torch'\n")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "probe" in r.stdout


def test_run_set_changes_named_entries_all_entries_or_sections_and_nothing_else() -> None:
    """``probekit run --set KEY=VALUE``: a dotted path, an entry's name or * through a list, a YAML value; entries
    that shared a YAML anchor are set apart; the file's own data is not touched."""
    from probekit.serde import apply_settings

    config = Path("experiments/shared_names/levers.yaml")
    data = load_mapping(config, "experiment config")
    assert data["datasets"][0]["name_pools"] is data["datasets"][1]["name_pools"]  # one anchor, one object
    before = json.dumps(data, sort_keys=True)
    changed = apply_settings(data, ["datasets.single_n12.name_pools.first=50", "models.*.train.seed=3",
                                    "probe.kinds=[q]", "qa.finetune.epochs=5", "recall=false"])  # fmt: skip
    assert json.dumps(data, sort_keys=True) == before
    pools = {d["name"]: d["name_pools"] for d in changed["datasets"]}
    assert pools["single_n12"] == {"first": 50, "middle": 12, "last": 12}
    assert all(p == {"first": 12, "middle": 12, "last": 12} for n, p in pools.items() if n != "single_n12")
    assert {m["train"]["seed"] for m in changed["models"]} == {3}
    assert changed["probe"]["kinds"] == ["q"] and changed["qa"]["finetune"]["epochs"] == 5
    assert changed["recall"] is False
    created = apply_settings({"models": [{"name": "m"}]}, ["models.m.train.tokens=1000"])
    assert created == {"models": [{"name": "m", "train": {"tokens": 1000}}]}
    for bad, message in ((["datasets.nope.seed=1"], "no entry named 'nope'"), (["probe"], "must look like KEY=VALUE"),
                         (["probe..kinds=[q]"], "must look like KEY=VALUE"), (["datasets.*=1"], "name a setting"),
                         (["probe.max_iter.first=1"], "not a section of settings"),
                         (["probe.kinds.first=1"], "list of values, not of named entries"),
                         (["probe.kinds=[q"], "not valid YAML")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            apply_settings(data, bad)


def test_run_set_reaches_the_checked_config_and_its_errors_come_before_work(tmp_path: Path, capsys) -> None:
    cfg = load_experiment("experiments/objectives", ["datasets.*.name_pools={first: 12, middle: 12, last: 12}"])
    assert all(d.name_pools == {"first": 12, "middle": 12, "last": 12} for d in cfg.datasets)
    assert load_experiment("experiments/objectives").datasets[0].name_pools != cfg.datasets[0].name_pools
    out = tmp_path / "run"
    assert main(["run", "experiments/objectives", "--set", "probe.bogus=1", "--out", str(out)]) == 2
    assert "unknown ProbeSpec field(s) ['bogus']" in capsys.readouterr().err and not out.exists()
    assert main(["run", "experiments/objectives", "--set", "datasets.*.name_pools={first: 2, middle: 2, last: 2}",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "fewer than the 300 people" in capsys.readouterr().err and not out.exists()


def test_run_set_gives_each_entry_of_a_star_path_its_own_value() -> None:
    from probekit.serde import apply_settings

    data = {"datasets": [{"name": "a"}, {"name": "b"}]}
    out = apply_settings(data, ["datasets.*.name_pools={first: 12, last: 12}", "datasets.a.name_pools.first=50"])
    assert [d["name_pools"]["first"] for d in out["datasets"]] == [50, 12]
