"""Load tokenizers and causal LMs by name or path, including the builtin tiny defaults.

* ``builtin:tofu-mini`` / ``builtin:tofu-full`` as a tokenizer: a BPE trained on that builtin corpus
  (cached under :func:`lit_unlearn.utils.io.cache_dir`).
* ``builtin:tiny-llama`` as a model: a freshly initialised tiny Llama sized to the tokenizer.
* anything else: ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` (a local folder or a hub name).
"""
from __future__ import annotations

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


def load_tokenizer(name_or_path: str, pad_token: str | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer; ``pad_token="eos"`` (or any token string) sets a missing pad token explicitly."""
    if is_builtin(name_or_path):
        name_or_path = str(builtin_tokenizer_dir(name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if pad_token is not None:
        tokenizer.pad_token = tokenizer.eos_token if pad_token == "eos" else pad_token
    return tokenizer


def check_causal_lm(name_or_path: str) -> None:
    """Raise a clear error when ``name_or_path`` is not a causal language model."""
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
) -> PreTrainedModel:
    """A causal LM from a path or name, or the builtin tiny Llama sized to ``tokenizer``."""
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


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {sorted(names)}.")
    return names[dtype]
