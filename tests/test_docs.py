"""The documentation site (``mkdocs.yml``, ``docs/``) builds with ``mkdocs build --strict``; every relative link of
the README and of the docs pages points at a file (and heading) that exists; every ``probekit`` command named in
the docs' code is a real subcommand; the API reference lists every module of the package, and only those."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from tests.test_readme import FENCED, named_commands, unknown_commands

pytestmark = pytest.mark.slow  # builds the documentation site

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`\n]+`")
HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*#*\s*$", flags=re.M)
EXPLICIT_ID = re.compile(r"\{\s*#(?P<id>[\w-]+)[^}]*\}\s*$")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def prose(text: str) -> str:
    """The text without code: links inside code blocks and inline code are not links."""
    return INLINE_CODE.sub("", FENCED.sub("", text))


def slug(title: str) -> str:
    """A heading's anchor as Python-Markdown's ``toc`` makes it (mkdocs), which GitHub's agrees with for the
    headings used here: formatting dropped, punctuation removed, lowercase, spaces to hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link's text
    title = title.replace("`", "").replace("*", "")
    title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    title = re.sub(r"[^\w\s-]", "", title).strip().lower()
    return re.sub(r"[-\s]+", "-", title)


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file (explicit ``{#id}`` ones included)."""
    out = set()
    for m in HEADING.finditer(FENCED.sub("", path.read_text())):
        title = m["title"]
        explicit = EXPLICIT_ID.search(title)
        out.add(explicit["id"] if explicit else slug(title))
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """``<page>: <target> (why)`` for every relative link of ``page`` whose file or heading does not exist (the page
    named relative to ``root``)."""
    bad = []
    for m in LINK.finditer(prose(page.read_text())):
        target = m["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...: not checked here
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(root)}: {target}"
        if not dest.exists():
            bad.append(f"{where} (no such file)")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            bad.append(f"{where} (no heading with anchor #{anchor})")
    return bad


def test_every_relative_link_and_anchor_exists() -> None:
    bad = [b for page in pages() for b in broken_links(page)]
    assert bad == [], "broken links:\n" + "\n".join(bad)


def test_link_checker_finds_what_is_broken(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## A `code` heading: yes\n\nText.\n")
    page = tmp_path / "b.md"
    page.write_text(
        "See [a](a.md), [a's heading](a.md#a-code-heading-yes), [here](#own), ![img](missing.png),\n"
        "[gone](a.md#nothing), [web](https://example.org/x) and `[not a link](nowhere.md)`.\n\n## Own\n\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "b.md: missing.png (no such file)",
        "b.md: a.md#nothing (no heading with anchor #nothing)",
    ]


def test_docs_commands_are_real_subcommands() -> None:
    named = {words for page in sorted(DOCS.rglob("*.md")) for words in named_commands(page.read_text())}
    assert {("train",), ("probe",), ("run",), ("data", "bios"), ("eval", "qa")} <= named  # the checker sees them
    bad = {
        f"{page.relative_to(ROOT)}: {cmd}"
        for page in sorted(DOCS.rglob("*.md"))
        for cmd in unknown_commands(page.read_text())
    }
    assert bad == set(), "commands that probekit does not have:\n" + "\n".join(sorted(bad))


def test_api_reference_lists_every_module() -> None:
    src = ROOT / "src"
    modules = set()
    for f in (src / "probekit").rglob("*.py"):
        rel = f.relative_to(src).with_suffix("")
        if rel.name == "__main__" or any(p.startswith("_") and p != "__init__" for p in rel.parts):
            continue
        modules.add(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    modules.discard("probekit")  # the top package holds only its version
    listed = {
        m
        for page in (DOCS / "reference").glob("*.md")
        for m in re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M)
    }
    assert sorted(modules - listed) == [], "modules missing from docs/reference/"
    assert sorted(listed - modules) == [], "docs/reference/ lists modules that do not exist"


DOTTED = re.compile(r"\bprobekit(?:\.[A-Za-z_]\w*)+")


def defined_names(tree: ast.Module | ast.ClassDef) -> set[str]:
    """The names a module (or class body) defines or imports at its top level."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def resolves(dotted: str) -> bool:
    """Whether ``probekit.a.b[.Name[.member]]`` is a module of the source tree, or a name defined in one (read
    from the source, nothing imported)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT / "src" / Path(*parts[:i])
        path = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.exists()), None)
        if path is None:
            continue
        scope: ast.Module | ast.ClassDef = ast.parse(path.read_text(encoding="utf-8"))
        for name in parts[i:]:
            if name not in defined_names(scope):
                return False
            found = [n for n in scope.body if isinstance(n, ast.ClassDef) and n.name == name]
            if not found:
                return True  # a function, constant or import: its members are not checked
            scope = found[0]
        return True
    return False


def test_docs_name_only_modules_and_names_that_exist() -> None:
    """Every ``probekit.x.y`` the README and the docs name is where they say it is (a guard against moves)."""
    bad = sorted(
        f"{page.relative_to(ROOT)}: {name}"
        for page in pages()
        for name in set(DOTTED.findall(page.read_text()))
        if not resolves(name)
    )
    assert bad == [], "names that are not in src/probekit:\n" + "\n".join(bad)
    assert resolves("probekit.model.transformer.HookedLM") and not resolves("probekit.model.transformer.Nope")


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]' to build the docs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    site = tmp_path / "site"
    assert (site / "index.html").exists() and (site / "reference" / "model" / "index.html").exists()
    # the API reference is generated from the docstrings, not left empty
    assert "HookedLM" in (site / "reference" / "model" / "index.html").read_text()
    # the README's figure is published with the pages that show it
    assert (site / "figures" / "demo" / "compare_p_value.png").exists()
