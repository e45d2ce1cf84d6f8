"""G-effect: how one gradient step of an unlearning objective moves the risk on forget and retain data.

Paper: Wang, Zhou, Zhou, Shin, Han, Weinberger, "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond" (ICLR 2025). For an unlearning objective L_u and a data set D with risk
R(D) (here the token-mean NLL of the labelled tokens, ``functional.tokens.nll_mean``), the G-effect is

    e(D) = ∇_θ R(D)ᵀ ∇_θ L_u

A gradient step θ ← θ − η ∇L_u changes the risk by ΔR(D) ≈ −η e(D) (first-order Taylor), so

    unlearning G-effect  e_u = e(D_forget)  should be strongly negative (the forget risk rises),
    retaining G-effect   e_r = e(D_retain)  should be ≥ 0 (the retain risk does not rise).

The inner product splits over parameters, so it splits exactly over layer groups:
e = Σ_group Σ_{p ∈ group} ⟨∇_p R, ∇_p L_u⟩. Everything here is exact: full gradients, no sampling or
random projections.

Measurement conventions:
  * the risk (and, in ``objective_gradient`` / ``per_instance_g_effect``, the objective) is evaluated
    in ``eval()`` mode, so dropout is off and the numbers are deterministic; the model's train/eval
    flags (per sub-module), the torch RNG state and every ``.grad`` are left exactly as they were;
  * memory: risk gradients are computed with ``torch.autograd.grad`` into fresh tensors, one risk at a
    time, reduced to per-group sums and freed, so at most one extra full gradient copy is alive beyond
    the ``.grad`` that training already holds (``per_instance_g_effect`` holds two: see there);
  * distributed (``all_reduce=True`` with an initialised process group): each rank's risk gradient is
    averaged across ranks before the products (the objective gradient in ``.grad`` is already averaged
    by DDP), so every rank gets the same numbers. The averaged risk is the mean of the per-rank
    token-mean NLLs. A ``DistributedDataParallel`` wrapper is unwrapped first: the risk is computed on
    the plain module so no DDP gradient hook fires.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lit_unlearn.functional.tokens import IGNORE_INDEX, nll_mean, token_logprobs

Batch = Mapping[str, Tensor]
LossFn = Callable[[Batch], Tensor]

_BATCH_KEYS = ("input_ids", "attention_mask", "labels")


# ----------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class GEffect:
    """G-effects of one objective gradient, per layer group (model order) and in total.

    ``unlearning[g] = Σ_{p ∈ g} ⟨∇_p R(forget), ∇_p L_u⟩`` and ``retaining[g]`` likewise with the
    retain risk; the totals are the sums over groups (= the full inner products).
    """

    unlearning: dict[str, float]
    retaining: dict[str, float]
    total_unlearning: float = field(init=False)
    total_retaining: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_unlearning", float(sum(self.unlearning.values())))
        object.__setattr__(self, "total_retaining", float(sum(self.retaining.values())))


# ----------------------------------------------------------------------------------------------
# Parameters and layer groups


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad``, in ``model.parameters()`` order (a shared tensor once).

    ``objective_grads`` passed to ``g_effect`` are aligned with this list.
    """
    return [p for p in _unwrap(model).parameters() if p.requires_grad]


