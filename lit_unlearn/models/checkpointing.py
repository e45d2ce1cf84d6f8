"""Gradient (activation) checkpointing of the trained model: transformers' own switch, peft-aware.

With checkpointing, the forward pass keeps only each decoder layer's *input* hidden state, ``(B, S, h)``;
the backward pass runs each layer's forward again (under autograd) just before its backward, so at any
moment one layer's full set of saved activations exists instead of all ``L`` layers' (Chen, Xu, Zhang and
Guestrin, "Training Deep Nets with Sublinear Memory Cost", 2016). Saved-for-backward memory per step goes
from ``≈ a·L·B·S·(h + i)`` elements to ``≈ L·B·S·h + a·B·S·(h + i)``, at the price of one more forward pass
of the decoder layers. Gradients are the same (up to the non-determinism of the recomputed kernels: on a
CPU, bit-identical; dropout is replayed with the same RNG state by ``torch.utils.checkpoint``).

Naive equivalent: for each layer, ``torch.utils.checkpoint.checkpoint(layer, hidden, use_reentrant=False)``
instead of ``layer(hidden)``; transformers' ``activation_checkpointing_enable`` (formerly
``gradient_checkpointing_enable``) does exactly that on every ``GradientCheckpointingLayer`` and is what is
called here, with the non-reentrant variant (no need for inputs that require grad; works with frozen base
weights, DDP and keyword arguments). It also registers transformers' ``enable_input_require_grads`` hook
on the input embeddings, which is what ``peft`` users expect for adapters on a frozen base.

Only layers in training mode *and* with grad enabled are checkpointed: the frozen reference (an ``eval()``
copy, or the adapter-disabled base run in eval mode) and every ``no_grad``/``inference_mode`` pass run as
before.
"""
from __future__ import annotations

from torch import nn


def base_transformer(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a ``peft`` adapter model (``get_base_model()``), else ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on non-reentrant activation checkpointing of every decoder layer of ``model`` (plain or ``peft``).

    Raises ``ValueError`` naming the option when the model class does not support it
    (``supports_gradient_checkpointing`` false, or not a transformers model at all).
    """
    base = base_transformer(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"model.gradient_checkpointing: {type(base).__name__} does not support gradient checkpointing (its"
            " transformers class sets no supports_gradient_checkpointing). Set"
            " --model.init_args.gradient_checkpointing false, or lower the batch size / sequence length instead."
        )
    kwargs = {"use_reentrant": False}
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers >= 5.x: the new name (the old one warns)
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_gradient_checkpointing(model: nn.Module) -> bool:
    """True when some layer of ``model`` is checkpointed (transformers' per-module ``gradient_checkpointing``)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
