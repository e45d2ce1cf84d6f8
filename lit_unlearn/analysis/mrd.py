"""Memory Removal Difficulty (MRD): how hard each forget sample is to unlearn.

Paper: "A Neuro-Inspired Interpretation of Unlearning in LLMs through Sample-Level Unlearning
Difficulty" (Definition 3.1, Theorem 3.2, Algorithm 1). With P_t(θ) = log p(y_t | y_<t; θ) over the
labelled (answer) tokens of a sample and δ_k ~ N(0, σ²I) a perturbation of *all* parameters,

    Δ_k = Σ_t (P_t(θ) − P_t(θ + δ_k)) / P_t(θ)             (token normalisation, the paper's)
    Δ_k = (Σ_t P_t(θ) − Σ_t P_t(θ + δ_k)) / Σ_t P_t(θ)      (``normalization="sequence"``)

and |P_t| is floored at ``p_floor`` in the division. **Smaller MRD = harder to unlearn.**

Three estimators:

``"mean_abs"`` (default, Algorithm 1, paper parity): (1/K) Σ_k |Δ_k|.
    To first order Δ_k ≈ −g·δ_k with g = ∇_θ Σ_t P_t / P_t, and E|g·δ| = √(2/π)·σ·‖g‖, so this is
    a *gradient-norm* score: mean_abs ≈ √(2/π)·σ·‖Σ_t ∇P_t / P_t‖.
``"abs_mean"`` (Definition 3.1): |(1/K) Σ_k Δ_k|.
    E[Δ] = −½σ² Σ_t tr(H_t)/P_t + O(σ⁴) with H_t = ∇²P_t, Theorem 3.2's Hessian-trace quantity.
    A plain Monte-Carlo mean is hopeless here: each Δ_k carries a first-order term of size
    ~σ‖g‖ that is zero only *on average*, and it dwarfs ½σ²tr(H) by a factor ~1/σ. Antithetic
    pairs (δ, −δ) cancel every odd-order term exactly, so the pair mean is ½(Δ(δ) + Δ(−δ)) =
    −½ δᵀAδ + O(σ⁴) with A = Σ_t H_t/P_t: unbiased, with relative noise √(2·tr(A²))/|tr(A)| per
    pair (small when A has many same-sign eigenvalues). Antithetic pairs are therefore on by
    default for this estimator (``num_samples`` must be even). At σ = 1e-5 each Δ is a difference of
    ~1e-7 in log p, so it relies on the precise log-softmax below (rank stability K=32 vs K=512 on
    the builtin target model: Spearman 0.945 for one draw of δ_k).
``"analytic"``: √(2/π)·σ·‖∇_θ Σ_t P_t / sg(P_t)‖ (sg = stop-gradient), one gradient per sample: a
    backward per sample (``per_sample="loop"``), or per-sample gradients of a chunk of samples in one
    ``torch.func.vmap``-ed forward and backward (``"vmap"``, the default on CUDA: on an H100 the builtin
    model's 24 forget samples take 0.04 s instead of 0.41 s).
    It is the exact K → ∞ limit of ``mean_abs`` as σ → 0. It departs from Monte Carlo only when σ
    is large enough that second-order terms (½σ²tr H, and ‖H‖σ² against ‖g‖σ) matter, e.g. the
    σ = 1 of the paper's appendix sensitivity study; at the default σ = 1e-5 the two agree up to
    Monte-Carlo noise: on the builtin target model the mean ratio to Algorithm 1 at K=200 is 0.998,
    and it agrees with Algorithm 1 (Spearman 0.95 on average over 10 draws of δ_k, range 0.92-0.98)
    better than a second Algorithm 1 run with fresh δ_k does (0.91); see benchmarks/mrd_speed.py.

``control_variate=True`` (with ``"mean_abs"``): Algorithm 1 with the analytic score as a control variate,
    (1/K) Σ_k (|Δ_k| − |g·δ_k|) + √(2/π)·σ·‖g‖. Since g·δ ~ N(0, σ²‖g‖²), the added term is the exact mean of
    the subtracted one, so the expectation is Algorithm 1's at any σ, second-order terms included, while the
    noise is only that of |Δ_k| − |g·δ_k| (bounded by |Δ_k + g·δ_k|, the part of Δ_k beyond first order).
    Plain Algorithm 1's noise is ~0.755/√K per sample (|N(0,1)| has std/mean 0.755): with 24 builtin samples
    whose scores spread by ~40%, K=32 ranks them like K=512 only to Spearman 0.88 on average over 10 draws
    of δ_k. With the control variate, K=32 agrees with plain K=512 to 0.98 on average (0.95 at worst). The
    gain is a small-σ effect: at σ = 1e-3 or 1e-2 (where Δ is far from linear in δ) it ranks no better than
    plain Algorithm 1, but its mean stays Algorithm 1's (ratio 0.995 and 0.987 to plain K=512) where the
    analytic score's does not (0.961 and 0.217 to K=200). A negative estimate warns. See benchmarks/mrd_speed.py.
    Cost: one backward per sample and the δ_k drawn a second time per batch (1.4-1.5× plain K=32 on a CPU).

Implementation notes:

* One δ_k per forward pass, shared by the whole batch: K forward passes per batch, not per sample.
* Common random numbers: δ_k of a parameter is drawn from a ``torch.Generator`` seeded with a hash
  of (seed, k, parameter name), so it is the same for every batch, epoch, rank and parameter
  iteration order; tied parameters (one ``Parameter`` object) get one δ. The noise is drawn on the
  parameter's device, so CPU and CUDA runs use different (equally valid) δ_k.
* Perturbation without a model copy: forward pre/post hooks swap ``param.data`` to θ + δ_k only
  during the forward of the module that owns it, then put the *original tensor object* back. The
  original storage is never written to, so restoration is bit-exact (also after an exception), and
  the extra memory is one module's weights.
* Numerics: σ = 1e-5 is far below bf16/fp16 resolution (a bf16 weight of size 0.02 has a spacing of
  ~1e-4), so low-precision models raise unless ``allow_low_precision=True`` or ``upcast=True`` (runs
  an fp32 copy of the model: costs a full fp32 model copy in memory). The forward runs with TF32
  off and autocast disabled; log-softmax is fp32. The global RNG
  state is left as it was (δ_k come from private generators; the DataLoader's draw is undone).
* Log-probability precision: a trained model puts log p_t ≈ −1e-3 on most answer tokens, and a
  σ = 1e-5 perturbation moves that by ~1e-7. The usual ``logit − logsumexp`` is quantised at
  ulp(|logit| ≈ 10) ≈ 1e-6 in float32, so Δ_k would be dominated by rounding (measured on the builtin
  target model: median error 29% per Δ_k against a float64 forward). MRD therefore uses
  ``log p_y = z_y − log1p(Σ_{j≠argmax} exp z_j)`` with z = l − max l
  (:func:`tokens.precise_token_logprobs`): median error 0.6% in float32 on the same model.
* Distributed: when ``torch.distributed`` is initialised every rank scores the batches of its
  (sharded) dataloader and the (index, score) pairs are all-gathered, so all ranks return the same
  vector.

* Which weights (``mrd_params``, :func:`perturbed_parameters`): ``"all"`` (default) perturbs the weights of the
  model as it predicts. On a ``peft`` LoRA model those are the merged weights W_eff = W + (α/r)·B·A; they are
  perturbed without merging, by perturbing each base weight W (under its merged-model name) while B and A stay
  fixed: (W + δ)x + (α/r)·B·A·x = (W_eff + δ)x, the very δ_k the merged (``export --merge``) model gets.
  ``"trainable"`` perturbs only the ``requires_grad`` weights (the adapters); the base weights are never
  written or swapped. On a model without adapters ``"all"`` is the paper's MRD, unchanged.

* DeepSpeed ZeRO-3: a partitioned parameter's ``param.data`` is an empty placeholder except while its
  module runs, when DeepSpeed's own forward pre-hook has all-gathered it. The perturbation hooks are
  ordered around DeepSpeed's: the pre-hook runs *after* the gather (hooks registered later run later) and
  the restoring post-hook is *prepended*, so it runs before DeepSpeed re-partitions. Each rank therefore
  perturbs the gathered full tensor with the full-size δ_k of that parameter (generated from (seed, k,
  name), exactly the unsharded run's δ_k), the local shard is never written, and restoration is the same
  bit-exact swap of tensor objects. Scores equal the unsharded run's (tested on 2 CPU processes). The
  model must be wrapped by the DeepSpeed engine (as it is inside a Lightning ZeRO-3 run), every rank must
  call :func:`mrd_scores` with the same number of batches (a ``DistributedSampler`` ensures it), and
  ``upcast=True`` is refused (it needs a full model copy); run MRD on fp32 module weights. The analytic
  estimator takes gradients with ``torch.autograd.grad``; under ZeRO-3 these are the full gradients of
  the gathered parameters (DeepSpeed's reduce-scatter hooks only run for ``.backward()``).
"""
from __future__ import annotations

