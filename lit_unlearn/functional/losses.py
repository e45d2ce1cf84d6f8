"""Every unlearning objective's loss as a pure tensor function (formula and paper at each function).

Notation (for token ``t`` of sequence ``b``, on the *shifted* tensors of ``tokens.token_logprobs``):

* ``logp`` ``(B, T-1)``: log p_θ(y_t | y_<t, x); ``mask`` ``(B, T-1)`` bool marks labelled tokens.
* ℓ_t = −logp_t (token NLL), p_t = exp(logp_t); ``ref_logp`` likewise for the frozen reference.
* NLL_sum_b = Σ_t ℓ_t, n_b = number of valid tokens of sequence b, N = ``mask.sum()`` (whole batch).
* "mean over valid tokens" = (1/N) Σ over every valid token of the batch (Hugging Face convention).

Conventions shared by every function here:

* Token weights w_t are **detached** (constants for autograd); so are all reference inputs.
* Values at masked positions are ignored: they change neither the value nor the gradient.
* The computation runs in the dtype of ``logp`` (float32 in training; float64 works for gradcheck).
* A loss is *minimised*; forget losses therefore push the likelihood of the forget data down.
* Empty masks raise ``ValueError``; sequence-level losses also refuse a sequence with no valid token.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_unlearn.functional.tokens import nll_mean, sequence_lengths, sequence_logprob_sum

# ----------------------------------------------------------------------------------------------
# input checks


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")


def _check_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")


def _check_tokens(logp: Tensor, mask: Tensor, *refs: Tensor, per_sequence: bool = False) -> Tensor:
    """Validate ``logp``/``mask`` (and reference log-probs) and return the mask as bool."""
    if not torch.is_tensor(logp) or not logp.is_floating_point():
        raise ValueError(f"`logp` must be a floating point tensor, got {getattr(logp, 'dtype', type(logp))}.")
    if logp.dim() != 2:
        raise ValueError(f"`logp` must have shape (B, T-1), got {tuple(logp.shape)}.")
    if not torch.is_tensor(mask) or mask.shape != logp.shape:
        shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask)
        raise ValueError(f"`mask` must have the shape of `logp` {tuple(logp.shape)}, got {shape}.")
    for ref in refs:
        if not torch.is_tensor(ref) or ref.shape != logp.shape:
            shape = tuple(ref.shape) if torch.is_tensor(ref) else type(ref)
            raise ValueError(f"`ref_logp` must have the shape of `logp` {tuple(logp.shape)}, got {shape}.")
    mask = mask.bool()
    if not bool(mask.any()):
        raise ValueError("`mask` has no valid token: every label is -100 (empty answers?).")
    if per_sequence and not bool(mask.any(dim=-1).all()):
        rows = (~mask.any(dim=-1)).nonzero().flatten().tolist()
        raise ValueError(f"sequences {rows} have no valid token; a sequence-level loss needs at least one.")
    return mask


def _clean(logp: Tensor, mask: Tensor) -> Tensor:
    """Zero the masked positions, so garbage there (even inf/nan) reaches neither value nor grad."""
    return logp.masked_fill(~mask, 0.0)


def _weighted_nll(logp: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
    """−(1/N) Σ_valid w_t·ℓ_t = (1/N) Σ_valid w_t·logp_t with detached weights ``(B, T-1)``."""
    return (weights.detach() * logp * mask).sum() / mask.sum()


# ----------------------------------------------------------------------------------------------
# likelihood baselines: NLL, GA


def nll(logp: Tensor, mask: Tensor) -> Tensor:
    """Token-mean NLL, (1/N) Σ_valid ℓ_t: finetuning, GradDiff's retain term and IdkNLL."""
    mask = _check_tokens(logp, mask)
    return nll_mean(_clean(logp, mask), mask)


def ga(logp: Tensor, mask: Tensor) -> Tensor:
    """Gradient Ascent: −NLL_mean = −(1/N) Σ_valid ℓ_t (Jang et al., 2023; TOFU's GA baseline)."""
    return -nll(logp, mask)


