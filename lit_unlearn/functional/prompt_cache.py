"""Score several answers to the same prompt with one forward pass of the prompt (a shared key/value cache).

The TOFU truth ratio scores every question with up to seven answers (the answer, its paraphrase and five
perturbed answers). Run as seven ``(question + answer)`` sequences, the question (about two thirds of the
tokens on TOFU) is recomputed seven times. Here the left-padded questions run once with ``use_cache=True``;
each answer then runs on a copy of its question's cache (``past_key_values``) with explicit position ids, so
every answer token sees exactly the context and positions it has in the full sequence.

The result is given in the form every metric already takes: ``(logits, labels)`` of shape ``(R, A + 1, V)``
and ``(R, A + 1)`` where position 0 holds the question's last logits (they predict the first answer token)
and ``labels[:, 0] = -100``; so ``token_logprobs(logits, labels)`` gives the answer tokens' log-probabilities
of the full forward pass. The values equal the full pass up to float rounding (the attention runs on other
shapes); ``EvalConfig(shared_prompt=False)`` turns this off for bit-exact comparisons.

Naive equivalent (per row r of sample b)::

    full = model(prompt_b + answer_r).logits            # (P_b + n_r, V)
    logits_r = full[P_b - 1 : P_b + n_r]                 # the question's last position, then the answer's
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lit_unlearn.functional.generation import left_padded
from lit_unlearn.functional.tokens import IGNORE_INDEX


def _cache_argument(model) -> str:
    """The forward argument that takes a key/value cache: ``cache`` (transformers >= 5.x, where
    ``past_key_values`` is deprecated) or ``past_key_values``; looks through PEFT and DeepSpeed wrappers."""
    inner = getattr(model, "module", model)  # a DeepSpeed engine
    if hasattr(inner, "get_base_model"):  # a PEFT model
        inner = inner.get_base_model()
    try:
        parameters = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - an exotic forward
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _output_cache(out):
    for name in ("cache", "past_key_values"):
        value = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if value is not None:
            return value
    raise ValueError("The model returned no key/value cache with use_cache=True; set shared_prompt=False in the"
                     " evaluation config to score the full sequences.")


def _as_cache(past):
    """A ``Cache`` object (older transformers versions return the legacy tuple of (key, value) per layer)."""
    if isinstance(past, (tuple, list)):
        from transformers import DynamicCache

        return DynamicCache.from_legacy_cache(tuple(past))
    return past


def _answer_part(batch: Mapping[str, Tensor], prompt_lengths: Tensor, rows_per_sample: int, what: str,
                 prompts: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """``(ids, labels, valid)`` ``(R, A)`` of each row's answer tokens (everything after its prompt)."""
    input_ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    rows, width = input_ids.shape
    if rows != len(prompts) * rows_per_sample:
        raise ValueError(f"{what}: {rows} rows for {len(prompts)} prompts x {rows_per_sample} answers each")
    start = prompt_lengths.repeat_interleave(rows_per_sample)  # (R,) P_b of each row
    lengths = attention.sum(dim=1)
    answer_lengths = lengths - start
    if bool((answer_lengths < 1).any()):
        raise ValueError(f"{what}: a row has no token after its prompt")
    positions = torch.arange(width)
    per_sample = torch.full((len(prompts), width), -1, dtype=torch.long)
    for b, prompt in enumerate(prompts):  # the rows must begin with their sample's prompt, unlabelled
        per_sample[b, : min(len(prompt), width)] = torch.as_tensor(list(prompt), dtype=torch.long)[:width]
    expected = per_sample.repeat_interleave(rows_per_sample, dim=0)
    in_prompt = positions[None, :] < start[:, None]
    if not bool(torch.equal(input_ids[in_prompt], expected[in_prompt])) or bool((labels[in_prompt] != IGNORE_INDEX).any()):
        raise ValueError(f"{what}: the rows do not begin with their sample's prompt_ids (unlabelled); the shared"
                         " prompt pass needs question + answer sequences built as prompt_ids + answer ids."
                         " Set shared_prompt=False in the evaluation config to score the full sequences.")
    longest = int(answer_lengths.max())
    index = (start[:, None] + torch.arange(longest)[None, :]).clamp_max(width - 1)  # (R, A)
    valid = torch.arange(longest)[None, :] < answer_lengths[:, None]
    ids = input_ids.gather(1, index).masked_fill(~valid, 0)
    answer_labels = labels.gather(1, index).masked_fill(~valid, IGNORE_INDEX)
    return ids, answer_labels, valid


@torch.no_grad()
def shared_prompt_logits(model, prompts: Sequence[Sequence[int]], groups: Mapping[str, tuple[Mapping[str, Tensor], int]],
                         pad_id: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Logits of every answer in ``groups`` from one forward pass of the prompts.

    Args:
        model: a Hugging Face causal LM (in eval mode) that accepts ``past_key_values`` and ``position_ids``.
        prompts: the B prompts' token ids (unpadded), e.g. a TOFU evaluation batch's ``prompt_ids``.
        groups: ``{name: (batch, J)}``: right-padded ``{input_ids, attention_mask, labels}`` of ``B·J`` rows,
            sample-major (rows ``b·J .. b·J+J−1`` are answers to prompt b), each row ``prompt_b + answer``
            with ``-100`` labels on the prompt.
        pad_id: the id used to left-pad the prompts (any id: padded positions are masked).

    Returns:
        ``{name: (logits (R, A+1, V), labels (R, A+1))}`` on the model's device; ``labels[:, 0] = -100`` and
        ``labels[:, 1:]`` are the answer tokens (``-100`` on padding), so ``token_logprobs(logits, labels)``
        gives the answer tokens' log-probabilities.
    """
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = (t.to(device) for t in left_padded(prompts, pad_id))
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp_min(0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True)
    cache = _as_cache(_output_cache(out))
    cache_argument = _cache_argument(model)
    last = out.logits[:, -1:, :]  # (B, 1, V): predicts each answer's first token (left padding)
    prompt_lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    results: dict[str, tuple[Tensor, Tensor]] = {}
    for name, (batch, per_sample) in groups.items():
        ids, labels, valid = _answer_part({k: batch[k].cpu() for k in ("input_ids", "labels", "attention_mask")},
                                          prompt_lengths, per_sample, name, prompts)
        rows = torch.arange(len(prompts)).repeat_interleave(per_sample)  # (R,): each row's prompt
        answer_positions = prompt_lengths[rows][:, None] + torch.arange(ids.shape[1])[None, :]
        rows = rows.to(device)
        rows_cache = copy.deepcopy(cache)
        rows_cache.batch_select_indices(rows)
        attention = torch.cat([prompt_mask[rows], valid.long().to(device)], dim=1)
        logits = model(input_ids=ids.to(device), attention_mask=attention, position_ids=answer_positions.to(device),
                       use_cache=True, **{cache_argument: rows_cache}).logits
        del rows_cache
        full_logits = torch.cat([last[rows], logits], dim=1)  # (R, A+1, V)
        full_labels = torch.cat([torch.full((len(rows), 1), IGNORE_INDEX, dtype=torch.long), labels], dim=1)
        results[name] = (full_logits, full_labels.to(device))
    return results
