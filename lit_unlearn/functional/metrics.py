"""Every evaluation metric's math as pure functions. No models, no Lightning.

Token conventions: "answer tokens" are the labelled tokens (``labels != -100``).
Likelihood metrics (probability, truth ratio, LOSS/ZLib scores, perplexity) include the final EOS;
*tokenwise* metrics (memorization accuracy, extraction strength, Min-K%, Min-K%++) exclude it by
default (``exclude_last=True`` drops the last labelled token of every row).

``logp`` and ``mask`` are the shifted ``(B, T-1)`` outputs of :func:`tokens.token_logprobs`.

References:
    TOFU (Maini et al., 2024): truth ratio, forget quality, model utility, ROUGE-L recall, probability.
    MRD (Feng et al., 2025, *A Neuro-Inspired Interpretation of Unlearning in Large Language Models
    through Sample-Level Unlearning Difficulty*, §5.2): memorization accuracy (Tirumala et al., 2022),
    extraction likelihood (Jang et al., 2023), unlearning accuracy = 1 - MA.
    Min-K% Prob (Shi et al., 2023), Min-K%++ (Zhang et al., 2024), ZLib (Carlini et al., 2021),
    extraction strength (ES = 1 − k*/N, k* the shortest answer prefix from which greedy decoding
    reproduces the rest), privleak (MUSE, Shi et al., 2024).
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from lit_unlearn.functional.tokens import (
    IGNORE_INDEX,
    sequence_lengths,
    sequence_nll_mean,
    sequence_nll_sum,
)

TruthRatioSplit = Literal["forget", "other", "prob_mean"]


# ----------------------------------------------------------------------------- validation helpers


def _check_logp_mask(logp: Tensor, mask: Tensor) -> None:
    if logp.dim() != 2 or logp.shape != mask.shape:
        raise ValueError(
            f"logp and mask must both have shape (B, T-1); got {tuple(logp.shape)} and {tuple(mask.shape)}"
        )


def _check_logits_labels(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits must be (B, T, V) and labels (B, T); got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )


def _check_correct_perturbed(correct: Tensor, perturbed: Tensor, name: str) -> None:
    if correct.dim() != 1 or perturbed.dim() != 2:
        raise ValueError(
            f"{name} expects correct_avg_nll (N,) and perturbed_avg_nll (N, J); "
            f"got {tuple(correct.shape)} and {tuple(perturbed.shape)}"
        )
    if perturbed.shape[0] != correct.shape[0] or perturbed.shape[1] == 0:
        raise ValueError(
            f"{name}: perturbed_avg_nll must be (N={correct.shape[0]}, J>=1); got {tuple(perturbed.shape)}"
        )


def _check_nonempty_rows(mask: Tensor, what: str) -> None:
    empty = (mask.sum(dim=-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{what}: rows {empty} have no answer tokens left to score")


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")


def _as_1d_float64(values: Tensor | Sequence[float], name: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    return t


def drop_last_token(mask: Tensor) -> Tensor:
    """Turn off the last valid position of every row (the final EOS of an answer): ``(B, L) -> (B, L)``."""
    count = mask.long().cumsum(dim=-1)  # (B, L) running number of valid tokens
    is_last = mask & (count == count[:, -1:])  # the only valid position that reaches the row total
    return mask & ~is_last


def tokenwise_mask(labels: Tensor, exclude_last: bool = True) -> Tensor:
    """Shifted validity mask ``labels[:, 1:] != -100``, optionally without the final labelled token."""
    mask = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    return drop_last_token(mask) if exclude_last else mask


# ----------------------------------------------------------------------------- likelihood metrics


def probability(logp: Tensor, mask: Tensor) -> Tensor:
    """Length-normalised answer probability exp(−NLL_sum_b / n_b) per sample (EOS included): ``(B,)``.

    TOFU "Probability" (Maini et al., 2024).
    """
    _check_logp_mask(logp, mask)
    _check_nonempty_rows(mask, "probability")
    return torch.exp(-sequence_nll_sum(logp, mask) / sequence_lengths(mask))


def truth_ratio(correct_avg_nll: Tensor, perturbed_avg_nll: Tensor) -> Tensor:
    """TOFU truth ratio TR_i = w_i / c_i per question: ``(N,), (N, J) -> (N,)``.

    c_i = exp(−avgNLL(correct_i)), w_i = exp(−mean_j avgNLL(perturbed_ij)), so
    TR_i = exp(avgNLL(correct_i) − mean_j avgNLL(perturbed_ij)). "Correct" is the paraphrased answer on
    forget/retain and the answer itself on real-authors/world-facts (as in TOFU).
    """
    _check_correct_perturbed(correct_avg_nll, perturbed_avg_nll, "truth_ratio")
    return torch.exp(correct_avg_nll.float() - perturbed_avg_nll.float().mean(dim=-1))


def truth_ratio_score(tr: Tensor, split: TruthRatioSplit = "forget") -> Tensor:
    """Per-sample TOFU truth-ratio statistic: ``min(TR, 1/TR)`` on ``"forget"``, ``max(0, 1 − TR)`` otherwise.

    ``"prob_mean"`` (any split) gives c/(c+w) = 1/(1 + TR), the aggregator that reports the mean
    probability mass of the correct answer against the perturbed ones (open-unlearning's third truth-ratio
    aggregate). Naive equivalent: ``[c / (c + w) for c, w in pairs]``. The split's aggregate is the mean of
    these values.
    """
    if split == "forget":
        return torch.minimum(tr, 1.0 / tr)
    if split == "other":
        return (1.0 - tr).clamp_min(0.0)
    if split == "prob_mean":
        return 1.0 / (1.0 + tr)
    raise ValueError(f"split must be 'forget', 'other' or 'prob_mean', got {split!r}")


def normalized_probability(correct_avg_nll: Tensor, perturbed_avg_nll: Tensor) -> Tensor:
    """TOFU normalised probability p_c / (p_c + Σ_j p_w,j) with p = exp(−avgNLL): ``(N,), (N, J) -> (N,)``.

    Used for real-authors and world-facts in model utility. Computed as a softmax over −avgNLL.
    """
    _check_correct_perturbed(correct_avg_nll, perturbed_avg_nll, "normalized_probability")
    nll = torch.cat([correct_avg_nll.float().unsqueeze(-1), perturbed_avg_nll.float()], dim=-1)  # (N, 1+J)
    return torch.softmax(-nll, dim=-1)[:, 0]


def perplexity(nll_sum: Tensor | float, n_tokens: Tensor | float) -> Tensor:
    """exp(Σ NLL / Σ n): the token-mean perplexity of a text set (sums over any given elements)."""
    total_nll = torch.as_tensor(nll_sum, dtype=torch.float64).sum()
    total_n = torch.as_tensor(n_tokens, dtype=torch.float64).sum()
    if total_n <= 0:
        raise ValueError(f"perplexity needs at least one token, got n_tokens={float(total_n)}")
    return torch.exp(total_nll / total_n).float()


# ----------------------------------------------------------------------------- tokenwise metrics


def memorization_accuracy(logits: Tensor, labels: Tensor, exclude_last: bool = True) -> Tensor:
    """MA_b = (1/N_b) Σ_t 1[argmax p(·|y_<t) = y_t] over answer tokens: ``(B, T, V), (B, T) -> (B,)``.

    MRD paper §5.2 (Tirumala et al., 2022), teacher forced. ``exclude_last`` drops the final labelled
    token (the EOS) so MA counts only the answer's own tokens (the module's token conventions).
    """
    _check_logits_labels(logits, labels)
    mask = tokenwise_mask(labels, exclude_last)  # (B, T-1)
    _check_nonempty_rows(mask, "memorization_accuracy")
    preds = logits[:, :-1, :].argmax(dim=-1)  # (B, T-1)
    correct = (preds == labels[:, 1:]) & mask
    return correct.sum(dim=-1).float() / mask.sum(dim=-1).float()


def unlearning_accuracy(ma: Tensor | float) -> Tensor | float:
    """UA = 1 − MA on the forget set (MRD paper §5.2, "UA = 1 − FA")."""
    return 1.0 - ma


def extraction_strength_from_logits(logits: Tensor, labels: Tensor, exclude_last: bool = True) -> Tensor:
    """Extraction strength ES_b = 1 − k*/N from one teacher-forced pass: ``(B, T, V), (B, T) -> (B,)``.

    k* is the smallest prefix length whose greedy continuation reproduces the whole remaining answer.
    A greedy continuation from y_<k equals y_≥k exactly when the teacher-forced argmax is right at every
    position ≥ k, so k* = (1-based position of the last wrong argmax) and 0 when all are right. Equals
    :func:`extraction_strength` on greedy continuations (up to exact logit ties).
    """
    _check_logits_labels(logits, labels)
    mask = tokenwise_mask(labels, exclude_last)  # (B, T-1)
    _check_nonempty_rows(mask, "extraction_strength")
    preds = logits[:, :-1, :].argmax(dim=-1)  # (B, T-1)
    wrong = mask & (preds != labels[:, 1:])
    ordinal = mask.long().cumsum(dim=-1)  # 1-based position among answer tokens
    k_star = (ordinal * wrong).amax(dim=-1).float()  # (B,)
    return 1.0 - k_star / mask.sum(dim=-1).float()


def _check_continuations(continuations: Sequence[Sequence[int]], target: Sequence[int], name: str) -> None:
    if len(target) == 0:
        raise ValueError(f"{name}: target has no tokens")
    if len(continuations) != len(target):
        raise ValueError(
            f"{name}: expected one greedy continuation per prefix length k = 0..N-1 (N={len(target)}), "
            f"got {len(continuations)}"
        )


def extraction_strength(continuations: Sequence[Sequence[int]], target: Sequence[int]) -> float:
    """ES = 1 − k*/N for one sample, k* the smallest k whose greedy continuation equals y_≥k.

    Args:
        continuations: ``continuations[k]`` = greedy token ids generated from prompt + y_<k, for
            k = 0..N−1 (only its first N−k tokens are compared).
        target: the answer ids y (N tokens, final EOS excluded by convention).

    No matching prefix gives k* = N, i.e. ES = 0; a model that reproduces the answer from the prompt
    alone gets ES = 1.
    """
    _check_continuations(continuations, target, "extraction_strength")
    n = len(target)
    target = list(target)
    for k in range(n):
        if list(continuations[k][: n - k]) == target[k:]:
            return 1.0 - k / n
    return 0.0


def _ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def ngram_overlap(generated: Sequence[int], target: Sequence[int], n: int) -> float:
    """OVERLAP_n(a, b) = Σ_{c ∈ ng(a)} 1[c ∈ ng(b)] / |ng(a)| (0 when a has fewer than n tokens)."""
    grams_a = _ngrams(list(generated), n)
    if not grams_a:
        return 0.0
    grams_b = set(_ngrams(list(target), n))
    return sum(g in grams_b for g in grams_a) / len(grams_a)


def extraction_likelihood(continuations: Sequence[Sequence[int]], target: Sequence[int], n: int = 10) -> float:
    """EL_n = (1/(N−n)) Σ_{k=0}^{N−n−1} OVERLAP_n(greedy(y_<k), y_≥k) for one sample.

    MRD paper §5.2 (Jang et al., 2023), with the paper's T−n prefixes. ``continuations`` as in
    :func:`extraction_strength` (each truncated to the N−k tokens of its target suffix). A sample with
    N ≤ n answer tokens has no n-gram to extract and raises ``ValueError``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_continuations(continuations, target, "extraction_likelihood")
    num = len(target)
    if num <= n:
        raise ValueError(f"extraction_likelihood: the answer has {num} tokens, EL_n needs more than n={n}")
    target = list(target)
    overlaps = [ngram_overlap(list(continuations[k][: num - k]), target[k:], n) for k in range(num - n)]
    return sum(overlaps) / len(overlaps)


