"""Measure the command-line layer: probekit's own (``probekit.cli.flags``) against tyro, jsonargparse and
simple-parsing, on one real config dataclass.

The setup measured is ``probekit probe``'s: a spec file (``--spec FILE``, top-level ``ProbeSpec`` keys) with
dotted overrides of any field (``--spec.max-iter 7``), lists given comma-separated (``--spec.layers 0,4``,
``--spec.hooks resid,attn_out``), the short alias ``--engine`` of ``--spec.engine``, its choices shown in
``--help``, every field's doc (the comment beside it) and default in ``--help``, and one-line errors
(``probekit: error: ...``, exit code 2) for a bad value, an unknown choice, an unknown key in the file and a
key the file gives twice. Each library is set up with its own means for a file plus dotted flags and nothing
else (``ProbeSpec`` is not changed: its fields are the ones the project has); each driver catches
``UserError`` and prints it in one line as ``probekit.cli.main`` does, so a check done by ``ProbeSpec`` itself
reads the same through every layer.

Every case runs in a fresh interpreter (``probekit.probes.spec`` is imported before the clock starts, so the
times are the layer's own): ``import`` is the layer's import, ``--help`` the parser's construction and the
printed help, ``wall`` the whole ``--help`` process; medians over ``--rounds`` interleaved rounds. ``torch``
says whether torch was in ``sys.modules`` after the help was printed.

    python benchmarks/bench_cli.py                  # needs: pip install tyro jsonargparse simple-parsing
    python benchmarks/bench_cli.py --rounds 9 --show   # and print each case's output
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HARNESS = """\
import atexit, json, os, sys, time
import probekit.probes.spec  # the config's own import: before the clock
from probekit.errors import UserError
_T0 = time.perf_counter()
{imports}
_T1 = time.perf_counter()
def _report():
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump({{"import_s": _T1 - _T0, "run_s": time.perf_counter() - _T1,
                    "torch": "torch" in sys.modules}}, f)
atexit.register(_report)
{body}
try:
    spec = parse(sys.argv[1:])
except UserError as e:  # as probekit.cli.main reports a user's error
    print(f"probekit: error: {{e}}", file=sys.stderr)
    sys.exit(2)
print("OK " + json.dumps({{k: getattr(spec, k) for k in ("max_iter", "layers", "hooks", "engine", "control_task")}}))
"""

# Each layer: the imports it needs, then parse(argv) -> ProbeSpec (the parser built inside, as a command does).
LAYERS: dict[str, dict[str, str]] = {
    "home-made": {
        "imports": "import argparse\nfrom probekit.cli.flags import add_flags, merge",
        "body": """
from probekit.probes.config import BACKENDS
from probekit.probes.spec import STORAGE, ProbeSpec, load_spec
from probekit.serde import from_dict, to_dict

def parse(argv):
    p = argparse.ArgumentParser(prog="probekit probe")
    p.add_argument("--spec", help="probe spec YAML")
    flags = add_flags(p, ProbeSpec, prefix=("spec",), names={"spec.engine": ("--spec.engine", "--engine")},
                      choices={"spec.engine": BACKENDS, "spec.storage": STORAGE})
    args = p.parse_args(argv)
    spec = load_spec(args.spec) if args.spec else ProbeSpec()
    return from_dict(ProbeSpec, merge(to_dict(spec), flags.given(args).get("spec", {})))
""",
    },
    "tyro": {
        "imports": "import argparse, dataclasses\nimport tyro",
        "body": """
from probekit.probes.spec import ProbeSpec, load_spec

@dataclasses.dataclass
class Args:
    spec: ProbeSpec

def parse(argv):
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # tyro reads no config file: read the
    pre.add_argument("--spec")  # spec with probekit's loader and give it to tyro as the defaults
    known, rest = pre.parse_known_args(argv)
    base = load_spec(known.spec) if known.spec else ProbeSpec()
    return tyro.cli(Args, args=rest, default=Args(base), prog="probekit probe").spec
