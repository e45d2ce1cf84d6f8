"""Greedy generation helpers for the generation metrics (ROUGE-L, extraction likelihood/strength).

These take a Hugging Face causal LM but no Lightning. Generation is batched with left padding and uses
the KV cache through ``model.generate`` (so it also works under DeepSpeed ZeRO-3, where ``generate``
syncs ranks). Call them with the model in ``eval()`` mode.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lit_unlearn.functional.tokens import IGNORE_INDEX


def _special_ids(model, eos_token_id: int | None, pad_token_id: int | None) -> tuple[int | None, int]:
    config = getattr(model, "generation_config", None) or model.config
    if eos_token_id is None:
        eos_token_id = getattr(config, "eos_token_id", None)
        if isinstance(eos_token_id, (list, tuple)):
            eos_token_id = eos_token_id[0] if eos_token_id else None
    if pad_token_id is None:
        pad_token_id = getattr(config, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = eos_token_id
    if pad_token_id is None:
        raise ValueError("greedy generation needs a pad_token_id (none given, none in the model's config)")
    return eos_token_id, pad_token_id


def vocabulary_size(model) -> int | None:
    """Rows of the model's input embedding (the ids it can read), else ``config.vocab_size``, else None."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if isinstance(rows, int) and rows > 0:
        return rows
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None


def left_padded(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``(B, L)``: the prompts right-aligned (left padding), as
    ``generate`` needs for a batch; naive equivalent: ``[pad] * (L - len(p)) + p`` per row."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask


def check_generation_ids(
    model, eos_token_id: int | None = None, pad_token_id: int | None = None, who: str = "greedy generation"
) -> tuple[int | None, int]:
    """The (eos, pad) ids generation will use — the given ones, else the model's generation config — checked
    to lie in ``[0, vocabulary size)``; raises ``ValueError`` naming ``who``, the id and the fix otherwise.

    Call it at setup, before any generation: an out-of-vocabulary pad id (GPT-2's default 50256 with a small
    custom tokenizer) would otherwise fail as an ``IndexError`` deep inside ``model.generate`` (the left
    padding is embedded), and an out-of-vocabulary EOS could never be generated, so generation never stops.
    Naive equivalent: ``assert 0 <= eos < V and 0 <= pad < V``.
    """
    given = {"eos_token_id": eos_token_id is not None, "pad_token_id": pad_token_id is not None}
    eos_token_id, pad_token_id = _special_ids(model, eos_token_id, pad_token_id)
    size = vocabulary_size(model)
    if size is None:
        return eos_token_id, pad_token_id
    for name, value in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if value is None or 0 <= int(value) < size:
            continue
        source = ("the tokenizer's" if given[name] else
                  "the model's generation_config/config (none was passed)")
        raise ValueError(
            f"{who}: {name}={value} ({source}) is outside the model's vocabulary of {size} token ids "
            f"(0..{size - 1}), so generation would fail inside model.generate. The model and tokenizer disagree; "
            f"set the model's ids to the tokenizer's before training, e.g. model.config.{name} = "
            f"model.generation_config.{name} = tokenizer.{name} (or resize the embeddings to the tokenizer)."
        )
    return eos_token_id, pad_token_id


@torch.no_grad()
def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> list[list[int]]:
    """Greedy continuations of a batch of token-id prompts (left padded, one ``generate`` call).

    Each continuation stops at the first EOS, which is not included. ``eos_token_id``/``pad_token_id``
    default to the model's generation config.

    Naive equivalent, per prompt::

        ids = prompt
        for _ in range(max_new_tokens):
            tok = model(ids).logits[-1].argmax()
            if tok == eos: break
            ids = ids + [tok]
    """
    if len(prompts) == 0:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_generate: every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    eos_token_id, pad_token_id = check_generation_ids(model, eos_token_id, pad_token_id)
    device = next(model.parameters()).device
    input_ids, attention_mask = left_padded(prompts, pad_token_id)
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )  # (B, L + new)
    continuations = []
    for row in output[:, input_ids.shape[1]:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id)]
        continuations.append(row)
    return continuations