# ----------------------------------------------------------------------------- membership inference


def loss_score(logp: Tensor, mask: Tensor) -> Tensor:
    """LOSS attack score: average NLL per sample (EOS included): ``(B,)``. Higher = less likely member."""
    _check_logp_mask(logp, mask)
    _check_nonempty_rows(mask, "loss_score")
    return sequence_nll_mean(logp, mask)


def zlib_score(avg_nll: Tensor, texts: Sequence[str]) -> Tensor:
    """ZLib attack score avgNLL_b / len(zlib.compress(text_b)) (Carlini et al., 2021): ``(B,)``."""
    if avg_nll.dim() != 1 or avg_nll.shape[0] != len(texts):
        raise ValueError(
            f"zlib_score needs one text per score: got {tuple(avg_nll.shape)} scores and {len(texts)} texts"
        )
    zlib_len = [len(zlib.compress(t.encode("utf-8"))) for t in texts]
    return avg_nll.float() / torch.tensor(zlib_len, dtype=torch.float32, device=avg_nll.device)


def _lowest_k_mean(values: Tensor, mask: Tensor, k: float) -> Tensor:
    """Mean of the lowest max(1, floor(k·n_b)) valid values of every row: ``(B, L) -> (B,)``."""
    n = mask.sum(dim=-1)  # (B,)
    m = torch.floor(n.double() * k).long().clamp_min(1)  # float64 so floor matches Python's int(k * n)
    ordered = values.masked_fill(~mask, float("inf")).sort(dim=-1).values  # (B, L) ascending, invalid last
    keep = torch.arange(values.shape[-1], device=values.device) < m.unsqueeze(-1)  # (B, L)
    total = torch.where(keep, ordered, torch.zeros_like(ordered)).sum(dim=-1)
    return total / m.to(values.dtype)