# ----------------------------------------------------------------------------------------------
# preference-style losses: NPO, SimNPO, IdkDPO


def npo(logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float = 0.1) -> Tensor:
    """Negative Preference Optimization (Zhang et al., 2024).

        L = (2/β) · mean_b softplus(β · (NLL_sum_ref,b − NLL_sum_b))
          = (2/β) · mean_b log(1 + (π_θ(y_b|x_b) / π_ref(y_b|x_b))^β)

    At θ = ref every term is softplus(0) = ln 2, so L = 2·ln2/β.
    """
    _check_positive("beta", beta)
    mask = _check_tokens(logp, mask, ref_logp, per_sequence=True)
    log_ratio = sequence_logprob_sum(_clean(logp, mask) - _clean(ref_logp.detach(), mask), mask)  # (B,)
    return (2.0 / beta) * F.softplus(beta * log_ratio).mean()


def simnpo(logp: Tensor, mask: Tensor, beta: float = 4.5, delta: float = 0.0) -> Tensor:
    """SimNPO, reference-free NPO with length normalisation (Fan et al., 2024).

        L = (2/β) · mean_b softplus(−β · (NLL_sum_b / n_b − δ))

    The paper writes −(2/β)·log σ(β·NLL_sum_b/n_b − γ): the same loss with γ = β·δ.
    """
    _check_positive("beta", beta)
    if not math.isfinite(delta):
        raise ValueError(f"`delta` must be finite, got {delta!r}.")
    mask = _check_tokens(logp, mask, per_sequence=True)
    nll_avg = -sequence_logprob_sum(_clean(logp, mask), mask) / sequence_lengths(mask).to(logp.dtype)  # (B,)
    return (2.0 / beta) * F.softplus(-beta * (nll_avg - delta)).mean()


def idk_dpo(
    logp_idk: Tensor,
    ref_logp_idk: Tensor,
    mask_idk: Tensor,
    logp_forget: Tensor,
    ref_logp_forget: Tensor,
    mask_forget: Tensor,
    beta: float = 0.1,
) -> Tensor:
    """DPO with a refusal ("I don't know") answer preferred over the forget answer (Maini et al., 2024).

        r_b = [log π_θ − log π_ref](y_idk,b) − [log π_θ − log π_ref](y_forget,b)   (summed log-probs)
        L   = −(2/β) · mean_b log σ(β · r_b) = (2/β) · mean_b softplus(−β · r_b)

    At θ = ref, r_b = 0 and L = 2·ln2/β. The two answers may have different lengths (T).
    """
    _check_positive("beta", beta)
    mask_idk = _check_tokens(logp_idk, mask_idk, ref_logp_idk, per_sequence=True)
    mask_forget = _check_tokens(logp_forget, mask_forget, ref_logp_forget, per_sequence=True)
    if logp_idk.shape[0] != logp_forget.shape[0]:
        raise ValueError(
            f"`logp_idk` and `logp_forget` must have the same batch size, got {logp_idk.shape[0]} "
            f"and {logp_forget.shape[0]}."
        )
    win = sequence_logprob_sum(_clean(logp_idk, mask_idk) - _clean(ref_logp_idk.detach(), mask_idk), mask_idk)
    lose = sequence_logprob_sum(
        _clean(logp_forget, mask_forget) - _clean(ref_logp_forget.detach(), mask_forget), mask_forget
    )  # (B,)
    return (2.0 / beta) * F.softplus(-beta * (win - lose)).mean()


# ----------------------------------------------------------------------------------------------
# token-reweighted gradient ascent: WGA, TNPO, WTNPO (G-effect paper, Wang et al., 2025)


def wga(logp: Tensor, mask: Tensor, beta: float = 1.0) -> Tensor:
    """Weighted Gradient Ascent: −(1/N) Σ_valid p_t^β · ℓ_t, with w_t = p_t^β detached.

    Tokens the model already finds unlikely get small weights, so GA stops pushing them.
    """
    _check_positive("beta", beta)
    mask = _check_tokens(logp, mask)
    logp = _clean(logp, mask)
    weights = torch.exp(beta * logp.detach())  # (B, T-1) = p_t^β
    return _weighted_nll(logp, mask, weights)