""",
    },
    "jsonargparse": {
        "imports": "from jsonargparse import ArgumentParser",
        "body": """
from probekit.probes.spec import ProbeSpec

def parse(argv):
    p = ArgumentParser(prog="probekit probe")
    p.add_class_arguments(ProbeSpec, "spec")  # --spec FILE and --spec.* flags
    return p.instantiate(p.parse_args(argv)).spec
""",
    },
    "simple-parsing": {
        "imports": "from simple_parsing import ArgumentGenerationMode, ArgumentParser, DashVariant",
        "body": """
from probekit.probes.spec import ProbeSpec

def parse(argv):
    p = ArgumentParser(prog="probekit probe", add_config_path_arg="spec-file",  # {spec: {...}}; not --spec:
                       # that name is the dataclass's destination
                       argument_generation_mode=ArgumentGenerationMode.NESTED,
                       add_option_string_dash_variants=DashVariant.DASH)
    p.add_arguments(ProbeSpec, dest="spec")  # --spec.* flags
    return p.parse_args(argv).spec
""",
    },
}

# How each layer spells a dotted field's flag, and how its spec file nests the keys.
SPELL = {"home-made": "dash", "tyro": "dash", "jsonargparse": "underscore", "simple-parsing": "dash"}
NESTED_FILE = {"simple-parsing"}
FILE_FLAG = {"simple-parsing": "--spec-file"}
OWN_LOADER = {"tyro"}  # no config files of its own: the file is read by probekit.serde
LAYER_LINES = {"home-made": "src/probekit/cli/flags.py"}  # the layer's own code in this repository

FILES = {"good": "max_iter: 5\n", "unknown": "max_itr: 5\n", "duplicate": "max_iter: 5\nmax_iter: 6\n"}


def flag(layer: str, field: str) -> str:
    name = field if SPELL[layer] == "underscore" else field.replace("_", "-")
    return f"--spec.{name}"


def cases(layer: str, files: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, what counts as right: 'ok:<key>=<json value>' or 'refused')."""
    f = lambda field: flag(layer, field)  # noqa: E731
    spec = FILE_FLAG.get(layer, "--spec")
    return {
        "file": ([spec, str(files["good"])], "ok:max_iter=5"),
        "file + dotted": ([spec, str(files["good"]), f("max_iter"), "7"], "ok:max_iter=7"),
        "list 0,4": ([f("layers"), "0,4"], "ok:layers=[0, 4]"),
        "list a,b": ([f("hooks"), "resid,attn_out"], 'ok:hooks=["resid", "attn_out"]'),
        "alias --engine": (["--engine", "sklearn"], 'ok:engine="sklearn"'),
        "true/false flag": ([f("control_task")], "ok:control_task=true"),
        "wrong type": ([f("max_iter"), "abc"], "refused"),
        "unknown choice": ([f("engine"), "bogus"], "refused"),
        "unknown key in file": ([spec, str(files["unknown"])], "refused"),
        "duplicate key in file": ([spec, str(files["duplicate"])], "refused"),
    }


def run(layer: str, code: Path, argv: list[str], tmp: Path) -> dict:
    out = tmp / "metrics.json"
    env = {**os.environ, "BENCH_OUT": str(out), "JSONARGPARSE_DEPRECATION_WARNINGS": "off", "COLUMNS": "100"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(code), *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    metrics = json.loads(out.read_text()) if out.exists() else {}
    out.unlink(missing_ok=True)
    return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "wall_s": wall, **metrics}


