"""Token-level log-probabilities and the reductions every loss and metric is built on.

Convention (Hugging Face causal LMs): ``labels`` are the model inputs with ``-100`` on prompt and padding
positions. Position ``t`` of the *shifted* tensors holds the log-probability of token ``t+1`` given
tokens ``<= t``, so ``logp`` and ``mask`` have shape ``(B, T-1)``.
"""
from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100

#: Bytes of the float32 (float64 for float64 logits) copy of the ``(B, T-1, V)`` logits above which
#: :func:`token_logprobs` works in chunks instead of upcasting the whole tensor at once (256 MiB; e.g. batch 8
#: × 512 tokens at a 16k vocabulary). Override by assigning ``tokens.LOGPROB_MEMORY_BOUND`` or per call
#: (``max_bytes=``). Below the bound the computation is exactly the unchunked one (bit-identical results).
LOGPROB_MEMORY_BOUND: int = 256 * 2**20
#: Bytes of the upcast copy of one chunk of rows in the chunked path (``chunk_bytes=`` per call).
LOGPROB_CHUNK_BYTES: int = 32 * 2**20


def token_logprobs(logits: Tensor, labels: Tensor, max_bytes: int | None = None,
                   chunk_bytes: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-token log p(y_t | y_<t) of the labelled tokens.

    Args:
        logits: ``(B, T, V)`` model outputs.
        labels: ``(B, T)`` target ids, ``-100`` where no loss is taken.
        max_bytes: memory bound of the upcast copy (default :data:`LOGPROB_MEMORY_BOUND`); when the whole
            ``(B, T-1, V)`` copy would exceed it, the rows are processed in chunks of ``chunk_bytes``
            (default :data:`LOGPROB_CHUNK_BYTES`), forward and backward, so the extra memory is one chunk.

    Below the bound the whole tensor is one chunk: the values are exactly ``gather − logsumexp`` of the upcast
    logits, and the backward pass writes ``g · (onehot(y) − softmax)`` straight into the gradient of the
    logits (one fused pass, as ``F.cross_entropy``'s backward does, instead of autograd's zero-filled gather
    and slice gradients; ``benchmarks/step_overhead.py`` measured that difference).

    Returns:
        ``logp`` ``(B, T-1)`` (0 where masked) and ``mask`` ``(B, T-1)`` bool. ``logp`` is float32 for
        half-precision or float32 logits, float64 for float64 logits (exact gradient checks).

    Naive equivalent::

        logp[b, t] = log_softmax(logits[b, t].float())[labels[b, t + 1]]
    """
    itemsize = 8 if logits.dtype == torch.float64 else 4
    bound = LOGPROB_MEMORY_BOUND if max_bytes is None else max_bytes
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE_INDEX
    rows = logits.shape[0] * logits.shape[1]
    if logits.shape[0] * max(logits.shape[1] - 1, 0) * logits.shape[-1] * itemsize > bound:
        rows = max(1, int(LOGPROB_CHUNK_BYTES if chunk_bytes is None else chunk_bytes) // (logits.shape[-1] * itemsize))
    logp = _ChunkedLabelLogprob.apply(logits.contiguous(), targets.masked_fill(~mask, 0), max(rows, 1))[0]
    return logp.masked_fill(~mask, 0.0), mask


class _ChunkedLabelLogprob(torch.autograd.Function):
    """log_softmax(logits[b, t])[targets[b, t]] for t < T-1, a chunk of rows at a time (see
    :func:`chunked_label_logprobs`). Backward: ∂/∂logits[b, t] = g[b, t] · (onehot(y) − softmax(logits[b, t])),
    the softmax recomputed per chunk from the saved (un-upcast) logits and the saved logsumexp."""

    @staticmethod
    def forward(logits: Tensor, targets: Tensor, rows_per_chunk: int) -> tuple[Tensor, Tensor]:
        B, T, V = logits.shape
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        flat = logits.reshape(B * T, V)  # a view of contiguous logits
        flat_targets = torch.cat([targets, targets.new_zeros(B, 1)], dim=1).reshape(B * T, 1)  # last: unused
        picked, lse = [], []
        for start in range(0, B * T, rows_per_chunk):
            rows = flat[start:start + rows_per_chunk].to(dtype)  # (n, V): the only upcast copy
            norm = torch.logsumexp(rows, dim=-1)
            picked.append(rows.gather(-1, flat_targets[start:start + rows_per_chunk]).squeeze(-1) - norm)
            lse.append(norm)
        logp = torch.cat(picked).reshape(B, T)[:, :-1]
        return logp, torch.cat(lse).reshape(B, T)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        logits, targets, rows_per_chunk = inputs
        ctx.save_for_backward(logits, targets, output[1])
        ctx.rows_per_chunk = rows_per_chunk
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp: Tensor, _grad_lse: Tensor | None):
        logits, targets, lse = ctx.saved_tensors
        B, T, V = logits.shape
        dtype = lse.dtype
        grad = torch.empty((B * T, V), dtype=logits.dtype, device=logits.device)
        g = torch.cat([grad_logp.to(dtype), grad_logp.new_zeros(B, 1, dtype=dtype)], dim=1).reshape(B * T, 1)
        flat, flat_lse = logits.reshape(B * T, V), lse.reshape(B * T, 1)
        flat_targets = torch.cat([targets, targets.new_zeros(B, 1)], dim=1).reshape(B * T, 1)
        step = ctx.rows_per_chunk
        for start in range(0, B * T, step):
            stop = start + step
            rows = flat[start:stop]
            if rows.dtype == dtype:  # float32/float64 logits: computed in place in the gradient buffer
                d = torch.sub(rows, flat_lse[start:stop], out=grad[start:stop])
            else:  # half precision: in float32, then rounded into the gradient
                d = rows.to(dtype).sub_(flat_lse[start:stop])
            d.exp_().mul_(-g[start:stop])  # −g · softmax
            d.scatter_add_(-1, flat_targets[start:stop], g[start:stop])  # + g · onehot(y)
            if rows.dtype != dtype:
                grad[start:stop] = d
        return grad.reshape(B, T, V), None, None


def chunked_label_logprobs(logits: Tensor, targets: Tensor, chunk_bytes: int = 32 * 2**20) -> Tensor:
    """``(B, T-1)`` log-softmax of ``logits[:, :-1]`` at ``targets`` (``(B, T-1)``, valid ids), in chunks.

    Same values as the unchunked ``gather − logsumexp`` of :func:`token_logprobs`, but the float32
    (float64) upcast exists for ``chunk_bytes`` of rows at a time, in the forward and in the backward pass
    (which recomputes each chunk's softmax from the saved logits and logsumexp: one extra exp per element).
    Memory beyond the inputs: the ``(B, T)`` outputs, one chunk, and the gradient of ``logits`` itself
    (in the logits' dtype). Once differentiable (no double backward).

    Naive equivalent::

        logp[b, t] = logits[b, t].float()[targets[b, t]] - logsumexp(logits[b, t].float())
    """
    itemsize = 8 if logits.dtype == torch.float64 else 4
    rows = max(1, int(chunk_bytes) // (logits.shape[-1] * itemsize))
    return _ChunkedLabelLogprob.apply(logits.contiguous(), targets, rows)[0]


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
