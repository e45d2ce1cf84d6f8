"""Token-level log-probabilities and the reductions every loss and metric is built on.

Convention (DESIGN.md §5): ``labels`` are the model inputs with ``-100`` on prompt and padding
positions. Position ``t`` of the *shifted* tensors holds the log-probability of token ``t+1`` given
tokens ``<= t``, so ``logp`` and ``mask`` have shape ``(B, T-1)``.
"""
from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100


def token_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token log p(y_t | y_<t) of the labelled tokens.

    Args:
        logits: ``(B, T, V)`` model outputs.
        labels: ``(B, T)`` target ids, ``-100`` where no loss is taken.

    Returns:
        ``logp`` ``(B, T-1)`` (0 where masked) and ``mask`` ``(B, T-1)`` bool. ``logp`` is float32 for
        half-precision or float32 logits, float64 for float64 logits (exact gradient checks).

    Naive equivalent::

        logp[b, t] = log_softmax(logits[b, t].float())[labels[b, t + 1]]
    """
    logits = logits[:, :-1, :]  # (B, T-1, V)
    if logits.dtype != torch.float64:
        logits = logits.float()  # log-softmax of bf16/fp16 logits is computed in float32
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~mask, 0)
    picked = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return logp.masked_fill(~mask, 0.0), mask


def precise_token_logprobs(logits: Tensor, labels: Tensor, dense: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`token_logprobs` computed so that log-probabilities near 0 keep their relative precision.

    ``picked − logsumexp(logits)`` subtracts two numbers of size |logit| (~10 for a trained model), so
    in float32 the result is quantised at ~ulp(10) ≈ 1e-6 *absolute*. For a confident token
    (log p ≈ −1e-3) that is a 1e-3 relative error, far larger than the change a σ = 1e-5 weight
    perturbation causes (MRD divides ΔP_t by P_t and would mostly measure rounding). Here, with
    m = max_j l_j at index a and z = l − m (z_a = 0 exactly),

        log p_y = z_y − log1p(Σ_{j≠a} exp z_j)

    which resolves log p of the top token to the float32 precision of the (small) sum itself. Same
    shapes, mask and dtype rules as :func:`token_logprobs`. By default only labelled positions are
    computed (prompt and padding skipped); ``dense=True`` computes every position and masks afterwards,
    which has no data-dependent shapes (for ``torch.func.vmap``) and gives the same values.
    """
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE_INDEX
    if dense:
        rows = logits[:, :-1, :]  # (B, T-1, V)
        picked_targets = targets.masked_fill(~mask, 0)  # (B, T-1)
    else:
        rows = logits[:, :-1, :][mask]  # (N, V): only the labelled positions
        picked_targets = targets[mask]  # (N,)
    if rows.dtype != torch.float64:
        rows = rows.float()
    top, top_index = rows.max(dim=-1, keepdim=True)
    shifted = rows - top  # ≤ 0, exactly 0 at the top index
    others = shifted.exp().scatter(-1, top_index, 0.0).sum(dim=-1)  # Σ_{j≠a} exp z_j
    picked = shifted.gather(-1, picked_targets.unsqueeze(-1)).squeeze(-1)
    if dense:
        return (picked - torch.log1p(others)).masked_fill(~mask, 0.0), mask  # (B, T-1)
    logp = torch.zeros(mask.shape, dtype=rows.dtype, device=rows.device)
    return logp.masked_scatter(mask, picked - torch.log1p(others)), mask  # (B, T-1), 0 where masked


def sequence_logprob_sum(logp: Tensor, mask: Tensor) -> Tensor:
    """Σ_t log p_t over valid tokens of each sequence: ``(B, T-1) -> (B,)``."""
    return (logp * mask).sum(dim=-1)


def sequence_lengths(mask: Tensor) -> Tensor:
    """Number of valid (labelled) tokens per sequence ``n_b``: ``(B, T-1) -> (B,)`` float."""
    return mask.sum(dim=-1).to(torch.float32)


def sequence_nll_sum(logp: Tensor, mask: Tensor) -> Tensor:
    """NLL_sum_b = −Σ_t log p_t per sequence: ``(B,)``."""
    return -sequence_logprob_sum(logp, mask)


def sequence_nll_mean(logp: Tensor, mask: Tensor) -> Tensor:
    """Length-normalised NLL per sequence, NLL_sum_b / n_b: ``(B,)`` (0 for empty sequences)."""
    return sequence_nll_sum(logp, mask) / sequence_lengths(mask).clamp_min(1.0)


def nll_mean(logp: Tensor, mask: Tensor) -> Tensor:
    """Token-mean NLL over every valid token of the batch (the Hugging Face convention): scalar."""
    return -(logp * mask).sum() / mask.sum().clamp_min(1)


def masked_token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the valid tokens of the whole batch: scalar."""
    return (values * mask).sum() / mask.sum().clamp_min(1)
