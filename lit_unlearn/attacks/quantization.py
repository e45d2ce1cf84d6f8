"""Quantization attack: quantize a COPY of an unlearned model's weights and re-evaluate it.

Unlearning methods that move the weights only slightly can be undone by quantization: the rounding maps the
unlearned weights back onto the same grid points as the original ones (Zhang, Zhang, Yao, Ye, Chen, Wang and
Liu, "Catastrophic Failure of LLM Unlearning via Quantization", ICLR 2025: 21 % of the forgotten knowledge
retained at full precision, 83 % after 4-bit quantization).

Backends:

* ``"rtn"`` (CPU, CI): round-to-nearest fake quantization in torch (:mod:`lit_unlearn.functional.quantize`)
  of the weight of every ``nn.Linear`` inside the transformer blocks; the copy stays a float model, so it
  runs wherever the original runs. Schemes ``int8`` (per output channel, symmetric), ``int4`` (groups of
  128, symmetric), ``int4-asym`` (groups of 128, zero point), or any :class:`QuantScheme`.
* ``"bitsandbytes"`` (CUDA only): the copy is saved to a temporary folder and reloaded with transformers'
  ``BitsAndBytesConfig``: ``llm.int8`` (LLM.int8(), Dettmers et al., 2022) or ``nf4`` (4-bit NormalFloat,
  QLoRA, Dettmers et al., 2023), the schemes the quantization-attack paper used.

Which layers: the input embedding and the output head (``lm_head``) stay at full precision, as in
bitsandbytes (``llm_int8_skip_modules`` keeps ``lm_head``), GPTQ and AWQ; every other ``nn.Linear`` is quantized.

Adapter (``peft``) models: the copy's adapters are merged into its base weights first
(``merge_and_unload``), so what is quantized is the effective weight ``W + ΔW`` a deployed merged model holds.
The user's model is never modified.
"""
from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence

import torch
from torch import nn

from lit_unlearn.functional.quantize import QuantScheme, fake_quantize

BACKENDS = ("rtn", "bitsandbytes")
#: named RTN schemes; ``group_size`` of the int4 schemes can be overridden (``resolve_scheme``)
RTN_SCHEMES: dict[str, QuantScheme] = {
    "int8": QuantScheme(8, None, True),
    "int4": QuantScheme(4, 128, True),
    "int4-asym": QuantScheme(4, 128, False),
}
BNB_SCHEMES = ("llm.int8", "nf4")
#: module names that keep full precision (the output head; embeddings are not nn.Linear)
DEFAULT_SKIP = ("lm_head",)


def resolve_scheme(scheme: str | QuantScheme, group_size: int | None | str = "default") -> QuantScheme:
    """A :class:`QuantScheme` from a name of :data:`RTN_SCHEMES` (``group_size`` overrides the int4 group
    size; ``None`` = per channel) or the scheme itself."""
    if isinstance(scheme, QuantScheme):
        return scheme
    if scheme not in RTN_SCHEMES:
        raise ValueError(f"Unknown RTN quantization scheme {scheme!r}; choose from {list(RTN_SCHEMES)}"
                         f" (bitsandbytes schemes {list(BNB_SCHEMES)} need backend='bitsandbytes').")
    base = RTN_SCHEMES[scheme]
    if group_size == "default" or base.group_size is None:
        return base
    return QuantScheme(base.bits, group_size, base.symmetric)


def unwrap_adapters(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with ``peft`` adapters merged into the base weights (a plain copy otherwise)."""
    work = copy.deepcopy(model)
    if hasattr(work, "merge_and_unload") and hasattr(work, "peft_config"):
        work = work.merge_and_unload()
    return work


def _adapter_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Names of the adapter sub-modules of a ``peft`` model (``...q_proj.lora_A`` ...): merged, not quantized."""
    prefixes = []
    for name, module in model.named_modules():
        for attribute in getattr(module, "adapter_layer_names", ()) or ():
            if isinstance(getattr(module, attribute, None), nn.Module):
                prefixes.append(f"{name}.{attribute}" if name else attribute)
    return tuple(prefixes)


def quantizable_linears(model: nn.Module, skip: Sequence[str] = DEFAULT_SKIP) -> list[tuple[str, nn.Linear]]:
    """``(name, module)`` of every ``nn.Linear`` of ``model`` whose last name part is not in ``skip``; the
    adapter layers of a ``peft`` model are left out (they are merged into their base layer first)."""
    adapters = _adapter_prefixes(model)
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] not in skip
            and not any(name == p or name.startswith(p + ".") for p in adapters)]


def check_quantizable(model: nn.Module, scheme: QuantScheme, skip: Sequence[str] = DEFAULT_SKIP) -> list[str]:
    """The names of the layers ``scheme`` will quantize; ``ValueError`` naming the first layer it cannot cut
    into groups (with the allowed group sizes), or when there is no ``nn.Linear`` at all. Call before any work."""
    layers = quantizable_linears(model, skip)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to quantize (outside {list(skip)}); the"
                         " 'rtn' backend quantizes nn.Linear weights only.")
    for name, module in layers:
        scheme.check_shape(module.weight.shape, where=f"layer {name!r}")
    return [name for name, _ in layers]