def min_k_score(logp: Tensor, mask: Tensor, k: float = 0.4, exclude_last: bool = True) -> Tensor:
    """Min-K% Prob score −mean of the lowest max(1, ⌊k·n⌋) token log-probs (Shi et al., 2023): ``(B,)``.

    Negated so that higher = less likely member (like :func:`loss_score`). ``exclude_last`` drops the
    final labelled token (EOS), the tokenwise convention (see the module docstring).
    """
    _check_logp_mask(logp, mask)
    _check_k(k)
    mask = drop_last_token(mask) if exclude_last else mask
    _check_nonempty_rows(mask, "min_k_score")
    return -_lowest_k_mean(logp.float(), mask, k)


def min_k_plus_plus_score(logits: Tensor, labels: Tensor, k: float = 0.4, exclude_last: bool = True) -> Tensor:
    """Min-K%++ score (Zhang et al., 2024): ``(B, T, V), (B, T) -> (B,)``.

    Per token z_t = (log p(y_t) − μ_t) / σ_t with μ_t = E_{v~p_t}[log p(v)] and
    σ_t² = Var_{v~p_t}[log p(v)]; the score is −mean of the lowest max(1, ⌊k·n⌋) z_t, negated so that
    higher = less likely member, consistently with :func:`min_k_score`.
    """
    _check_logits_labels(logits, labels)
    _check_k(k)
    mask = tokenwise_mask(labels, exclude_last)  # (B, T-1)
    _check_nonempty_rows(mask, "min_k_plus_plus_score")
    log_probs = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)  # (B, T-1, V)
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(dim=-1)  # (B, T-1)
    var = (probs * (log_probs - mu.unsqueeze(-1)) ** 2).sum(dim=-1)  # (B, T-1)
    targets = labels[:, 1:].masked_fill(~mask, 0)
    logp_y = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    z = (logp_y - mu) / var.sqrt().clamp_min(1e-12)  # a flat distribution gives z = 0
    return -_lowest_k_mean(z, mask, k)


