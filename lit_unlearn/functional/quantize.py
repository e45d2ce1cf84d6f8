"""Round-to-nearest (RTN) fake quantization of weight matrices: quantize, then dequantize back to float.

The weight ``W`` of a linear layer has shape ``(out_features, in_features)``. Its rows are cut into groups of
``g`` consecutive input weights (``g = in_features``: one group per output channel, "per-channel"); every
group ``w`` gets its own scale ``s`` (and, asymmetric, zero point ``z``). With ``b`` bits:

* **symmetric**: ``s = max|w| / (2^(b-1) − 1)``, ``q = clamp(round(w / s), −2^(b-1), 2^(b-1) − 1)``,
  ``ŵ = s · q``. int8: ``s = max|w| / 127``.
* **asymmetric** (zero point): ``lo = min(min w, 0)``, ``hi = max(max w, 0)`` (0 stays exactly
  representable), ``s = (hi − lo) / (2^b − 1)``, ``z = clamp(round(−lo / s), 0, 2^b − 1)``,
  ``q = clamp(round(w / s) + z, 0, 2^b − 1)``, ``ŵ = s · (q − z)``.

``round`` is round-half-to-even (``torch.round``, like Python's ``round``). A group whose scale would be 0
(all weights 0) uses ``s = 1`` (it stays 0). Without clamping, ``|w − ŵ| ≤ s / 2`` for every weight; the
clamp never binds for symmetric groups, nor for asymmetric ones up to a rounding tie at the group maximum.
Computed in float32 (or float64 for float64 input) and returned in the input dtype.

The schemes follow the RTN baselines of GPTQ (Frantar, Ashkboos, Hoefler and Alistarh, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", 2023) and the quantization attack
on unlearning (Zhang, Zhang, Yao, Ye, Chen, Wang and Liu, "Catastrophic Failure of LLM Unlearning via
Quantization", ICLR 2025): per-channel int8, group-wise int4 with ``g = 128``.

Naive equivalent (one group, symmetric)::

    s = max(abs(x) for x in w) / (2 ** (b - 1) - 1) or 1.0
    w_hat = [s * min(max(round(x / s), -2 ** (b - 1)), 2 ** (b - 1) - 1) for x in w]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: supported bit widths of the RTN schemes
SUPPORTED_BITS = (4, 8)


@dataclass(frozen=True)
class QuantScheme:
    """One RTN scheme: ``bits`` (4 or 8), ``group_size`` (input weights per group; ``None`` = a whole row,
    i.e. per output channel) and ``symmetric`` (False: asymmetric with zero point).

    ``QuantScheme(8)`` is per-channel symmetric int8; ``QuantScheme(4, 128)`` group-wise symmetric int4.
    """

    bits: int = 8
    group_size: int | None = None
    symmetric: bool = True

    def __post_init__(self) -> None:
        if type(self.bits) is not int or self.bits not in SUPPORTED_BITS:
            raise ValueError(f"quantization bits must be one of {SUPPORTED_BITS}, got {self.bits!r}.")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise ValueError(f"quantization group_size must be a positive integer or None (per-channel), got"
                             f" {self.group_size!r}.")

    @property
    def name(self) -> str:
        """A short label: ``int8``, ``int4-g128``, ``int4-g128-asym`` ..."""
        group = "" if self.group_size is None else f"-g{self.group_size}"
        return f"int{self.bits}{group}" + ("" if self.symmetric else "-asym")

    def check_shape(self, weight_shape: tuple[int, ...] | torch.Size, where: str = "weight") -> None:
        """``ValueError`` naming ``where`` and the allowed group sizes when the scheme cannot cut the rows."""
        if len(weight_shape) != 2:
            raise ValueError(f"{where}: RTN quantization needs a 2-D weight (out_features, in_features), got shape"
                             f" {tuple(weight_shape)}.")
        in_features = int(weight_shape[1])
        if self.group_size is not None and in_features % self.group_size != 0:
            raise ValueError(
                f"{where}: in_features {in_features} is not divisible by group_size {self.group_size}. Allowed"
                f" group sizes for this layer: {divisors(in_features)} or None (one group per output channel)."
            )


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n`` in ascending order."""
    return [d for d in range(1, n + 1) if n % d == 0]


def _grouped(weight: Tensor, group_size: int | None) -> Tensor:
    """``(out, in) -> (out, in / g, g)`` in float32 (float64 stays float64)."""
    work = weight.detach().to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    g = weight.shape[1] if group_size is None else group_size
    return work.reshape(weight.shape[0], weight.shape[1] // g, g)


def quantize_groups(weight: Tensor, scheme: QuantScheme, where: str = "weight") -> tuple[Tensor, Tensor, Tensor]:
    """The integer codes, scales and zero points of ``weight``: ``q (out, G, g)``, ``s (out, G, 1)``,
    ``z (out, G, 1)`` (zeros when symmetric), ``G = in_features / g``; see the module docstring."""
    scheme.check_shape(weight.shape, where)
    w = _grouped(weight, scheme.group_size)
    if scheme.symmetric:
        qmax = 2 ** (scheme.bits - 1) - 1
        scale = w.abs().amax(dim=-1, keepdim=True) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(w / scale), -(qmax + 1), qmax)
        return q, scale, torch.zeros_like(scale)
    qmax = 2**scheme.bits - 1
    lo = w.amin(dim=-1, keepdim=True).clamp_max(0.0)
    hi = w.amax(dim=-1, keepdim=True).clamp_min(0.0)
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
    return q, scale, zero


def fake_quantize(weight: Tensor, scheme: QuantScheme, where: str = "weight") -> Tensor:
    """``ŵ = s · (q − z)`` of every group (see the module docstring), same shape and dtype as ``weight``.

    Idempotent up to float rounding: ``fake_quantize(fake_quantize(W)) == fake_quantize(W)``.
    """
    q, scale, zero = quantize_groups(weight, scheme, where)
    return ((q - zero) * scale).reshape(weight.shape).to(weight.dtype)


def group_scales(weight: Tensor, scheme: QuantScheme, where: str = "weight") -> Tensor:
    """The scale of the group of every weight, shape of ``weight`` (for the error bound ``|w − ŵ| ≤ s/2``)."""
    _, scale, _ = quantize_groups(weight, scheme, where)
    g = weight.shape[1] if scheme.group_size is None else scheme.group_size
    return scale.expand(-1, -1, g).reshape(weight.shape)


def int8_per_channel(weight: Tensor) -> Tensor:
    """Per-output-channel symmetric int8: ``s_i = max_j |W_ij| / 127``."""
    return fake_quantize(weight, QuantScheme(8, None, True))


def int4_grouped(weight: Tensor, group_size: int = 128, symmetric: bool = True) -> Tensor:
    """Group-wise int4 (default ``g = 128``), symmetric (``s = max|w| / 7``) or asymmetric (zero point)."""
    return fake_quantize(weight, QuantScheme(4, group_size, symmetric))
