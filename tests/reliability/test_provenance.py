"""Traceable outputs (provenance in tables, figures, run directories) and the clean-up of stale temp files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as papq

from probekit import __version__
from probekit import provenance as prov
from probekit.io import atomic_write_text, clean_stale_temps
from probekit.reporting.plots import render_figures
from probekit.reporting.results import read_provenance, write_results
from tests.test_plots import table


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_record_names_version_command_threads_and_input_checksums(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x", encoding="utf-8")
    (tmp_path / "d" / ".hidden.pid1.tmp").write_text("ignored", encoding="utf-8")
    prov.set_command_line(["probekit", "probe", "--out", "o"])
    try:
        rec = prov.record(inputs={"data": tmp_path / "d", "missing": tmp_path / "nope"}, seeds={"probe": 3})
        assert rec == prov.record(inputs={"data": tmp_path / "d", "missing": tmp_path / "nope"}, seeds={"probe": 3})
    finally:
        prov.set_command_line(None)
    assert rec["probekit_version"] == __version__ and rec["command"] == ["probekit", "probe", "--out", "o"]
    assert rec["seeds"] == {"probe": 3} and rec["torch"] and rec["torch_threads"] >= 1
    assert rec["inputs"]["data"]["path"] == str((tmp_path / "d").resolve())
    assert rec["inputs"]["missing"] == {"path": str((tmp_path / "nope").resolve()), "missing": True}
    before = rec["inputs"]["data"]["sha256"]
    (tmp_path / "d" / "a.txt").write_text("y", encoding="utf-8")  # content changes the checksum
    assert prov.describe_input(tmp_path / "d")["sha256"] != before
    commit, _ = prov.git_state()
    assert commit is None or len(commit) == 40


def test_tables_and_figures_carry_their_provenance(tmp_path: Path) -> None:
    rec = prov.record(inputs={"x": tmp_path}, seeds={"probe": 1})
    pq, csv = write_results(table(models=("a", "b"), layers=2), tmp_path / "t", provenance=rec)
    assert json.loads(papq.read_schema(pq).metadata[b"probekit_provenance"]) == rec
    side = json.loads((tmp_path / "t" / "results.provenance.json").read_text())
    assert side["files"] == {"results.parquet": prov.sha256_file(pq), "results.csv": prov.sha256_file(csv)}
    assert read_provenance(tmp_path / "t") == rec and read_provenance(csv)["seeds"] == {"probe": 1}
    report = render_figures(table(models=("a", "b"), layers=2), tmp_path / "f", png=False, provenance=rec)
    figs = json.loads((tmp_path / "f" / "provenance.json").read_text())
    assert figs["command"] == rec["command"] and sorted(figs["figures"]) == sorted(p.name for p in report.files)
    html = next(p for p in report.files if p.suffix == ".html").read_text(encoding="utf-8")
    assert "<!-- probekit provenance: " in html and rec["inputs"]["x"]["sha256"] in html


def test_png_text_chunk_round_trip() -> None:
    png = (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"\x01" * 13 + b"\x00\x00\x00\x00"
           + b"\x00\x00\x00\x00IEND\xaeB`\x82")  # fmt: skip
    out = prov.png_with_text(png, prov.PNG_KEY, '{"command": ["probekit", "plot"], "name": "caf\\u00e9"}')
    assert out.startswith(png[:33]) and out.endswith(png[33:])
    assert json.loads(prov.png_text(out)[prov.PNG_KEY])["name"] == "café"


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    dead, me = _dead_pid(), os.getpid()
    stale_dir = tmp_path / f".ckpt.pid{dead}.ab12cd34.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"0" * 100)
    stale_file = tmp_path / f".results.parquet.pid{dead}.zz99yy88.parquet"
    stale_file.write_bytes(b"half")
    live = tmp_path / f".other.pid{me}.qq11ww22.tmp"
    live.mkdir()
    foreign = tmp_path / ".not-ours.tmp"
    foreign.mkdir()
    atomic_write_text(tmp_path / "note.txt", "hello")  # any atomic write cleans its directory first
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.exists() and foreign.exists() and (tmp_path / "note.txt").read_text() == "hello"
    assert clean_stale_temps(tmp_path) == []
