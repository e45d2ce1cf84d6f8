"""Finiteness of model weights: one fused reduction over many tensors, and the name of the first bad one.

A tensor is finite when ``max |x| < inf``; NaN propagates through the max, so

    all_finite(ts) = isfinite(stack([‖t‖_∞ for t in ts])).all()

is one ``torch._foreach_norm`` (a fused multi-tensor kernel) plus one small reduction — no copy of the
weights. Naive equivalent: ``all(torch.isfinite(t).all() for t in ts)``. Empty tensors (e.g. the size-0
``param.data`` of a DeepSpeed ZeRO-3 partitioned parameter) are finite by definition and skipped.

Under ZeRO-3 a parameter's local values live in ``param.ds_tensor`` (this rank's shard);
:func:`local_values` returns that shard, so each rank checks what it holds and the ranks combine their
flags (see :meth:`lit_unlearn.objectives.lm.CausalLMModule.check_parameters_finite`).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor


class NonFiniteWeightsError(FloatingPointError, ValueError):
    """Model weights hold NaN or ±inf (a ``FloatingPointError``; also a ``ValueError`` for CLI error paths)."""


def local_values(param: Tensor) -> Tensor:
    """The values this process holds for ``param``: its ZeRO-3 shard (``ds_tensor``) or the tensor itself."""
    shard = getattr(param, "ds_tensor", None)
    return (shard if shard is not None else param).detach()


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """True when no tensor holds NaN or ±inf (one fused ``‖·‖_∞`` over all floating-point tensors)."""
    floats = [t.detach() for t in tensors if t.is_floating_point() and t.numel() > 0]
    if not floats:
        return True
    norms = torch._foreach_norm(floats, ord=math.inf)
    return bool(torch.stack([n.to(torch.float32, copy=False).reshape(()) for n in norms]).isfinite().all())


def describe_nonfinite(tensor: Tensor) -> str:
    """``"3 NaN, 1 inf of 4096 values"`` for a tensor that is not finite."""
    t = tensor.detach()
    nan = int(torch.isnan(t).sum())
    inf = int(torch.isinf(t).sum())
    return f"{nan} NaN, {inf} inf of {t.numel()} values"


def first_nonfinite(named: Iterable[tuple[str, Tensor]]) -> tuple[str, str] | None:
    """``(name, description)`` of the first floating-point tensor holding NaN/±inf, or None when all are finite.

    Checked in order, one tensor at a time (only used once a fused check has failed, or before saving).
    """
    for name, tensor in named:
        if tensor.is_floating_point() and tensor.numel() > 0 and not bool(torch.isfinite(tensor.detach()).all()):
            return name, describe_nonfinite(tensor)
    return None


def check_state_dict_finite(state: dict[str, Tensor], what: str, hint: str = "") -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first non-finite tensor of ``state`` (``what``: whose)."""
    if all_finite(state.values()):
        return
    bad = first_nonfinite(state.items())
    if bad is None:  # pragma: no cover - the fused and the per-tensor checks agree
        return
    name, description = bad
    raise NonFiniteWeightsError(f"{what} has non-finite weights: {name!r} holds {description}."
                                + (f" {hint}" if hint else ""))