def tnpo_value(logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float = 4.0) -> Tensor:
    """Token-wise NPO, its true value: (2/β)·(1/N) Σ_valid log(1 + (p_t / p_ref,t)^β)."""
    _check_positive("beta", beta)
    mask = _check_tokens(logp, mask, ref_logp)
    return _tnpo_value(_clean(logp, mask), _clean(ref_logp.detach(), mask), mask, beta)


def _tnpo_value(logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float) -> Tensor:
    log_ratio = logp - ref_logp  # (B, T-1), both already zero at masked positions
    return (2.0 / beta) * (F.softplus(beta * log_ratio) * mask).sum() / mask.sum()


def tnpo(logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float = 4.0, eps: float = 1e-5) -> Tensor:
    """Token-wise NPO (TNPO): returns the true TNPO value, back-propagates the weighted surrogate.

        value     = (2/β) · (1/N) Σ_valid softplus(β · (logp_t − ref_logp_t))
        surrogate = −(1/N) Σ_valid w_t · ℓ_t,   w_t = 2 p_t^β / (p_t^β + p_ref,t^β + ε)  (detached)
        returned  = surrogate + (value − surrogate).detach()   # value forward, surrogate gradient

    Why the gradients agree at ε = 0: d value / d logp_t = (2/β)(1/N) · β σ(β(logp_t − ref_logp_t))
    = (1/N) · 2 p_t^β / (p_t^β + p_ref,t^β) = w_t / N = d surrogate / d logp_t. ε > 0 (paper code,
    default 1e-5) only guards the division when both probabilities underflow.
    """
    _check_positive("beta", beta)
    _check_non_negative("eps", eps)
    mask = _check_tokens(logp, mask, ref_logp)
    logp, ref_logp = _clean(logp, mask), _clean(ref_logp.detach(), mask)
    p_beta = torch.exp(beta * logp.detach())  # (B, T-1) = p_t^β
    ref_beta = torch.exp(beta * ref_logp)  # (B, T-1) = p_ref,t^β
    weights = 2.0 * p_beta / (p_beta + ref_beta + eps)
    surrogate = _weighted_nll(logp, mask, weights)
    value = _tnpo_value(logp, ref_logp, mask, beta)
    return surrogate + (value - surrogate).detach()


def wtnpo(
    logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float = 4.0, alpha: float = 1.5, eps: float = 1e-5
) -> Tensor:
    """Weighted token-wise NPO (WTNPO): TNPO's weights times an extra p_t^α (WGA-style).

        L = −(1/N) Σ_valid w_t · ℓ_t,   w_t = 2 p_t^(β+α) / (p_t^β + p_ref,t^β + ε)  (detached)

    WTNPO has no closed-form "value" like TNPO, so the returned number is this surrogate itself.
    """
    _check_positive("beta", beta)
    _check_non_negative("alpha", alpha)
    _check_non_negative("eps", eps)
    mask = _check_tokens(logp, mask, ref_logp)
    logp, ref_logp = _clean(logp, mask), _clean(ref_logp.detach(), mask)
    p_beta = torch.exp(beta * logp.detach())  # (B, T-1)
    ref_beta = torch.exp(beta * ref_logp)  # (B, T-1)
    weights = 2.0 * torch.exp((beta + alpha) * logp.detach()) / (p_beta + ref_beta + eps)
    return _weighted_nll(logp, mask, weights)


# ----------------------------------------------------------------------------------------------
# saturation / importance reweighting: SatImp and its variants (Yang et al., 2025)


def _satimp_weights(logp: Tensor, beta1: float, beta2: float) -> Tensor:
    """w = p^β1 · (1 − p)^β2 elementwise, detached; 1 − p = −expm1(logp) is exact for p near 1."""
    logp = logp.detach()
    return torch.exp(beta1 * logp) * torch.pow((-torch.expm1(logp)).clamp_min(0.0), beta2)


