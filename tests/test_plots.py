"""Results tables (Parquet/CSV round trip, summary) and figures (HTML + PNG + CSV), `probekit plot`."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from probekit.cli import main
from probekit.data.pools import ATTRIBUTES
from probekit.reporting.plots import build_figures, render_figures
from probekit.reporting.results import COLUMNS, make_table, read_results, summary_table, write_results


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return name
    try:  # kaleido can also use a browser it downloaded itself (plotly_get_chrome)
        from choreographer.browsers.chromium import Chromium

        return "kaleido" if Chromium.find_browser(skip_local=False) else None  # type: ignore[attr-defined]
    except Exception:
        return None


def table(models=("single", "multi5+permute"), layers: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model in models:
        for kind, positions in (("p", ATTRIBUTES), ("q", ("name",))):
            for layer in range(layers):
                for pos in positions:
                    for attr in ATTRIBUTES:
                        for target in ("first_token", "value"):
                            rows.append({
                                "model": model, "objective": "ntp", "dataset": "bios", "probe_kind": kind,
                                "hook": "resid", "layer": layer, "position": pos, "attribute": attr,
                                "target_kind": target, "accuracy": float(rng.random()), "baseline": 0.1,
                                "n_train": 50, "n_test": 50, "n_classes": 10, "status": "ok",
                            })  # fmt: skip
    rows[0]["status"] = "skipped: single class"
    rows[0]["accuracy"] = float("nan")
    return make_table(rows)


def test_results_round_trip_and_summary(tmp_path):
    df = table()
    pq, csv = write_results(df, tmp_path)
    back = read_results(pq)
    assert list(back.columns[: len(COLUMNS)]) == list(COLUMNS)
    pd.testing.assert_frame_equal(back, df)
    with pytest.raises(ValueError, match="repeat the same probe"):  # one table as Parquet and as CSV: twice
        read_results([tmp_path, csv])
    other = df.assign(model=df["model"] + "_b")
    write_results(other, tmp_path / "b")
    both = read_results([tmp_path, tmp_path / "b"])
    assert len(both) == 2 * len(df)
    text = summary_table(df)
    assert "Q-probes at the name" in text and "P-probes at the last layer" in text
    assert "1 x skipped: single class" in text and "company_city" in text
    with pytest.raises(ValueError, match="lacks column"):
        make_table([{"model": "m"}])
    with pytest.raises(FileNotFoundError):
        read_results(tmp_path / "nope.parquet")


@pytest.mark.slow
def test_figures_cover_every_view():
    names = {f.name for f in build_figures(table())}
    for model in ("single", "multi5_permute"):
        for target in ("first_token", "value"):
            assert {f"p_layers_{model}_{target}", f"p_grid_{model}_{target}", f"q_layers_{model}_{target}"} <= names
    assert {"compare_p_value", "compare_q_first_token"} <= names
    single = {f.name for f in build_figures(table(models=("only",)))}
    assert not any(n.startswith("compare_") for n in single)  # comparisons need two models


@pytest.mark.slow
def test_render_writes_html_png_and_csv(tmp_path):
    df = table(models=("a", "b"), layers=2)
    df = df[df.target_kind == "value"]  # 8 figures: enough to check every kind, quick to export
    report = render_figures(df, tmp_path)
    figs = build_figures(df)
    for f in figs:
        assert (tmp_path / f"{f.name}.html").stat().st_size > 1000
        data = pd.read_csv(tmp_path / f"{f.name}.csv")
        assert len(data) == len(f.data) > 0 and set(COLUMNS) <= set(data.columns)
    grid = pd.read_csv(tmp_path / "p_grid_a_value.csv")
    assert set(grid["layer"]) == {1} and set(grid["model"]) == {"a"} and len(grid) == 36
    assert (tmp_path / "plotly.min.js").exists()  # HTML works offline
    if _chromium() is None:
        assert report.png_error is not None and "chromium" in report.png_error.lower()
        pytest.skip("Chromium is not installed, so kaleido cannot export PNG (apt-get install chromium)")
    assert report.png_error is None, report.png_error
    for f in figs:
        png = tmp_path / f"{f.name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_png_failure_keeps_html_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/bin/false")  # a browser that exits at once (export runs in a child)
    report = render_figures(table(models=("a",), layers=1), tmp_path)
    assert report.png_error is not None and "PNG export failed" in report.png_error
    assert "apt-get install" in report.png_error
    assert list(tmp_path.glob("*.html")) and not list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_plot_cli_rerenders_from_tables(tmp_path, capsys):
    write_results(table(models=("a",), layers=2), tmp_path / "a")
    write_results(table(models=("b",), layers=2, seed=1), tmp_path / "b")
    rc = main(["plot", "--results", str(tmp_path / "a" / "results.parquet"), str(tmp_path / "b"), "--out",
               str(tmp_path / "figs"), "--no-png", "--layer", "0"])  # fmt: skip
    assert rc == 0
    assert (tmp_path / "figs" / "compare_q_value.html").exists()
    assert set(pd.read_csv(tmp_path / "figs" / "compare_p_value.csv")["layer"]) == {0}
    assert "rendered" in capsys.readouterr().out
    assert main(["plot", "--results", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "f2")]) == 2


def _with_rigour(df: pd.DataFrame, seeds: tuple[int, ...]) -> pd.DataFrame:
    """``df`` repeated per seed with intervals and control-task columns filled in."""
    parts = []
    for s in seeds:
        d = df.copy()
        d["accuracy"] = (d["accuracy"] + 0.01 * s).clip(0, 1)
        d["ci_low"], d["ci_high"] = (d["accuracy"] - 0.05).clip(0, 1), (d["accuracy"] + 0.05).clip(0, 1)
        d["control_accuracy"] = d["baseline"]
        d["selectivity"] = d["accuracy"] - d["control_accuracy"]
        d["seed"] = s
        parts.append(d)
    return make_table(pd.concat(parts).to_dict("records"))


@pytest.mark.slow
def test_figures_show_intervals_control_and_seeds() -> None:
    one = _with_rigour(table(), (0,))
    figs = {f.name: f for f in build_figures(one)}
    assert "p_grid_single_value_selectivity" in figs  # the control task gives selectivity grids
    assert "p_grid_single_value_selectivity" not in {f.name for f in build_figures(one, control=False)}
    q = figs["q_layers_single_first_token"].fig
    assert any(t.fill == "toself" for t in q.data)  # the bootstrap band
    assert any((t.line.dash == "dot") for t in q.data if t.line is not None)  # the control task
    bars = [t for t in figs["compare_q_first_token"].fig.data if t.error_y and t.error_y.array is not None]
    assert bars and all(len(t.error_y.array) == len(ATTRIBUTES) for t in bars)

    three = _with_rigour(table(), (0, 1, 2))
    figs = {f.name: f for f in build_figures(three)}
    q = figs["q_layers_single_first_token"].fig
    seeds = [t for t in q.data if t.name and t.name.endswith(" seeds")]
    assert seeds and all(len(t.y) == 3 * 3 for t in seeds)  # 3 layers x 3 seeds a point each
    line = next(t for t in q.data if t.name == ATTRIBUTES[0])
    rows = three[(three.model == "single") & (three.probe_kind == "q") & (three.target_kind == "first_token")
                 & (three.attribute == ATTRIBUTES[0])]  # fmt: skip
    assert np.allclose(line.y, rows.groupby("layer")["accuracy"].mean().to_numpy())  # the mean over seeds
    assert "mean of 3 seeds" in figs["p_grid_single_value"].fig.layout.title.text


@pytest.mark.parametrize(("objectives", "inverse", "title", "abi_note"),
                         [(["ntp", "ntp"], False, "against extraction<br>", False),
                          (["ntp", "abi"], True, "against extraction and reversal<br>", True)])  # fmt: skip
def test_storage_scatter_title_names_what_is_plotted(objectives, inverse, title, abi_note) -> None:
    from probekit.reporting.compare import Points, storage_scatter

    table = pd.DataFrame({"model": ["a", "b"], "objective": objectives, "dataset": ["d", "d"],
                          "attribute": ["major", "major"], "measure": ["Q frozen, first token"] * 2, "layer": [1, 1],
                          "storage": [0.2, 0.3], "baseline": [0.1, 0.1], "qa": [0.1, 0.4],
                          "inverse": [0.0, 0.1] if inverse else [np.nan] * 2})  # fmt: skip
    points = Points(table, np.arange(3), np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)))
    fig = storage_scatter(points, pd.DataFrame())
    assert fig is not None
    text = fig.fig.layout.title.text
    assert title in text and ("ABI reading" in text) is abi_note
