"""Mixed precision is refused where it cannot take effect, before any work, and never recorded."""

from __future__ import annotations

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