def mia_auc(forget_scores: Tensor | Sequence[float], holdout_scores: Tensor | Sequence[float]) -> float:
    """ROC AUC of separating holdout (label 1) from forget (label 0) samples by score.

    Rank form (Mann-Whitney U): AUC = (R_holdout − n1(n1+1)/2) / (n0·n1), R_holdout the sum of the
    holdout scores' ranks in the pooled sample, ties given their average rank. Equals
    ``sklearn.metrics.roc_auc_score([0]*n0 + [1]*n1, scores)``. Use raw scores: torchmetrics'
    ``BinaryAUROC`` would sigmoid them.
    """
    forget = _as_1d_float64(forget_scores, "forget_scores")
    holdout = _as_1d_float64(holdout_scores, "holdout_scores")
    n0, n1 = forget.numel(), holdout.numel()
    pooled = torch.cat([forget, holdout])
    _, inverse, counts = torch.unique(pooled, return_inverse=True, return_counts=True)  # sorted unique values
    avg_rank = counts.cumsum(0).double() - (counts.double() - 1.0) / 2.0  # 1-based average rank per value
    rank_sum_holdout = avg_rank[inverse[n0:]].sum().item()
    return (rank_sum_holdout - n1 * (n1 + 1) / 2.0) / (n0 * n1)


