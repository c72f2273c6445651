"""The command line: help, data generation, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from probekit.cli import build_parser, main


def test_help_lists_subcommands() -> None:
    text = build_parser().format_help()
    for cmd in ("data",):
        assert cmd in text


def test_data_bios_cli_writes_dataset(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    assert main(["data", "bios", "--n", "20", "--augmentation", "multi2", "--out", str(out)]) == 0
    assert (out / "manifest.json").exists() and "20 people" in capsys.readouterr().out
    assert main(["data", "bios", "--n", "20", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_bad_augmentation_is_one_line_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "probekit.cli", "data", "bios", "--n", "5", "--augmentation", "multi0",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "multi0" in r.stderr
    assert not (tmp_path / "x").exists()


def test_pool_limit_that_is_not_a_number_names_the_problem(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    assert main(["data", "bios", "--n", "20", "--pool-limit", "major=abc", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "major=abc" in err and "whole number" in err
    assert not out.exists()


def test_data_bios_points_out_the_unique_name_shortcut(tmp_path: Path, capsys) -> None:
    """With the full name pools and few people most last names are unique: ``data bios`` says so and how to share
    names; with shared pools it does not."""
    assert main(["data", "bios", "--n", "40", "--out", str(tmp_path / "full")]) == 0
    note = [line for line in capsys.readouterr().out.splitlines() if "note:" in line]
    assert len(note) == 1 and " of 40 people have a last name of their own" in note[0] and "--name-pool" in note[0]
    alone = int(note[0].split("note: ")[1].split(" of ")[0])
    assert 20 < alone <= 40


def test_data_bios_settings_come_from_its_config_flags_or_file_alike(tmp_path: Path, capsys) -> None:
    """``probekit data bios`` flags are BiosConfig's fields: mapping fields once per key (or a YAML mapping), and a
    --config file gives the same dataset; a malformed item is a one-line error before any work."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["data", "bios", "--n", "24", "--name-pool", "first=4", "--name-pool", "middle=4", "--name-pool",
                 "last=4", "--pool-limit", "major=3", "--seed", "2", "--out", str(a)]) == 0  # fmt: skip
    out_a = capsys.readouterr().out
    assert "people per name: first 6.00, middle 6.00, last 6.00" in out_a and "note:" not in out_a
    assert main(["data", "bios", "--n-people", "24", "--name-pool", "{first: 4, middle: 4, last: 4}", "--pool-limit",
                 "major=3", "--seed", "2", "--out", str(b)]) == 0  # fmt: skip
    cfg = tmp_path / "bios.yaml"
    cfg.write_text("n_people: 24\nseed: 1\nname_pools: {first: 4, middle: 4, last: 4}\npool_limits: {major: 3}\n")
    assert main(["data", "bios", "--config", str(cfg), "--seed", "2", "--out", str(c)]) == 0  # the flag wins
    for f in ("bios.jsonl", "people.jsonl", "qa.jsonl", "split.json", "tokenizer.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes() == (c / f).read_bytes(), f
    capsys.readouterr()
    for bad, message in ((["--name-pool", "first"], "--name-pool 'first' must look like KEY=VALUE"),
                         (["--name-pool", "{first: [1]}"], "--name-pool first=[1]: the value must be a whole number"),
                         (["--name-pool", "{first"], "is not a valid mapping")):  # fmt: skip
        assert main(["data", "bios", "--n", "10", *bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def _help(argv: list[str]) -> tuple[str, bool]:
    """``probekit <argv> --help`` in a fresh interpreter: (the help text, whether torch got imported)."""
    code = (f"import sys\nfrom probekit.cli import main\ntry:\n    main({argv + ['--help']!r})\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    *text, imported = r.stdout.strip().splitlines()
    return "\n".join(text), imported == "True"


def _refused_objective(argv: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "probekit.cli", *argv, "--objective", "bogus", "--out", str(out)],
                          capture_output=True, text=True)  # fmt: skip


@pytest.mark.slow
def test_train_help_reads_the_config_without_importing_torch(tmp_path: Path) -> None:
    """``probekit train --help`` builds its flags from TrainConfig and ModelConfig (torch-free modules); the
    objective names are checked only when a value is given, and a wrong one is still refused at parse time."""
    text, imported = _help(["train"])
    for flag in ("--objective OBJECTIVE", "--model.d-model", "--precision {no,bf16,fp16}"):
        assert flag in text
    assert not imported  # torch was never imported
    r = _refused_objective(["train"], tmp_path / "run")
    assert r.returncode == 2 and "invalid choice: 'bogus'" in r.stderr and "'bico'" in r.stderr
    assert not (tmp_path / "run").exists()


HELP_FLAG = {"eval": "--objective OBJECTIVE", "patch": "--corruption {noise,swap}", "probe": "--spec.engine"}


@pytest.mark.parametrize("command", ["eval qa", "eval inverse", "eval reversal", "eval distract", "patch", "probe"])
def test_command_help_reads_its_configs_without_importing_torch(command: str) -> None:
    """``probekit eval <task> --help``, ``patch --help`` and ``probe --help`` build their flags from FinetuneConfig,
    DistractEvalConfig, PatchConfig and ProbeSpec (torch-free modules)."""
    text, imported = _help(command.split())
    assert HELP_FLAG[command.split()[0]] in text
    assert not imported  # torch was never imported


@pytest.mark.slow
def test_eval_refuses_a_wrong_objective_at_parse_time(tmp_path: Path) -> None:
    """The lazily checked ``--objective`` of ``eval`` still refuses a wrong name before any work."""
    r = _refused_objective(["eval", "qa", "--data", str(tmp_path)], tmp_path / "out")
    assert r.returncode == 2 and "invalid choice: 'bogus'" in r.stderr and "'abi'" in r.stderr
    assert not (tmp_path / "out").exists()
