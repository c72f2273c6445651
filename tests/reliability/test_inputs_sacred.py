"""Inputs are sacred: no command writes into, replaces or deletes what it reads, with or without --overwrite, and
--overwrite replaces only what probekit wrote (a user's files in an output directory survive it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from probekit.cli import main
from probekit.io import LOCK_FILE, OUTPUT_MARKER, check_output
from tests.reliability.conftest import Tiny, tree_digest

Argv = Callable[[Tiny, Path], list[str]]


def _ckpt(t: Tiny) -> Path:
    return sorted((t.run / "checkpoints").iterdir())[-1]


# (id, argv given --out, the input it must not touch)
COMMANDS: list[tuple[str, Argv, Callable[[Tiny], Path]]] = [
    (
        "data-bios/pools-dir",
        lambda t, o: ["data", "bios", "--n", "10", "--pools-dir", str(t.root / "pools"), "--out", str(o)],
        lambda t: t.root / "pools",
    ),
    (
        "train/data",
        lambda t, o: ["train", "--config", str(t.train_yaml), "--data", str(t.data), "--out", str(o)],
        lambda t: t.data,
    ),
    (
        "train/config",
        lambda t, o: ["train", "--config", str(t.train_yaml), "--data", str(t.data), "--out", str(o)],
        lambda t: t.train_yaml,
    ),
    (
        "train/init-from",
        lambda t, o: [
            "train",
            "--config",
            str(t.train_yaml),
            "--data",
            str(t.data),
            "--set",
            f"init_from={t.run}",
            "--set",
            "model={}",
            "--out",
            str(o),
        ],
        lambda t: t.run,
    ),
    (
        "probe/data",
        lambda t, o: [
            "probe",
            "--spec",
            str(t.spec),
            "--model",
            str(t.run),
            "--data",
            str(t.data),
            "--out",
            str(o),
            "--no-png",
        ],
        lambda t: t.data,
    ),
    (
        "probe/model",
        lambda t, o: [
            "probe",
            "--spec",
            str(t.spec),
            "--model",
            str(t.run),
            "--data",
            str(t.data),
            "--out",
            str(o),
            "--no-png",
        ],
        lambda t: t.run,
    ),
    (
        "probe/spec",
        lambda t, o: [
            "probe",
            "--spec",
            str(t.spec),
            "--model",
            str(t.run),
            "--data",
            str(t.data),
            "--out",
            str(o),
            "--no-png",
        ],
        lambda t: t.spec,
    ),
    (
        "patch/data",
        lambda t, o: ["patch", "--model", str(t.run), "--data", str(t.data), "--out", str(o), "--no-png"],
        lambda t: t.data,
    ),
    (
        "patch/model",
        lambda t, o: ["patch", "--model", str(t.run), "--data", str(t.data), "--out", str(o), "--no-png"],
        lambda t: t.run,
    ),
    (
        "eval-qa/checkpoint",
        lambda t, o: ["eval", "qa", "--checkpoint", str(_ckpt(t)), "--data", str(t.data), "--out", str(o), "--no-png"],
        lambda t: t.run,
    ),
    (
        "eval-qa/data",
        lambda t, o: ["eval", "qa", "--checkpoint", str(t.run), "--data", str(t.data), "--out", str(o), "--no-png"],
        lambda t: t.data,
    ),
    (
        "eval-inverse/data",
        lambda t, o: [
            "eval",
            "inverse",
            "--checkpoint",
            str(t.run),
            "--data",
            str(t.data),
            "--out",
            str(o),
            "--no-png",
        ],
        lambda t: t.data,
    ),
    (
        "eval-distract/checkpoint",
        lambda t, o: [
            "eval",
            "distract",
            "--checkpoint",
            str(t.run),
            "--data",
            str(t.data),
            "--out",
            str(o),
            "--no-png",
        ],
        lambda t: t.run,
    ),
    (
        "eval-reversal/checkpoint",
        lambda t, o: [
            "eval",
            "reversal",
            "--checkpoint",
            str(t.run),
            "--data",
            str(t.data),
            "--out",
            str(o),
            "--no-png",
        ],
        lambda t: t.run,
    ),
    (
        "eval-compare/results",
        lambda t, o: ["eval", "compare", str(t.table.parent), "--out", str(o)],
        lambda t: t.table.parent,
    ),
    (
        "plot/results",
        lambda t, o: ["plot", "--results", str(t.table.parent), "--out", str(o), "--no-png"],
        lambda t: t.table.parent,
    ),
    ("run/config", lambda t, o: ["run", str(t.root / "exp"), "--out", str(o)], lambda t: t.root / "exp"),
]


@pytest.fixture(scope="module")
def world(tiny: Tiny) -> Tiny:
    from importlib import resources

    from probekit.data.pools import POOL_FILES

    pools = tiny.root / "pools"
    if not pools.exists():
        pools.mkdir()
        rel = POOL_FILES["majors"]
        (pools / rel).parent.mkdir(parents=True, exist_ok=True)
        (pools / rel).write_text(
            resources.files("probekit.data").joinpath("pools", rel).read_text(encoding="utf-8"), encoding="utf-8"
        )
        (tiny.root / "exp").mkdir()
        from tests.reliability.test_bad_inputs import EXPERIMENT

        (tiny.root / "exp" / "config.yaml").write_text(yaml.safe_dump(EXPERIMENT), encoding="utf-8")
    return tiny


@pytest.mark.parametrize("how", ["equal", "inside", "containing"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize(("case", "argv", "source"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_out_overlapping_an_input_is_refused_and_the_input_untouched(
    world: Tiny, case: str, argv: Argv, source: Callable[[Tiny], Path], how: str, overwrite: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    inp = source(world)
    if how == "equal":
        out = inp
    elif how == "inside":
        out = inp / "sub"  # for a file input: a path through it
    else:
        out = inp.parent
    before = tree_digest(inp)
    args = argv(world, out) + (["--overwrite"] if overwrite and not case.startswith("plot") else [])
    if case.startswith("run"):
        args = [a for a in args if a != "--overwrite"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "never writes into what it reads" in err and str(out) in err, err
    assert tree_digest(inp) == before  # not one byte changed, nothing added (no lock file either)
    assert not (inp / "sub").exists() if inp.is_dir() else True


def test_same_path_spelled_differently_is_the_same_input(tiny: Tiny, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tiny.data)
    for out in (link, tiny.data / ".." / tiny.data.name, Path(str(tiny.data) + "/")):
        with pytest.raises(ValueError, match="never writes into what it reads"):
            check_output(out, {"--data": tiny.data})
    with pytest.raises(ValueError, match="--out is empty"):
        check_output("", {"--data": tiny.data})
    assert check_output(tmp_path / "new", {"--data": tiny.data}) == tmp_path / "new"
    # a sibling whose name starts with the input's is not inside it
    assert check_output(str(tiny.data) + "_out", {"--data": tiny.data})


def _notes(d: Path) -> Path:
    (d / "notes.txt").write_text("my own notes\n", encoding="utf-8")
    return d / "notes.txt"


def test_data_bios_overwrite_keeps_user_files_and_replaces_its_own(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert main(["data", "bios", "--n", "10", "--out", str(out)]) == 0
    notes = _notes(out)
    (out / "old_extra.json").write_text("{}", encoding="utf-8")  # the user's, too
    assert main(["data", "bios", "--n", "12", "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert notes.read_text(encoding="utf-8") == "my own notes\n"
    assert (out / "old_extra.json").exists()
    from probekit.data.store import load_dataset

    assert load_dataset(out).manifest["n_people"] == 12
    assert (out / LOCK_FILE).exists() and (out / OUTPUT_MARKER).exists()


def test_probe_overwrite_keeps_user_files(tiny: Tiny, tmp_path: Path) -> None:
    out = tmp_path / "p"
    base = ["probe", "--spec", str(tiny.spec), "--model", str(tiny.run), "--data", str(tiny.data), "--out", str(out),
            "--no-png"]  # fmt: skip
    assert main(base) == 0
    notes = _notes(out)
    assert main([*base, "--overwrite"]) == 0
    assert notes.read_text(encoding="utf-8") == "my own notes\n"
    assert (out / "results.parquet").exists()


@pytest.mark.parametrize("command", ["bios", "probe", "train", "compare"])
def test_overwrite_of_a_directory_probekit_did_not_write_is_refused(
    tiny: Tiny, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    notes = _notes(out)
    (out / "results.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    before = tree_digest(out)
    argv = {
        "bios": ["data", "bios", "--n", "10", "--out", str(out)],
        "probe": ["probe", "--spec", str(tiny.spec), "--model", str(tiny.run), "--data", str(tiny.data),
                  "--out", str(out), "--no-png"],
        "train": ["train", "--config", str(tiny.train_yaml), "--data", str(tiny.data), "--out", str(out)],
        "compare": ["eval", "compare", str(tiny.table.parent), "--out", str(out)],
    }[command]  # fmt: skip
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds no probekit output" in err and "notes.txt" in err, err
    assert tree_digest(out) == before and notes.exists()  # not even a lock file is left behind
    assert main(argv) == 2
    assert "--overwrite" not in capsys.readouterr().err.split("holds no probekit output")[0]
    assert tree_digest(out) == before


def test_refused_run_leaves_no_directory_behind(tiny: Tiny, tmp_path: Path) -> None:
    out = tmp_path / "never"
    assert main(["probe", "--spec", str(tiny.spec), "--model", str(tiny.run), "--data", str(tmp_path / "nope"),
                 "--out", str(out), "--no-png"]) == 2  # fmt: skip
    assert not out.exists()