@torch.no_grad()
def rtn_quantize(model: nn.Module, scheme: str | QuantScheme = "int4", group_size: int | None | str = "default",
                 skip: Sequence[str] = DEFAULT_SKIP) -> nn.Module:
    """A quantized copy of ``model`` (RTN fake quantization of every quantizable ``nn.Linear`` weight; biases,
    norms, embeddings and ``lm_head`` unchanged); ``model`` itself is untouched.

    Every layer is checked before any weight is copied (:func:`check_quantizable`).
    """
    scheme = resolve_scheme(scheme, group_size)
    check_quantizable(model, scheme, skip)  # on the original: errors before the copy
    work = unwrap_adapters(model)
    for name, module in quantizable_linears(work, skip):
        module.weight.copy_(fake_quantize(module.weight, scheme, where=f"layer {name!r}"))
    return work


def check_bitsandbytes() -> None:
    """``RuntimeError``/``ImportError`` saying what is missing when the bitsandbytes backend cannot run here."""
    if not torch.cuda.is_available():
        raise RuntimeError("The 'bitsandbytes' quantization backend needs a CUDA GPU (none is visible); use"
                           " backend='rtn' (round-to-nearest in torch) on the CPU.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError("The 'bitsandbytes' quantization backend needs the `bitsandbytes` package:"
                          " `pip install bitsandbytes` (or `pip install 'lit_unlearn[quant]'`), or use"
                          " backend='rtn'.") from err


def bnb_config(scheme: str):
    """transformers' ``BitsAndBytesConfig`` of ``llm.int8`` or ``nf4`` (compute in bfloat16)."""
    from transformers import BitsAndBytesConfig

    if scheme == "llm.int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(DEFAULT_SKIP))
    if scheme == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                                  llm_int8_skip_modules=list(DEFAULT_SKIP))
    raise ValueError(f"Unknown bitsandbytes scheme {scheme!r}; choose from {list(BNB_SCHEMES)}.")


def bnb_quantize(model: nn.Module, scheme: str = "nf4") -> nn.Module:
    """A bitsandbytes-quantized copy of ``model`` on the GPU: the (adapter-merged) copy is saved to a
    temporary folder and reloaded with ``quantization_config``; ``model`` is untouched."""
    if scheme not in BNB_SCHEMES:
        raise ValueError(f"Unknown bitsandbytes scheme {scheme!r}; choose from {list(BNB_SCHEMES)}.")
    check_bitsandbytes()
    from transformers import AutoModelForCausalLM

    work = unwrap_adapters(model).to("cpu")
    with tempfile.TemporaryDirectory(prefix="lit_unlearn_bnb_") as folder:
        work.save_pretrained(folder)
        del work
        quantized = AutoModelForCausalLM.from_pretrained(folder, quantization_config=bnb_config(scheme),
                                                         device_map={"": torch.cuda.current_device()})
    return quantized.eval()


def quantize_model(model: nn.Module, scheme: str | QuantScheme = "int4", backend: str = "rtn",
                   group_size: int | None | str = "default") -> nn.Module:
    """A quantized copy of ``model`` with ``backend`` ``"rtn"`` (schemes :data:`RTN_SCHEMES`) or
    ``"bitsandbytes"`` (schemes :data:`BNB_SCHEMES`); errors before any work."""
    if backend == "rtn":
        return rtn_quantize(model, scheme, group_size)
    if backend == "bitsandbytes":
        return bnb_quantize(model, scheme if isinstance(scheme, str) else str(scheme))
    raise ValueError(f"Unknown quantization backend {backend!r}; choose from {list(BACKENDS)}.")


def check_schemes(model: nn.Module, schemes: Sequence[str | QuantScheme], backend: str = "rtn",
                  group_size: int | None | str = "default") -> list[QuantScheme | str]:
    """Validate every scheme for ``model`` and ``backend`` at once (before an attack starts)."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown quantization backend {backend!r}; choose from {list(BACKENDS)}.")
    if not schemes:
        raise ValueError("No quantization scheme given; choose from " + str(list(RTN_SCHEMES if backend == "rtn"
                                                                              else BNB_SCHEMES)) + ".")
    out: list[QuantScheme | str] = []
    for scheme in schemes:
        if backend == "bitsandbytes":
            if scheme not in BNB_SCHEMES:
                raise ValueError(f"Unknown bitsandbytes scheme {scheme!r}; choose from {list(BNB_SCHEMES)}.")
            out.append(scheme)
        else:
            resolved = resolve_scheme(scheme, group_size)
            check_quantizable(model, resolved)
            out.append(resolved)
    if backend == "bitsandbytes":
        check_bitsandbytes()
    return out
