"""PNG export is bounded in time: a browser that never answers costs the time limit, never the figures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from probekit.cli import main
from probekit.reporting.results import write_results
from tests.test_plots import table


def _sleeping_browser(tmp_path: Path) -> tuple[Path, Path]:
    """A 'browser' that records its pid and sleeps; returns (script, pid file)."""
    pid_file = tmp_path / "browser.pid"
    script = tmp_path / "sleepy-browser"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n", encoding="utf-8")
    script.chmod(0o755)
    return script, pid_file


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_hanging_browser_is_stopped_and_html_csv_are_written(tmp_path: Path, monkeypatch, capsys) -> None:
    script, pid_file = _sleeping_browser(tmp_path)
    monkeypatch.setenv("BROWSER_PATH", str(script))
    monkeypatch.setenv("PROBEKIT_PNG_TIMEOUT", "6")
    write_results(table(models=("a", "b"), layers=2), tmp_path / "table")
    out = tmp_path / "figs"
    t0 = time.monotonic()
    rc = main(["plot", "--results", str(tmp_path / "table" / "results.parquet"), "--out", str(out)])
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert elapsed < 60, f"plot took {elapsed:.0f} s with a browser that never answers"
    stdout = capsys.readouterr().out
    assert "did not finish within 6 s" in stdout and "PROBEKIT_PNG_TIMEOUT" in stdout
    html, csv = sorted(out.glob("*.html")), sorted(out.glob("*.csv"))
    assert html and len(html) == len(csv) and not list(out.glob("*.png"))
    from probekit.io import LOCK_FILE  # the writer's lock stays: it marks the directory as probekit's

    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE], \
        "temporary PNG files were left behind"
    if pid_file.exists():  # the browser was started: it must not outlive the export
        pid = int(pid_file.read_text())
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the browser process was left running"


def test_png_timeout_setting_is_checked(monkeypatch) -> None:
    from probekit.errors import UserError
    from probekit.reporting.png_export import default_timeout

    monkeypatch.setenv("PROBEKIT_PNG_TIMEOUT", "soon")
    with pytest.raises(UserError, match="PROBEKIT_PNG_TIMEOUT"):
        default_timeout(3)
    monkeypatch.delenv("PROBEKIT_PNG_TIMEOUT")
    assert default_timeout(4) == 80.0


def test_successful_export_publishes_every_png_with_provenance(tmp_path: Path, monkeypatch) -> None:
    """The parent side of a successful export (no Chromium needed): files published atomically, each PNG
    carrying the provenance text chunk."""
    import plotly.graph_objects as go

    import probekit.reporting.png_export as pe
    from probekit.provenance import PNG_KEY, png_text

    png = (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"\x00" * 13 + b"\x00\x00\x00\x00"
           + b"\x00\x00\x00\x00IEND\xaeB`\x82")  # fmt: skip

    def fake_export(jobs, timeout=None):
        for j in jobs:
            j.path.write_bytes(png)
        return None

    monkeypatch.setattr(pe, "export_pngs", fake_export)
    figs = [(go.Figure(), tmp_path / f"f{i}.png", 100, 80, 1.0) for i in range(2)]
    assert pe.write_pngs(figs, provenance={"command": ["probekit", "plot"]}) is None
    for _, path, *_ in figs:
        assert '"probekit", "plot"' in png_text(path.read_bytes())[PNG_KEY]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.png", "f1.png"]

    monkeypatch.setattr(pe, "export_pngs", lambda jobs, timeout=None: "browser gone")
    assert pe.write_pngs([(go.Figure(), tmp_path / "g.png", 100, 80, 1.0)]) == "browser gone"
    assert not (tmp_path / "g.png").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["f0.png", "f1.png"]
