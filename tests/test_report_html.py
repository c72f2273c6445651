"""report.html shows the summary as HTML tables, headline numbers first, from the same DataFrames as summary.txt.

Built from the demo's committed tables (``experiments/demo``: probe results and the reversal curse) plus a small
QA and memorisation table, without training anything.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pytest

from probekit.experiment.runner import headline, summary_tables
from probekit.experiment.stage import Context, Job, Stage
from probekit.reporting.report import SummaryPart, SummaryTable, html_table, summary_text, write_report
from probekit.reporting.results import read_results

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "demo"
MODELS = ("ntp_single", "ntp_multi5_permute")


class Page(HTMLParser):
    """What the tests read from a report: the order of headings and sections, each table's cells (text and class)
    with the id of its section and whether it sits in a sideways-scrolling box, and the summary's text blocks."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.order: list[str] = []  # "h2:<id>" and "section:<id>" in page order
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}  # section id -> rows of (cell text, class)
        self.wrapped: list[bool] = []  # per table: inside <div class="table-wrap">
        self.text_blocks = 0
        self._section, self._cell, self._wrap = "", "", False
        self._row: list[tuple[str, str]] | None = None
        self._cls: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("h2", "section") and a.get("id"):
            self.order.append(f"{tag}:{a['id']}")
            if tag == "section":
                self._section = a["id"] or ""
        elif tag == "div" and a.get("class") == "table-wrap":
            self._wrap = True
        elif tag == "table":
            self.tables[self._section] = []
            self.wrapped.append(self._wrap)
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cls, self._cell = a.get("class") or "", ""
        elif tag == "pre" and a.get("class") == "summary-text":
            self.text_blocks += 1

    def handle_data(self, data: str) -> None:
        if self._cls is not None:
            self._cell += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cls is not None:
            self._row.append((self._cell, self._cls))
            self._cls = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._section].append(self._row)
            self._row = None
        elif tag == "div":
            self._wrap = False

    def cell(self, section: str, row: str, column: str) -> tuple[str, str]:
        """The (text, class) of a table's cell, found by the first column's text and the header's."""
        head, *body = self.tables[section]
        j = [h for h, _ in head].index(column)
        return next(r[j] for r in body if r[0][0] == row)


def _percent(row: pd.Series) -> str:
    return f"{100 * row['value']:.1f} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def _eval_csv(path: Path, seed: int) -> Path:
    """A small evaluation table (QA-like: test and train split) for the demo's models, written as CSV."""
    rows = [{"model": m, "task": t, "metric": "exact_match", "value": v, "n": 150, "ci_low": v - 0.03,
             "ci_high": v + 0.02, "split": "test"}
            for i, m in enumerate(MODELS) for t, v in (("birth_city", 0.4 + 0.1 * i + 0.01 * seed),
                                                        ("overall", 0.5 + 0.2 * i + 0.01 * seed))]  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Page, dict[str, pd.DataFrame], list[SummaryPart]]:
    tmp = tmp_path_factory.mktemp("report")
    tables = {"reversal": pd.read_csv(DEMO / "reversal.csv"), "qa": pd.read_csv(_eval_csv(tmp / "qa.csv", 0)),
              "recall": pd.read_csv(_eval_csv(tmp / "recall.csv", 1)).drop(columns=["split"])}  # fmt: skip
    parts: list[SummaryPart] = [*summary_tables(read_results(DEMO / "results.csv"), tables["qa"], None, None,
                                                tables["reversal"], tables["recall"])]  # fmt: skip
    path = write_report(tmp / "report.html", title="demo", question="", config={}, provenance=None,
                        summary=parts, figures=[], headline=headline(parts))  # fmt: skip
    return Page(path.read_text(encoding="utf-8")), tables, parts


def test_summary_text_is_the_committed_summary() -> None:
    """The tables give summary.txt byte for byte (the demo's: probe tables, reversal, an empty comparison)."""
    parts = summary_tables(read_results(DEMO / "results.csv"), None, reversal=pd.read_csv(DEMO / "reversal.csv"))
    assert summary_text([*parts, ""]) + "\n" == (DEMO / "summary.txt").read_text()


