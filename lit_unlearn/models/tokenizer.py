"""A byte-level BPE tokenizer trained on the builtin corpus with Hugging Face `tokenizers`.

The result is saved and reloaded as an ordinary ``PreTrainedTokenizerFast`` folder, so everything
downstream treats it like any hub tokenizer. It has no chat template, so prompts use the plain
``Question: ...\\nAnswer: ...`` format.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lit_unlearn.utils.io import atomic_directory

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; ids 0–3 are ``<pad> <s> </s> <unk>``."""
    bpe = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=1024, **SPECIAL_TOKENS)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> Path:
    """Save atomically: the folder appears complete or not at all."""
    with atomic_directory(directory) as tmp:
        tokenizer.save_pretrained(tmp)
    return Path(directory)