def prefix_continuations(
    model,
    prompt_ids: Sequence[int],
    target_ids: Sequence[int],
    batch_size: int = 32,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> list[list[int]]:
    """Greedy continuation from every prefix of the target, as used by extraction likelihood/strength.

    Returns ``out[k]`` = greedy ids generated from ``prompt_ids + target_ids[:k]``, at most
    ``N − k`` tokens (the length of the remaining target), for k = 0..N−1. Prefixes are generated
    ``batch_size`` at a time.
    """
    target = list(target_ids)
    n = len(target)
    if n == 0:
        raise ValueError("prefix_continuations: target_ids is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompt = list(prompt_ids)
    out: list[list[int]] = []
    for start in range(0, n, batch_size):
        ks = range(start, min(start + batch_size, n))
        prompts = [prompt + target[:k] for k in ks]
        generated = greedy_generate(model, prompts, n - start, eos_token_id, pad_token_id)  # k=start needs most
        out.extend(g[: n - k] for g, k in zip(generated, ks))
    return out


def split_prompt_answer(
    input_ids: Tensor, labels: Tensor, attention_mask: Tensor, exclude_last: bool = True
) -> list[tuple[list[int], list[int]]]:
    """Split each row of a right-padded batch into (prompt ids, answer ids).

    The prompt is every real token before the first labelled one; the answer is the labelled tokens,
    without the final one (the EOS) when ``exclude_last``. When the very first token is labelled (plain
    text), it becomes the prompt: nothing predicts it (the shifted convention of ``token_logprobs``).
    """
    pairs = []
    for row in range(input_ids.shape[0]):
        labelled = (labels[row] != IGNORE_INDEX).nonzero().flatten()
        if labelled.numel() == 0:
            raise ValueError(f"split_prompt_answer: row {row} has no labelled tokens")
        first = max(int(labelled[0]), 1)
        labelled = labelled[labelled >= first]
        real = attention_mask[row, :first].bool()
        prompt = input_ids[row, :first][real].tolist()
        answer = input_ids[row, labelled].tolist()
        if exclude_last:
            answer = answer[:-1]
        if not answer:
            raise ValueError(f"split_prompt_answer: row {row} has no answer tokens besides the final EOS")
        pairs.append((prompt, answer))
    return pairs


def continues_answer(answer: Sequence[int], predicted: Sequence[int], k: int, eos_token_id: int | None) -> bool:
    """Whether the greedy continuation of ``prompt + answer[:k]`` starts with ``answer[k]``: the model's
    argmax at that position (``predicted[k]``, from one teacher-forced forward pass) is the answer token and
    not EOS (a continuation stops before EOS)."""
    return predicted[k] == answer[k] and answer[k] != eos_token_id


def assemble_prefix_continuations(answer: Sequence[int], predicted: Sequence[int],
                                  generated: Mapping[int, list[int]], eos_token_id: int | None) -> list[list[int]]:
    """Every prefix continuation of one answer from the generated ones of the prefixes that need generating.

    Greedy decoding is a function of the context, so when the continuation of ``prompt + answer[:k]`` starts
    with ``answer[k]`` (:func:`continues_answer`) its remaining tokens are the continuation of
    ``prompt + answer[:k+1]``: ``cont(k) = [answer[k]] + cont(k+1)`` (``cont(N) = []``; the lengths agree:
    ``N − k`` at most). Only the other prefixes, whose first greedy token differs from the answer, need a
    generation (``generated[k]``). Naive equivalent: generate every prefix (:func:`prefix_continuations`);
    the two agree wherever the teacher-forced argmax equals the first generated token (both are the argmax
    of the same logits, computed on other shapes; they differ only at exact float ties).
    """
    out: list[list[int]] = [[] for _ in answer]
    for k in reversed(range(len(answer))):
        if k in generated:
            out[k] = list(generated[k])
        elif continues_answer(answer, predicted, k, eos_token_id):
            out[k] = [answer[k]] + (out[k + 1] if k + 1 < len(answer) else [])
        else:
            raise ValueError(f"prefix {k} needs a generated continuation (its greedy token is not the answer's)")
    return out


def batch_prefix_continuations(
    model,
    batch: dict[str, Tensor],
    exclude_last: bool = True,
    batch_size: int = 32,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> tuple[list[list[list[int]]], list[list[int]]]:
    """Prefix continuations for every sample of a batch dict (``input_ids``, ``attention_mask``, ``labels``).

    Returns ``(continuations, targets)``: per sample the list from :func:`prefix_continuations` and the
    answer ids it targets; feed both to ``extraction_likelihood`` / ``extraction_strength``.
    """
    pairs = split_prompt_answer(batch["input_ids"], batch["labels"], batch["attention_mask"], exclude_last)
    continuations = [
        prefix_continuations(model, prompt, answer, batch_size, eos_token_id, pad_token_id) for prompt, answer in pairs
    ]
    return continuations, [answer for _, answer in pairs]