def test_every_summary_table_is_an_html_table_headline_first(report: Any) -> None:
    page, _, parts = report
    assert page.text_blocks == 0  # no table fell back to a preformatted block
    expected = ["summary-headline", *(f"summary-{p.name}" for p in parts)]
    assert list(page.tables) == expected
    assert [p.name for p in parts] == ["probe_first_token", "probe_value", "qa", "memorisation", "reversal"]
    assert page.order[:3] == ["h2:headline", "section:summary-headline", "h2:summary"]  # the key numbers first
    assert all(page.wrapped) and len(page.wrapped) == len(expected)  # wide tables scroll sideways
    for p in parts:  # every row of every table, header included
        assert isinstance(p, SummaryTable)
        assert len(page.tables[f"summary-{p.name}"]) == len(p.table) + 1


def test_cells_are_the_numbers_of_the_tables(report: Any) -> None:
    page, tables, _ = report
    rev = tables["reversal"]
    row = rev[(rev["model"] == "bico") & (rev["task"] == "N2D-reverse") & (rev["metric"] == "exact_match")].iloc[0]
    assert page.cell("summary-reversal", "bico", "N2D-reverse") == (_percent(row), "num")
    qa = tables["qa"]
    for model in MODELS:
        overall = _percent(qa[(qa["model"] == model) & (qa["task"] == "overall")].iloc[0])
        assert page.cell("summary-qa", model, "overall") == (overall, "num")
        assert page.cell("summary-headline", model, "QA") == (overall, "num")
        recall = tables["recall"]
        assert page.cell("summary-headline", model, "memorisation") == (
            _percent(recall[(recall["model"] == model) & (recall["task"] == "overall")].iloc[0]), "num")  # fmt: skip
    # the headline's Q-probe cell is the summary's own cell for that model and attribute
    attr, _ = page.cell("summary-headline", "ntp_single", "best Q attribute")
    probe = page.tables["summary-probe_first_token"]
    q, n = [h for h, _ in probe[0]].index("Q name"), [h for h, _ in probe[0]].index("attribute")
    want = next(r[q][0] for r in probe[1:] if r[0][0] == "ntp_single" and r[n][0] == attr)
    assert page.cell("summary-headline", "ntp_single", "Q at name") == (want, "num")
    assert page.cell("summary-probe_first_token", "ntp_single", "attribute")[1] == ""  # text stays left-aligned


def test_html_table_escapes_and_aligns() -> None:
    table = pd.DataFrame({"model": ["<b>m</b>"], "acc": ["97.9 [96.8, 98.8]"], "n": [3], "x": [float("nan")]})
    html = html_table(table)
    assert "&lt;b&gt;m&lt;/b&gt;" in html and "<b>" not in html
    assert '<td class="num">97.9 [96.8, 98.8]</td>' in html and '<td class="num">3</td>' in html
    assert '<td class="num">-</td>' in html  # a missing number


class TextOnly(Stage):
    """A plug-in stage that gives its summary as lines of text only."""

    name = "text_only"
    directory = "text_only"

    def jobs(self, ctx: Context) -> list[Job]:
        return []

    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        return {}

    def summary(self, ctx: Context) -> list[str]:
        return ["text_only: 3 things", "  one <per> line"]


def test_a_text_summary_falls_back_to_a_text_block(tmp_path: Path) -> None:
    parts = TextOnly().summary_parts(Context(cast(Any, None), tmp_path))
    assert parts == ["text_only: 3 things", "  one <per> line"]
    table = SummaryTable("t:", pd.DataFrame({"a": [1]}), name="t")
    path = write_report(tmp_path / "r.html", title="t", question="", config={}, provenance=None,
                        summary=[table, *parts], figures=[])  # fmt: skip
    page = Page(path.read_text(encoding="utf-8"))
    assert page.text_blocks == 1 and list(page.tables) == ["summary-t"] and "headline" not in " ".join(page.order)
    assert "  one &lt;per&gt; line" in path.read_text(encoding="utf-8")