def satimp(logp: Tensor, mask: Tensor, beta1: float = 5.0, beta2: float = 0.1) -> Tensor:
    """SatImp: −(1/N) Σ_valid p_t^β1 · (1 − p_t)^β2 · ℓ_t, weights detached.

    p^β1 is the saturation weight (down-weights tokens already forgotten), (1 − p)^β2 the
    importance weight. β2 = 0 gives SimSat, β1 = 0 gives SimImp, both 0 give GA.
    """
    _check_non_negative("beta1", beta1)
    _check_non_negative("beta2", beta2)
    mask = _check_tokens(logp, mask)
    logp = _clean(logp, mask)
    return _weighted_nll(logp, mask, _satimp_weights(logp, beta1, beta2))


def simsat(logp: Tensor, mask: Tensor, beta: float) -> Tensor:
    """SimSat (saturation only): −(1/N) Σ_valid p_t^β · ℓ_t (same weights as WGA)."""
    _check_positive("beta", beta)
    return satimp(logp, mask, beta1=beta, beta2=0.0)


def simimp(logp: Tensor, mask: Tensor, beta: float) -> Tensor:
    """SimImp (importance only): −(1/N) Σ_valid (1 − p_t)^β · ℓ_t."""
    _check_positive("beta", beta)
    return satimp(logp, mask, beta1=0.0, beta2=beta)


def satimp_instance(logp: Tensor, mask: Tensor, beta1: float = 5.0, beta2: float = 0.1) -> Tensor:
    """Instance-level SatImp: one weight per sequence from its whole-answer probability.

        P_b = exp(−NLL_sum_b),   w_b = P_b^β1 · (1 − P_b)^β2 (detached),   L = −mean_b w_b · NLL_sum_b
    """
    _check_non_negative("beta1", beta1)
    _check_non_negative("beta2", beta2)
    mask = _check_tokens(logp, mask, per_sequence=True)
    seq_logp = sequence_logprob_sum(_clean(logp, mask), mask)  # (B,) = −NLL_sum_b = log P_b
    weights = _satimp_weights(seq_logp, beta1, beta2)  # (B,)
    return (weights * seq_logp).mean()


