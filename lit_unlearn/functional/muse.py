"""MUSE's evaluation math as pure functions: VerbMem, KnowMem (with its few-shot prompt), PrivLeak.

MUSE: Shi, Lee, Huang, Malladi, Zhao, Holtzman, Liu, Zettlemoyer, Smith, Zhang, 2024, *MUSE: Machine
Unlearning Six-Way Evaluation for Language Models*. The defaults below follow MUSE's public evaluation
code: github.com/swj0419/muse_bench ``eval.py`` (max new tokens, the ``mean_rougeL`` aggregate, the
``forget_holdout_Min-40%`` privleak key) and its ``metrics/`` (``logger.py``, ``verbmem.py``, ``knowmem.py``,
read in a public copy of that folder):

* ROUGE: ``rouge_score.RougeScorer(..., use_stemmer=False)``, aggregate ``mean_rougeL`` = the mean
  ROUGE-L **F1** (``fmeasure``) of each generation against its reference, reported ×100;
* VerbMem: greedy continuation of the ``verbmem/forget`` prompt, ``max_new_tokens=128``; the reference
  ``gt`` is cut to its first 128 tokens before scoring;
* KnowMem: greedy answer, ``max_new_tokens=32``, to the prompt ``"Question: {q}\\nAnswer: {a}\\n\\n"`` per
  few-shot example followed by ``"Question: {q}\\nAnswer: "``; the answer is cut before the first
  ``"\\n\\n"``, ``"\\nQuestion"`` or ``"Question:"``;
* PrivLeak: Min-K% Prob with k = 0.4 (``forget_holdout_Min-40%``) AUC of forget vs holdout, relative to
  the retain model's AUC, in percent.

Every function has a naive equivalent in its docstring; ``functional.metrics`` holds the ROUGE, AUC and
privleak primitives used here.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_unlearn.functional import metrics as F

VERBMEM_MAX_NEW_TOKENS = 128
KNOWMEM_MAX_NEW_TOKENS = 32
KNOWMEM_STOP_STRINGS: tuple[str, ...] = ("\n\n", "\nQuestion", "Question:")
#: MUSE's ROUGE: ROUGE-L F1, no stemmer
MUSE_ROUGE_TYPE, MUSE_ROUGE_MEASURE, MUSE_USE_STEMMER = "rougeL", "f1", False
#: MUSE's privleak attack: Min-K% Prob, k = 0.4
PRIVLEAK_SCORE, PRIVLEAK_K = "min_k", 0.4


def icl_prompt(question: str, examples: Sequence[tuple[str, str]] = ()) -> str:
    """MUSE's KnowMem prompt: each few-shot ``(q, a)`` as ``"Question: q\\nAnswer: a\\n\\n"``, then the question.

    Naive equivalent::

        prompt = ""
        for q, a in examples:
            prompt += "Question: " + q + "\\nAnswer: " + a + "\\n\\n"
        prompt += "Question: " + question + "\\nAnswer: "
    """
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in examples)
    return f"{shots}Question: {question}\nAnswer: "


def icl_prompts(questions: Sequence[str], examples: Sequence[tuple[str, str]] = ()) -> list[str]:
    """:func:`icl_prompt` for every question, with the same few-shot examples."""
    return [icl_prompt(q, examples) for q in questions]


def cut_at_stop_strings(text: str, stops: Sequence[str] = KNOWMEM_STOP_STRINGS) -> str:
    """The part of ``text`` before the first occurrence of any stop string (applied one after another, as
    MUSE does: ``for s in stops: text = text.split(s)[0]``)."""
    for stop in stops:
        text = text.split(stop)[0]
    return text


def muse_rouge(predictions: Sequence[str], references: Sequence[str], rouge_type: str = MUSE_ROUGE_TYPE,
               measure: str = MUSE_ROUGE_MEASURE, use_stemmer: bool = MUSE_USE_STEMMER) -> list[float]:
    """Per-sample ROUGE as MUSE scores it (default ROUGE-L F1, no stemmer), in [0, 1]."""
    return F.rouge_scores(predictions, references, rouge_type, measure, use_stemmer)


def verbmem_scores(continuations: Sequence[str], ground_truths: Sequence[str], **rouge) -> list[float]:
    """VerbMem per sample: ROUGE(greedy continuation of the verbmem prompt, its ground truth ``gt``).

    The split's VerbMem is the mean (MUSE reports it ×100). ``ground_truths`` should already be cut to
    ``max_new_tokens`` tokens (:func:`truncate_to_tokens`). ``rouge``: overrides of :func:`muse_rouge`.
    """
    return muse_rouge(continuations, ground_truths, **rouge)


def knowmem_scores(generations: Sequence[str], answers: Sequence[str],
                   stops: Sequence[str] = KNOWMEM_STOP_STRINGS, **rouge) -> list[float]:
    """KnowMem per sample: ROUGE(greedy answer under the ICL prompt cut at the stop strings, true answer)."""
    return muse_rouge([cut_at_stop_strings(g, stops) for g in generations], answers, **rouge)


def truncate_to_tokens(tokenizer, text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens (no special tokens), decoded again.

    MUSE cuts VerbMem's reference to the first ``max_new_tokens`` ids of ``tokenizer(gt)`` *with* the BOS
    token, i.e. one real token fewer for Llama-2; here exactly ``max_tokens`` text tokens are kept.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)


def privleak_from_scores(forget_scores: Tensor | Sequence[float], holdout_scores: Tensor | Sequence[float],
                         retain_auc: float) -> float:
    """MUSE PrivLeak: ``functional.metrics.privleak(mia_auc(forget, holdout), retain_auc)`` in percent.

    Scores are per-sample MIA scores (higher = less likely a member, e.g. ``min_k_score`` with k = 0.4);
    0 = the forget set looks like holdout as much as for the retain model, −100 = fully separable.
    """
    return F.privleak(F.mia_auc(forget_scores, holdout_scores), retain_auc)


def relative_to_reference(value: float, reference: float) -> float:
    """100 · (value − reference) / |reference|: e.g. MUSE utility preservation, the unlearned model's retain
    KnowMem relative to the target model's (0 = fully preserved, −100 = lost)."""
    return 100.0 * F.relative_difference(value, reference)


@torch.no_grad()
def greedy_texts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
                 add_special_tokens: bool = True) -> list[str]:
    """Greedy continuations of text prompts, decoded: batched, left padded and KV cached
    (``functional.generation.greedy_generate``); each stops at EOS. MUSE tokenizes prompts with special
    tokens (BOS) and decodes with ``skip_special_tokens=True``.

    Naive equivalent: ``[tokenizer.decode(model.generate(tokenizer(p).input_ids, do_sample=False,
    max_new_tokens=max_new_tokens)[0][len(prompt_ids):], skip_special_tokens=True) for p in prompts]``.
    """
    from lit_unlearn.functional.generation import greedy_generate

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        ids = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in chunk]
        generated = greedy_generate(model, ids, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
        out += tokenizer.batch_decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return out
