"""Check what is on disk (weights' SHA-256, tokenizer vs manifest, config vs weight shapes, precision), failures of
the environment as one line (disk full, read-only, truncated / empty / mis-encoded tables and files, absurd
numbers), and configs that reject ambiguity (duplicate keys, contradicting settings), each checked before work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from probekit.cli import main
from tests.reliability.conftest import TINY_SPEC, Tiny, tree_digest


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("probekit: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


def _probe(t: Tiny, model: Path, out: Path, spec: Path | None = None, data: Path | None = None) -> list[str]:
    return ["probe", "--spec", str(spec or t.spec), "--model", str(model), "--data", str(data or t.data),
            "--out", str(out), "--no-png"]  # fmt: skip


def _copy_run(t: Tiny, dest: Path) -> Path:
    shutil.copytree(t.run, dest)
    return dest


def _ckpt(run: Path) -> Path:
    return sorted((run / "checkpoints").iterdir())[-1]


# ------------------------------------------------------------------------------------------ what is on disk


def _flip(file: Path) -> None:
    b = bytearray(file.read_bytes())
    b[len(b) - 7] ^= 0xFF  # inside the tensor data: the header still parses
    file.write_bytes(bytes(b))


def test_flipped_weight_bytes_are_refused(tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy_run(tiny, tmp_path / "run")
    _flip(_ckpt(run) / "model.safetensors")
    _refused(_probe(tiny, run, tmp_path / "p"), capsys, "model.safetensors", "SHA-256", "meta.json")
    _refused(["eval", "qa", "--checkpoint", str(run), "--data", str(tiny.data), "--out", str(tmp_path / "q"),
              "--finetune", "none", "--no-png"], capsys, "SHA-256")  # fmt: skip
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()


def test_flipped_bytes_caught_by_the_runs_summary_alone(
    tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint written before meta.json recorded the SHA-256: the run's summary.json still catches it."""
    run = _copy_run(tiny, tmp_path / "run")
    meta = _ckpt(run) / "meta.json"
    m = json.loads(meta.read_text())
    del m["weights_sha256"]
    meta.write_text(json.dumps(m))
    _flip(_ckpt(run) / "model.safetensors")
    _refused(_probe(tiny, run, tmp_path / "p"), capsys, "SHA-256", "summary.json")


