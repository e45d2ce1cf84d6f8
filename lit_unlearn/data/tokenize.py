"""Question/answer → token ids with labels, and the padding collator.

Prompt format: the tokenizer's chat template when it has one, otherwise
``Question: {q}\\nAnswer:`` followed by `` {a}`` and EOS. Labels are ``-100`` on the prompt and on
padding; the answer tokens and the final EOS are labelled. The attention mask is built from the
sequence lengths, never from ``input_ids != pad_id`` (that would hide a real EOS when pad == eos).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from lit_unlearn.functional.tokens import IGNORE_INDEX

PLAIN_PROMPT = "Question: {question}\nAnswer:"


class DataValidationError(ValueError):
    """Raised at setup when a dataset row or split cannot be used."""


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Fail early with an actionable message when the tokenizer cannot pad or end sequences."""
    name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    if tokenizer.pad_token_id is None:
        raise DataValidationError(
            f"Tokenizer {name!r} has no pad token. Set one explicitly, e.g. `pad_token: eos` in the data"
            " config (pads with the EOS token; the attention mask is built from lengths, so real EOS"
            " tokens stay attended) or a dedicated token such as `<pad>`."
        )
    if tokenizer.eos_token_id is None:
        raise DataValidationError(f"Tokenizer {name!r} has no EOS token; answers must end with one.")


def prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    """Token ids of the prompt for ``question`` (what a model sees before it answers)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return tokenizer(PLAIN_PROMPT.format(question=question), add_special_tokens=True)["input_ids"]


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    """Token ids of the answer, ending with EOS."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    return list(ids) + [tokenizer.eos_token_id]


def encode_qa(
    tokenizer: PreTrainedTokenizerBase, question: str, answer: str, max_length: int, where: str = "row"
) -> dict[str, list[int]]:
    """Encode one QA pair as ``input_ids`` and ``labels`` (−100 on the prompt), truncated to ``max_length``.

    Raises:
        DataValidationError: when truncation leaves no answer token (``where`` names the row).
    """
    prompt = prompt_ids(tokenizer, question)
    answer_part = answer_ids(tokenizer, answer)
    if len(prompt) >= max_length:
        raise DataValidationError(
            f"{where}: the prompt alone is {len(prompt)} tokens, so max_length={max_length} cuts the whole"
            f" answer. Increase max_length (question starts {question[:60]!r})."
        )
    input_ids = (prompt + answer_part)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + answer_part)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> list[dict[str, list[int]]]:
    """Chunk a plain-text document into ``max_length`` pieces, every token labelled."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    chunks = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
    return [{"input_ids": c, "labels": list(c)} for c in chunks if len(c) >= 2]


@dataclass
class PadCollator:
    """Pads ``input_ids`` with the pad id and ``labels`` with −100; the attention mask comes from lengths.

    ``padding_side="left"`` is for batched generation. Integer fields other than token sequences (such as
    ``index``) are stacked, and nested dicts (such as a forget sample's refusal answer under ``"idk"``) are
    collated recursively.
    """

    pad_token_id: int
    padding_side: str = "right"

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if isinstance(values[0], dict):
                batch[key] = self(values)
            elif key in ("input_ids", "labels"):
                continue
            else:
                batch[key] = torch.tensor(values)
        if "input_ids" in rows[0]:
            batch.update(self._pad([row["input_ids"] for row in rows], [row["labels"] for row in rows]))
        return batch

    def _pad(self, ids: list[list[int]], labels: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(x) for x in ids)
        out_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        out_labels = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for b, (seq, lab) in enumerate(zip(ids, labels)):
            n = len(seq)
            span = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            out_ids[b, span] = torch.tensor(seq)
            out_labels[b, span] = torch.tensor(lab)
            mask[b, span] = 1
        return {"input_ids": out_ids, "attention_mask": mask, "labels": out_labels}