import copy
import hashlib
import math
import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from lit_unlearn.functional import tokens
from lit_unlearn.utils.modes import eval_mode

ESTIMATORS = ("mean_abs", "abs_mean", "analytic")
PER_SAMPLE_MODES = ("auto", "loop", "vmap")
NORMALIZATIONS = ("token", "sequence")
MRD_PARAMS = ("all", "trainable")

LogprobFn = Callable[[nn.Module, Mapping[str, Any]], "tuple[Tensor, Tensor]"]


# --------------------------------------------------------------------------------------------------
# Per-token log-probabilities and the relative change Δ
# --------------------------------------------------------------------------------------------------


def causal_lm_logprobs(model: nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Default ``logprob_fn``: P_t = log p(y_t | y_<t) of a Hugging Face causal LM's labelled tokens.

    Returns ``logp`` ``(B, T-1)`` float32 and ``mask`` ``(B, T-1)`` bool. Uses
    :func:`tokens.precise_token_logprobs`: the plain ``logit − logsumexp`` is quantised at ~1e-6
    absolute in float32, which on a trained model is larger than the ΔP_t of confident tokens.
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return tokens.precise_token_logprobs(out.logits, batch["labels"])  # (B, T-1), (B, T-1)


def _floored(x: Tensor, p_floor: float) -> Tensor:
    """x with |x| floored at p_floor, keeping its sign (0 counts as negative: log-probs are ≤ 0)."""
    sign = torch.where(x > 0, 1.0, -1.0).to(x.dtype)
    return sign * x.abs().clamp_min(p_floor)


def relative_change(
    logp: Tensor,
    logp_perturbed: Tensor,
    mask: Tensor,
    normalization: str = "token",
    p_floor: float = 1e-6,
) -> Tensor:
    """Δ per sample: ``(B, T-1)`` log-probs at θ and θ+δ -> ``(B,)`` float64.

    token:    Δ = Σ_t (P_t(θ) − P_t(θ+δ)) / P_t(θ)       (MRD paper, Algorithm 1 lines 7-12)
    sequence: Δ = (Σ_t P_t(θ) − Σ_t P_t(θ+δ)) / Σ_t P_t(θ)
    with every denominator's magnitude floored at ``p_floor``.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    mask = mask.to(torch.float64)
    p0, p1 = logp.to(torch.float64), logp_perturbed.to(torch.float64)  # (B, T-1)
    if normalization == "token":
        return ((p0 - p1) / _floored(p0, p_floor) * mask).sum(dim=-1)  # (B,)
    s0, s1 = (p0 * mask).sum(dim=-1), (p1 * mask).sum(dim=-1)  # (B,)
    return (s0 - s1) / _floored(s0, p_floor)


# --------------------------------------------------------------------------------------------------
# Perturbations δ_k with common random numbers, applied by hooks
# --------------------------------------------------------------------------------------------------


def _stream_seed(seed: int, draw: int, name: str) -> int:
    """A 63-bit generator seed from (seed, draw, parameter name); stable across processes."""
    digest = hashlib.blake2b(f"{seed}/{draw}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def perturbation(
    name: str,
    shape: torch.Size | tuple[int, ...],
    k: int,
    *,
    sigma: float,
    seed: int = 0,
    antithetic: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """δ_k for the parameter called ``name``: σ·ε, ε ~ N(0, I) float32 from its own seeded Generator.

    With ``antithetic=True`` perturbations come in pairs: δ_{2j} = σ·ε_j and δ_{2j+1} = −σ·ε_j.
    The result depends only on (name, shape, k, sigma, seed, antithetic, device type).
    """
    draw, sign = (k // 2, -1.0 if k % 2 else 1.0) if antithetic else (k, 1.0)
    device = torch.device(device if device is not None else "cpu")
    gen = torch.Generator(device=device)
    gen.manual_seed(_stream_seed(seed, draw, name))
    eps = torch.randn(tuple(shape), generator=gen, device=device, dtype=torch.float32)
    return eps.mul_(sign * sigma)


class ParameterPerturbation:
    """Hooks that make each module see θ + δ_k for its own parameters during its forward.

    Usage::

        with ParameterPerturbation(model, sigma=1e-5) as perturb:
            with perturb.draw(k):
                out = model(**inputs)       # computed at θ + δ_k
            out = model(**inputs)           # computed at θ (hooks are idle outside draw())

    Naive equivalent (what this avoids: a full copy and a restore by copy)::

        saved = {n: p.detach().clone() for n, p in model.named_parameters()}
        for n, p in model.named_parameters(): p.data += perturbation(n, p.shape, k, sigma=sigma)
        out = model(**inputs)
        for n, p in model.named_parameters(): p.data.copy_(saved[n])
    """

    def __init__(self, model: nn.Module, sigma: float, seed: int = 0, antithetic: bool = False,
                 streams: Mapping[str, str] | None = None):
        self.model, self.sigma, self.seed, self.antithetic = model, sigma, seed, antithetic
        # named_parameters() lists a tied Parameter once, under its first name: one δ per object.
        # ``streams`` (see :func:`perturbed_parameters`): only these parameters are perturbed, each with the δ_k
        # of its stream name; None: every parameter, under its own name.
        self.names = {id(p): (name if streams is None else streams[name]) for name, p in model.named_parameters()
                      if streams is None or name in streams}
        self._k: int | None = None
        self._active: dict[int, list] = {}  # id(param) -> [param, original data, nesting depth]
        self._handles: list = []
        self._touched: set[int] = set()
        self._coverage_checked = False

    def __enter__(self) -> "ParameterPerturbation":
        for module in self.model.modules():
            if not any(id(p) in self.names for p in module.parameters(recurse=False)):
                continue
            # pre-hook after any existing one (ZeRO-3's gather), post-hook before (ZeRO-3's re-partition)
            self._handles.append(module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(module.register_forward_hook(self._post_hook, always_call=True, prepend=True))
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore_all()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextmanager
    def draw(self, k: int) -> Iterator[None]:
        """Within this block the model's forward runs at θ + δ_k."""
        if not self._handles:
            raise RuntimeError("ParameterPerturbation.draw() must be used inside `with ParameterPerturbation(...)`")
        self._k, self._touched = k, set()
        try:
            yield
            self._check_coverage()
        finally:
            self._k = None
            self._restore_all()

    def noise(self, param: Tensor, k: int) -> Tensor:
        """δ_k of the model parameter ``param`` (float32, on its device), drawn by the parameter's name."""
        return perturbation(self.names[id(param)], param.shape, k, sigma=self.sigma, seed=self.seed,
                            antithetic=self.antithetic, device=param.device)

    def _pre_hook(self, module: nn.Module, args: Any) -> None:
        if self._k is None:
            return
        for p in module.parameters(recurse=False):
            if id(p) not in self.names:  # not selected (mrd_params="trainable", or an adapter's own factor)
                continue
            entry = self._active.get(id(p))
            if entry is not None:  # a tied parameter already perturbed by an enclosing module
                entry[2] += 1
                continue
            original = p.data
            noise = self.noise(p, self._k)
            work = torch.promote_types(original.dtype, torch.float32)
            p.data = (original.to(work) + noise.to(work)).to(original.dtype)  # new tensor, original untouched
            self._active[id(p)] = [p, original, 1]
            self._touched.add(id(p))

    def _post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        for p in module.parameters(recurse=False):
            entry = self._active.get(id(p))
            if entry is None:
                continue
            entry[2] -= 1
            if entry[2] == 0:
                p.data = entry[1]  # the original tensor object: bit-exact
                del self._active[id(p)]

    def _restore_all(self) -> None:
        for p, original, _ in self._active.values():
            p.data = original
        self._active.clear()

    def _check_coverage(self) -> None:
        """Warn once if some parameters were never perturbed (used outside their module's forward)."""
        if self._coverage_checked:
            return
        self._coverage_checked = True
        missed = [name for pid, name in self.names.items() if pid not in self._touched]
        if missed:
            warnings.warn(
                f"MRD: {len(missed)} parameter(s) were not perturbed because their module's forward was "
                f"not called (unused, or read directly by another module): {missed[:5]}...",
                stacklevel=3,
            )


# --------------------------------------------------------------------------------------------------
# Which parameters are perturbed: mrd_params = "all" | "trainable"
# --------------------------------------------------------------------------------------------------


def _merged_name(name: str) -> str:
    """The name a ``peft`` model's parameter has in the merged model (``export --merge``, ``merge_and_unload``):
    ``base_model.model.`` prefix, ``.base_layer`` and ``.modules_to_save.<adapter>`` removed."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    parts = name.split(".")
    out, i = [], 0
    while i < len(parts):
        if parts[i] == "base_layer":
            i += 1
        elif parts[i] == "modules_to_save":
            i += 2  # ".modules_to_save.<adapter name>"
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def perturbed_parameters(model: nn.Module, mrd_params: str = "all") -> dict[str, str]:
    """The parameters MRD perturbs, ``{name in model.named_parameters(): δ stream name}``, in model order.

    ``"all"``: the weights of the model *as it predicts*.
      * A model without adapters: every parameter under its own name (MRD as in the paper; unchanged).
      * A ``peft`` adapter model (:func:`~lit_unlearn.models.adapters.wrap_with_adapters`): every base weight,
        under the name it has in the merged model, with the adapter factors held fixed. For an additive tuner
        (LoRA, LoHa, LoKr: W_eff = W + ΔW(adapter), e.g. ΔW = (α/r)·B·A) a base-layer forward at W + δ gives
        (W + δ)x + ΔW x = (W_eff + δ)x: exactly the merged model W_eff perturbed by δ ~ N(0, σ²I), with the same
        δ_k as the merged model's (same stream names), so the scores equal those of the ``export --merge`` model
        up to rounding (tested). Perturbing B and A as well would add s·(δ_B·A + B·δ_A + δ_B·δ_A), a perturbation
        whose size depends on the rank and scaling, not the σ²I of the paper. For a multiplicative tuner (IA3:
        W_eff = diag(l)·W) it is W_eff + diag(l)·δ. A ``modules_to_save`` copy (trained in full) replaces its
        original module while the adapter is active, so the copy is perturbed and the original is not.
    ``"trainable"``: only the parameters with ``requires_grad`` (the adapter weights of an adapter model),
      under their own names; the base weights are never touched. MRD then measures how hard a sample is to
      unlearn *through the adapters*: Δ_k = Σ_t (P_t(θ) − P_t(θ_base, φ + δ_k)) / P_t(θ) with φ the trainable
      weights, and the analytic score is √(2/π)·σ·‖∇_φ Σ_t P_t / P_t‖.

    Naive equivalent: ``{n: n for n, p in model.named_parameters() if mrd_params == "all" or p.requires_grad}``
    (for a model without adapters).
    """
    from lit_unlearn.models.adapters import adapter_parameter_names, is_adapter_model

    if mrd_params not in MRD_PARAMS:
        raise ValueError(f"mrd_params must be one of {MRD_PARAMS}, got {mrd_params!r}")
    named = list(model.named_parameters())  # a tied Parameter once
    if mrd_params == "trainable":
        selected = {name: name for name, p in named if p.requires_grad}
        if not selected:
            raise ValueError("MRD: mrd_params='trainable' but the model has no parameter with requires_grad=True; "
                             "use mrd_params='all' (or unfreeze the weights to score)")
        return selected
    if not is_adapter_model(model):
        return {name: name for name, _ in named}
    adapters = adapter_parameter_names(model)
    selected = {}
    for name, _ in named:
        if ".modules_to_save." in name or (name not in adapters and ".original_module." not in name):
            selected[name] = _merged_name(name)
    return selected


# --------------------------------------------------------------------------------------------------
# Setup helpers: input validation, numerics, modes
# --------------------------------------------------------------------------------------------------


def _check_args(sigma: float, num_samples: int, estimator: str, antithetic: bool, normalization: str,
                p_floor: float) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite float, got {sigma!r}")
    if not (isinstance(p_floor, (int, float)) and math.isfinite(p_floor) and p_floor > 0):
        raise ValueError(f"p_floor must be a positive finite float, got {p_floor!r}")
    if estimator != "analytic":
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if antithetic and num_samples % 2:
            raise ValueError(f"antithetic pairs need an even num_samples, got {num_samples}")


def _check_precision(model: nn.Module, allow_low_precision: bool, upcast: bool,
                     selected: Mapping[str, str] | None = None) -> nn.Module:
    """Return the model to score: itself, or an fp32 copy when ``upcast``; refuse bf16/fp16 otherwise.

    Only the ``selected`` parameters (:func:`perturbed_parameters`; None: all) are checked: adapters in fp32 on a
    bf16 or 4-bit base can be scored with ``mrd_params="trainable"``.
    """
    params = [p for name, p in model.named_parameters() if selected is None or name in selected]
    if not params:
        raise ValueError("MRD: the model has no parameters to perturb")
    quantized = sorted({str(p.dtype) for p in params if not p.dtype.is_floating_point})
    if quantized:
        raise ValueError(f"MRD: the weights to perturb include quantized ({quantized}) tensors, which cannot take "
                         "a Gaussian perturbation (e.g. a 4-bit QLoRA base). Use mrd_params='trainable' to perturb "
                         "only the adapter weights.")
    low = sorted({str(p.dtype) for p in params if p.dtype in (torch.float16, torch.bfloat16)})
    if not low:
        return model
    partitioned = any(hasattr(p, "ds_id") for p in params)
    if partitioned and (upcast or not allow_low_precision):
        raise ValueError(
            f"MRD: the DeepSpeed ZeRO-3 partitioned model holds {low} weights, which cannot resolve sigma=1e-5 "
            "(bf16 spacing near 0.02 is ~1e-4), and upcast=True (a full fp32 model copy) is impossible on "
            "partitioned parameters. "
            "Run MRD with fp32 module weights (Trainer precision '32-true'; 'bf16-mixed' under DeepSpeed casts "
            "the module to bf16), or pass allow_low_precision=True to perturb the bf16 weights anyway."
        )
    if upcast:
        return copy.deepcopy(model).float()  # costs one full fp32 model copy
    if allow_low_precision:
        return model
    raise ValueError(
        f"MRD: the model holds {low} parameters. sigma=1e-5 is far below the resolution of these "
        "formats (bf16 spacing near 0.02 is ~1e-4), so most weights would not move at all. Pass "
        "upcast=True to score an fp32 copy (one full fp32 model in memory), load the model in "
        "float32, or allow_low_precision=True if you know what you are doing."
    )


@contextmanager
def _gradients_enabled(params: list[nn.Parameter], enabled: bool = True) -> Iterator[None]:
    """Grad mode on and every parameter requiring grad, each flag restored afterwards (no-op if not ``enabled``)."""
    if not enabled:
        yield
        return
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextmanager
def _fp32_numerics(device_type: str) -> Iterator[None]:
    """TF32 / reduced-precision fp32 matmuls off, autocast off; every setting restored afterwards."""
    saved: list[tuple[Any, str, Any]] = []
    leaves = ["cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn"]
    try:
        for path in leaves:
            backend = torch.backends
            for part in path.split("."):
                backend = getattr(backend, part, None)
            if backend is not None and hasattr(backend, "fp32_precision"):
                saved.append((backend, "fp32_precision", backend.fp32_precision))
                backend.fp32_precision = "ieee"
        if not saved:  # older torch: the legacy flags
            for backend in (torch.backends.cuda.matmul, torch.backends.cudnn):
                saved.append((backend, "allow_tf32", backend.allow_tf32))
                backend.allow_tf32 = False
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        for backend, attr, value in reversed(saved):
            setattr(backend, attr, value)




def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    def move(v: Tensor) -> Tensor:
        return v.clone().to(device) if v.is_inference() else v.to(device)  # inference tensors can't enter autograd

    return {k: move(v) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _dist_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# --------------------------------------------------------------------------------------------------
# Per-sample gradients g_b = ∇_θ Σ_t P_t / sg(P_t) (analytic estimator, control variate)
# --------------------------------------------------------------------------------------------------


def _first_order_objective(logp: Tensor, mask: Tensor, normalization: str, p_floor: float) -> Tensor:
    """Σ_t P_t / sg(P_t) (token) or ΣP / sg(ΣP) (sequence) of one sample: its gradient g gives Δ_k ≈ −g·δ_k."""
    if normalization == "token":
        return (logp / _floored(logp.detach(), p_floor) * mask).sum()
    total = (logp * mask).sum()
    return total / _floored(total.detach(), p_floor)


def _trim_trailing_padding(batch: dict[str, Any]) -> dict[str, Any]:
    """A right-padded batch ``(B, T)`` cut after the last position any row attends (padding costs compute)."""
    attention = batch.get("attention_mask")
    if not isinstance(attention, Tensor) or attention.dim() != 2 or bool(attention[:, -1].any()):
        return batch
    attended = attention.any(dim=0)  # (T,)
    length = int(torch.nonzero(attended).max()) + 1 if bool(attended.any()) else attention.shape[1]
    width = attention.shape[1]
    return {k: v[:, :length] if isinstance(v, Tensor) and v.dim() >= 2 and v.shape[1] == width else v
            for k, v in batch.items()}


def _right_padded(batch: Mapping[str, Any]) -> bool:
    """Every row's attention mask is 1…1 0…0 and nothing after it is labelled: then, under causal attention,
    the attended positions' logits do not depend on the padding and the mask can be left out."""
    attention, labels = batch.get("attention_mask"), batch["labels"]
    if attention is None:
        return True
    binary = bool(((attention == 0) | (attention == 1)).all())
    ones_then_zeros = binary and bool((attention[:, 1:] <= attention[:, :-1]).all())
    return ones_then_zeros and not bool(((attention == 0) & (labels != tokens.IGNORE_INDEX)).any())


def _vmap_problem(model: nn.Module, params: list[nn.Parameter], logprob_fn: LogprobFn) -> str | None:
    """Why per-sample gradients by ``torch.func.vmap`` cannot be used here (None: they can)."""
    if logprob_fn is not causal_lm_logprobs:
        return "a custom logprob_fn (it may use data-dependent shapes)"
    if any(hasattr(p, "ds_id") for p in params) or type(model).__module__.startswith("deepspeed"):
        return "a DeepSpeed-wrapped or ZeRO-3 partitioned model"
    return None


def _vmap_pays_off(device: torch.device) -> bool:
    """Where "auto" tries vmap: on CUDA (launch-bound per-sample backwards). On a CPU the loop was faster."""
    return device.type == "cuda"


def _samples_per_chunk(params: list[nn.Parameter], device: torch.device) -> int:
    """Samples whose per-sample gradients are held at once (vmap, control variate): each holds a full float32
    gradient (and a squared copy), and a chunk may use a quarter of the free GPU memory (1 GiB on CPU)."""
    per_sample = 8 * max(1, sum(getattr(p, "ds_numel", p.numel()) for p in params))  # ZeRO-3: full sizes
    budget = torch.cuda.mem_get_info(device)[0] // 4 if device.type == "cuda" else 1 << 30
    return max(1, budget // per_sample)


def _loop_gradient_chunks(model: nn.Module, batch: Mapping[str, Any], params: list[nn.Parameter],
                          logprob_fn: LogprobFn, normalization: str, p_floor: float,
                          chunk_size: int) -> Iterator[list[Tensor]]:
    """Per-sample gradients g_b = ∇_θ Σ_t P_t / sg(P_t), one forward + backward per sample, stacked
    ``chunk_size`` samples at a time: one ``(c, numel)`` tensor per parameter (zeros where a sample does not
    reach a parameter)."""
    batch_size = batch["index"].shape[0]
    for start in range(0, batch_size, chunk_size):
        chunk: list[list[Tensor]] = [[] for _ in params]
        for b in range(start, min(start + chunk_size, batch_size)):
            sample = {k: v[b:b + 1] if isinstance(v, Tensor) and v.dim() > 0 else v for k, v in batch.items()}
            logp, mask = logprob_fn(model, _trim_trailing_padding(sample))  # (1, T-1)
            objective = _first_order_objective(logp, mask, normalization, p_floor)
            grads = torch.autograd.grad(objective, params, allow_unused=True)
            for rows, g, p in zip(chunk, grads, params):
                rows.append(g.reshape(-1) if g is not None else p.new_zeros(p.numel()))
        yield [rows[0][None] if len(rows) == 1 else torch.stack(rows) for rows in chunk]  # (c, numel) per parameter


def _vmap_gradient_chunks(model: nn.Module, batch: Mapping[str, Any], normalization: str, p_floor: float,
                          chunk_size: int, selected: Mapping[str, str] | None = None) -> Iterator[list[Tensor]]:
    """The same gradients from ``torch.func``: one vmapped forward and backward per chunk of samples instead of
    one per sample (on a GPU, where a tiny model's forward is launch-bound, ~10-20× faster). Needs a
    right-padded batch: the attention mask is left out, and under causal attention trailing padding cannot
    affect earlier positions."""
    from torch.func import functional_call, grad, vmap

    batch = _trim_trailing_padding(dict(batch))
    ids, labels = batch["input_ids"], batch["labels"]
    weights = {name: p.detach() for name, p in model.named_parameters()  # a tied Parameter appears once
               if selected is None or name in selected}  # the others are the module's own (functional_call)

    def objective(params: dict[str, Tensor], ids_b: Tensor, labels_b: Tensor) -> Tensor:
        logits = functional_call(model, params, (), {"input_ids": ids_b[None], "use_cache": False}).logits
        logp, mask = tokens.precise_token_logprobs(logits, labels_b[None], dense=True)  # (1, T-1)
        return _first_order_objective(logp, mask, normalization, p_floor)

    per_sample_grad = vmap(grad(objective), in_dims=(None, 0, 0))
    for start in range(0, ids.shape[0], chunk_size):
        with warnings.catch_warnings():  # attention kernels without a batching rule fall back to a loop: expected
            warnings.filterwarnings("ignore", message="There is a performance drop")
            grads = per_sample_grad(weights, ids[start:start + chunk_size], labels[start:start + chunk_size])
        yield [g.flatten(1) for g in grads.values()]  # (c, numel) per parameter, in named_parameters order


class _PerSampleGradients:
    """Where per-sample gradients come from, batch by batch: ``torch.func.vmap`` where it was chosen (and, for
    ``per_sample="auto"``, until it first fails: then a warning and the loop from there on), else the loop."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], logprob_fn: LogprobFn, normalization: str,
                 p_floor: float, use_vmap: bool, strict: bool, chunk_size: int, loop_chunk_size: int,
                 selected: Mapping[str, str] | None = None):
        self.model, self.params, self.logprob_fn, self.selected = model, params, logprob_fn, selected
        self.normalization, self.p_floor = normalization, p_floor
        self.use_vmap, self.strict = use_vmap, strict
        self.chunk_size, self.loop_chunk_size = chunk_size, loop_chunk_size

    def apply(self, batch: Mapping[str, Any], consume: Callable[[Iterator[list[Tensor]]], Any]) -> Any:
        """``consume`` the batch's gradient chunks (see :func:`_loop_gradient_chunks`) and return its result."""
        if self.use_vmap:
            if _right_padded(batch):
                try:
                    return consume(_vmap_gradient_chunks(self.model, batch, self.normalization, self.p_floor,
                                                         self.chunk_size, self.selected))
                except (RuntimeError, NotImplementedError) as error:
                    if self.strict:
                        raise
                    warnings.warn(f"MRD: per-sample gradients by torch.func.vmap failed for "
                                  f"{type(self.model).__name__} ({str(error).splitlines()[0][:200]}); using one "
                                  "backward per sample instead (per_sample='loop' skips this attempt)", stacklevel=3)
                    self.use_vmap = False
            elif self.strict:
                raise ValueError("MRD: per_sample='vmap' needs right-padded batches (attention mask 1…1 0…0, "
                                 "padding unlabelled); use per_sample='loop'")
        return consume(_loop_gradient_chunks(self.model, batch, self.params, self.logprob_fn, self.normalization,
                                             self.p_floor, self.loop_chunk_size))


def _squared_norms(chunk: list[Tensor]) -> Tensor:
    """‖g_b‖² of every sample of a chunk: ``(c,)`` float64 (each parameter's part summed in the gradients' dtype:
    torch's pairwise float32 sum is accurate to ~1e-7 here and 3× faster than converting to float64 first)."""
    return sum(g.pow(2).sum(dim=1).to(torch.float64) for g in chunk)


# --------------------------------------------------------------------------------------------------
# Scoring one batch
# --------------------------------------------------------------------------------------------------


def _monte_carlo_deltas(model: nn.Module, batch: Mapping[str, Any], perturb: ParameterPerturbation,
                        logprob_fn: LogprobFn, num_samples: int, normalization: str, p_floor: float) -> Tensor:
    """Δ_k for every sample of the batch: ``(K, B)`` float64, one forward pass per k."""
    logp, mask = logprob_fn(model, batch)  # (B, T-1) at θ
    deltas = []
    for k in range(num_samples):
        with perturb.draw(k):
            logp_k, _ = logprob_fn(model, batch)  # (B, T-1) at θ + δ_k
        deltas.append(relative_change(logp, logp_k, mask, normalization, p_floor))  # (B,)
    return torch.stack(deltas)  # (K, B)


def _analytic_scores(chunks: Iterator[list[Tensor]], sigma: float) -> Tensor:
    """√(2/π)·σ·‖g_b‖ per sample, g_b = ∇_θ Σ_t P_t / sg(P_t): ``(B,)`` float64."""
    sq_norms = torch.cat([_squared_norms(chunk) for chunk in chunks])
    return (math.sqrt(2.0 / math.pi) * sigma * sq_norms.sqrt()).cpu()


def _first_order_draws(chunks: Iterator[list[Tensor]], params: list[nn.Parameter], perturb: ParameterPerturbation,
                       num_samples: int) -> tuple[Tensor, Tensor]:
    """The control variate of ``mean_abs``: |g_b·δ_k| for every draw and sample, ``(K, B)`` float64, and its
    exact mean E|g_b·δ| = √(2/π)·σ·‖g_b‖, ``(B,)`` float64 (g_b·δ ~ N(0, σ²‖g_b‖²)).

    δ_k is regenerated by ``perturb`` from (seed, k, name): the very δ_k of the Monte-Carlo forwards. Each chunk's gradients
    are held at once (chunk size × one model's worth of memory). Per parameter, the δ_k of a block of draws
    are stacked (at most ~256 MB) so that the chunk's gradients are read once per block, not once per draw.
    """
    projections, sq_norms = [], []
    for chunk in chunks:
        dots = torch.zeros(chunk[0].shape[0], num_samples, dtype=torch.float64, device=chunk[0].device)  # (c, K)
        for p, g in zip(params, chunk):
            block = max(1, (256 << 20) // (4 * max(1, g.shape[1])))
            for start in range(0, num_samples, block):
                draws = range(start, min(start + block, num_samples))
                noise = torch.stack([perturb.noise(p, k).reshape(-1) for k in draws])  # (block, numel)
                dots[:, start:start + len(draws)] += (g @ noise.to(g.dtype).T).to(torch.float64)  # g_b·δ_k
        projections.append(dots.T.cpu())  # (K, c)
        sq_norms.append(_squared_norms(chunk).cpu())
    expected = math.sqrt(2.0 / math.pi) * perturb.sigma * torch.cat(sq_norms).sqrt()
    return torch.cat(projections, dim=1).abs(), expected


# --------------------------------------------------------------------------------------------------
# Gathering across ranks
# --------------------------------------------------------------------------------------------------


def _all_gather_pairs(indices: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate every rank's (index, score) pairs, in rank order."""
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    world = dist.get_world_size()
    count = torch.tensor([indices.numel()], device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    width = int(max(c.item() for c in counts))
    idx = torch.full((width,), -1, dtype=torch.long, device=device)
    val = torch.zeros(width, dtype=torch.float64, device=device)
    idx[: indices.numel()], val[: scores.numel()] = indices.to(device), scores.to(device)
    all_idx, all_val = [torch.empty_like(idx) for _ in range(world)], [torch.empty_like(val) for _ in range(world)]
    dist.all_gather(all_idx, idx)
    dist.all_gather(all_val, val)
    idx, val = torch.cat(all_idx).cpu(), torch.cat(all_val).cpu()
    keep = idx >= 0
    return idx[keep], val[keep]


def _scatter_first(indices: Tensor, values: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """out[i] = the first value listed for index i (a sampler's padding repeats samples); and coverage."""
    if indices.numel() and (indices.min() < 0 or indices.max() >= size):
        raise ValueError(f"MRD: batch 'index' values must lie in [0, {size}), got min {int(indices.min())}, "
                         f"max {int(indices.max())}")
    order = torch.argsort(indices, stable=True)
    idx, val = indices[order], values[order]
    first = torch.ones_like(idx, dtype=torch.bool)
    first[1:] = idx[1:] != idx[:-1]
    out = torch.zeros(size, dtype=torch.float64)
    covered = torch.zeros(size, dtype=torch.bool)
    out[idx[first]] = val[first]
    covered[idx[first]] = True
    return out, covered


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def mrd_scores(
    model: nn.Module,
    dataloader: torch.utils.data.DataLoader,
    sigma: float = 1e-5,
    num_samples: int = 100,
    estimator: str = "mean_abs",
    antithetic: bool | None = None,
    seed: int = 0,
    normalization: str = "token",
    p_floor: float = 1e-6,
    allow_low_precision: bool = False,
    upcast: bool = False,
    progress: bool = True,
    logprob_fn: LogprobFn = causal_lm_logprobs,
    per_sample: str = "auto",
    control_variate: bool = False,
    mrd_params: str = "all",
) -> Tensor:
    """MRD score of every sample of ``dataloader.dataset``: ``(len(dataset),)`` float32, by ``index``.

    Args:
        model: the model to score (an HF causal LM by default; any module with a custom ``logprob_fn``).
        dataloader: batches with ``input_ids``, ``attention_mask``, ``labels`` and ``index`` (row index
            of each sample in ``dataloader.dataset``). Under ``torch.distributed`` each rank passes its
            shard (e.g. a ``DistributedSampler``); all ranks return the same full vector.
        sigma: standard deviation σ of the Gaussian perturbation δ ~ N(0, σ²I) (paper: 1e-5).
        num_samples: K, the number of perturbations (forward passes per batch) for Monte Carlo.
        estimator: ``"mean_abs"`` (Algorithm 1), ``"abs_mean"`` (Definition 3.1) or ``"analytic"``
            (√(2/π)·σ·‖g‖, the σ → 0, K → ∞ limit of ``mean_abs``); see the module docstring.
        antithetic: use pairs (δ, −δ); default True for ``abs_mean``, False otherwise.
        seed: seeds the common random numbers δ_k (see :func:`perturbation`).
        normalization: ``"token"`` (Σ_t ΔP_t/P_t, the paper) or ``"sequence"`` (ΔΣP/ΣP).
        p_floor: floor on |P_t| (or |ΣP|) in the division.
        allow_low_precision: perturb a bf16/fp16 model in its own precision (mostly rounds δ away).
        upcast: score an fp32 deep copy of a bf16/fp16 model (memory: one full fp32 copy).
        progress: show a tqdm bar (rank 0 only).
        logprob_fn: ``(model, batch) -> (logp (B, T'), mask (B, T'))`` per-token log-probabilities.
        per_sample: how per-sample gradients (``"analytic"``, ``control_variate``) are taken: ``"loop"`` (one
            backward per sample), ``"vmap"`` (``torch.func``, chunks of samples per backward; default logprob_fn,
            right-padded batches, no DeepSpeed) or ``"auto"`` (vmap on CUDA where possible, else loop; on
            a CPU the loop is faster; a model that torch.func cannot trace warns once and is looped).
            Both give the same scores up to float32 rounding.
        control_variate: ``mean_abs`` only. Subtract from each |Δ_k| its first-order part |g·δ_k| and add back
            that part's exact mean √(2/π)·σ·‖g‖: (1/K) Σ_k (|Δ_k| − |g·δ_k|) + √(2/π)·σ·‖g‖. The expectation
            is Algorithm 1's (unbiased at any σ); the Monte-Carlo noise is what the first order leaves, so at
            small σ K=32 ranks like K=512 (benchmarks/mrd_speed.py). Costs one backward per sample and a second
            draw of every δ_k per batch. See the module docstring.
        mrd_params: which weights δ perturbs (and the analytic/control-variate gradients are taken over):
            ``"all"`` (the weights of the model as it predicts; on a ``peft`` LoRA model the base weights, which is
            exactly the merged model W + (α/r)·B·A perturbed) or ``"trainable"`` (only the ``requires_grad``
            weights: the adapters). See :func:`perturbed_parameters`.

    Returns:
        float32 tensor on CPU; smaller = harder to unlearn.
    """
    if antithetic is None:
        antithetic = estimator == "abs_mean"
    _check_args(sigma, num_samples, estimator, antithetic, normalization, p_floor)
    if control_variate and estimator != "mean_abs":
        raise ValueError(f"control_variate=True needs estimator='mean_abs', got {estimator!r} (abs_mean's antithetic "
                         "pairs already cancel the first-order term; analytic has no Monte-Carlo noise)")
    if per_sample not in PER_SAMPLE_MODES:
        raise ValueError(f"per_sample must be one of {PER_SAMPLE_MODES}, got {per_sample!r}")
    selected = perturbed_parameters(model, mrd_params)
    scored_model = _check_precision(model, allow_low_precision, upcast, selected)
    # deduplicated (a tied Parameter appears once), in model order
    params = [p for name, p in scored_model.named_parameters() if name in selected]
    streams = None if mrd_params == "all" and all(k == v for k, v in selected.items()) else selected
    device = params[0].device
    if control_variate and any(hasattr(p, "ds_id") for p in params):
        raise ValueError("MRD: control_variate=True is not supported on a DeepSpeed ZeRO-3 partitioned model (it "
                         "holds per-sample gradients of full parameters); use estimator='analytic', or mean_abs "
                         "without the control variate")
    needs_gradients = estimator == "analytic" or control_variate
    use_vmap = needs_gradients and per_sample != "loop"
    if use_vmap:
        problem = _vmap_problem(scored_model, params, logprob_fn)
        if problem and per_sample == "vmap":
            raise ValueError(f"MRD: per_sample='vmap' does not support {problem}; use per_sample='loop'")
        use_vmap = problem is None and (per_sample == "vmap" or _vmap_pays_off(device))
    chunk_size = _samples_per_chunk(params, device) if use_vmap or control_variate else 1
    use_vmap = use_vmap and (per_sample == "vmap" or chunk_size > 1)  # "auto": one sample per chunk gains nothing
    gradients = _PerSampleGradients(scored_model, params, logprob_fn, normalization, p_floor, use_vmap,
                                    strict=per_sample == "vmap", chunk_size=chunk_size,
                                    loop_chunk_size=chunk_size if control_variate else 1,
                                    selected=streams)
    size = len(dataloader.dataset)
    distributed = dist.is_available() and dist.is_initialized()

    all_indices, all_scores = [], []
    # fork_rng: iterating a DataLoader (and wrapping it in tqdm) draws from the global RNG; undo that.
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    # inference_mode(False): a caller inside Lightning's validation loop must still get gradients (analytic).
    with torch.inference_mode(False), torch.random.fork_rng(devices=rng_devices), eval_mode(scored_model), \
            _fp32_numerics(device.type), _gradients_enabled(params, needs_gradients), \
            (ParameterPerturbation(scored_model, sigma, seed, antithetic, streams) if estimator != "analytic"
             else nullcontext()) as perturb:
        bar = tqdm(dataloader, desc=f"MRD ({estimator})", disable=not progress or _dist_rank() != 0)
        for batch in bar:
            batch = _check_batch(_to_device(batch, device))
            if estimator == "analytic":
                scores = gradients.apply(batch, lambda chunks: _analytic_scores(chunks, sigma))
            else:
                with torch.no_grad():
                    deltas = _monte_carlo_deltas(scored_model, batch, perturb, logprob_fn, num_samples,
                                                 normalization, p_floor).cpu()  # (K, B)
                if estimator == "abs_mean":
                    scores = deltas.mean(0).abs()
                elif control_variate:
                    first_order, expected = gradients.apply(
                        batch, lambda chunks: _first_order_draws(chunks, params, perturb, num_samples))
                    scores = (deltas.abs() - first_order).mean(0) + expected  # (B,)
                else:
                    scores = deltas.abs().mean(0)
            all_indices.append(batch["index"].cpu()), all_scores.append(scores)
        bar.close()

    indices = torch.cat(all_indices) if all_indices else torch.zeros(0, dtype=torch.long)
    scores = torch.cat(all_scores) if all_scores else torch.zeros(0, dtype=torch.float64)
    if distributed:
        indices, scores = _all_gather_pairs(indices, scores)
    out, covered = _scatter_first(indices, scores, size)
    if not bool(covered.all()):
        missing = torch.nonzero(~covered).flatten()[:10].tolist()
        raise ValueError(
            f"MRD: the dataloader covered {int(covered.sum())} of {size} samples (missing indices "
            f"{missing}...). Use a sampler that visits every sample (no drop_last) and put each "
            "sample's dataset row in batch['index']."
        )
    if control_variate and bool((out < 0).any()):
        negative = torch.nonzero(out < 0).flatten()[:10].tolist()
        warnings.warn(f"MRD: the control-variate estimate is negative for samples {negative}...: at sigma={sigma:g} "
                      "Δ_k is far from linear in δ_k, so the control variate adds noise instead of removing it. "
                      "Use a smaller sigma, or control_variate=False.", stacklevel=2)
    return out.to(torch.float32)


def _check_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Every batch needs an ``index`` field, and every sample at least one labelled token."""
    if "index" not in batch:
        raise ValueError("MRD: each batch needs an 'index' field (the dataset row of each sample); "
                         f"got keys {sorted(batch)}")
    if "labels" in batch and batch["labels"].dim() == 2:
        n_labelled = (batch["labels"][:, 1:] != tokens.IGNORE_INDEX).sum(dim=-1)  # (B,)
        empty = batch["index"][n_labelled == 0]
        if empty.numel():
            raise ValueError(f"MRD: samples with dataset index {empty.tolist()} have no labelled tokens")
    return batch
