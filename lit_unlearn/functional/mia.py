"""Membership-inference scores beyond the logit-only ones of :mod:`lit_unlearn.functional.metrics`.

Every score follows the convention of :func:`~lit_unlearn.functional.metrics.loss_score`: ``(B,)``, higher =
less likely a training member; :func:`~lit_unlearn.functional.metrics.mia_auc` turns forget/holdout scores
into the attack's AUC and :func:`~lit_unlearn.functional.metrics.privleak` into MUSE's privleak.

* **GradNorm** (:func:`gradnorm_scores`): the p-norm of the gradient of the sample's mean NLL with respect to
  the model parameters, ``s_i = ‖∇_θ L_i(θ)‖_p`` with ``L_i = −(1/n_i) Σ_t log p_θ(y_t | y_<t)`` over the
  ``n_i`` answer tokens. A training member sits near a minimum of its loss, so its gradient is small
  (Wang, Wang, Li and Neel, "Pandora's White-Box: Precise Training Data Detection and Extraction in Large
  Language Models", 2024). Aggregation ``"global"`` (default): the norm
  of the whole concatenated gradient, ``(Σ_params Σ_j |g_j|^p)^(1/p)``; ``"layer_mean"``: the mean over
  parameter tensors of each tensor's p-norm.
* **Reference model** (:func:`reference_scores`): ``s_i = L_i(θ) − L_i(θ_ref)``, the sample's mean NLL
  under the attacked model minus that under a reference model (the retain or the base model); calibrating
  by the reference removes how hard the text is in itself (Carlini, Tramèr, Wallace, et al., "Extracting
  Training Data from Large Language Models", 2021; Mireshghallah, Goyal, Uniyal, Berg-Kirkpatrick and
  Shokri, "Quantifying Privacy Risks of Masked Language Models Using Membership Inference Attacks", 2022).
* **k sweep** (:func:`min_k_sweep_scores`): the Min-K% / Min-K%++ scores for several fractions ``k`` from one
  forward pass.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Iterator, Literal

import torch
from torch import Tensor, nn

from lit_unlearn.functional.metrics import min_k_plus_plus_score, min_k_score
from lit_unlearn.functional.tokens import IGNORE_INDEX, sequence_nll_mean, token_logprobs

GradAggregation = Literal["global", "layer_mean"]
GRAD_AGGREGATIONS = ("global", "layer_mean")
#: the k fractions of the default Min-K% sweep
DEFAULT_K_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def _check_p(p: float) -> None:
    if not (isinstance(p, (int, float)) and not isinstance(p, bool)) or not (p >= 1 or p == float("inf")):
        raise ValueError(f"GradNorm: p must be a number >= 1 (or inf), got {p!r}.")


@contextmanager
def _all_parameters_require_grad(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Switch ``requires_grad`` on for ``params`` for the block (frozen weights included), then restore it."""
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def gradnorm_scores(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    p: float = 2.0,
    aggregation: GradAggregation = "global",
    params: Iterable[nn.Parameter] | None = None,
) -> Tensor:
    """GradNorm score of each sample: ``(B,)`` float32, higher = less likely member (see the module docstring).

    Args:
        model: a causal LM (``model(input_ids=..., attention_mask=...).logits``); run in eval mode (no dropout)
            for the call, its mode and ``requires_grad`` flags restored afterwards; its ``.grad`` untouched.
        input_ids, attention_mask, labels: ``(B, T)``, labels ``-100`` outside the answer.
        p: the norm's order (``p >= 1`` or ``inf``).
        aggregation: ``"global"`` or ``"layer_mean"``.
        params: the parameters differentiated (default: every floating-point parameter, frozen ones too).

    One forward and backward per sample (a sample's gradient is a full model-sized vector).

    Naive equivalent (one sample)::

        loss = cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100); loss.backward()
        score = sum(abs(g) ** p for param in params for g in param.grad.flatten()) ** (1 / p)
    """
    _check_p(p)
    if aggregation not in GRAD_AGGREGATIONS:
        raise ValueError(f"GradNorm: aggregation must be one of {GRAD_AGGREGATIONS}, got {aggregation!r}.")
    if input_ids.shape != labels.shape or attention_mask.shape != labels.shape:
        raise ValueError(f"GradNorm: input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)}"
                         f" and labels {tuple(labels.shape)} must have the same (B, T) shape.")
    params = [q for q in (model.parameters() if params is None else params) if q.is_floating_point()]
    if not params:
        raise ValueError("GradNorm: no floating-point parameters to differentiate.")
    was_training = model.training
    device = params[0].device
    scores = []
    model.eval()
    try:
        with torch.enable_grad(), _all_parameters_require_grad(params):
            for b in range(input_ids.shape[0]):
                ids, att, lab = (t[b : b + 1].to(device) for t in (input_ids, attention_mask, labels))
                if not bool((lab[:, 1:] != IGNORE_INDEX).any()):
                    raise ValueError(f"GradNorm: sample {b} of the batch has no labelled token (all labels -100).")
                logits = model(input_ids=ids, attention_mask=att).logits
                logp, mask = token_logprobs(logits, lab)
                loss = sequence_nll_mean(logp, mask).sum()
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                norms = torch.stack([torch.linalg.vector_norm(g.double(), ord=p) if g is not None
                                     else torch.zeros((), dtype=torch.float64, device=device) for g in grads])
                if aggregation == "global":
                    scores.append(torch.linalg.vector_norm(norms, ord=p))  # ‖(‖g_1‖_p, ..., ‖g_m‖_p)‖_p = ‖g‖_p
                else:
                    scores.append(norms.mean())
    finally:
        model.train(was_training)
    return torch.stack(scores).float()