def test_config_disagreeing_with_intact_weights_names_the_config(
    tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(tiny, tmp_path / "run")
    cfg = _ckpt(run) / "config.json"
    c = json.loads(cfg.read_text())
    c["d_mlp"] = 2 * c["d_mlp"]
    cfg.write_text(json.dumps(c))
    err = _refused(_probe(tiny, run, tmp_path / "p"), capsys, "config.json", "is the wrong file")
    assert "corrupt" not in err and "re-train" not in err  # the weights are fine: do not send the user to re-train


def test_a_tokenizer_from_another_dataset_is_refused(
    tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from probekit.data.store import build_dataset

    other = build_dataset(tmp_path / "other", n_people=30, augmentation="single", seed=5).root
    ds = tmp_path / "ds"
    shutil.copytree(tiny.data, ds)
    shutil.copy(Path(other) / "tokenizer.json", ds / "tokenizer.json")
    _refused(["train", "--config", str(tiny.train_yaml), "--data", str(ds), "--out", str(tmp_path / "r")], capsys,
             "tokenizer", "another dataset", "manifest.json")  # fmt: skip
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_fp16_on_cpu_is_refused_not_recorded(tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["train", "--config", str(tiny.train_yaml), "--data", str(tiny.data), "--precision", "fp16",
              "--out", str(tmp_path / "r")], capsys, "fp16", "cannot take effect")  # fmt: skip
    assert not (tmp_path / "r").exists()
    from probekit.training.config import TrainConfig
    from probekit.training.trainer import Trainer

    with pytest.raises(ValueError, match="fp16"):  # the library refuses it too (probekit run, eval --mixed)
        Trainer(
            TrainConfig(data=str(tiny.data), out=str(tmp_path / "r2"), precision="fp16", max_steps=2, warmup_steps=1),
            progress=False,
        )
    assert not (tmp_path / "r2").exists()


# ------------------------------------------------------------------------------------------ the environment


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 600 KiB tmpfs (root only); skipped where one cannot be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_one_line_and_leaves_nothing_half_written(
    small_fs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = small_fs / "ds"
    _refused(["data", "bios", "--n", "2000", "--out", str(out)], capsys, "No space left on device", "disk is full",
             str(small_fs))  # fmt: skip
    assert not out.exists()  # no half-written dataset, no lock, no temporary directory
    assert [p.name for p in small_fs.iterdir()] == []


def test_read_only_filesystem_is_one_line(small_fs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    _refused(["data", "bios", "--n", "10", "--out", str(small_fs / "ds")], capsys, "Read-only file system",
             str(small_fs / "ds"))  # fmt: skip


def _truncated(src: Path, dest: Path) -> Path:
    dest.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dest


@pytest.mark.parametrize("kind", ["truncated-parquet", "empty-parquet", "empty-csv", "latin1-csv", "header-only"])
@pytest.mark.parametrize("command", ["plot", "compare"])
def test_broken_tables_are_one_line(
    tiny: Tiny, tmp_path: Path, kind: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if kind == "truncated-parquet":
        f = _truncated(tiny.table, tmp_path / "t.parquet")
    elif kind == "empty-parquet":
        f = tmp_path / "t.parquet"
        f.write_bytes(b"")
    elif kind == "empty-csv":
        f = tmp_path / "t.csv"
        f.write_text("", encoding="utf-8")
    elif kind == "latin1-csv":
        f = tmp_path / "t.csv"
        f.write_bytes("model,attribute\nSoci\xe9t\xe9,x\n".encode("latin-1"))
    else:
        f = tmp_path / "t.csv"
        f.write_text("\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = (["plot", "--results", str(f), "--out", str(out), "--no-png"] if command == "plot"
            else ["eval", "compare", str(f), "--out", str(out), "--no-png"])  # fmt: skip
    _refused(argv, capsys, str(f))
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith("."))


def test_non_utf8_dataset_and_spec_are_one_line(tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(tiny.data, ds)
    qa = ds / "qa.jsonl"
    qa.write_bytes(qa.read_bytes().replace(b"What", b"Wh\xe9t", 1))
    _refused(["train", "--config", str(tiny.train_yaml), "--data", str(ds), "--out", str(tmp_path / "r")], capsys,
             "qa.jsonl", "UTF-8")  # fmt: skip
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"kinds: [q]\nname: caf\xe9\n")
    _refused(_probe(tiny, tiny.run, tmp_path / "p", spec=spec), capsys, "spec.yaml", "UTF-8")
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    _refused(_probe(tiny, tiny.run, tmp_path / "p", spec=deep), capsys, "deep.yaml")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--threads", "100000000", "data", "bios", "--n", "10"], ["--threads", "1024"]),
        (["data", "bios", "--n", "1"], ["at least 2"]),
        (["data", "bios", "--n", "10", "--augmentation", "multi5+multi3"], ["multi3 and multi5"]),
    ],
    ids=["threads-absurd", "n-too-small-to-split", "multi5+multi3"],
)
def test_bounded_numbers_and_contradictions(
    tmp_path: Path, argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _refused([*argv, "--out", str(tmp_path / "o")], capsys, *words)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ configs


def test_duplicate_yaml_keys_are_refused(tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text(tiny.train_yaml.read_text() + "lr: 0.1\nlr: 0.2\n", encoding="utf-8")
    _refused(["train", "--config", str(cfg), "--data", str(tiny.data), "--out", str(tmp_path / "r")], capsys,
             "'lr' is given twice")  # fmt: skip
    nested = tmp_path / "spec.yaml"
    nested.write_text("kinds: [q]\nengine_settings: {a: 1, a: 2}\n", encoding="utf-8")
    _refused(_probe(tiny, tiny.run, tmp_path / "p", spec=nested), capsys, "'a' is given twice")
    js = tmp_path / "exp.json"
    js.write_text('{"name": "a", "name": "b"}', encoding="utf-8")
    _refused(["run", str(js), "--out", str(tmp_path / "e")], capsys, "'name' is given twice")


def test_val_fraction_zero_with_an_l2_grid_is_refused(
    tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**TINY_SPEC, "val_fraction": 0, "l2_grid": [0.01, 0.1]}), encoding="utf-8")
    _refused(_probe(tiny, tiny.run, tmp_path / "p", spec=spec), capsys, "val_fraction 0", "l2_grid")
    spec.write_text(yaml.safe_dump({**TINY_SPEC, "val_fraction": 0, "l2_grid": [0.01]}), encoding="utf-8")
    from probekit.probes.spec import load_spec

    assert load_spec(spec).val_fraction == 0  # one strength: nothing to choose, so no validation people needed


def test_eval_batch_size_zero_is_refused_before_finetuning(
    tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "qa"
    _refused(["eval", "qa", "--checkpoint", str(tiny.run), "--data", str(tiny.data), "--out", str(out),
              "--eval-batch-size", "0", "--steps", "2"], capsys, "--eval-batch-size")  # fmt: skip
    assert not out.exists()  # nothing finetuned, nothing written: the corrected command starts clean
    before = tree_digest(tiny.run)
    _refused(["eval", "reversal", "--checkpoint", str(tiny.run), "--data", str(tiny.data), "--out", str(out),
              "--eval-batch-size", "-3"], capsys, "--eval-batch-size")  # fmt: skip
    assert tree_digest(tiny.run) == before


def test_compare_refuses_a_metric_or_split_the_tables_lack(
    tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from probekit.reporting.evaluation import results_frame, write_table

    rows = [{"model": "m", "objective": "ntp", "task": "qa", "split": "test", "attr": "major", "metric": "exact_match",
             "value": 0.5, "n": 10}]  # fmt: skip
    write_table(results_frame(rows), tmp_path / "ev", "results")
    _refused(["eval", "compare", str(tmp_path / "ev"), "--out", str(tmp_path / "o1"), "--metrics", "exact_mtch"],
             capsys, "exact_mtch", "exact_match")  # fmt: skip
    _refused(["eval", "compare", str(tmp_path / "ev"), "--out", str(tmp_path / "o2"), "--split", "val"], capsys,
             "--split 'val'", "test")  # fmt: skip


@pytest.mark.parametrize("kind", ["accuracy-above-one", "negative-baseline", "duplicated-rows"])
def test_plot_refuses_tables_no_probe_writes(tiny: Tiny, tmp_path: Path, kind: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import pandas as pd

    df = pd.read_parquet(tiny.table)
    if kind == "accuracy-above-one":
        df.loc[df.index[0], "accuracy"], words = 1.5, ("'accuracy'", "outside [0, 1]")
    elif kind == "negative-baseline":
        df.loc[df.index[1], "baseline"], words = -0.2, ("'baseline'", "outside [0, 1]")
    else:
        df, words = pd.concat([df, df.iloc[:3]], ignore_index=True), ("repeat the same probe",)
    f = tmp_path / "t.csv"
    df.to_csv(f, index=False)
    out = tmp_path / "out"
    _refused(["plot", "--results", str(f), "--out", str(out), "--no-png"], capsys, str(f), *words)
    assert not out.exists()
    # the same table given twice is the same mistake
    _refused(["plot", "--results", str(tiny.table), str(tiny.table), "--out", str(out), "--no-png"], capsys,
             "repeat the same probe")  # fmt: skip


def test_seeds_beyond_64_bits_are_refused_before_work(tiny: Tiny, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    big = str(2**64)
    _refused(["data", "bios", "--n", "10", "--seed", big, "--out", str(tmp_path / "d")], capsys, "--seed", "2**63")
    _refused(["train", "--config", str(tiny.train_yaml), "--data", str(tiny.data), "--seed", big, "--out",
              str(tmp_path / "r")], capsys, "seed", "2**63")  # fmt: skip
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"kinds: [q]\nseed: {big}\n", encoding="utf-8")
    _refused(["probe", "--spec", str(spec), "--model", str(tiny.run), "--data", str(tiny.data), "--out",
              str(tmp_path / "p")], capsys, "probe seed", "2**63")  # fmt: skip
    assert not any((tmp_path / n).exists() for n in ("d", "r", "p"))


def test_layer_with_a_q_only_spec_is_refused(tiny: Tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "q.yaml"
    spec.write_text("kinds: [q]\n", encoding="utf-8")
    _refused(["probe", "--spec", str(spec), "--model", str(tiny.run), "--data", str(tiny.data), "--out",
              str(tmp_path / "p"), "--layer", "99"], capsys, "--layer 99", "no residual P-probes")  # fmt: skip
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("n", [1, 2])
def test_max_people_too_few_to_split_is_refused(tiny: Tiny, tmp_path: Path, n: int,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    spec = tmp_path / "s.yaml"
    spec.write_text(f"kinds: [q]\nmax_people: {n}\n", encoding="utf-8")
    _refused(["probe", "--spec", str(spec), "--model", str(tiny.run), "--data", str(tiny.data), "--out",
              str(tmp_path / "p")], capsys, f"max_people {n}", "too few to split")  # fmt: skip