def satimp_group(logp: Tensor, mask: Tensor, beta1: float = 5.0, beta2: float = 0.1, group_size: int = 4) -> Tensor:
    """Group-level SatImp: token weights smoothed by averaging within groups of similar weight.

    In each sequence the valid tokens' SatImp weights p^β1 (1 − p)^β2 are sorted in ascending
    order (stable sort), cut into consecutive groups of ``group_size`` (the last, highest-weight
    group may be smaller), each token gets its group's mean weight, and the loss is
    −(1/N) Σ_valid w̄_t · ℓ_t. ``group_size=1`` is token-level SatImp; ``group_size >= n_b`` gives
    every token of the sequence the sequence's mean weight.
    """
    _check_non_negative("beta1", beta1)
    _check_non_negative("beta2", beta2)
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"`group_size` must be an integer >= 1, got {group_size!r}.")
    mask = _check_tokens(logp, mask)
    logp = _clean(logp, mask)
    weights = _satimp_weights(logp, beta1, beta2)  # (B, L), L = T-1
    B, L = weights.shape
    # sort valid tokens first (padding gets key +inf), ascending by weight
    keys = weights.masked_fill(~mask, float("inf"))
    sorted_w, order = torch.sort(keys, dim=-1, stable=True)  # (B, L)
    sorted_valid = mask.gather(1, order)  # (B, L), valid tokens come first
    sorted_w = sorted_w.masked_fill(~sorted_valid, 0.0)
    group = (torch.arange(L, device=logp.device) // group_size).expand(B, L)  # (B, L) group id by rank
    n_groups = (L + group_size - 1) // group_size
    sums = weights.new_zeros(B, n_groups).scatter_add_(1, group, sorted_w)  # (B, G)
    counts = weights.new_zeros(B, n_groups).scatter_add_(1, group, sorted_valid.to(weights.dtype))
    group_mean = sums / counts.clamp_min(1.0)  # (B, G)
    smoothed = weights.new_zeros(B, L).scatter_(1, order, group_mean.gather(1, group))  # back to token order
    return _weighted_nll(logp, mask, smoothed)


# ----------------------------------------------------------------------------------------------
# retain regularizer: KL to the reference


def kl_retain(logits: Tensor, ref_logits: Tensor, attention_mask: Tensor) -> Tensor:
    """KL(p_ref ‖ p_θ) of the next-token distributions, mean over non-padding positions.

        KL_{b,s} = Σ_v p_ref(v | s) · (log p_ref(v | s) − log p_θ(v | s))
        L        = Σ_{b,s} m_{b,s} · KL_{b,s} / Σ_{b,s} m_{b,s},   m = attention_mask

    Unlike libraries that call ``F.kl_div(..., reduction="batchmean")`` on flattened logits (which
    averages over padding positions too), padding is excluded here, so the value does not depend on
    how much padding a batch has. Computed in float32 (or float64 if given); ``ref_logits`` detached.
    """
    if not torch.is_tensor(logits) or logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"`logits` must be a float tensor of shape (B, T, V), got {getattr(logits, 'shape', None)}.")
    if not torch.is_tensor(ref_logits) or ref_logits.shape != logits.shape:
        raise ValueError(
            f"`ref_logits` must have the shape of `logits` {tuple(logits.shape)}, got "
            f"{getattr(ref_logits, 'shape', None)}."
        )
    if not torch.is_tensor(attention_mask) or attention_mask.shape != logits.shape[:2]:
        raise ValueError(
            f"`attention_mask` must have shape (B, T) = {tuple(logits.shape[:2])}, got "
            f"{getattr(attention_mask, 'shape', None)}."
        )
    mask = attention_mask.bool()
    if not bool(mask.any()):
        raise ValueError("`attention_mask` has no non-padding position.")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logq = F.log_softmax(logits.to(dtype), dim=-1)  # (B, T, V) θ
    logp_ref = F.log_softmax(ref_logits.detach().to(dtype), dim=-1)  # (B, T, V) reference
    kl = (logp_ref.exp() * (logp_ref - logq)).sum(dim=-1)  # (B, T)
    return kl.masked_fill(~mask, 0.0).sum() / mask.sum()


# ----------------------------------------------------------------------------------------------
# representation misdirection: RMU (Li et al., 2024, "The WMDP Benchmark")


def rmu_control_vector(hidden_size: int, coeff: float, seed: int) -> Tensor:
    """The RMU steering target c·u, u a random unit vector: ``(hidden_size,)`` float32.

    As in the RMU paper, u's entries are drawn independently from U[0, 1) and the vector is then
    normalised to unit length; the draw uses its own ``torch.Generator`` seeded with ``seed``, so
    the same seed gives the same vector on every rank and run (and the global RNG is untouched).
    """
    if not isinstance(hidden_size, int) or hidden_size < 1:
        raise ValueError(f"`hidden_size` must be an integer >= 1, got {hidden_size!r}.")
    _check_positive("coeff", coeff)
    generator = torch.Generator().manual_seed(int(seed))
    u = torch.rand(hidden_size, generator=generator, dtype=torch.float32)  # (D,)
    return coeff * u / u.norm()