def reference_scores(logits: Tensor, reference_logits: Tensor, labels: Tensor) -> Tensor:
    """Reference-model score ``L_i(θ) − L_i(θ_ref)`` (mean answer-token NLL difference): ``(B,)``.

    ``logits`` and ``reference_logits`` are ``(B, T, V)`` outputs of the attacked and the reference model on
    the same ``(B, T)`` inputs; lower (more negative) = the attacked model finds the sample unusually easy.
    """
    if logits.shape[:2] != labels.shape or reference_logits.shape[:2] != labels.shape:
        raise ValueError(f"reference_scores: logits {tuple(logits.shape)}, reference_logits"
                         f" {tuple(reference_logits.shape)} and labels {tuple(labels.shape)} disagree on (B, T).")
    logp, mask = token_logprobs(logits, labels)
    ref_logp, _ = token_logprobs(reference_logits, labels)
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("reference_scores: a sample has no labelled token (all labels -100).")
    return (sequence_nll_mean(logp, mask) - sequence_nll_mean(ref_logp, mask)).float()


def min_k_sweep_scores(logits: Tensor, labels: Tensor, ks: Sequence[float] = DEFAULT_K_SWEEP,
                       score: Literal["min_k", "min_k_plus_plus"] = "min_k") -> Tensor:
    """Min-K% (or Min-K%++) scores for every ``k`` in ``ks``: ``(B, K)``; column j equals
    ``min_k_score(..., k=ks[j])`` (resp. ``min_k_plus_plus_score``)."""
    if not ks:
        raise ValueError("min_k_sweep_scores: ks is empty; pass fractions such as (0.1, 0.2, ..., 0.6).")
    if score == "min_k":
        logp, mask = token_logprobs(logits, labels)
        return torch.stack([min_k_score(logp, mask, k) for k in ks], dim=-1)
    if score == "min_k_plus_plus":
        return torch.stack([min_k_plus_plus_score(logits, labels, k) for k in ks], dim=-1)
    raise ValueError(f"min_k_sweep_scores: score must be 'min_k' or 'min_k_plus_plus', got {score!r}.")
