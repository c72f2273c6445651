"""The package's shape, enforced: one package per pipeline stage, imports only point down the layers, no import
cycles, no stage imports the CLI, and every ``from probekit.X import name`` names something defined in ``X`` (one
import path per name, no re-exports).

The layers, lowest first (a module may import its own package and any package of a lower layer)::

    core (errors, io, serde, stats, provenance) < data < model < objectives < training < reporting
      < probes < patching < evaluate < experiment < cli

``reporting`` sits below the stages that write results tables and figures (probes, patching, evaluate) and above
what it reads settings from (model); ``experiment`` composes every stage; ``cli`` is the top.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "io", "serde", "stats", "provenance", "__init__"),
    ("data",),
    ("model",),
    ("objectives",),
    ("training",),
    ("reporting",),
    ("probes",),
    ("patching",),
    ("evaluate",),
    ("experiment",),
    ("cli", "__main__"),
)
RANK = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def modules() -> dict[str, Path]:
    return {module_name(f): f for f in (SRC / "probekit").rglob("*.py")}


def part_of(module: str) -> str:
    """The layer part of ``probekit.a.b``: ``a`` (``__init__`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, probekit module) for every import in the file, module-level or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("probekit"):
                out.append((node.lineno, t))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        for _, target in imports(path, known):
            if target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    nodes = sorted(set(edges) | {t for ts in edges.values() for t in ts})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = counter
                counter += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter(sorted(edges.get(w, ())))))
            elif w in on:
                low[v] = min(low[v], index[w])
    return found


def test_every_top_level_part_has_a_layer() -> None:
    parts = {part_of(m) for m in modules()}
    assert parts <= set(RANK), f"place these in LAYERS: {sorted(parts - set(RANK))}"


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_cycle_finder_finds_a_cycle() -> None:  # the check above would pass vacuously if this broke
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_down_the_layers_and_never_at_the_cli() -> None:
    known = modules()
    upward = []
    for name, path in sorted(known.items()):
        for line, target in imports(path, known):
            src, dst = part_of(name), part_of(target)
            if src != dst and RANK[dst] > RANK[src]:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {name} ({src}) imports {target} ({dst})")
    assert upward == []


def _defined_names(path: Path) -> set[str]:
    names: set[str] = set()

    def scan(body: list[ast.stmt]) -> None:
        for n in body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, ast.Assign):
                names.update(x.id for t in n.targets for x in ast.walk(t) if isinstance(x, ast.Name))
            elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                names.add(n.target.id)
            elif isinstance(n, ast.If | ast.Try):
                scan(n.body)
                scan(n.orelse)

    scan(ast.parse(path.read_text(encoding="utf-8")).body)
    if path.name == "__init__.py":  # a package's submodules are importable from it
        names.update(p.stem for p in path.parent.iterdir() if p.suffix == ".py" or p.is_dir())
    return names


@pytest.mark.parametrize("where", ["src", "tests", "benchmarks"])
def test_one_import_path_per_name(where: str) -> None:
    """``from probekit.X import name`` must import ``name`` from the module that defines it."""
    known = modules()
    defined = {m: _defined_names(p) for m, p in known.items()}
    wrong = []
    for f in sorted((ROOT / where).rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("probekit"):
                mod = str(node.module)
                if mod not in known:
                    wrong.append(f"{f.relative_to(ROOT)}:{node.lineno}: no module {mod}")
                    continue
                if "__getattr__" in defined[mod]:  # a lazy package face (probes): its table names the home
                    continue
                wrong += [f"{f.relative_to(ROOT)}:{node.lineno}: {mod} does not define {a.name}"
                          for a in node.names if a.name not in defined[mod]]  # fmt: skip
    assert wrong == []
