"""RTN fake quantization (functional.quantize) against a naive per-element loop in Python floats, and the
quantization attack on a model copy (attacks.quantization)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lit_unlearn.attacks.quantization import check_schemes, quantizable_linears, quantize_model, rtn_quantize
from lit_unlearn.functional.quantize import QuantScheme, fake_quantize, group_scales

SCHEMES = [QuantScheme(8, None, True), QuantScheme(8, 4, True), QuantScheme(4, 4, True), QuantScheme(4, 4, False),
           QuantScheme(4, None, False), QuantScheme(8, 8, False), QuantScheme(4, 8, True)]


def naive_group(values: list[float], bits: int, symmetric: bool) -> list[float]:
    """One group, element by element, in Python floats (the formulas of the module docstring)."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = max(abs(v) for v in values) / qmax or 1.0
        return [scale * min(max(round(v / scale), -qmax - 1), qmax) for v in values]
    qmax = 2**bits - 1
    lo, hi = min(min(values), 0.0), max(max(values), 0.0)
    scale = (hi - lo) / qmax or 1.0
    zero = min(max(round(-lo / scale), 0), qmax)
    return [scale * (min(max(round(v / scale) + zero, 0), qmax) - zero) for v in values]


def naive_fake_quantize(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    rows = weight.tolist()
    out = []
    for row in rows:
        g = len(row) if scheme.group_size is None else scheme.group_size
        new_row: list[float] = []
        for start in range(0, len(row), g):
            new_row += naive_group(row[start:start + g], scheme.bits, scheme.symmetric)
        out.append(new_row)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_matches_naive_loop(scheme):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 16, generator=gen, dtype=torch.float64)
    w[1, :8] = 0.0  # an all-zero group
    w[2] = w[2].abs() + 0.1  # a positive-only row (asymmetric: lo clipped at 0)
    torch.testing.assert_close(fake_quantize(w, scheme), naive_fake_quantize(w, scheme), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_error_bound_and_idempotence(scheme):
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    q = fake_quantize(w, scheme)
    assert q.dtype == w.dtype and q.shape == w.shape
    assert bool(((w - q).abs() <= group_scales(w, scheme) / 2 + 1e-6).all())
    torch.testing.assert_close(fake_quantize(q, scheme), q, rtol=0, atol=1e-6)
    levels = 2**scheme.bits
    for row in q.view(6, -1, scheme.group_size or 32):  # at most 2^b distinct values per group
        for group in row:
            assert len(torch.unique(group)) <= levels


def test_int8_is_much_closer_than_int4():
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(2))
    e8 = (w - fake_quantize(w, QuantScheme(8))).abs().max()
    e4 = (w - fake_quantize(w, QuantScheme(4, 128))).abs().max()
    assert e8 < e4 / 5


@pytest.mark.parametrize("bits", [2, 3, 16, 8.0, True])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits must be one of"):
        QuantScheme(bits)


def test_bad_group_size_names_layer_and_allowed_values():
    with pytest.raises(ValueError, match=r"group_size must be a positive integer"):
        QuantScheme(4, 0)
    with pytest.raises(ValueError, match=r"layer 'x': in_features 12 is not divisible by group_size 8.*\[1, 2, 3, 4, 6, 12\]"):
        fake_quantize(torch.zeros(2, 12), QuantScheme(4, 8), where="layer 'x'")


class Tiny(nn.Module):
    def __init__(self, hidden: int = 16, inner: int = 24):
        super().__init__()
        self.embed = nn.Embedding(10, hidden)
        self.up = nn.Linear(hidden, inner)
        self.down = nn.Linear(inner, hidden, bias=False)
        self.lm_head = nn.Linear(hidden, 10, bias=False)


def test_rtn_model_copy_quantizes_linears_only_and_leaves_original():
    torch.manual_seed(0)
    model = Tiny()
    before = copy.deepcopy(model.state_dict())
    quantized = rtn_quantize(model, QuantScheme(4, 8))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # the original is untouched
    assert [n for n, _ in quantizable_linears(quantized)] == ["up", "down"]
    torch.testing.assert_close(quantized.up.weight, fake_quantize(before["up.weight"], QuantScheme(4, 8)))
    assert torch.equal(quantized.up.bias, before["up.bias"])
    assert torch.equal(quantized.lm_head.weight, before["lm_head.weight"])  # head and embedding kept
    assert torch.equal(quantized.embed.weight, before["embed.weight"])


def test_model_errors_before_any_work():
    model = Tiny(inner=24)
    with pytest.raises(ValueError, match=r"layer 'up': in_features 16 is not divisible by group_size 128"):
        rtn_quantize(model, "int4")
    with pytest.raises(ValueError, match="Unknown RTN quantization scheme 'int3'"):
        check_schemes(model, ["int8", "int3"])
    with pytest.raises(ValueError, match="Unknown quantization backend"):
        quantize_model(model, "int8", backend="gptq")
    with pytest.raises(ValueError, match="no nn.Linear"):
        rtn_quantize(nn.Sequential(nn.Embedding(3, 4)), "int8")
    assert check_schemes(model, ["int8", "int4"], group_size=8)[1] == QuantScheme(4, 8, True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_bitsandbytes_needs_cuda():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        quantize_model(Tiny(), "nf4", backend="bitsandbytes")
    with pytest.raises(ValueError, match="Unknown bitsandbytes scheme"):
        check_schemes(Tiny(), ["int4"], backend="bitsandbytes")