def layer_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split the trainable parameters into layer groups, in model order, found from the module tree.

    Groups (empty ones are left out):
      * ``"embedding"``: every ``nn.Embedding`` outside the blocks, and ``model.get_input_embeddings()``;
      * ``"block.0"``, ``"block.1"``, ...: the transformer blocks, i.e. the children of the
        ``nn.ModuleList`` whose children all share one class and that holds the most parameters
        (by parameter count rather than length, so an MoE layer's expert list never wins);
      * ``"norm"``: the remaining parameters of the module that holds the blocks (the final norm);
      * ``"head"``: ``model.get_output_embeddings()``. When the head is tied to the input embedding its
        weight is one tensor and is counted once, in ``"embedding"`` (so a tied GPT-2 has no head group);
      * ``"other"``: anything left, so the groups partition the trainable parameters exactly.
    """
    model = _unwrap(model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    blocks = _find_blocks(model)
    in_blocks = {id(m) for m in blocks.modules()} if blocks is not None else set()
    base = _parent_of(model, blocks) if blocks is not None else model

    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding) and id(m) not in in_blocks]
    input_embedding = _optional_module(model, "get_input_embeddings")
    if input_embedding is not None and all(m is not input_embedding for m in embeddings):
        embeddings.insert(0, input_embedding)
    head = _optional_module(model, "get_output_embeddings")

    # Candidates per group; each parameter goes to the first group (in claim order) that lists it.
    # The head claims before "norm" so that a model whose blocks sit directly in `model` (base is
    # `model`) still gets its head counted as the head.
    candidates: dict[str, list[nn.Parameter]] = {"embedding": [p for m in embeddings for p in m.parameters()]}
    if blocks is not None:
        for i, block in enumerate(blocks):
            candidates[f"block.{i}"] = list(block.parameters())
    candidates["head"] = list(head.parameters()) if head is not None else []
    candidates["norm"] = list(base.parameters())
    candidates["other"] = list(model.parameters())

    claimed: set[int] = set()
    groups: dict[str, list[nn.Parameter]] = {}
    for name, params in candidates.items():
        taken = []
        for p in params:
            if id(p) in trainable and id(p) not in claimed:
                claimed.add(id(p))
                taken.append(p)
        if taken:
            groups[name] = taken

    order = [n for n in candidates if n not in ("head", "norm", "other")] + ["norm", "head", "other"]
    return {name: groups[name] for name in order if name in groups}


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a ``DistributedDataParallel`` wrapper (the model itself otherwise)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _find_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The ``nn.ModuleList`` of same-class children holding the most parameters (first on ties)."""
    best, best_size = None, 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1:
                size = sum(p.numel() for p in module.parameters())
                if size > best_size:
                    best, best_size = module, size
    return best


def _parent_of(model: nn.Module, target: nn.Module) -> nn.Module:
    """The module that holds ``target`` as a direct child."""
    for module in model.modules():
        if any(child is target for child in module.children()):
            return module
    return model  # unreachable for a target found in model.modules()


def _optional_module(model: nn.Module, getter: str) -> nn.Module | None:
    """``model.<getter>()`` when the model has it (Hugging Face models do), else ``None``."""
    fn = getattr(model, getter, None)
    if fn is None:
        return None
    try:
        module = fn()
    except (NotImplementedError, AttributeError):
        return None
    return module if isinstance(module, nn.Module) else None


def _group_index(
    model: nn.Module, params: Sequence[nn.Parameter], groups: Mapping[str, Sequence[nn.Parameter]]
) -> tuple[list[str], list[int]]:
    """Group names and, for each trainable parameter, the index of its group; checks the partition."""
    names = list(groups)
    position = {id(p): i for i, p in enumerate(params)}
    index = [-1] * len(params)
    for k, name in enumerate(names):
        for p in groups[name]:
            i = position.get(id(p))
            if i is None:
                raise ValueError(f"groups[{name!r}] holds a parameter that is not a trainable parameter of the model")
            if index[i] != -1:
                raise ValueError(f"a parameter is in two groups: {names[index[i]]!r} and {name!r}")
            index[i] = k
    missing = [i for i, k in enumerate(index) if k == -1]
    if missing:
        param_names = {id(p): n for n, p in model.named_parameters()}
        first = param_names.get(id(params[missing[0]]), "?")
        raise ValueError(
            f"groups must partition the trainable parameters: {len(missing)} are in no group (first: {first!r})"
        )
    return names, index


# ----------------------------------------------------------------------------------------------
# Risk and gradients


def risk(model: nn.Module, batch: Batch) -> Tensor:
    """R(D) = token-mean NLL of the labelled tokens of ``batch`` (the G-effect paper's risk): scalar."""
    _check_batch(batch)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out if isinstance(out, Tensor) else out.logits  # (B, T, V)
    logp, mask = token_logprobs(logits, batch["labels"])  # (B, T-1)
    return nll_mean(logp, mask)


def objective_gradient(model: nn.Module, loss_fn: LossFn, batch: Batch) -> list[Tensor]:
    """∇_θ L_u: the gradient of ``loss_fn(batch)`` (a scalar) w.r.t. ``trainable_parameters(model)``.

    Evaluated in eval mode like the risk; ``.grad``, RNG state and train/eval flags are untouched.
    Unused parameters get zero gradients.
    """
    model = _unwrap(model)
    params = trainable_parameters(model)
    with _measurement(model):
        return list(_scalar_grad(loss_fn(batch), params, "loss_fn(batch)"))


def g_effect(
    model: nn.Module,
    objective_grads: Sequence[Tensor | None],
    forget_batch: Batch,
    retain_batch: Batch,
    groups: Mapping[str, Sequence[nn.Parameter]] | None = None,
    all_reduce: bool = False,
) -> GEffect:
    """Unlearning and retaining G-effects of an objective gradient, per layer group and in total.

    e_u[g] = Σ_{p ∈ g} ⟨∇_p R(forget_batch), o_p⟩,  e_r[g] = Σ_{p ∈ g} ⟨∇_p R(retain_batch), o_p⟩

    Args:
        model: the causal LM (``model(input_ids=, attention_mask=)`` returns ``.logits``).
        objective_grads: ∇L_u aligned with ``trainable_parameters(model)``, e.g.
            ``[p.grad for p in trainable_parameters(model)]`` inside ``on_before_optimizer_step``;
            ``None`` entries count as zero.
        forget_batch, retain_batch: dicts with ``input_ids``, ``attention_mask``, ``labels``.
        groups: a partition of the trainable parameters; ``layer_groups(model)`` by default.
        all_reduce: average the risk gradients over ranks first (ignored without an initialised
            process group).

    Naive equivalent (one flat vector per gradient)::

        g_f = flatten(autograd.grad(R(forget), params)); o = flatten(objective_grads)
        total_unlearning = g_f @ o
    """
    model = _unwrap(model)
    params = trainable_parameters(model)
    objective_grads = list(objective_grads)
    _check_objective_grads(params, objective_grads)
    _check_batch(forget_batch, "forget_batch")
    _check_batch(retain_batch, "retain_batch")
    names, index = _group_index(model, params, layer_groups(model) if groups is None else groups)
    with _measurement(model):
        e_u = _risk_products(model, forget_batch, [objective_grads], params, index, len(names), all_reduce)[0]
        e_r = _risk_products(model, retain_batch, [objective_grads], params, index, len(names), all_reduce)[0]
    return GEffect(dict(zip(names, e_u)), dict(zip(names, e_r)))


def per_instance_g_effect(
    model: nn.Module,
    loss_fn: LossFn,
    forget_batch: Batch,
    retain_batch: Batch,
    groups: Mapping[str, Sequence[nn.Parameter]] | None = None,
    all_reduce: bool = False,
) -> list[GEffect]:
    """G-effects of each forget sample's own objective gradient, one per row of ``forget_batch``.

    For sample i with sub-batch x_i (every batch tensor sliced to row i):
    e_u,i = ⟨∇R(forget_batch), ∇loss_fn(x_i)⟩ and e_r,i = ⟨∇R(retain_batch), ∇loss_fn(x_i)⟩.

    ``loss_fn`` is the forget part of the objective (e.g. ``module.forget_loss``), evaluated in eval
    mode. Memory and cost: for each of the two risks, its gradient is held while the B per-sample
    gradients are computed one at a time, so two full gradient copies are alive at peak and there
    are 2·(B+1) backward passes. The risks are the whole batches; ``all_reduce`` averages them over
    ranks, while the samples stay local to each rank.
    """
    model = _unwrap(model)
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    names, index = _group_index(model, params, layer_groups(model) if groups is None else groups)
    _check_batch(forget_batch, "forget_batch")
    _check_batch(retain_batch, "retain_batch")
    samples = [_select_row(forget_batch, i) for i in range(forget_batch["input_ids"].shape[0])]

    def sample_grads() -> Iterator[tuple[Tensor, ...]]:
        for sample in samples:  # one sample's gradient alive at a time
            yield _scalar_grad(loss_fn(sample), params, "loss_fn(sample)")

    with _measurement(model):
        e_u = _risk_products(model, forget_batch, sample_grads(), params, index, len(names), all_reduce)
        e_r = _risk_products(model, retain_batch, sample_grads(), params, index, len(names), all_reduce)
    return [GEffect(dict(zip(names, u)), dict(zip(names, r))) for u, r in zip(e_u, e_r)]


def _risk_products(
    model: nn.Module,
    batch: Batch,
    objective_grads: Iterator[Sequence[Tensor | None]] | Sequence[Sequence[Tensor | None]],
    params: Sequence[nn.Parameter],
    index: Sequence[int],
    n_groups: int,
    all_reduce: bool,
) -> list[list[float]]:
    """Per-group ⟨∇R(batch), o⟩ for each objective gradient o; the risk gradient lives only here."""
    risk_grads = _scalar_grad(risk(model, batch), params, "the risk")  # fresh tensors, not .grad
    if all_reduce and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        for g in risk_grads:
            dist.all_reduce(g)
            g.div_(world)
    device = params[0].device
    results = []
    for grads in objective_grads:
        sums = [torch.zeros((), dtype=torch.float64, device=device) for _ in range(n_groups)]
        for g, o, k in zip(risk_grads, grads, index):
            if o is not None:
                # fp32 products of one parameter at a time, accumulated in fp64
                dot = torch.dot(g.reshape(-1).float(), o.detach().reshape(-1).float())
                sums[k] = sums[k] + dot.to(device=device, dtype=torch.float64)
        results.append(torch.stack(sums).tolist() if sums else [])
        del grads  # free this objective gradient before the next one is computed
    del risk_grads
    return results


def _scalar_grad(loss: Tensor, params: Sequence[nn.Parameter], what: str) -> tuple[Tensor, ...]:
    """``torch.autograd.grad`` of a scalar into fresh tensors (zeros for unused parameters)."""
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(f"{what} must be a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
    if not loss.requires_grad:
        raise ValueError(f"{what} does not depend on any trainable parameter (no grad_fn)")
    return torch.autograd.grad(loss, params, materialize_grads=True)


@contextlib.contextmanager
def _measurement(model: nn.Module) -> Iterator[None]:
    """Eval mode, grad enabled, RNG forked; restores every sub-module's train flag and the RNG."""
    modes = [(m, m.training) for m in model.modules()]
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), torch.enable_grad():
        model.eval()
        try:
            yield
        finally:
            for module, mode in modes:
                module.training = mode


# ----------------------------------------------------------------------------------------------
# Input checks


def _check_batch(batch: Batch, name: str = "batch") -> None:
    if not isinstance(batch, Mapping):
        raise ValueError(f"{name} must be a dict with {_BATCH_KEYS}, got {type(batch).__name__}")
    missing = [k for k in _BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"{name} is missing {missing}; it needs {list(_BATCH_KEYS)}")
    if batch["input_ids"].dim() != 2 or batch["labels"].shape != batch["input_ids"].shape:
        raise ValueError(
            f"{name}: input_ids and labels must both be (B, T), got {tuple(batch['input_ids'].shape)} "
            f"and {tuple(batch['labels'].shape)}"
        )
    if not bool((batch["labels"][:, 1:] != IGNORE_INDEX).any()):
        raise ValueError(f"{name} has no labelled tokens (all labels after position 0 are {IGNORE_INDEX})")


def _check_objective_grads(params: Sequence[nn.Parameter], grads: Sequence[Tensor | None]) -> None:
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    if len(grads) != len(params):
        raise ValueError(
            f"objective_grads has {len(grads)} tensors but the model has {len(params)} trainable parameters; "
            "align them with trainable_parameters(model)"
        )
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is not None and g.shape != p.shape:
            raise ValueError(f"objective_grads[{i}] has shape {tuple(g.shape)}, its parameter {tuple(p.shape)}")


def _select_row(batch: Batch, i: int) -> dict:
    """Row ``i`` of every (B, ...) tensor of the batch, keeping the batch dimension; other values as is."""
    size = batch["input_ids"].shape[0]
    return {
        k: v[i : i + 1] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == size else v
        for k, v in batch.items()
    }
