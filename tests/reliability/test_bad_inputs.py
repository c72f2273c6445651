"""Bad input across every subcommand: one line ``probekit: error: ...`` naming the problem, exit status 2, no
traceback, and nothing written. Bugs (any exception but a ``UserError`` or a user's path problem) keep their
traceback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from probekit.cli import main
from probekit.errors import UserError, is_user_error

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64}
TRAIN = {"objective": "ntp", "model": TINY, "seq_len": 32, "batch_size": 4, "max_steps": 2, "warmup_steps": 1,
         "eval_windows": 0, "log_every": 1, "seed": 0}  # fmt: skip
EXPERIMENT = {
    "name": "tiny",
    "datasets": [{"name": "s", "n_people": 40, "augmentation": "single", "seed": 0}],
    "models": [{"name": "m", "data": "s", "train": TRAIN}],
    "probe": {"kinds": ["q"], "targets": ["first_token"], "l2_grid": [0.01], "max_iter": 5},
    "control_random": False,
}


@dataclass
class Env:
    root: Path
    data: Path
    run: Path  # a finished tiny training run
    table: Path  # a probe results table
    unrelated: Path  # a non-empty directory probekit did not write
    files: dict[str, Path]

    def out(self, name: str) -> Path:
        return self.root / "outs" / name


def _yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _experiment(**changes: object) -> dict:
    exp = json.loads(json.dumps(EXPERIMENT))
    for dotted, value in changes.items():
        d = exp
        *keys, last = dotted.split("__")
        for k in keys:
            d = d[int(k)] if isinstance(d, list) else d[k]
        d[last] = value
    return exp


@pytest.fixture(scope="module")
def env(tiny_single, tmp_path_factory: pytest.TempPathFactory) -> Env:
    from probekit.data.reversal import ReversalConfig, make_reversal_dataset
    from probekit.reporting.results import write_results
    from probekit.training.config import TrainConfig
    from probekit.training.trainer import train
    from tests.test_plots import table

    root = tmp_path_factory.mktemp("bad")
    data = Path(tiny_single.root)
    run = root / "run"
    train(TrainConfig(data=str(data), out=str(run), **TRAIN), progress=False)
    write_results(table(models=("a",), layers=2), root / "table")
    unrelated = root / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine\n", encoding="utf-8")
    f: dict[str, Path] = {}
    f["train_yaml"] = _yaml(root / "train.yaml", TRAIN)
    f["bad_yaml"] = root / "bad.yaml"
    f["bad_yaml"].write_text("model: {d_model: 32\nlr: [0.1\n", encoding="utf-8")
    f["spec"] = _yaml(root / "spec.yaml", {"kinds": ["p"], "targets": ["first_token"], "max_iter": 5})
    f["spec_thirty"] = _yaml(root / "spec30.yaml", {"kinds": ["q"], "max_iter": "thirty"})
    f["exp"] = _yaml(root / "exp.yaml", EXPERIMENT)
    f["exp_abc"] = _yaml(root / "exp_abc.yaml", _experiment(datasets__0__n_people="abc"))
    f["exp_heads"] = _yaml(root / "exp_heads.yaml", _experiment(models__0__train__model={**TINY, "n_heads": 3}))
    f["exp_layer"] = _yaml(root / "exp_layer.yaml", _experiment(figures_layer=99))
    f["exp_warmup"] = _yaml(root / "exp_warmup.yaml", _experiment(models__0__train__warmup_steps=50))
    f["exp_typo"] = _yaml(root / "exp_typo.yaml", {**EXPERIMENT, "modles": []})
    f["exp_limit"] = _yaml(root / "exp_limit.yaml", _experiment(datasets__0__pool_limits={"majr": 5}))
    f["pool_dir"] = root / "pooldir"
    f["pool_dir"].mkdir()
    f["latin1"] = root / "latin1.txt"
    f["latin1"].write_bytes("Economics\nSoci\xe9t\xe9\n".encode("latin-1"))
    # a dataset with an empty tokenizer.json, and one whose first person is missing from people.jsonl
    f["empty_tok"] = root / "empty_tok"
    shutil.copytree(data, f["empty_tok"])
    (f["empty_tok"] / "tokenizer.json").write_text("", encoding="utf-8")
    f["no_person"] = root / "no_person"
    shutil.copytree(data, f["no_person"])
    lines = (f["no_person"] / "people.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (f["no_person"] / "people.jsonl").write_text("".join(lines[1:]), encoding="utf-8")
    f["reversal"] = make_reversal_dataset(root / "reversal", ReversalConfig(n_per_group=2, n_train_templates=2,
                                                                             n_test_templates=1)).root  # fmt: skip
    return Env(root, data, run, root / "table" / "results.parquet", unrelated, f)


Argv = Callable[[Env], list[str]]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")

# (id, argv, words the one-line message must contain, words it must not contain)
CASES: list[tuple[str, Argv, list[str], list[str]]] = [
    # data bios / reversal / show
    (
        "bios-multi0",
        lambda e: ["data", "bios", "--n", "5", "--augmentation", "multi0", "--out", str(e.out("x"))],
        ["multi0"],
        [],
    ),
    (
        "bios-huge-n",
        lambda e: ["data", "bios", "--n", str(10**12), "--out", str(e.out("x"))],
        ["GiB of memory", "lower N"],
        [],
    ),
    (
        "bios-pool-is-directory",
        lambda e: ["data", "bios", "--n", "5", "--pool", f"majors={e.files['pool_dir']}", "--out", str(e.out("x"))],
        ["is a directory", "--pools-dir"],
        ["not found"],
    ),
    (
        "bios-pool-not-utf8",
        lambda e: ["data", "bios", "--n", "5", "--pool", f"majors={e.files['latin1']}", "--out", str(e.out("x"))],
        ["latin1.txt", "UTF-8"],
        [],
    ),
    (
        "bios-pool-missing",
        lambda e: ["data", "bios", "--n", "5", "--pool", f"majors={e.root / 'nope.txt'}", "--out", str(e.out("x"))],
        ["not found", "nope.txt"],
        [],
    ),
    (
        "bios-pool-limit-word",
        lambda e: ["data", "bios", "--n", "5", "--pool-limit", "major=abc", "--out", str(e.out("x"))],
        ["major=abc", "whole number"],
        [],
    ),
    (
        "reversal-flag-names",
        lambda e: ["data", "reversal", "--n-per-group", "0", "--out", str(e.out("x"))],
        ["--n-per-group"],
        ["n_per_group"],
    ),
    (
        "reversal-templates",
        lambda e: ["data", "reversal", "--train-templates", "100", "--out", str(e.out("x"))],
        ["--train-templates", "--test-templates"],
        ["n_train_templates"],
    ),
    ("show-missing", lambda e: ["data", "show", str(e.root / "nope")], ["does not exist"], []),
    # train
    (
        "train-malformed-yaml",
        lambda e: ["train", "--config", str(e.files["bad_yaml"]), "--data", str(e.data), "--out", str(e.out("x"))],
        ["not valid YAML", "line"],
        [],
    ),
    (
        "train-warmup-over-steps",
        lambda e: [
            "train",
            "--config",
            str(e.files["train_yaml"]),
            "--data",
            str(e.data),
            "--set",
            "warmup_steps=50",
            "--steps",
            "10",
            "--out",
            str(e.out("x")),
        ],
        ["warmup_steps 50 exceeds max_steps 10"],
        [],
    ),
    (
        "train-warmup-over-epochs",
        lambda e: [
            "train",
            "--config",
            str(e.files["train_yaml"]),
            "--data",
            str(e.data),
            "--set",
            "warmup_steps=500",
            "--epochs",
            "1",
            "--out",
            str(e.out("x")),
        ],
        ["warmup_steps 500 exceeds", "epochs budget"],
        [],
    ),
    (
        "train-empty-tokenizer",
        lambda e: [
            "train",
            "--config",
            str(e.files["train_yaml"]),
            "--data",
            str(e.files["empty_tok"]),
            "--out",
            str(e.out("x")),
        ],
        ["tokenizer.json", "not a valid tokenizer"],
        [],
    ),
    (
        "train-person-missing",
        lambda e: [
            "train",
            "--config",
            str(e.files["train_yaml"]),
            "--data",
            str(e.files["no_person"]),
            "--out",
            str(e.out("x")),
        ],
        ["missing from", "people.jsonl"],
        ["KeyError"],
    ),
    (
        "train-heads-not-dividing",
        lambda e: [
            "train",
            "--config",
            str(e.files["train_yaml"]),
            "--data",
            str(e.data),
            "--set",
            "model.n_heads=3",
            "--out",
            str(e.out("x")),
        ],
        ["not divisible by n_heads"],
        [],
    ),
    (
        "train-number-as-word",
        lambda e: [
            "train",
            "--config",
            str(e.files["train_yaml"]),
            "--data",
            str(e.data),
            "--set",
            "lr=abc",
            "--out",
            str(e.out("x")),
        ],
        ["TrainConfig.lr", "abc"],
        [],
    ),
    (
        "train-threads-negative",
        lambda e: [
            "--threads",
            "-1",
            "train",
            "--config",
            str(e.files["train_yaml"]),
            "--data",
            str(e.data),
            "--out",
            str(e.out("x")),
        ],
        ["--threads"],
        [],
    ),
    (
        "train-rerun-suggests-resume",
        lambda e: ["train", "--config", str(e.files["train_yaml"]), "--data", str(e.data), "--out", str(e.run)],
        ["--resume", "already holds a training run"],
        [],
    ),
    ("train-resume-without-run", lambda e: ["train", "--resume", "--out", str(e.out("x"))], ["--config"], []),
    # probe
    pytest.param(
        "probe-cuda-on-cpu",
        lambda e: [
            "probe",
            "--spec",
            str(e.files["spec"]),
            "--model",
            str(e.run),
            "--data",
            str(e.data),
            "--out",
            str(e.out("x")),
            "--device",
            "cuda",
        ],
        ["--device cuda", "cpu"],
        [],
        marks=NO_CUDA,
    ),
    (
        "probe-threads-negative",
        lambda e: [
            "probe",
            "--spec",
            str(e.files["spec"]),
            "--model",
            str(e.run),
            "--data",
            str(e.data),
            "--out",
            str(e.out("x")),
            "--threads",
            "-1",
        ],
        ["--threads"],
        [],
    ),
    (
        "probe-max-iter-word",
        lambda e: [
            "probe",
            "--spec",
            str(e.files["spec_thirty"]),
            "--model",
            str(e.run),
            "--data",
            str(e.data),
            "--out",
            str(e.out("x")),
        ],
        ["max_iter", "thirty"],
        [],
    ),
    (
        "probe-layer-out-of-range",
        lambda e: [
            "probe",
            "--spec",
            str(e.files["spec"]),
            "--model",
            str(e.run),
            "--data",
            str(e.data),
            "--out",
            str(e.out("x")),
            "--layer",
            "99",
        ],
        ["--layer 99"],
        [],
    ),
    (
        "probe-malformed-spec",
        lambda e: [
            "probe",
            "--spec",
            str(e.files["bad_yaml"]),
            "--model",
            str(e.run),
            "--data",
            str(e.data),
            "--out",
            str(e.out("x")),
        ],
        ["not valid YAML"],
        [],
    ),
    # eval
    pytest.param(
        "eval-qa-cuda-on-cpu",
        lambda e: [
            "eval",
            "qa",
            "--checkpoint",
            str(e.run),
            "--data",
            str(e.data),
            "--out",
            str(e.out("x")),
            "--device",
            "cuda",
        ],
        ["--device cuda", "cpu"],
        [],
        marks=NO_CUDA,
    ),
    pytest.param(
        "eval-reversal-cuda-on-cpu",
        lambda e: [
            "eval",
            "reversal",
            "--data",
            str(e.files["reversal"]),
            "--checkpoint",
            str(e.run),
            "--out",
            str(e.out("x")),
            "--device",
            "cuda",
        ],
        ["--device cuda"],
        [],
        marks=NO_CUDA,
    ),
    (
        "eval-reversal-names-real-flag",
        lambda e: [
            "eval",
            "reversal",
            "--data",
            str(e.files["reversal"]),
            "--checkpoint",
            str(e.run),
            "--out",
            str(e.out("x")),
            "--no-png",
        ],
        ["cannot encode", "--train-config"],
        ["--train`", "--train)"],
    ),
    pytest.param(
        "eval-distract-cuda-on-cpu",
        lambda e: [
            "eval",
            "distract",
            "--checkpoint",
            str(e.run),
            "--data",
            str(e.data),
            "--out",
            str(e.out("x")),
            "--device",
            "cuda",
        ],
        ["--device cuda"],
        [],
        marks=NO_CUDA,
    ),
    # patch
    pytest.param(
        "patch-cuda-on-cpu",
        lambda e: ["patch", "--model", str(e.run), "--data", str(e.data), "--out", str(e.out("x")), "--device", "cuda"],
        ["--device cuda"],
        [],
        marks=NO_CUDA,
    ),
    (
        "patch-layer-out-of-range",
        lambda e: [
            "patch",
            "--model",
            str(e.run),
            "--data",
            str(e.data),
            "--out",
            str(e.out("x")),
            "--layers",
            "99",
            "--no-png",
        ],
        ["layers [99]"],
        [],
    ),
    (
        "eval-compare-missing",
        lambda e: ["eval", "compare", str(e.root / "nope"), "--out", str(e.out("x"))],
        ["no evaluation results", "nope"],
        [],
    ),
    # plot
    (
        "plot-layer-out-of-range",
        lambda e: ["plot", "--results", str(e.table), "--out", str(e.out("x")), "--layer", "99", "--no-png"],
        ["--layer 99", "layers 0..1"],
        [],
    ),
    (
        "plot-unrelated-out",
        lambda e: ["plot", "--results", str(e.table), "--out", str(e.unrelated), "--no-png"],
        ["not empty", "no probekit figures"],
        [],
    ),
    (
        "plot-missing-table",
        lambda e: ["plot", "--results", str(e.root / "nope.parquet"), "--out", str(e.out("x"))],
        ["does not exist"],
        [],
    ),
    # run / demo
    (
        "run-malformed-yaml",
        lambda e: ["run", str(e.files["bad_yaml"]), "--out", str(e.out("x"))],
        ["not valid YAML"],
        [],
    ),
    (
        "run-n-people-word",
        lambda e: ["run", str(e.files["exp_abc"]), "--out", str(e.out("x"))],
        ["DatasetSpec.n_people", "integer", "abc"],
        [],
    ),
    ("run-jobs-zero", lambda e: ["run", str(e.files["exp"]), "--out", str(e.out("x")), "--jobs", "0"], ["--jobs"], []),
    (
        "run-jobs-negative",
        lambda e: ["run", str(e.files["exp"]), "--out", str(e.out("x")), "--jobs", "-2"],
        ["--jobs"],
        [],
    ),
    (
        "run-unrelated-out",
        lambda e: ["run", str(e.files["exp"]), "--out", str(e.unrelated)],
        ["not empty", "experiment.json"],
        [],
    ),
    (
        "run-heads-not-dividing",
        lambda e: ["run", str(e.files["exp_heads"]), "--out", str(e.out("x"))],
        ["not divisible by n_heads"],
        [],
    ),
    (
        "run-figures-layer",
        lambda e: ["run", str(e.files["exp_layer"]), "--out", str(e.out("x"))],
        ["figures_layer 99"],
        [],
    ),
    (
        "run-warmup-over-steps",
        lambda e: ["run", str(e.files["exp_warmup"]), "--out", str(e.out("x"))],
        ["warmup_steps 50 exceeds"],
        [],
    ),
    (
        "run-unknown-key",
        lambda e: ["run", str(e.files["exp_typo"]), "--out", str(e.out("x"))],
        ["unknown key", "modles"],
        [],
    ),
    ("run-bad-pool-limit", lambda e: ["run", str(e.files["exp_limit"]), "--out", str(e.out("x"))], ["majr"], []),
    ("demo-jobs-zero", lambda e: ["demo", "--out", str(e.out("x")), "--jobs", "0"], ["--jobs"], []),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


PARAMS = [pytest.param(*c.values, id=c.values[0], marks=c.marks) if hasattr(c, "marks") else pytest.param(*c, id=c[0])
          for c in CASES]  # fmt: skip


@pytest.mark.parametrize("name,argv,must,must_not", PARAMS)
def test_bad_input_is_one_line_error_and_writes_nothing(env: Env, name: str, argv: Argv, must: list[str],
                                                        must_not: list[str], capsys) -> None:  # fmt: skip
    before = {p: _snapshot(p) for p in (env.run, env.unrelated, env.data)}
    out = env.out("x")
    shutil.rmtree(out, ignore_errors=True)
    capsys.readouterr()
    rc = main(argv(env))
    err = capsys.readouterr().err
    assert rc == 2, f"{name}: exit status {rc}, stderr: {err}"
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("probekit: error:")]
    assert len(errors) == 1, err
    for word in must:
        assert word in errors[0], f"{name}: {word!r} not in {errors[0]!r}"
    for word in must_not:
        assert word not in errors[0], f"{name}: {word!r} in {errors[0]!r}"
    assert not out.exists(), f"{name} wrote {out}"
    assert {p: _snapshot(p) for p in before} == before, f"{name} changed an existing directory"


def test_plot_redraws_into_a_directory_of_older_figures(env: Env, tmp_path: Path) -> None:
    old = tmp_path / "figs"
    old.mkdir()
    for name in ("p_grid_a_value.png", "p_grid_a_value.csv", "p_grid_a_value.html", "plotly.min.js"):
        (old / name).write_bytes(b"old")
    assert main(["plot", "--results", str(env.table), "--out", str(old), "--no-png"]) == 0
    assert (old / "provenance.json").exists()


def test_bom_pool_keeps_its_comment_line_out_of_the_names(tmp_path: Path) -> None:
    from probekit.data.pools import load_pools

    f = tmp_path / "first.txt"
    f.write_bytes("\ufeff# first names, one a line\nAlice\tfemale\nBob\tmale\n".encode())
    pools = load_pools({"first_names": f})
    assert pools.first_names == ["Alice", "Bob"] and pools.first_genders == ["female", "male"]


def test_bugs_keep_their_traceback(monkeypatch) -> None:
    """A ValueError from a library (not probekit's own check) is a bug: it propagates with its traceback."""
    import probekit.cli.plot as plot_cli

    def library_failure(args) -> int:
        json.loads("{")  # raises json.JSONDecodeError (a ValueError) inside the json module
        return 0

    def user_failure(args) -> int:
        raise UserError("bad thing; do the other thing")

    monkeypatch.setattr(plot_cli, "cmd_plot", library_failure)
    with pytest.raises(json.JSONDecodeError):
        main(["plot", "--results", "x", "--out", "y"])
    monkeypatch.setattr(plot_cli, "cmd_plot", user_failure)
    assert main(["plot", "--results", "x", "--out", "y"]) == 2
    try:
        json.loads("{")
    except ValueError as e:
        assert not is_user_error(e)
    try:
        from probekit.data.bios import parse_augmentation

        parse_augmentation("multi0")
    except ValueError as e:
        assert is_user_error(e)  # probekit's own checks keep their one-line treatment
    assert is_user_error(UserError("x")) and not is_user_error(KeyError("x"))
    import errno

    assert is_user_error(PermissionError(errno.EACCES, "Permission denied", "/out"))  # a path problem, wherever raised
    assert not is_user_error(OSError(errno.EIO, "I/O error"))


def test_a_plain_value_error_inside_probekit_is_a_bug_with_a_traceback(monkeypatch, tmp_path: Path, capsys) -> None:
    """Only ``UserError`` is one line: a plain ValueError from a broken invariant in probekit's own code (here
    the bootstrap's shape check, reached from ``probekit plot``) propagates with its traceback, while a
    ``UserError`` raised at the same spot stays one line with exit status 2."""
    import traceback

    import numpy as np

    import probekit.reporting.results as results_mod
    from probekit.errors import UserFileNotFoundError

    def buggy_read(paths):  # an internal invariant broken by a bug, not by the user's input
        from probekit.stats import bootstrap_means

        return bootstrap_means(np.zeros((1, 3)), np.zeros(2), 10)

    monkeypatch.setattr(results_mod, "read_results", buggy_read)
    out = tmp_path / "figs"
    with pytest.raises(ValueError) as info:
        main(["plot", "--results", "x.csv", "--out", str(out)])
    assert not isinstance(info.value, UserError) and not is_user_error(info.value)
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].filename.endswith("stats.py")  # raised inside probekit, and still not a one-line error
    assert "probekit: error:" not in capsys.readouterr().err

    def user_read(paths):
        raise UserFileNotFoundError("results table x.csv does not exist; run `probekit probe` first")

    monkeypatch.setattr(results_mod, "read_results", user_read)
    assert main(["plot", "--results", "x.csv", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["probekit: error: results table x.csv does not exist; run `probekit probe` first"]
    assert isinstance(UserFileNotFoundError("x"), FileNotFoundError) and is_user_error(UserFileNotFoundError("x"))


def test_corrected_experiment_replaces_a_config_that_produced_nothing(tmp_path: Path) -> None:
    from probekit.experiment.runner import _check_out
    from probekit.experiment.spec import ExperimentConfig, config_record
    from probekit.serde import from_dict

    cfg = from_dict(ExperimentConfig, json.loads(json.dumps(EXPERIMENT)))
    out = tmp_path / "run"
    out.mkdir()
    old = config_record(cfg)  # what a run writes to experiment.json
    old["models"][0]["train"]["model"] = {**TINY, "n_heads": 3}  # as written by an earlier, refused attempt
    (out / "experiment.json").write_text(json.dumps(old), encoding="utf-8")
    _check_out(cfg, out)  # no stage has produced anything: the corrected config is accepted
    (out / "data" / "s").mkdir(parents=True)
    (out / "data" / "s" / "manifest.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="changed: models"):
        _check_out(cfg, out)


def test_relative_and_absolute_paths_are_the_same_run(tmp_path: Path, monkeypatch) -> None:
    from probekit.training.config import config_differences

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert config_differences({"data": "data", "lr": 1}, {"data": str(tmp_path / "data"), "lr": 1}) == []
    assert config_differences({"data": "data"}, {"data": str(tmp_path / "other")}) != []
