"""Parameter-efficient unlearning through Hugging Face ``peft`` adapters (LoRA and other tuner types).

* :func:`load_peft_spec` turns the module argument ``peft`` (a dict, or the path of a YAML/JSON file holding
  one) into a plain dict, checked early; ``None`` means full fine-tuning.
* :func:`wrap_with_adapters` builds the ``peft`` model around a loaded causal LM: only the adapter weights
  are trainable, their initialisation is seeded, target modules that do not exist are named with the
  linear modules that do.
* :class:`AdapterDisabledReference` is the frozen reference of an adapter model: the same model called
  under ``peft``'s own ``disable_adapter()`` context (the base weights), in eval mode, so no second copy of
  the base weights exists.

Only tuner types that leave the sequence length alone are accepted (LoRA, IA3, LoHa, LoKr, ...); prompt
learning (prompt/prefix/p-tuning) prepends virtual tokens to the logits and is refused.
"""
from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from lit_unlearn.utils.modes import eval_mode

INSTALL_HINT = "install it with `pip install peft` (or `pip install 'lit_unlearn[peft]'`)"
DEFAULT_PEFT_TYPE = "LORA"


def require_peft():
    """The ``peft`` package, or an ``ImportError`` saying how to install it."""
    try:
        import peft
    except ImportError as err:
        raise ImportError(f"model.peft is set, which needs the `peft` package; {INSTALL_HINT}. Or drop"
                          " model.peft for full fine-tuning.") from err
    return peft


def load_peft_spec(spec: Mapping[str, Any] | str | Path | None) -> dict[str, Any] | None:
    """The adapter configuration as a plain dict: ``spec`` itself, or the mapping in the YAML/JSON file ``spec``.

    Raises ``FileNotFoundError``/``ValueError`` naming the file or the bad value, and ``ImportError`` when
    ``peft`` is not installed (checked here, at construction, not at the first step).
    """
    if spec is None:
        return None
    source = "model.peft"
    if isinstance(spec, (str, Path)):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.peft: no adapter config file {str(path)!r}; pass a YAML/JSON file"
                                    " (e.g. configs/peft/lora.yaml) or an inline mapping such as"
                                    " {r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}.")
        text = path.read_text()
        if path.suffix == ".json":
            spec = json.loads(text)
        else:
            import yaml

            spec = yaml.safe_load(text)
        source = f"model.peft file {str(path)!r}"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source} must be a mapping of peft config fields (r, lora_alpha, target_modules, ...),"
                         f" got {type(spec).__name__}.")
    config = dict(spec)
    require_peft()
    make_peft_config(config, source)  # unknown fields and unsupported types fail here, not in configure_model
    return config


def make_peft_config(spec: Mapping[str, Any], source: str = "model.peft"):
    """The ``peft`` config object of ``spec`` (``peft_type`` defaults to ``LORA``, ``task_type`` to ``CAUSAL_LM``)."""
    peft = require_peft()
    fields = dict(spec)
    peft_type = str(fields.pop("peft_type", DEFAULT_PEFT_TYPE)).upper()
    fields.setdefault("task_type", "CAUSAL_LM")
    try:
        config_cls = peft.PEFT_TYPE_TO_CONFIG_MAPPING[peft.PeftType(peft_type)]
    except (ValueError, KeyError):
        known = sorted(t.value for t in peft.PeftType)
        raise ValueError(f"{source}: unknown peft_type {peft_type!r}; peft knows {known}.") from None
    allowed = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"{source}: {config_cls.__name__} has no field(s) {unknown}; its fields are "
                         f"{sorted(allowed - {'peft_type'})}.")
    try:
        config = config_cls(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: invalid {config_cls.__name__}: {err}") from None
    if getattr(config, "is_prompt_learning", False) or getattr(config, "is_adaption_prompt", False):
        raise ValueError(f"{source}: peft_type {peft_type!r} adds virtual tokens to the sequence, which the per-token"
                         " losses cannot align with the labels; use a tuner type such as LORA, IA3, LOHA or LOKR.")
    return config


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct last name components of the model's linear layers (what ``target_modules`` may name)."""
    linear_types: tuple[type, ...] = (nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

        linear_types += (Conv1D,)
    except ImportError:
        pass
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if name and isinstance(m, linear_types)})