def judge(res: dict, want: str) -> str:
    """A short verdict: 'yes' / 'no (...)' for a case that should work, the error's shape for one refused."""
    err = [line for line in res["stderr"].splitlines() if line.strip()]
    if want.startswith("ok:"):
        key, _, value = want[3:].partition("=")
        if res["rc"] == 0 and res["stdout"].startswith("OK "):
            got = json.loads(res["stdout"][3:].splitlines()[0])
            return "yes" if json.dumps(got[key]) == value else f"no (got {got[key]!r})"
        return f"no (rc {res['rc']})"
    if res["rc"] == 0:
        return "accepted silently"
    if "Traceback" in res["stderr"]:
        return f"traceback (rc {res['rc']})"
    usage = all(line.startswith(("usage:", " ")) for line in err[:-1]) and err[0].startswith("usage:")
    if len(err) == 1:
        shape = "1 line"
    elif usage and err[-1].startswith("probekit") and ": error: " in err[-1]:
        shape = "usage + 1 line"  # argparse's form, which tests/reliability/sweep.py also counts as one line
    else:
        shape = f"{len(err)} lines"
    return f"rc {res['rc']}, {shape}"


def loc(text: str) -> int:
    """Lines of code: not blank, not a comment, not a docstring line."""
    return sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved --help timings per layer (median)")
    ap.add_argument("--show", action="store_true", help="print each case's stderr (last 3 lines)")
    a = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        files = {}
        for name, text in FILES.items():
            files[name] = tmp / f"{name}.yaml"
            files[name].write_text(text)
            (tmp / f"{name}_nested.yaml").write_text("spec:\n" + textwrap.indent(text, "  "))
        codes = {}
        for layer, parts in LAYERS.items():
            codes[layer] = tmp / f"drive_{layer.replace('-', '_')}.py"  # not tyro.py: no shadowing
            codes[layer].write_text(HARNESS.format(**parts))
        times: dict[str, list[dict]] = {layer: [] for layer in LAYERS}
        for _ in range(a.rounds):
            for layer in LAYERS:
                times[layer].append(run(layer, codes[layer], ["--help"], tmp))
        rows = {}
        for layer, parts in LAYERS.items():
            helps = times[layer]
            text = helps[0]["stdout"] + helps[0]["stderr"]
            flat = " ".join(text.replace("│", " ").split())
            layer_files = {k: tmp / (f"{k}_nested.yaml" if layer in NESTED_FILE else f"{k}.yaml") for k in files}
            row = {
                "import ms": f"{1000 * statistics.median(h['import_s'] for h in helps):.0f}",
                "--help ms": f"{1000 * statistics.median(h['run_s'] for h in helps):.0f}",
                "--help wall ms": f"{1000 * statistics.median(h['wall_s'] for h in helps):.0f}",
                "torch after --help": "yes" if helps[0].get("torch") else "no",
                "field docs in help": "yes" if "optimiser iterations per probe fit" in flat else "no",
                "defaults in help": "yes" if "default: 100" in flat or "default: 100)" in flat else "no",
                "choices in help": "yes"
                if "torch,torch-fast,torch-classic,sklearn" in flat.replace(" ", "")
                or "torch|torch-fast|torch-classic|sklearn" in flat
                else "no",
            }
            for name, (argv, want) in cases(layer, layer_files).items():
                res = run(layer, codes[layer], argv, tmp)
                row[name] = judge(res, want) + (" (serde)" if layer in OWN_LOADER and "file" in name else "")
                if a.show:
                    print(f"--- {layer} {name}: rc {res['rc']}\n" + "\n".join(res["stderr"].splitlines()[-3:]))
            own = LAYER_LINES.get(layer)
            body = [ln for ln in parts["body"].splitlines() if not ln.startswith(("from ", "import ", "def parse"))]
            row["lines at the call site"] = str(loc("\n".join(body)))
            row["lines of the layer (non-blank)"] = str(loc((root / own).read_text())) if own else "0 (library)"
            rows[layer] = row
    names = list(next(iter(rows.values())))
    print("| | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for n in names:
        print(f"| {n} | " + " | ".join(rows[layer][n] for layer in rows) + " |")
    import importlib.metadata as md

    versions = []
    for dist in ("tyro", "jsonargparse", "simple-parsing"):
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
    print(f"\nPython {sys.version.split()[0]}; " + ", ".join(versions) + f"; {a.rounds} rounds")


if __name__ == "__main__":
    main()
