"""Reliability sweep: a few hundred real ``probekit`` subprocesses on tiny data, each outcome classified.

    python tests/reliability/sweep.py [--jobs 2] [--keep DIR] [-k SUBSTRING]

Every case names the command line, the exit status it expects (2: a one-line refusal; 0: it runs), the words the
message must hold, and the paths that must come out unchanged (the inputs, a user's files). Classes:

* ``clean``: the expected exit status, one line ``probekit: error: ...`` with the expected words for a refusal;
* ``data loss``: a protected path changed, or a user's file disappeared;
* ``traceback``: a Python traceback, or a crash (exit status other than 0 and 2);
* ``silently accepted``: exit 0 where a refusal was expected;
* ``misleading``: refused, but without the words that name the problem (or refused where it should run).

Prints one line per case that is not clean, then the count per class. Exit status 1 if any case is data loss or
a traceback. Not collected by pytest (its name does not start with ``test_``); the reliability tests cover each
class, this script the breadth.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_mlp": 64}
TRAIN = {"objective": "ntp", "model": TINY, "seq_len": 32, "batch_size": 4, "max_steps": 2, "warmup_steps": 1,
         "eval_windows": 0, "log_every": 1, "seed": 0}  # fmt: skip
SPEC = {"kinds": ["q"], "targets": ["first_token"], "l2_grid": [0.01], "max_iter": 5, "bootstrap": 0}
EXPERIMENT = {"name": "tiny", "datasets": [{"name": "s", "n_people": 20, "augmentation": "single", "seed": 0}],
              "models": [{"name": "m", "data": "s", "train": TRAIN}],
              "probe": {"kinds": ["q"], "targets": ["first_token"], "l2_grid": [0.01], "max_iter": 5},
              "control_random": False}  # fmt: skip


@dataclass
class Case:
    name: str
    argv: list[str]
    rc: int = 2
    words: tuple[str, ...] = ()
    protect: tuple[Path, ...] = ()  # must be byte-identical afterwards
    keep: tuple[Path, ...] = ()  # user files that must still exist
    setup: Callable[[], None] | None = None
    result: dict[str, object] = field(default_factory=dict)


def digest(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            p = Path(d) / f
            out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class World:
    """Tiny inputs, built once: datasets, a trained run, a probe table, an evaluation table, configs."""

    def __init__(self, root: Path) -> None:
        from probekit.data.reversal import ReversalConfig, make_reversal_dataset
        from probekit.data.store import build_dataset
        from probekit.reporting.evaluation import results_frame, write_table
        from probekit.reporting.results import write_results
        from probekit.training.config import TrainConfig
        from probekit.training.trainer import train
        from tests.test_plots import table

        self.root = root
        self.data = Path(build_dataset(root / "data", n_people=20, augmentation="single", seed=0).root)
        self.other = Path(build_dataset(root / "other", n_people=30, augmentation="single", seed=5).root)
        self.run = root / "run"
        train(TrainConfig(data=str(self.data), out=str(self.run), **TRAIN), progress=False)
        self.ckpt = sorted((self.run / "checkpoints").iterdir())[-1]
        self.reversal = Path(make_reversal_dataset(root / "reversal", ReversalConfig(
            n_per_group=2, n_train_templates=2, n_test_templates=1)).root)  # fmt: skip
        write_results(table(models=("a",), layers=2), root / "table")
        self.table = root / "table" / "results.parquet"
        rows = [{"model": "m", "objective": "ntp", "task": "qa", "split": "test", "attr": "major",
                 "metric": "exact_match", "value": 0.5, "n": 10}]  # fmt: skip
        write_table(results_frame(rows), root / "evtable", "results")
        self.evtable = root / "evtable"
        self.files = f = {}
        f["train"] = self._yaml("train.yaml", TRAIN)
        f["spec"] = self._yaml("spec.yaml", SPEC)
        f["exp_dir"] = root / "exp"
        f["exp_dir"].mkdir()
        self._yaml("exp/config.yaml", EXPERIMENT)
        f["dup_train"] = self._text("dup_train.yaml", yaml.safe_dump(TRAIN) + "lr: 0.1\nlr: 0.2\n")
        f["dup_spec"] = self._text("dup_spec.yaml", "kinds: [q]\nkinds: [p]\n")
        f["dup_exp"] = self._text("dup_exp.yaml", yaml.safe_dump(EXPERIMENT) + "name: other\n")
        f["bad_yaml"] = self._text("bad.yaml", "a: [1\n")
        f["latin_spec"] = root / "latin.yaml"
        f["latin_spec"].write_bytes(b"kinds: [q]\nname: caf\xe9\n")
        f["deep"] = self._text("deep.yaml", "a: " + "[" * 3000 + "]" * 3000 + "\n")
        f["val0"] = self._yaml("val0.yaml", {**SPEC, "val_fraction": 0, "l2_grid": [0.01, 0.1]})
        f["list_nan"] = self._yaml("nan.yaml", {**SPEC, "l2_grid": [float("nan")]})
        f["list_str"] = self._yaml("str.yaml", {**SPEC, "l2_grid": ["a", "b"]})
        f["trunc_parquet"] = self._bytes("trunc.parquet", self.table.read_bytes()[: self.table.stat().st_size // 2])
        f["empty_parquet"] = self._bytes("empty.parquet", b"")
        f["empty_csv"] = self._bytes("empty.csv", b"")
        f["latin_csv"] = self._bytes("latin.csv", "model,attribute\nSoci\xe9t\xe9,x\n".encode("latin-1"))
        f["junk_csv"] = self._bytes("junk.csv", b"\x00\x01\x02garbage\n\xff\xfe")
        f["header_csv"] = self._bytes("header.csv", b"a,b\n")
        f["probe_table_csv"] = root / "table" / "results.csv"
        # corrupted copies of inputs
        f["flipped"] = self._copy_run("flipped", lambda c: _flip(c / "model.safetensors"))
        f["truncated_w"] = self._copy_run("truncw", lambda c: _truncate(c / "model.safetensors"))
        f["cfg_shape"] = self._copy_run("cfgshape", lambda c: _json_edit(c / "config.json", d_mlp=128))
        f["no_cfg"] = self._copy_run("nocfg", lambda c: (c / "config.json").unlink())
        f["swap_tok"] = self._copy_data("swaptok", lambda d: shutil.copy(self.other / "tokenizer.json", d))
        f["latin_data"] = self._copy_data("latin", lambda d: _latin(d / "qa.jsonl"))
        f["trunc_people"] = self._copy_data("truncpeople", lambda d: _truncate(d / "people.jsonl"))
        f["empty_manifest"] = self._copy_data("emptymanifest", lambda d: (d / "manifest.json").write_text(""))
        f["user_dir"] = root / "mine"

    def _yaml(self, name: str, data: object) -> Path:
        return self._text(name, yaml.safe_dump(data, sort_keys=False))

    def _text(self, name: str, text: str) -> Path:
        p = self.root / name
        p.write_text(text, encoding="utf-8")
        return p

    def _bytes(self, name: str, data: bytes) -> Path:
        p = self.root / name
        p.write_bytes(data)
        return p

    def _copy_run(self, name: str, damage: Callable[[Path], object]) -> Path:
        dest = self.root / name
        shutil.copytree(self.run, dest)
        damage(sorted((dest / "checkpoints").iterdir())[-1])
        return dest

    def _copy_data(self, name: str, damage: Callable[[Path], object]) -> Path:
        dest = self.root / name
        shutil.copytree(self.data, dest)
        damage(dest)
        return dest

    def out(self, name: str) -> Path:
        return self.root / "outs" / name


def _flip(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[len(b) - 9] ^= 0xFF
    f.write_bytes(bytes(b))


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _latin(f: Path) -> None:
    f.write_bytes(f.read_bytes().replace(b"What", b"Wh\xe9t", 1))


def _json_edit(f: Path, **changes: object) -> None:
    d = json.loads(f.read_text())
    d.update(changes)
    f.write_text(json.dumps(d))


def _user_dir(w: World, name: str) -> Callable[[], None]:
    def make() -> None:
        d = w.out(name)
        d.mkdir(parents=True, exist_ok=True)
        (d / "notes.txt").write_text("mine\n")

    return make


def cases(w: World) -> list[Case]:
    f, o, cs = w.files, w.out, []

    def add(name: str, argv: list[str], rc: int = 2, words: tuple[str, ...] = (), **kw: object) -> None:
        protect = (w.data, w.run, w.table.parent, w.evtable, w.reversal, f["spec"], f["train"], f["exp_dir"],
                   *kw.pop("protect", ()))  # type: ignore[misc]  # fmt: skip
        cs.append(Case(name, argv, rc, words, protect=protect, **kw))  # type: ignore[arg-type]

    # commands and, for each, its inputs (flag, path) and extra arguments
    cmds: dict[str, tuple[list[str], dict[str, Path]]] = {
        "bios": (["data", "bios", "--n", "10", "--pools-dir", str(w.root / "pools")], {"pools": w.root / "pools"}),
        "train": (["train", "--config", str(f["train"]), "--data", str(w.data), "--no-progress"],
                  {"data": w.data, "config": f["train"]}),
        "probe": (["probe", "--spec", str(f["spec"]), "--model", str(w.run), "--data", str(w.data), "--no-png"],
                  {"data": w.data, "model": w.run, "spec": f["spec"]}),
        "patch": (["patch", "--model", str(w.run), "--data", str(w.data), "--no-png", "--pairs", "2"],
                  {"data": w.data, "model": w.run}),
        "qa": (["eval", "qa", "--checkpoint", str(w.ckpt), "--data", str(w.data), "--no-png", "--no-progress",
                "--finetune", "none"], {"data": w.data, "checkpoint": w.run}),
        "inverse": (["eval", "inverse", "--checkpoint", str(w.run), "--data", str(w.data), "--no-png",
                     "--no-progress", "--finetune", "none"], {"data": w.data, "checkpoint": w.run}),
        "reversal": (["eval", "reversal", "--checkpoint", str(w.run), "--data", str(w.reversal), "--no-png",
                      "--no-progress"], {"data": w.reversal, "checkpoint": w.run}),
        "distract": (["eval", "distract", "--checkpoint", str(w.run), "--data", str(w.data), "--no-png",
                      "--no-progress"], {"data": w.data, "checkpoint": w.run}),
        "compare": (["eval", "compare", str(w.evtable), "--no-png"], {"results": w.evtable}),
        "plot": (["plot", "--results", str(w.table.parent), "--no-png"], {"results": w.table.parent}),
        "run": (["run", str(f["exp_dir"]), "--no-png", "--no-progress"], {"config": f["exp_dir"]}),
    }  # fmt: skip
    overwrite_ok = {"bios", "train", "probe", "patch", "qa", "inverse", "reversal", "distract", "compare"}
    for cmd, (argv, inputs) in cmds.items():
        for what, path in inputs.items():
            spots = {"equal": path, "inside": path / "sub", "containing": path.parent}
            for how, out in spots.items():
                for ow in [False, True] if cmd in overwrite_ok else [False]:
                    add(f"{cmd}/out-{how}-{what}{'/overwrite' if ow else ''}",
                        [*argv, "--out", str(out), *(["--overwrite"] if ow else [])], 2, ("never writes",),
                        protect=(path.parent if how == "containing" else path,))  # fmt: skip
        add(f"{cmd}/out-empty", [*argv, "--out", ""], 2, ("empty",))
        if cmd in overwrite_ok:
            add(f"{cmd}/overwrite-user-dir", [*argv, "--out", str(o(f"user_{cmd}")), "--overwrite"], 2,
                ("no probekit output", "notes.txt"), keep=(o(f"user_{cmd}") / "notes.txt",),
                setup=_user_dir(w, f"user_{cmd}"))  # fmt: skip
    # what is on disk
    for name, run in (("flipped", f["flipped"]), ("truncated-weights", f["truncated_w"])):
        add(f"probe/{name}", [*cmds["probe"][0][:4], str(run), "--data", str(w.data), "--out", str(o(f"p_{name}")),
                              "--no-png"], 2, ("model.safetensors",), protect=(run,))  # fmt: skip
        add(f"qa/{name}", ["eval", "qa", "--checkpoint", str(run), "--data", str(w.data), "--out", str(o(f"q_{name}")),
                           "--finetune", "none", "--no-png"], 2, ("model.safetensors",))  # fmt: skip
        add(f"patch/{name}", ["patch", "--model", str(run), "--data", str(w.data), "--out", str(o(f"pa_{name}"))],
            2, ("model.safetensors",))  # fmt: skip
    add(
        "probe/config-shape",
        [
            "probe",
            "--spec",
            str(f["spec"]),
            "--model",
            str(f["cfg_shape"]),
            "--data",
            str(w.data),
            "--out",
            str(o("cfgshape")),
        ],
        2,
        ("config.json", "wrong file"),
    )
    add("probe/no-config", ["probe", "--spec", str(f["spec"]), "--model", str(f["no_cfg"]), "--data", str(w.data),
                            "--out", str(o("nocfg"))], 2, ("config.json",))  # fmt: skip
    for name, d, words in (("swapped-tokenizer", f["swap_tok"], ("tokenizer", "another dataset")),
                           ("latin1-dataset", f["latin_data"], ("qa.jsonl", "UTF-8")),
                           ("truncated-people", f["trunc_people"], ("people.jsonl",)),
                           ("empty-manifest", f["empty_manifest"], ("manifest.json",))):  # fmt: skip
        add(f"train/{name}", ["train", "--config", str(f["train"]), "--data", str(d), "--out", str(o(f"t_{name}"))],
            2, words, protect=(d,))  # fmt: skip
        add(f"probe/{name}", ["probe", "--spec", str(f["spec"]), "--model", str(w.run), "--data", str(d),
                              "--out", str(o(f"pr_{name}"))], 2, words, protect=(d,))  # fmt: skip
        add(f"show/{name}", ["data", "show", str(d)], 2, words, protect=(d,))
    add("train/fp16-on-cpu", ["train", "--config", str(f["train"]), "--data", str(w.data), "--precision", "fp16",
                              "--out", str(o("fp16"))], 2, ("fp16", "cannot take effect"))  # fmt: skip
    # configs
    add("train/dup-keys", ["train", "--config", str(f["dup_train"]), "--data", str(w.data), "--out", str(o("dup"))],
        2, ("'lr' is given twice",))  # fmt: skip
    for name, spec, words in (("dup-keys", f["dup_spec"], ("given twice",)), ("latin1", f["latin_spec"], ("UTF-8",)),
                              ("nested-deep", f["deep"], ("nested",)), ("malformed", f["bad_yaml"], ("YAML",)),
                              ("val0-grid", f["val0"], ("val_fraction 0",)), ("l2-nan", f["list_nan"], ("l2",)),
                              ("l2-strings", f["list_str"], ("l2",))):  # fmt: skip
        add(f"probe/spec-{name}", ["probe", "--spec", str(spec), "--model", str(w.run), "--data", str(w.data),
                                   "--out", str(o(f"spec_{name}"))], 2, words)  # fmt: skip
    add("run/dup-keys", ["run", str(f["dup_exp"]), "--out", str(o("rundup"))], 2, ("given twice",))
    add("run/malformed", ["run", str(f["bad_yaml"]), "--out", str(o("runbad"))], 2, ("YAML",))
    add("run/jobs-0", ["run", str(f["exp_dir"]), "--out", str(o("runjobs")), "--jobs", "0"], 2, ("--jobs",))
    for aug in ("multi5+multi3", "single+multi5", "permute+permute", "multi0", "bogus", ""):
        add(f"bios/augmentation-{aug or 'empty'}", ["data", "bios", "--n", "10", "--augmentation", aug,
                                                    "--out", str(o(f"aug_{aug}"))], 2, ("augmentation",))  # fmt: skip
    for n in ("0", "1", "-5", "abc", "1.5"):
        add(f"bios/n-{n}", ["data", "bios", "--n", n, "--out", str(o(f"n_{n}"))], 2, ())
    for t in ("0", "-1", "100000000", "x"):
        add(f"global/threads-{t}", ["--threads", t, "data", "bios", "--n", "10", "--out", str(o(f"th_{t}"))], 2, ())
    for t in ("-1", "100000000"):
        add(f"probe/threads-{t}", [*cmds["probe"][0], "--out", str(o(f"pth_{t}")), "--threads", t], 2, ("--threads",))
    for b in ("0", "-2"):
        for cmd in ("qa", "inverse", "reversal", "distract"):
            add(f"{cmd}/eval-batch-size-{b}", [*cmds[cmd][0], "--out", str(o(f"ebs_{cmd}{b}")), "--eval-batch-size", b],
                2, ("--eval-batch-size",))  # fmt: skip
    add("train/steps-0", ["train", "--config", str(f["train"]), "--data", str(w.data), "--steps", "0",
                          "--out", str(o("steps0"))], 2, ("max_steps",))  # fmt: skip
    add("train/lr-word", ["train", "--config", str(f["train"]), "--data", str(w.data), "--lr", "abc",
                          "--out", str(o("lrword"))], 2, ("abc",))  # fmt: skip
    add("probe/layer-99", [*cmds["probe"][0], "--out", str(o("layer99")), "--layer", "99"], 2, ("--layer",))
    add("patch/layers-99", [*cmds["patch"][0], "--out", str(o("players99")), "--layers", "99"], 2, ("99",))
    # tables
    for name in ("trunc_parquet", "empty_parquet", "empty_csv", "latin_csv", "junk_csv", "header_csv"):
        add(f"plot/{name}", ["plot", "--results", str(f[name]), "--out", str(o(f"pl_{name}")), "--no-png"], 2,
            (str(f[name]),))  # fmt: skip
        add(f"compare/{name}", ["eval", "compare", str(f[name]), "--out", str(o(f"cm_{name}")), "--no-png"], 2,
            (str(f[name]),))  # fmt: skip
    add("compare/probe-table", ["eval", "compare", str(w.table), "--out", str(o("cm_probe")), "--no-png"], 2, ())
    add("compare/metric-missing", ["eval", "compare", str(w.evtable), "--out", str(o("cm_metric")), "--metrics",
                                   "nope", "--no-png"], 2, ("nope",))  # fmt: skip
    add("compare/split-missing", ["eval", "compare", str(w.evtable), "--out", str(o("cm_split")), "--split", "val",
                                  "--no-png"], 2, ("--split",))  # fmt: skip
    add("plot/scale-not-csv", ["plot", "--scale", str(f["junk_csv"]), "--out", str(o("pl_scale"))], 2, ())
    add("plot/experiment-missing", ["plot", "--experiment", str(w.root / "nope"), "--out", str(o("pl_exp"))], 2, ())
    add("plot/two-modes", ["plot", "--results", str(w.table), "--scale", str(w.table), "--out", str(o("pl2"))], 2,
        ("give one of",))  # fmt: skip
    # missing inputs
    for cmd in ("train", "probe", "patch", "qa", "inverse", "reversal", "distract"):
        argv = [str(w.root / "missing") if a in (str(w.data), str(w.reversal)) else a for a in cmds[cmd][0]]
        add(f"{cmd}/data-missing", [*argv, "--out", str(o(f"miss_{cmd}"))], 2, ("missing",))
    for cmd in ("probe", "patch"):
        argv = [str(w.root / "nomodel") if a == str(w.run) else a for a in cmds[cmd][0]]
        add(f"{cmd}/model-missing", [*argv, "--out", str(o(f"nomodel_{cmd}"))], 2, ("nomodel",))
    add("show/missing", ["data", "show", str(w.root / "nope")], 2, ("does not exist",))
    add("reversal-data/out-file", ["data", "reversal", "--out", str(f["train"])], 2, ())
    add("bios/out-file", ["data", "bios", "--n", "10", "--out", str(f["train"])], 2, ())
    # second runs into a finished output
    add("train/rerun-without-resume", ["train", "--config", str(f["train"]), "--data", str(w.data),
                                        "--out", str(w.run)], 2, ("--resume",))  # fmt: skip
    # runs that must work
    add("ok/bios", ["data", "bios", "--n", "10", "--out", str(o("ok_bios"))], 0)
    add("ok/bios-overwrite-keeps-notes", ["data", "bios", "--n", "12", "--out", str(o("ok_bios2")), "--overwrite"], 0,
        keep=(o("ok_bios2") / "notes.txt",), setup=lambda: _made_dataset(o("ok_bios2")))  # fmt: skip
    add("ok/reversal", ["data", "reversal", "--n-per-group", "2", "--out", str(o("ok_rev"))], 0)
    add("ok/show", ["data", "show", str(w.data)], 0)
    add("ok/train", ["train", "--config", str(f["train"]), "--data", str(w.data), "--out", str(o("ok_train")),
                     "--no-progress"], 0)  # fmt: skip
    add("ok/probe", [*cmds["probe"][0], "--out", str(o("ok_probe"))], 0)
    add("ok/plot", ["plot", "--results", str(w.table), "--out", str(o("ok_plot")), "--no-png"], 0)
    add("ok/compare", ["eval", "compare", str(w.evtable), "--out", str(o("ok_compare")), "--no-png"], 0)
    add("ok/qa-none", [*cmds["qa"][0], "--out", str(o("ok_qa")), "--attrs", "major"], 0)
    return cs


def _made_dataset(d: Path) -> None:
    from probekit.data.store import build_dataset

    build_dataset(d, n_people=10, overwrite=True)
    (d / "notes.txt").write_text("mine\n")


def one_line_error(err: str, last: str) -> bool:
    """``probekit: error: ...`` on one line, or argparse's usage line plus ``probekit <command>: error: ...``."""
    if "usage:" in err:
        return ": error: " in last and last.startswith("probekit")
    return last.startswith("probekit: error: ") and len(err.strip().splitlines()) == 1