def test_patch_route_correlations_and_scale_are_html_tables_with_their_text_unchanged(tmp_path: Path) -> None:
    """The patch route, the storage-extraction correlations and the scale table are tables in report.html, while
    summary.txt keeps their text layout (the correlations one line each)."""
    from probekit.patching.patch import route_summary
    from probekit.reporting.compare import correlation_summary
    from probekit.reporting.scaling import scale_summary

    flips = {"whole name": (1.0, 0.6), "answer position": (0.1, 0.4)}  # per layer 0, 1
    route = pd.DataFrame([{"model": m, "attribute": "major", "layer": layer, "state": s, "value": v[layer],
                           "n_pairs": 20} for m in MODELS for layer in (0, 1) for s, v in flips.items()])  # fmt: skip
    corr = pd.DataFrame([{"measure": "q_frozen_first_token", "versus": "qa", "method": "pearson", "r": 0.41,
                          "ci_low": 0.12, "ci_high": 0.66, "n_points": 12, "n_people": 150, "note": ""},
                         {"measure": "q_frozen_first_token", "versus": "inverse", "method": "pearson",
                          "r": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n_points": 12,
                          "n_people": 150, "note": "constant"}])  # fmt: skip
    scale = pd.DataFrame([{"model": m, "augmentation": "single", "n_layers": 4, "d_model": 128, "n_people": 300,
                           "last_names": 12, "q_name": 0.1, "q_low": 0.08, "q_high": 0.12, "baseline": 0.13,
                           "qa": 0.06, "qa_low": 0.05, "qa_high": 0.08, "measure": "Q frozen, first token"}
                          for m in MODELS])  # fmt: skip
    parts = [*route_summary(route), *correlation_summary(corr), *scale_summary(scale)]
    assert [p.name for p in parts if isinstance(p, SummaryTable)] == ["patch_route", "correlations", "scale"]
    text = summary_text(parts)
    assert "  q_frozen_first_token               vs qa       pearson   +0.41 [+0.12, +0.66]  (12 points, 150 people)" \
        in text.splitlines()  # fmt: skip
    assert "constant" in text and "L0" in text and "100 / 10" in text
    page = Page(write_report(tmp_path / "r.html", title="t", question="", config={}, provenance=None, summary=parts,
                             figures=[]).read_text(encoding="utf-8"))  # fmt: skip
    assert page.text_blocks == 0
    assert len(page.tables["summary-patch_route"]) == 1 + len(MODELS)
    head, *body = page.tables["summary-correlations"]
    j = [h for h, _ in head].index("r [95% CI]")
    assert [r[j][0] for r in body] == ["+0.41 [+0.12, +0.66]", "constant"]
    assert len(page.tables["summary-scale"]) == 1 + len(MODELS)


@pytest.mark.parametrize("methods, title_has, marked", [
    (("full", "full"), "after finetuning on P_train):", []),
    (("none", "none"), "as trained with P_train QAs, no finetuning):", []),
    (("full", "none"), "; * answers as trained with P_train QAs, no finetuning):", ["ntp_multi5_permute *"]),
])
def test_qa_summary_says_which_models_were_finetuned(tmp_path: Path, methods: tuple[str, str], title_has: str,
                                                     marked: list[str]) -> None:
    """Mixed-trained models answer P_test as trained: the QA table's title (and a * per model when the run mixes
    both) says so instead of claiming every model was finetuned."""
    qa = pd.read_csv(_eval_csv(tmp_path / "qa.csv", 0))
    qa["finetune"] = [methods[MODELS.index(m)] for m in qa["model"]]
    table = next(t for t in summary_tables(read_results(DEMO / "results.csv"), qa) if t.name == "qa")
    assert table.title.startswith("QA extraction on P_test (") and table.title.endswith(title_has)
    assert [m for m in table.table.index if m.endswith(" *")] == marked