def rmu(hidden: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """RMU's mean-squared distance of hidden states to a target, over non-padding positions.

        L = mean_b [ Σ_s m_{b,s} · mean_d (h_{b,s,d} − target_{b,s,d})² / Σ_s m_{b,s} ]

    Forget term: ``target`` = c·u of shape (D,) (from ``rmu_control_vector``), broadcast to every
    position. Retain term: ``target`` = the frozen model's hidden states (B, T, D) (detached).
    ``hidden`` is (B, T, D) at the chosen layer and ``mask`` the (B, T) attention mask.
    """
    if not torch.is_tensor(hidden) or hidden.dim() != 3 or not hidden.is_floating_point():
        raise ValueError(f"`hidden` must be a float tensor of shape (B, T, D), got {getattr(hidden, 'shape', None)}.")
    if not torch.is_tensor(target) or target.shape not in (hidden.shape, hidden.shape[-1:]):
        raise ValueError(
            f"`target` must have shape (D,) = {tuple(hidden.shape[-1:])} or (B, T, D) = {tuple(hidden.shape)}, "
            f"got {getattr(target, 'shape', None)}."
        )
    if not torch.is_tensor(mask) or mask.shape != hidden.shape[:2]:
        shape = getattr(mask, "shape", None)
        raise ValueError(f"`mask` must have shape (B, T) = {tuple(hidden.shape[:2])}, got {shape}.")
    mask = mask.bool()
    if not bool(mask.any(dim=-1).all()):
        rows = (~mask.any(dim=-1)).nonzero().flatten().tolist()
        raise ValueError(f"`mask` rows {rows} have no non-padding position.")
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    sq = (hidden.to(dtype) - target.detach().to(dtype)).pow(2).mean(dim=-1)  # (B, T)
    per_seq = sq.masked_fill(~mask, 0.0).sum(dim=-1) / mask.sum(dim=-1)  # (B,)
    return per_seq.mean()


# ----------------------------------------------------------------------------------------------
# full-distribution forget losses: UNDIAL, CE-U, PDU's logit-margin flattening


def _shifted_answer_logits(logits: Tensor, labels: Tensor, name: str = "logits") -> tuple[Tensor, Tensor]:
    """The ``(N, V)`` logits predicting each labelled token and the ``(N,)`` targets (shifted convention)."""
    if not torch.is_tensor(logits) or logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"`{name}` must be a float tensor of shape (B, T, V), got {getattr(logits, 'shape', None)}.")
    if not torch.is_tensor(labels) or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"`labels` must have shape (B, T) = {tuple(logits.shape[:2])}, got {getattr(labels, 'shape', None)}."
        )
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != -100
    if not bool(mask.any()):
        raise ValueError("`labels` has no valid token: every label is -100 (empty answers?).")
    rows = logits[:, :-1, :][mask]  # (N, V)
    return rows.to(torch.promote_types(rows.dtype, torch.float32)), targets[mask]


def undial(logits: Tensor, ref_logits: Tensor, labels: Tensor, beta: float = 10.0) -> Tensor:
    """UNDIAL: self-distillation towards the reference with the target logit lowered by β.

    Dong, Lin, Belkin, Huerta, Vulić (2024), "UNDIAL: Self-Distillation with Adjusted Logits for Robust
    Unlearning in Large Language Models". For every answer token t with target y_t (shifted convention):

        q_t = softmax(z_ref,t − β · e_{y_t})           (detached teacher: reference logits, target lowered)
        L   = (1/N) Σ_valid −Σ_v q_t,v · log softmax(z_θ,t)_v

    i.e. the token mean of CE(q_t, p_θ,t) over **answer tokens only** (prompt and padding positions are
    excluded; some implementations average over every position of the sequence). β = 0 distils the
    reference unchanged. Naive equivalent::

        for each valid (b, t): z = ref_logits[b, t].clone(); z[y] -= beta
                               loss += -(softmax(z) * log_softmax(logits[b, t])).sum()
        loss /= N
    """
    _check_non_negative("beta", beta)
    if not torch.is_tensor(ref_logits) or ref_logits.shape != getattr(logits, "shape", None):
        raise ValueError(
            f"`ref_logits` must have the shape of `logits` {tuple(getattr(logits, 'shape', ()))}, got "
            f"{getattr(ref_logits, 'shape', None)}."
        )
    rows, targets = _shifted_answer_logits(logits, labels)
    ref_rows, _ = _shifted_answer_logits(ref_logits.detach(), labels, "ref_logits")
    adjusted = ref_rows.to(rows.dtype).scatter_add(
        -1, targets.unsqueeze(-1), torch.full((targets.numel(), 1), -float(beta), dtype=rows.dtype, device=rows.device)
    )
    soft = F.softmax(adjusted, dim=-1)  # (N, V), no grad
    return -(soft * F.log_softmax(rows, dim=-1)).sum(dim=-1).mean()


