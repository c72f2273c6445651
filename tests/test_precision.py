"""Mixed precision is refused where it cannot take effect, before any work, and never recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from probekit.errors import UserError, check_precision, cpu_bf16_units

INTEL = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AMD = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 fma\n"


def test_cpu_bf16_units_read_from_the_cpu_flags() -> None:
    assert cpu_bf16_units(INTEL) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_units(AMD) == []
    assert cpu_bf16_units("flags : avx512_bf16\n") == ["avx512_bf16"]
    assert cpu_bf16_units("") == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU rules")
def test_bf16_on_a_cpu_follows_its_units(monkeypatch: pytest.MonkeyPatch) -> None:
    import probekit.errors as errors

    monkeypatch.setattr(errors, "cpu_bf16_units", lambda: [])
    with pytest.raises(UserError, match="no bfloat16 matrix units"):
        check_precision("bf16")
    monkeypatch.setattr(errors, "cpu_bf16_units", lambda: ["amx_bf16"])
    check_precision("bf16")  # accepted where the CPU has the units
    with pytest.raises(UserError, match="fp16 cannot take effect"):
        check_precision("fp16")
    check_precision("no")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU rules")
def test_trainings_of_different_precision_follow_each_other_in_one_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A process that trains one model after another (a worker of ``probekit run --jobs N``) may meet a float32
    model after a bf16 one: accelerate's per-process mixed-precision state must follow each training, so the
    float32 run after a bf16 one trains exactly as a float32 run before it (no ValueError, no leftover autocast)."""
    import probekit.errors as errors
    from probekit.data.tokenizer import EOS_ID, build_tokenizer
    from probekit.model.batch import TrainItem
    from probekit.training.config import TrainConfig
    from probekit.training.data import ItemSource
    from probekit.training.trainer import Trainer

    monkeypatch.setattr(errors, "cpu_bf16_units", lambda: ["avx512_bf16"])  # autocast runs on any CPU, if slowly
    tok = build_tokenizer(["a b c d e f g h"])
    g = torch.Generator().manual_seed(0)
    items = [TrainItem([EOS_ID, *torch.randint(6, len(tok), (11,), generator=g).tolist()]) for _ in range(16)]

    def train(name: str, precision: str) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(out=str(tmp_path / name), objective="ntp", seq_len=12, batch_size=4, max_steps=4,
                          warmup_steps=1, eval_windows=0, save_every=0, precision=precision,
                          model={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_mlp": 64})  # fmt: skip
        trainer = Trainer(cfg, ItemSource(items, seed=0), tokenizer=tok, progress=False)
        assert trainer.accelerator.mixed_precision == precision
        result = trainer.run()
        return {k: v.detach().clone() for k, v in result.model.state_dict().items()}

    before, bf16, after = train("a", "no"), train("b", "bf16"), train("c", "no")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not all(torch.equal(before[k], bf16[k]) for k in before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU rules")
def test_experiment_refuses_a_bf16_model_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On a CPU without bfloat16 units an experiment with a bf16 model stops before the first file, not after
    training the models listed before it."""
    import probekit.errors as errors
    from probekit.experiment.runner import run_experiment
    from tests.test_experiments import TINY_TRAIN, tiny_config

    monkeypatch.setattr(errors, "cpu_bf16_units", lambda: [])
    bf16 = {"name": "m_bf16", "data": "s", "train": {**TINY_TRAIN, "precision": "bf16"}}
    cfg = tiny_config(models=[{"name": "m", "data": "s", "train": TINY_TRAIN}, bf16])
    with pytest.raises(UserError, match=r"model m_bf16: train.precision bf16: this CPU has no bfloat16"):
        run_experiment(cfg, tmp_path / "exp", progress=False, png=False)
    assert not (tmp_path / "exp").exists()