def privleak(auc: float, retain_auc: float) -> float:
    """MUSE privleak = ((1 − AUC) − (1 − AUC_retain)) / (1 − AUC_retain) · 100.

    AUC_retain is the MIA AUC of the retain (never-trained-on-forget) model; 0 means no leak.
    """
    if not math.isfinite(auc) or not math.isfinite(retain_auc):
        raise ValueError(f"privleak needs finite AUCs, got auc={auc}, retain_auc={retain_auc}")
    if retain_auc >= 1.0:
        raise ValueError(f"privleak is undefined for retain_auc={retain_auc} (1 − AUC_retain must be > 0)")
    return ((1.0 - auc) - (1.0 - retain_auc)) / (1.0 - retain_auc) * 100.0


# ----------------------------------------------------------------------------- aggregates


def forget_quality(tr_unlearned: Tensor | Sequence[float], tr_retain: Tensor | Sequence[float]) -> float:
    """TOFU forget quality: p-value of the two-sample KS test between the forget-set truth ratios of the
    unlearned model and of the retain model (``scipy.stats.ks_2samp``). Higher = closer to retain model.

    The KS statistic is invariant under a strictly monotone map applied to both samples, so using
    TR = w/c (ours) or c/w (TOFU's code) gives the same p-value.
    """
    from scipy.stats import ks_2samp

    a = _as_1d_float64(tr_unlearned, "tr_unlearned").numpy()
    b = _as_1d_float64(tr_retain, "tr_retain").numpy()
    return float(ks_2samp(a, b).pvalue)


def model_utility(values: Tensor | Sequence[float]) -> float:
    """Harmonic mean n / Σ 1/v_i of the utility values (``scipy.stats.hmean`` semantics: a 0 gives 0).

    TOFU uses 9 values: retain {prob, ROUGE-L recall, TR}, real-authors and world-facts
    {normalised prob, ROUGE-L recall, TR}.
    """
    v = _as_1d_float64(values, "model_utility values")
    if (v < 0).any():
        raise ValueError(f"model_utility values must be >= 0, got {v.tolist()}")
    if (v == 0).any():
        return 0.0
    return float(v.numel() / (1.0 / v).sum())


# ----------------------------------------------------------------------------- generation metrics

_ROUGE_SCORER = None


