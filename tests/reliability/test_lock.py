"""One writer per directory: a writer holds ``<out>/.probekit.lock`` (fcntl.flock) for its life; a second writer is
refused naming the owner; the lock of a writer that died is taken over. Real concurrent processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probekit.io import LOCK_FILE, OutputLockedError, output_lock
from tests.reliability.conftest import Tiny, probekit


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early ({proc.returncode}): {proc.communicate()}")
        assert time.monotonic() < deadline, "writer never took its lock"
        time.sleep(0.05)


def _paused_train(tiny: Tiny, out: Path, gate: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROBEKIT_TEST_LOCK_PAUSE": str(gate)}
    return subprocess.Popen([sys.executable, "-m", "probekit", "--threads", "1", "train", "--config",
                             str(tiny.train_yaml), "--data", str(tiny.data), "--out", str(out), "--no-progress",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


@pytest.mark.slow
def test_a_writer_held_by_another_process_refuses_the_second(tiny: Tiny, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with output_lock(out):  # this test process is the first writer
        res = probekit("data", "bios", "--n", "10", "--out", str(out), "--overwrite")
        assert res.returncode == 2, res.stderr
        err = res.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert "being written by another probekit process" in err and f"pid {os.getpid()}" in err, err
        assert not (out / "manifest.json").exists()
    res = probekit("data", "bios", "--n", "10", "--out", str(out))  # released: the same command now runs
    assert res.returncode == 0, res.stderr
    assert (out / "manifest.json").exists()
    owner = json.loads((out / LOCK_FILE).read_text(encoding="utf-8"))
    assert owner["command"][:3] == ["probekit", "--threads", "1"] and owner["pid"] != os.getpid()


def test_the_same_process_cannot_hold_two_writers(tmp_path: Path) -> None:
    held = pytest.raises(OutputLockedError, match=r"pid \d+")
    with output_lock(tmp_path / "x"), held, output_lock(tmp_path / "x"):
        pass
    with output_lock(tmp_path / "x"):  # released after the block
        pass


@pytest.mark.slow
def test_two_train_processes_one_run_directory(tiny: Tiny, tmp_path: Path) -> None:
    """The issue's case: a train paused mid-run and a second train --overwrite into the same --out. The second is
    refused naming the first; the first finishes with a consistent run (summary's SHA-256 matches its weights)."""
    out, gate = tmp_path / "run", tmp_path / "gate"
    first = _paused_train(tiny, out, gate)
    try:
        _wait_for(Path(str(gate) + ".held"), first)
        second = probekit("train", "--config", str(tiny.train_yaml), "--data", str(tiny.data), "--out", str(out),
                          "--overwrite", "--steps", "3")  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr and "train" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        gate.touch()
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    from probekit.model.checkpoint import load_checkpoint

    _, _, meta = load_checkpoint(out)  # verifies the weights against the recorded SHA-256
    assert meta["step"] == 2 and json.loads((out / "summary.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_the_lock_of_a_killed_writer_is_taken_over(tiny: Tiny, tmp_path: Path) -> None:
    out, gate = tmp_path / "run", tmp_path / "gate"
    first = _paused_train(tiny, out, gate)
    _wait_for(Path(str(gate) + ".held"), first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert json.loads((out / LOCK_FILE).read_text(encoding="utf-8"))["pid"] == first.pid  # left behind
    res = probekit("train", "--config", str(tiny.train_yaml), "--data", str(tiny.data), "--out", str(out),
                   "--overwrite", "--no-progress")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads((out / LOCK_FILE).read_text(encoding="utf-8"))["pid"] != first.pid
    assert (out / "summary.json").exists()