def check_target_modules(model: nn.Module, target_modules: Any) -> None:
    """Raise ``ValueError`` listing the available linear module names when a listed target matches no module.

    A list entry matches a module whose full name equals it or ends with ``"." + entry`` (``peft``'s rule);
    a string (a regular expression, or ``"all-linear"``) is left to ``peft``.
    """
    if target_modules is None or isinstance(target_modules, str):
        return
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"model.peft.target_modules: {missing} match no module of {type(model).__name__}. Its"
                         f" linear modules are {linear_module_names(model)}.")


def wrap_with_adapters(model: nn.Module, spec: Mapping[str, Any], seed: int = 0,
                       base_name: str | None = None) -> nn.Module:
    """``peft.get_peft_model(model, config)``: base weights frozen, adapter weights trainable.

    The adapters are initialised from ``seed`` without touching the global RNG stream. Adapter parameters
    are recorded as the parameters that did not exist before wrapping (see :func:`adapter_parameter_names`).
    ``base_name`` is written as ``base_model_name_or_path`` of the adapter folder's ``adapter_config.json``.
    """
    peft = require_peft()
    config = make_peft_config(spec)
    check_target_modules(model, getattr(config, "target_modules", None))
    from lit_unlearn.models.loading import outside_zero3

    base_ids = {id(p) for p in model.parameters()}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # outside_zero3: under DeepSpeed ZeRO-3, Lightning builds the model inside ``deepspeed.zero.Init``, which
    # would partition each adapter layer as it is constructed, before peft initialises it (LoRA's B = 0):
    # peft's init would then run on empty placeholders and the adapters keep nn.Linear's random init. Built
    # plain here (identical on every rank: same seed), they are partitioned by the DeepSpeed engine, which
    # converts parameters that are not yet ZeRO parameters (broadcasting rank 0's values).
    with torch.random.fork_rng(devices=devices), outside_zero3():
        torch.manual_seed(seed)
        try:
            wrapped = peft.get_peft_model(model, config)
        except ValueError as err:  # peft's own message for targets it cannot find (regex, defaults)
            raise ValueError(f"model.peft: {err} The linear modules of {type(model).__name__} are "
                             f"{linear_module_names(model)}.") from None
    if base_name is not None and not spec.get("base_model_name_or_path"):  # peft sets the config's _name_or_path
        for adapter_config in wrapped.peft_config.values():
            adapter_config.base_model_name_or_path = base_name
    wrapped._lit_unlearn_adapter_names = frozenset(
        name for name, p in wrapped.named_parameters() if id(p) not in base_ids)
    if not wrapped._lit_unlearn_adapter_names:
        raise ValueError("model.peft: the adapter config created no trainable weights; check target_modules.")
    return wrapped


def is_adapter_model(model: nn.Module | None) -> bool:
    """True for a model built by :func:`wrap_with_adapters`."""
    return model is not None and hasattr(model, "_lit_unlearn_adapter_names")


def adapter_parameter_names(model: nn.Module) -> frozenset[str]:
    """Names (in ``model.named_parameters()``) of the adapter weights of a :func:`wrap_with_adapters` model."""
    return model._lit_unlearn_adapter_names


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model: ``model.disable_adapter()`` for an adapter model, nothing otherwise.

    ``peft`` marks every adapter weight trainable again when the context exits; the ``requires_grad`` flags
    of before are restored here, so a selection (RMU trains some adapters only) survives the reference pass.
    """
    if not is_adapter_model(model):
        yield
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with model.disable_adapter():
            yield
    finally:
        for param, flag in flags:
            if param.requires_grad != flag:
                param.requires_grad_(flag)


class AdapterDisabledReference:
    """The frozen reference of an adapter model, without a second model: ``model`` with adapters disabled.

    Calling it runs ``model`` under ``disable_adapter()`` and in eval mode (the live reference of full
    fine-tuning is an ``eval()`` copy), so it returns what the initial base model returns. Not an
    ``nn.Module`` on purpose: it owns no parameters, is not registered as a submodule, and never appears in
    ``state_dict``/checkpoints. ``get_submodule`` reaches the shared modules (RMU hooks the reference's block).
    """

    training = False

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any):
        with adapters_disabled(self.model), eval_mode(self.model):
            return self.model(*args, **kwargs)

    def get_submodule(self, target: str) -> nn.Module:
        return self.model.get_submodule(target)

    def eval(self) -> "AdapterDisabledReference":
        return self

    def train(self, mode: bool = True) -> "AdapterDisabledReference":
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "AdapterDisabledReference":
        return self  # the base weights are frozen by peft already