class _MemoTokenizer:
    """rouge_score's own ``DefaultTokenizer`` (lower-casing, non-alphanumerics removed, Porter stemmer when
    asked) with its results remembered per text: an evaluation scores the same reference answers for every
    model, and stemming is most of ROUGE's cost. Passed through ``RougeScorer``'s public ``tokenizer``
    argument; the tokens, and so every score, are rouge_score's."""

    def __init__(self, use_stemmer: bool, max_texts: int = 1 << 16):
        import functools

        from rouge_score.tokenizers import DefaultTokenizer

        inner = DefaultTokenizer(use_stemmer=use_stemmer)
        self._tokenize = functools.lru_cache(maxsize=max_texts)(lambda text: tuple(inner.tokenize(text)))

    def tokenize(self, text: str) -> list[str]:
        return list(self._tokenize(text))


def _rouge_scorer(rouge_type: str, use_stemmer: bool):
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer([rouge_type], use_stemmer=use_stemmer, tokenizer=_MemoTokenizer(use_stemmer))


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each prediction against its reference (``rouge_score``, rougeL, stemmer on).

    Recall = LCS(prediction, reference) / len(reference), on rouge_score's tokenisation.
    """
    global _ROUGE_SCORER
    if len(predictions) != len(references):
        raise ValueError(f"rouge_l_recall: {len(predictions)} predictions but {len(references)} references")
    if _ROUGE_SCORER is None:
        _ROUGE_SCORER = _rouge_scorer("rougeL", use_stemmer=True)
    return [_ROUGE_SCORER.score(ref, pred)["rougeL"].recall for pred, ref in zip(predictions, references)]


ROUGE_TYPES = ("rouge1", "rougeL")
ROUGE_MEASURES = ("recall", "precision", "f1")
_ROUGE_SCORERS: dict[tuple[str, bool], Any] = {}


def rouge_scores(predictions: Sequence[str], references: Sequence[str], rouge_type: str = "rougeL",
                 measure: str = "recall", use_stemmer: bool = True) -> list[float]:
    """ROUGE-1 or ROUGE-L recall, precision or F1 of each prediction against its reference (``rouge_score``).

    With m the unigram overlap (ROUGE-1: Σ_w min(count_pred(w), count_ref(w))) or the LCS length (ROUGE-L)
    on rouge_score's tokenisation: recall = m/|ref|, precision = m/|pred|, F1 = 2·P·R/(P + R) (0 when
    P + R = 0). Lin, 2004, *ROUGE: A Package for Automatic Evaluation of Summaries*.
    ``rouge_type="rougeL", measure="recall", use_stemmer=True`` equals :func:`rouge_l_recall` (TOFU's);
    MUSE's own evaluation uses ``rougeL`` F1 without stemmer (see ``functional.muse``).
    """
    if rouge_type not in ROUGE_TYPES:
        raise ValueError(f"rouge_type must be one of {ROUGE_TYPES}, got {rouge_type!r}")
    if measure not in ROUGE_MEASURES:
        raise ValueError(f"measure must be one of {ROUGE_MEASURES}, got {measure!r}")
    if len(predictions) != len(references):
        raise ValueError(f"rouge_scores: {len(predictions)} predictions but {len(references)} references")
    key = (rouge_type, bool(use_stemmer))
    if key not in _ROUGE_SCORERS:
        _ROUGE_SCORERS[key] = _rouge_scorer(rouge_type, bool(use_stemmer))
    scorer = _ROUGE_SCORERS[key]
    field = "fmeasure" if measure == "f1" else measure
    return [getattr(scorer.score(ref, pred)[rouge_type], field) for pred, ref in zip(predictions, references)]


def relative_difference(value: float, reference: float) -> float:
    """(value − reference) / |reference|: the change of a metric relative to a reference model's value.

    E.g. the unlearned model's retain KnowMem relative to the target model's (MUSE's utility preservation)
    or any metric relative to the retain model's. Multiply by 100 for a percentage. Raises when the
    reference is 0 or either value is not finite (the ratio is undefined).
    """
    if not math.isfinite(value) or not math.isfinite(reference):
        raise ValueError(f"relative_difference needs finite values, got value={value}, reference={reference}")
    if reference == 0:
        raise ValueError("relative_difference is undefined for reference = 0")
    return (value - reference) / abs(reference)
