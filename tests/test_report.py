"""The self-contained HTML run report: structure, escaping, atomic write, and rendering in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from probekit.reporting.figures import Figure
from probekit.reporting.report import ERRORS_ID, figure_ids, group_figures, write_report

EVIL = "<script>alert(1)</script>"


def _figures() -> list[Figure]:
    heat = go.Figure(go.Heatmap(z=[[0.1, 0.9], [0.5, 0.3]], x=["birth_city", "major"], y=["0", "1"]))
    scatter = go.Figure(go.Scatter(x=[0, 1, 2], y=[0.2, 0.6, 0.9], mode="lines+markers", name=EVIL))
    bar = go.Figure(go.Bar(x=["a", "b"], y=[0.7, 0.4]), layout={"title": EVIL})
    empty = pd.DataFrame({"x": [0]})
    return [
        Figure("p_grid_tiny_bio", heat, empty),
        Figure("q_layers_tiny_bio", scatter, empty),
        Figure("compare_q_bio", bar, empty),
    ]


def _write(tmp_path: Path) -> tuple[Path, list[str]]:
    figs = _figures()
    path = write_report(
        tmp_path / "report.html",
        title="Run <tiny> & friends",
        question="Is the attribute linearly readable?",
        config={"model": "tiny", "seeds": [0, 1], "out": tmp_path},
        provenance={"git": "abc123", "dirty": False},
        summary=f"accuracy 0.91 [0.88, 0.94]\n{EVIL}",
        figures=figs,
        notes="notes with <b>tags</b>",
    )
    return path, figure_ids(f.name for f in figs)


def test_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    path, ids = _write(tmp_path)
    assert path.exists()
    text = path.read_text(encoding="utf-8")
    for div_id in ids:
        assert text.count(f'id="{div_id}"') == 1, div_id
        assert text.count(f'href="#{div_id}"') == 1, div_id  # one table-of-contents link each
    marker = get_plotlyjs()[:200]  # the plotly.js banner and opening lines
    assert text.count(marker) == 1
    assert not re.search(r"<script[^>]*\bsrc=|<link\b", text)  # nothing loaded from elsewhere
    assert EVIL not in text  # not in the summary, the legend name or the title
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Run &lt;tiny&gt; &amp; friends" in text and "notes with &lt;b&gt;tags&lt;/b&gt;" in text
    assert text.index("compare_q_bio") < text.index('id="fig-p_grid_tiny_bio"')  # comparisons first
    assert f'id="{ERRORS_ID}"' in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temp files left


def test_groups_compare_first_and_unique_ids() -> None:
    empty = pd.DataFrame()
    names = ["p_grid_a_bio", "q_layers_a_bio", "p_grid_b_bio", "compare_p_bio", "p_grid_a_bio"]
    groups = group_figures([Figure(n, go.Figure(), empty) for n in names])
    assert [k for k, _ in groups] == ["compare_p", "p_grid", "q_layers"]
    assert [d for _, figs in groups for _, d in figs] == [
        "fig-compare_p_bio", "fig-p_grid_a_bio", "fig-p_grid_b_bio", "fig-p_grid_a_bio-2", "fig-q_layers_a_bio",
    ]  # fmt: skip


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        pytest.skip("Chromium not installed: no chromium, chromium-browser or google-chrome on PATH")
    return found


def _dump_dom(chromium: str, page: Path, profile: Path) -> str:
    cmd = [
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-extensions", f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
        page.resolve().as_uri(),
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("headless Chromium did not finish within 60 s")
    # Chromium writes warnings (dbus, GPU, ...) on stderr: ignore them unless the dump itself is missing
    assert done.returncode == 0 and "<html" in done.stdout, f"rc={done.returncode}\n{done.stderr[-2000:]}"
    return done.stdout


def _rendered(dom: str, ids: list[str]) -> list[str]:
    """The figure ids whose div plotly drew: it carries class js-plotly-plot and holds a main-svg before the next."""
    starts = []
    for div_id in ids:
        m = re.search(rf'<div[^>]*\bid="{re.escape(div_id)}"[^>]*>', dom)
        if m and "js-plotly-plot" in m.group(0):
            starts.append((m.start(), div_id))
    starts.sort()
    bounds = [s for s, _ in starts[1:]] + [len(dom)]
    return [d for (s, d), end in zip(starts, bounds) if 'class="main-svg"' in dom[s:end]]


def _errors(dom: str) -> str:
    m = re.search(rf'<pre id="{ERRORS_ID}"[^>]*>(.*?)</pre>', dom, flags=re.DOTALL)
    assert m, "the error box is missing from the rendered page"
    return m.group(1).strip()


@pytest.mark.slow  # starts a browser
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    path, ids = _write(tmp_path / "out")
    dom = _dump_dom(chromium, path, tmp_path / "profile")
    assert _errors(dom) == ""
    rendered = _rendered(dom, ids)
    assert sorted(rendered) == sorted(ids), f"plotly drew {len(rendered)}/{len(ids)} figures: {rendered}"
    assert dom.count('class="main-svg"') >= len(ids)
