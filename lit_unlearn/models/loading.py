"""Load tokenizers and causal LMs by name or path, including the builtin tiny defaults.

* ``builtin:tofu-mini`` / ``builtin:tofu-full`` as a tokenizer: a BPE trained on that builtin corpus
  (cached under :func:`lit_unlearn.utils.io.cache_dir`).
* ``builtin:tiny-llama`` as a model: a freshly initialised tiny Llama sized to the tokenizer.
* anything else: ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` (a local folder or a hub name).

Distributed loading:

* Lightning calls ``configure_model`` inside a ``torch.device(root_device)`` context (DDP, ZeRO-1/2 on GPUs).
  ``from_pretrained`` then wants ``accelerate`` for a device map; models are therefore always loaded on
  the CPU and moved to the context's device afterwards (the builtin model's seeded initialisation is then
  also the same on every device).
* Under DeepSpeed ZeRO-3 (``zero3_config=`` the strategy's DeepSpeed config), a plain ``from_pretrained``
  inside Lightning's ``deepspeed.zero.Init`` fails (weights are size-0 partitions). The ZeRO-3 path uses
  transformers' own DeepSpeed integration instead: a :class:`TransformersZeRO3Switch` (transformers' ``HfDeepSpeedConfig`` switch, kept alive on the model
  as ``model._lit_unlearn_hf_ds_config``, which also makes ``generate`` run with ``synced_gpus``) makes
  ``from_pretrained`` build the model under its ``zero.Init`` (partitioned as it is created) and copy the
  checkpoint into the partitions from rank 0. The builtin model is built on the CPU from its seed and
  copied in the same way (:func:`load_state_dict_zero3`), so every stage starts from identical weights.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from lit_unlearn.data.sources import BUILTIN_PREFIX, is_builtin
from lit_unlearn.models.tiny import tiny_llama_config
from lit_unlearn.utils.io import cache_dir

BUILTIN_MODEL = "builtin:tiny-llama"
DEFAULT_VOCAB_SIZE = 2048


def builtin_tokenizer_dir(source: str, vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0) -> Path:
    """Train (once) and cache the BPE tokenizer of a builtin corpus; return its folder."""
    from lit_unlearn.data.builtin import generate
    from lit_unlearn.models.tokenizer import save_tokenizer, train_bpe_tokenizer

    data = generate(source[len(BUILTIN_PREFIX) :], seed=seed)
    folder = cache_dir() / "tokenizers" / f"{data.version.replace('/', '_')}_bpe{vocab_size}"
    if not (folder / "tokenizer.json").is_file():
        save_tokenizer(train_bpe_tokenizer(data.corpus(), vocab_size=vocab_size), folder)
    return folder


#: a Hugging Face hub id: ``name`` or ``namespace/name`` (letters, digits, ``-``, ``_``, ``.``)
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def looks_like_hub_id(name: str) -> bool:
    """True for ``name`` / ``namespace/name`` without ``--`` or ``..`` (what the hub accepts as a repo id)."""
    return bool(HUB_ID.match(name)) and "--" not in name and ".." not in name and not name.endswith(".")


def check_model_location(name_or_path: str, what: str = "model_name_or_path") -> None:
    """Fail early with a message that says what to do when ``name_or_path`` cannot be a model.

    * an existing folder must hold ``config.json`` (models) — its ``*.safetensors`` files are checked to be
      complete (:func:`check_safetensors_files`);
    * a path that does not exist and is no plausible hub id (``./x``, ``/abs/x``, ``a/b/c``) → "no such folder"
      (instead of transformers' "Repo id must be in the form ...");
    * an existing file (not a folder) is refused with that reason.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if what == "model_name_or_path" and not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{what}: the folder {str(path)!r} has no config.json, so it is not a saved model (expected what"
                " `save_pretrained` or `lit-unlearn export` writes)."
            )
        check_safetensors_files(path)
        return
    if path.exists():
        raise ValueError(f"{what}: {str(path)!r} is a file; give the folder that holds config.json and the weights.")
    if not looks_like_hub_id(name_or_path):
        builtin = "'builtin:tofu-mini' for the builtin tokenizer" if what == "tokenizer" else (
            f"{BUILTIN_MODEL!r} for the builtin tiny model")
        raise FileNotFoundError(
            f"{what}: no such folder {name_or_path!r} (and it is not a hub name like 'org/model'). Check the path,"
            f" or use {builtin}."
        )


def check_safetensors_files(folder: str | Path) -> None:
    """Raise naming the file when a ``*.safetensors`` file in ``folder`` is corrupt or truncated.

    Only the header is read (``safetensors.safe_open`` checks that the header parses and that the data
    section covers every tensor it lists), so this is cheap even for large checkpoints.
    """
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # SafetensorError, OSError ...
            raise ValueError(
                f"{str(file)!r} is corrupt or truncated ({err}); the model cannot be loaded. Save or copy it"
                " again (an interrupted download or copy leaves such a file)."
            ) from None


def load_tokenizer(name_or_path: str, pad_token: str | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer; ``pad_token="eos"`` (or any token string) sets a missing pad token explicitly."""
    if is_builtin(name_or_path):
        name_or_path = str(builtin_tokenizer_dir(name_or_path))
    else:
        check_model_location(name_or_path, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if pad_token is not None:
        tokenizer.pad_token = tokenizer.eos_token if pad_token == "eos" else pad_token
    return tokenizer


def check_causal_lm(name_or_path: str) -> None:
    """Raise a clear error when ``name_or_path`` is not a causal language model (or not a model at all)."""
    check_model_location(name_or_path)
    config = AutoConfig.from_pretrained(name_or_path)
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    saved_as = config.architectures or []
    # the model type must have a causal-LM head, and a checkpoint saved from a non-causal class (BertModel,
    # BertForMaskedLM ...) is refused even when its type also has a decoder variant
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        saved_as and not any(arch in causal_classes for arch in saved_as)
    ):
        raise ValueError(
            f"{name_or_path!r} is a {config.model_type!r} model ({', '.join(config.architectures or [])}),"
            " not a causal language model. Unlearning needs a decoder that predicts the next token"
            " (AutoModelForCausalLM), e.g. Llama, Mistral, GPT-2, Phi, OLMo."
        )


def load_causal_lm(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype | str | None = None,
    seed: int = 0,
    zero3_config: dict | None = None,
) -> PreTrainedModel:
    """A causal LM from a path or name, or the builtin tiny Llama sized to ``tokenizer``.

    ``zero3_config``: the DeepSpeed config of a ZeRO-3 run; the model is then created partitioned (see the
    module docstring). Otherwise the model is loaded on the CPU and moved to the device of an enclosing
    ``torch.device`` context, if any.
    """
    if zero3_config is not None:
        return _load_causal_lm_zero3(name_or_path, tokenizer, dtype, seed, zero3_config)
    target = torch.get_default_device()  # an enclosing ``torch.device(...)`` context, e.g. Lightning's
    # innermost plain-CPU context: transformers then needs no device map; and a plain model even when a ZeRO-3
    # model (holding transformers' ZeRO-3 switch) lives in the same process
    with outside_zero3(), torch.device("cpu"):
        model = _load_causal_lm(name_or_path, tokenizer, dtype, seed)
    return model if target.type in ("cpu", "meta") else model.to(target)


def _load_causal_lm(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase | None,
    dtype: torch.dtype | str | None,
    seed: int,
) -> PreTrainedModel:
    if name_or_path == BUILTIN_MODEL:
        if tokenizer is None:
            raise ValueError(f"{BUILTIN_MODEL!r} needs the tokenizer it will be trained with (for its vocabulary).")
        config = tiny_llama_config(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        return model.to(_dtype(dtype)) if dtype is not None else model
    if is_builtin(name_or_path):
        raise ValueError(f"Unknown builtin model {name_or_path!r}; the builtin model is {BUILTIN_MODEL!r}.")
    check_causal_lm(name_or_path)
    kwargs = {"dtype": _dtype(dtype)} if dtype is not None else {}
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


# -- DeepSpeed ZeRO-3 ------------------------------------------------------------------------------------
@contextmanager
def _zero_init_suspended():
    """Leave any active ``deepspeed.zero.Init`` (e.g. Lightning's ``model_sharded_context``) for the block.

    DeepSpeed patches module constructors while a top-level ``zero.Init`` is active and counts nested ones;
    both are saved, cleared and restored exactly, so the block may build plain models or enter a new
    top-level ``zero.Init`` (transformers' own) without double-patching anything.
    """
    try:
        from deepspeed.runtime.zero import partition_parameters as pp
    except ImportError:  # no deepspeed: nothing to suspend
        yield
        return
    top, depth = pp.top_level_context, pp.zero_init_context
    patched = top is not None and getattr(top, "patched", False)
    if patched:
        top.unpatch_init_and_builtins()
    pp.top_level_context, pp.zero_init_context = None, 0
    try:
        yield
    finally:
        pp.top_level_context, pp.zero_init_context = top, depth
        if patched:
            top.patch_init_and_builtins()


@contextmanager
def outside_zero3():
    """Build plain (un-partitioned) models in this block, even inside a ZeRO-3 run.

    Suspends an enclosing ``deepspeed.zero.Init`` and transformers' ZeRO-3 switch (``HfDeepSpeedConfig``).
    """
    from transformers.integrations import deepspeed as hf_ds

    saved, hf_ds._hf_deepspeed_config_weak_ref = hf_ds._hf_deepspeed_config_weak_ref, None
    try:
        with _zero_init_suspended():
            yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


class TransformersZeRO3Switch:
    """What transformers reads from its ``HfDeepSpeedConfig``: the DeepSpeed ``config`` and ``is_zero3()``.

    transformers' own ``HfDeepSpeedConfig`` requires ``accelerate``; these two members are all that
    ``from_pretrained``/``from_config`` (``zero.Init`` + loading into partitions) and ``generate``
    (``synced_gpus``) query through ``transformers.integrations.deepspeed``.
    """

    def __init__(self, config: dict):
        self.config = dict(config)

    def is_zero3(self) -> bool:
        return int((self.config.get("zero_optimization") or {}).get("stage", 0)) == 3


def hf_deepspeed_config(zero3_config: dict):
    """Turn on transformers' ZeRO-3 mode (returns the live switch, created from ``zero3_config`` if needed).

    transformers keeps only a weak reference: whoever needs ZeRO-3 behaviour must hold the returned object.
    """
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    current = ref() if ref is not None else None
    if current is not None and current.is_zero3():
        return current
    switch = TransformersZeRO3Switch(zero3_config)
    hf_ds.set_hf_deepspeed_config(switch)
    return switch


def _load_causal_lm_zero3(name_or_path, tokenizer, dtype, seed, zero3_config: dict) -> PreTrainedModel:
    """A ZeRO-3 partitioned causal LM holding the checkpoint's (or the seeded builtin) weights."""
    # transformers' own top-level zero.Init (no weight init, RoPE dtype guard) partitions the model as it is
    # built; Lightning's enclosing zero.Init is suspended meanwhile
    with _zero_init_suspended():
        if name_or_path == BUILTIN_MODEL:
            # build on the CPU without ZeRO (same seeded weights as every other strategy), then copy in
            with outside_zero3(), torch.device("cpu"):
                reference = _load_causal_lm(name_or_path, tokenizer, dtype, seed)
            config = hf_deepspeed_config(zero3_config)
            model = AutoModelForCausalLM.from_config(reference.config, dtype=next(reference.parameters()).dtype)
            load_state_dict_zero3(model, reference.state_dict())
            del reference
        else:
            if is_builtin(name_or_path):
                raise ValueError(f"Unknown builtin model {name_or_path!r}; the builtin model is {BUILTIN_MODEL!r}.")
            check_causal_lm(name_or_path)
            config = hf_deepspeed_config(zero3_config)
            kwargs = {"dtype": _dtype(dtype)} if dtype is not None else {}
            model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    model._lit_unlearn_hf_ds_config = config  # keeps transformers' ZeRO-3 switch alive as long as the model
    return model


def load_state_dict_zero3(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Copy ``state_dict`` into a ZeRO-3 partitioned ``model``, module by module (collective on all ranks).

    Each module's parameters are gathered, overwritten on rank 0 and re-partitioned
    (``deepspeed.zero.GatheredParameters(..., modifier_rank=0)``), so at most one module is whole at a time.
    Only rank 0 reads ``state_dict`` (the other ranks may pass ``{}``, except that ``strict`` is checked
    on rank 0 only). Buffers are copied on every rank that has them.
    """
    import deepspeed
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    seen = set()
    for prefix, module in model.named_modules():
        params = list(module.named_parameters(recurse=False))
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0):
            if rank == 0:
                for name, param in params:
                    key = f"{prefix}.{name}" if prefix else name
                    if key in state_dict:
                        param.data.copy_(state_dict[key].to(param.dtype))
                        seen.add(key)
        for name, buffer in module.named_buffers(recurse=False):
            key = f"{prefix}.{name}" if prefix else name
            if key in state_dict and buffer is not None:
                buffer.data.copy_(state_dict[key].to(buffer.dtype))
                seen.add(key)
    if strict and rank == 0:
        expected = {n for n, _ in model.named_parameters()}
        missing = sorted(expected - seen)
        if missing:
            raise RuntimeError(f"load_state_dict_zero3: no value for parameters {missing[:10]}")


def gathered_state_dict(model: torch.nn.Module, rank0_only: bool = True) -> dict[str, torch.Tensor]:
    """The full (un-partitioned) CPU state dict of ``model``; a plain ``state_dict`` copy without ZeRO-3.

    Under ZeRO-3 this is collective (every rank must call it); parameters are gathered one module at a time
    and, with ``rank0_only``, only rank 0 keeps the copies (other ranks return ``{}``).
    """
    import torch.distributed as dist

    if not any(hasattr(p, "ds_id") for p in model.parameters()):
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    import deepspeed

    keep = not rank0_only or not dist.is_initialized() or dist.get_rank() == 0
    out: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        params = list(module.named_parameters(recurse=False))
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            if keep:
                for name, param in params:
                    out[f"{prefix}.{name}" if prefix else name] = param.detach().to("cpu", copy=True)
        if keep:
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None and name not in module._non_persistent_buffers_set:
                    out[f"{prefix}.{name}" if prefix else name] = buffer.detach().to("cpu", copy=True)
    return out


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {sorted(names)}.")
    return names[dtype]