def run_case(c: Case) -> Case:
    if c.setup is not None:
        c.setup()
    before = {p: digest(p) for p in c.protect}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "probekit", *(c.argv if c.argv[:1] == ["--threads"] else ["--threads", "1", *c.argv])]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired:
        rc, err = -999, "timeout"
    lost = [str(x) for x in c.protect if digest(x) != before[x]] + [str(k) for k in c.keep if not k.exists()]
    last = [line for line in err.strip().splitlines() if line.strip()][-1:] or [""]
    if lost:
        cls = "data loss"
    elif "Traceback" in err or rc not in (0, 2):
        cls = "traceback"
    elif c.rc == 2 and rc == 0:
        cls = "silently accepted"
    elif c.rc != rc or (rc == 2 and not (all(w in last[0] for w in c.words) and one_line_error(err, last[0]))):
        cls = "misleading"
    else:
        cls = "clean"
    c.result = {"class": cls, "rc": rc, "message": last[0][:300], "lost": lost}
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", help="build the world here and keep it (default: a temporary directory)")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    root = Path(args.keep or tempfile.mkdtemp(prefix="probekit_sweep_"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "outs").mkdir(exist_ok=True)
    w = World(root)
    pools = root / "pools"
    pools.mkdir(exist_ok=True)
    from probekit.data.pools import POOL_FILES

    rel = pools / POOL_FILES["majors"]
    rel.parent.mkdir(parents=True, exist_ok=True)
    rel.write_text("Economics\nHistory\nPhysics\n")
    all_cases = [c for c in cases(w) if args.k in c.name]
    with ThreadPoolExecutor(args.jobs) as ex:
        done = list(ex.map(run_case, all_cases))
    counts = Counter(str(c.result["class"]) for c in done)
    for c in done:
        if c.result["class"] != "clean":
            print(f"{c.result['class']:>17}  {c.name}  (exit {c.result['rc']}): {c.result['message']}")
    print(f"\n{len(done)} cases: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in
          ("clean", "data loss", "traceback", "silently accepted", "misleading")))  # fmt: skip
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if counts.get("data loss") or counts.get("traceback") else 0


if __name__ == "__main__":
    sys.exit(main())