def ceu(logits: Tensor, labels: Tensor) -> Tensor:
    """CE-U, the "unlearning" cross-entropy: CE to the model's own distribution with the target removed.

    Yang (2025), "CE-U: Cross Entropy Unlearning". For every answer token t with target y_t:

        q_t = softmax(stopgrad(z_t) with z_t,y_t = −∞)    (= p_t,v / (1 − p_t,y) for v ≠ y, 0 at y)
        L   = (1/N) Σ_valid −Σ_v q_t,v · log p_θ,t,v       (closed form: H(q_t) − log(1 − p_t,y))

    Its gradient with respect to the logits is p_t − q_t: at y it is p_t,y, which stays bounded where gradient
    ascent's (p_t,y − 1) / p_t,y explodes. Naive equivalent::

        for each valid (b, t): z = logits[b, t].detach().clone(); z[y] = -inf
                               loss += -(softmax(z) * log_softmax(logits[b, t])).sum()
        loss /= N
    """
    rows, targets = _shifted_answer_logits(logits, labels)
    target_logits = rows.detach().scatter(-1, targets.unsqueeze(-1), float("-inf"))
    soft = F.softmax(target_logits, dim=-1)  # (N, V), exactly 0 at the target
    logq = F.log_softmax(rows, dim=-1)
    return -(soft * logq.masked_fill(soft == 0, 0.0)).sum(dim=-1).mean()


def logit_margin_flattening(logits: Tensor, labels: Tensor) -> Tensor:
    """PDU's forget loss: the squared gap between the largest and the mean logit, answer tokens only.

    Entesari, Hatami, Khaziev, Ramakrishna, Fazlyab (2025), "Constrained Entropic Unlearning: A Primal-Dual
    Framework for Large Language Models":

        L = (1/N) Σ_valid (max_v z_t,v − (1/V) Σ_v z_t,v)²

    Zero exactly when every logit is equal, i.e. the next-token distribution is uniform (maximum entropy),
    without a softmax (so its gradient does not vanish as the distribution flattens). Positions are the
    logits that predict answer tokens (shifted convention). Naive equivalent::

        loss = mean over valid (b, t) of (logits[b, t].max() - logits[b, t].mean()) ** 2
    """
    rows, _ = _shifted_answer_logits(logits, labels)
    return (rows.max(dim=-1).values - rows.mean(dim=-1)).pow(2).mean()


def altpo(
    logp_alt: Tensor,
    ref_logp_alt: Tensor,
    mask_alt: Tensor,
    logp_forget: Tensor,
    ref_logp_forget: Tensor,
    mask_forget: Tensor,
    beta: float = 0.1,
    alt_weight: float = 1.0,
) -> Tensor:
    """AltPO: DPO preferring a self-generated alternate answer over the forget answer, plus its NLL.

    Mekala, Dorna, Dubey, Lalwani, Koleczek, Rungta, Hasan, Lobo (2024), "Alternate Preference Optimization
    for Unlearning Factual Knowledge in Large Language Models":

        r_b = [log π_θ − log π_ref](ỹ_b) − [log π_θ − log π_ref](y_b)     (summed answer log-probs)
        L   = (2/β) · mean_b softplus(−β · r_b)  +  w · NLL_mean(ỹ)

    the preference term (negative feedback on y, relative positive feedback on ỹ) plus the in-domain positive
    term, w = ``alt_weight`` (0 keeps the preference term only). At θ = ref the first term is 2·ln2/β.
    """
    _check_non_negative("alt_weight", alt_weight)
    preference = idk_dpo(logp_alt, ref_logp_alt, mask_alt, logp_forget, ref_logp_forget, mask_forget, beta=beta)
    if alt_weight == 0:
        return preference
    return preference + alt_weight * nll(logp_alt, mask_alt)


__all__ = [
    "nll",
    "ga",
    "npo",
    "simnpo",
    "idk_dpo",
    "wga",
    "tnpo",
    "tnpo_value",
    "wtnpo",
    "satimp",
    "simsat",
    "simimp",
    "satimp_instance",
    "satimp_group",
    "kl_retain",
    "rmu",
    "rmu_control_vector",
    "undial",
    "ceu",
    "logit_margin_flattening",
    "altpo",
]
