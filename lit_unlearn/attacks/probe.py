"""A cheap forget-split probe: memorization accuracy and ROUGE-L recall only (no truth ratio, no extraction
metrics, no MIA, no utility) — what the demo's robustness columns and ``eval.metrics="forget_ma_rouge"`` use.

Both numbers are the TOFU suite's (:class:`~lit_unlearn.evaluation.TOFUEvaluation`) on the same rows, computed
with the same metric classes, so they equal its ``forget/memorization_accuracy`` and ``forget/rouge_l_recall``
(``tests/test_robustness.py`` checks this):

* MA (memorization accuracy; Feng et al., "Memorization-Aware Unlearning", 2025 — the MRD paper, §5.2): per
  sample the fraction of answer tokens whose teacher-forced argmax is the answer token (the final EOS
  excluded), averaged over samples: ``MA = (1/N) Σ_i (1/|y_i|) Σ_t [argmax p(·|x_i, y_i,<t) = y_i,t]``.
* ROUGE-L recall (Lin, "ROUGE: A Package for Automatic Evaluation of Summaries", 2004; the TOFU paper's
  generation metric, Maini et al., 2024): the greedy answer (``max_new_tokens`` tokens, stop at EOS) against
  the reference answer, ``LCS(generated, reference) / |reference|`` in words, averaged over samples.

Naive equivalent::

    for row in rows:
        ids, labels = encode_qa(tok, row.question, row.answer)
        ma.append(mean(argmax(model(ids).logits[t - 1]) == ids[t] for answer tokens t except the last))
        gen = greedy(model, prompt_ids(tok, row.question), max_new_tokens)
        rouge.append(rouge_l_recall(decode(gen), row.answer))
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

#: the keys :func:`forget_probe` returns (those of :func:`lit_unlearn.attacks.evaluation.attack_metrics`)
PROBE_METRICS = ("forget/memorization_accuracy", "forget/rouge_l_recall")


def forget_probe(model: nn.Module, tokenizer, rows: Sequence[dict[str, Any]], max_new_tokens: int = 32,
                 batch_size: int = 16, max_length: int = 128, where: str = "forget split") -> dict[str, float]:
    """``{"forget/memorization_accuracy": MA, "forget/rouge_l_recall": ROUGE-L}`` of ``model`` on ``rows``
    (dicts with ``question`` and ``answer``); the model's train/eval mode is restored afterwards."""
    return probe_means(forget_probe_per_sample(model, tokenizer, rows, max_new_tokens, batch_size, max_length, where))


def probe_means(per_sample: dict[str, dict[int, float]], rows: Sequence[int] | None = None) -> dict[str, float]:
    """Each metric's mean over ``rows`` (default: every row) of :func:`forget_probe_per_sample`'s values, in
    float32 and row order as the metric classes' ``compute``: the probe of those rows alone, without probing
    them again (the values of a row do not depend on the other rows, up to float rounding in padded batches)."""
    out = {}
    for name, values in per_sample.items():
        keys = sorted(values) if rows is None else list(rows)
        missing = [i for i in keys if i not in values]
        if missing or not keys:
            raise ValueError(f"probe_means: no per-sample {name} for rows {missing[:5] or keys}")
        out[name] = float(torch.tensor([values[i] for i in sorted(keys)], dtype=torch.float32).mean())
    return out


@torch.no_grad()
def forget_probe_per_sample(model: nn.Module, tokenizer, rows: Sequence[dict[str, Any]], max_new_tokens: int = 32,
                            batch_size: int = 16, max_length: int = 128,
                            where: str = "forget split") -> dict[str, dict[int, float]]:
    """:func:`forget_probe` per row: ``{"forget/memorization_accuracy": {row: MA}, "forget/rouge_l_recall":
    {row: ROUGE-L}}`` (rows numbered by their position in ``rows``)."""
    from lit_unlearn.data.tofu import EncodedDataset, encode_rows, validate_rows
    from lit_unlearn.data.tokenize import PadCollator, prompt_ids
    from lit_unlearn.functional.generation import greedy_generate
    from lit_unlearn.metrics import MemorizationAccuracy, RougeLRecall

    rows = list(rows)
    if not rows:
        raise ValueError(f"forget_probe: {where} has no rows to evaluate.")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"forget_probe: batch_size and max_new_tokens must be >= 1, got {batch_size},"
                         f" {max_new_tokens}.")
    validate_rows(rows, where)
    samples = EncodedDataset(encode_rows(tokenizer, rows, where, max_length))
    collate = PadCollator(tokenizer.pad_token_id, padding_side="right")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ma, rouge = MemorizationAccuracy(), RougeLRecall()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = list(range(start, min(start + batch_size, len(rows))))
            batch = collate([samples[i] for i in chunk])
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            index = torch.as_tensor(chunk)
            ma.update(logits.float().cpu(), batch["labels"], index=index)
            prompts = [prompt_ids(tokenizer, rows[i]["question"]) for i in chunk]
            generated = greedy_generate(model, prompts, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
            texts = [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
            rouge.update(texts, [rows[i]["answer"] for i in chunk], index=index)
    finally:
        model.train(was_training)
    return {"forget/memorization_accuracy": ma.value_by_index(), "forget/rouge_l_recall": rouge.value_by_index()}
