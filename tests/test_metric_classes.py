"""lit_unlearn.metrics classes: several update() calls equal one functional call on the concatenation,
per-sample values by index, torchmetrics contract, doctests."""
from __future__ import annotations

import doctest
import importlib

import pytest
import torch

from lit_unlearn import metrics as LM
from lit_unlearn.functional import metrics as M
from lit_unlearn.functional.tokens import token_logprobs

METRIC_MODULES = [
    "lit_unlearn.metrics.likelihood",
    "lit_unlearn.metrics.memorization",
    "lit_unlearn.metrics.generation",
    "lit_unlearn.metrics.mia",
    "lit_unlearn.metrics.aggregate",
    "lit_unlearn.metrics.base",
]
ALL_CLASSES = [
    LM.Probability,
    LM.TruthRatio,
    LM.ForgetQuality,
    LM.ModelUtility,
    LM.RougeLRecall,
    LM.MemorizationAccuracy,
    LM.ExtractionLikelihood,
    LM.ExtractionStrength,
    LM.MIAAUC,
    LM.PrivLeak,
    LM.Perplexity,
    LM.UnlearningAccuracy,
]


def make_batch(seed: int, B: int = 6, T: int = 10, V: int = 3):
    """Random logits and right-padded labels (prompt of 1–3 tokens); V=3 so argmax hits happen."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    for b in range(B):
        labels[b, : 1 + b % 3] = -100
        labels[b, T - (b % 2) :] = -100
    return logits, labels


def chunks(n: int, sizes=(2, 1, 3)):
    """Slices of 0..n split in the given sizes."""
    start = 0
    for size in sizes:
        yield slice(start, start + size)
        start += size
    assert start == n


@pytest.mark.parametrize("module", METRIC_MODULES)
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_torchmetrics_contract(cls):
    assert cls.full_state_update is False
    assert hasattr(cls, "higher_is_better")
    assert cls.__doc__ and "Example:" in cls.__doc__


# ----------------------------------------------------------------------------- module == functional


@pytest.mark.parametrize(
    "cls, functional",
    [
        (LM.MemorizationAccuracy, lambda lg, lb: M.memorization_accuracy(lg, lb)),
        (LM.UnlearningAccuracy, lambda lg, lb: 1 - M.memorization_accuracy(lg, lb)),
        (LM.ExtractionStrength, lambda lg, lb: M.extraction_strength_from_logits(lg, lb)),
        (LM.Probability, lambda lg, lb: M.probability(*token_logprobs(lg, lb))),
    ],
)
def test_logit_metrics_match_functional(cls, functional):
    logits, labels = make_batch(0)
    expected = functional(logits, labels)  # (B,)
    metric = cls()
    order = torch.tensor([4, 0, 5, 2, 1, 3])  # dataset indices of the rows
    for s in chunks(6):
        metric.update(logits[s], labels[s], index=order[s])
    assert metric.compute().item() == pytest.approx(expected.mean().item(), rel=1e-6)
    by_index = metric.value_by_index()
    assert list(by_index) == sorted(order.tolist())  # ordered by index
    for row, idx in enumerate(order.tolist()):
        assert by_index[idx] == pytest.approx(expected[row].item(), rel=1e-6)


def test_memorization_accuracy_exclude_last_flag():
    logits, labels = make_batch(1)
    metric = LM.MemorizationAccuracy(exclude_last=False)
    metric.update(logits, labels)
    assert metric.compute().item() == pytest.approx(M.memorization_accuracy(logits, labels, False).mean().item())


def test_duplicate_indices_are_counted_once():
    """DistributedSampler pads with repeated samples: the same index must not count twice."""
    logits, labels = make_batch(2)
    expected = M.memorization_accuracy(logits, labels)
    metric = LM.MemorizationAccuracy()
    metric.update(logits, labels, index=torch.arange(6))
    metric.update(logits[:2], labels[:2], index=torch.arange(2))
    assert metric.compute().item() == pytest.approx(expected.mean().item())
    assert len(metric.value_by_index()) == 6


def test_index_errors():
    logits, labels = make_batch(3)
    metric = LM.MemorizationAccuracy()
    with pytest.raises(ValueError, match=r"index must have shape \(6,\)"):
        metric.update(logits, labels, index=torch.arange(5))
    metric.update(logits, labels)
    assert metric.compute().item() == pytest.approx(M.memorization_accuracy(logits, labels).mean().item())
    with pytest.raises(ValueError, match="needs `index`"):
        metric.value_by_index()
    metric.update(logits, labels, index=torch.arange(6))
    with pytest.raises(ValueError, match="some update"):
        metric.compute()


def test_compute_before_update_raises_clearly():
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no samples"):
        LM.Probability().compute()


def test_reset_clears_state():
    logits, labels = make_batch(4)
    metric = LM.Probability()
    metric.update(logits, labels, index=torch.arange(6))
    metric.reset()
    metric.update(logits[:2], labels[:2], index=torch.arange(2))
    assert list(metric.value_by_index()) == [0, 1]


@pytest.mark.parametrize("split", ["forget", "other"])
def test_truth_ratio_matches_functional(split):
    g = torch.Generator().manual_seed(5)
    correct, perturbed = torch.rand(7, generator=g) * 3, torch.rand(7, 4, generator=g) * 3
    tr = M.truth_ratio(correct, perturbed)
    metric = LM.TruthRatio(split=split)
    for s in (slice(0, 3), slice(3, 7)):
        metric.update(correct[s], perturbed[s], index=torch.arange(7)[s] + 10)
    assert metric.compute().item() == pytest.approx(M.truth_ratio_score(tr, split).mean().item(), rel=1e-6)
    assert list(metric.value_by_index().values()) == pytest.approx(tr.tolist(), rel=1e-6)  # raw TRs
    with pytest.raises(ValueError, match="split"):
        LM.TruthRatio(split="retain")


def test_forget_quality_matches_scipy_with_retain_report_dict():
    from scipy.stats import ks_2samp

    g = torch.Generator().manual_seed(6)
    correct, perturbed = torch.rand(9, generator=g) * 3, torch.rand(9, 3, generator=g) * 3
    retain_tr = {i: 0.2 + 0.1 * i for i in range(12)}  # what TruthRatio.value_by_index() saves
    metric = LM.ForgetQuality(retain_truth_ratios=retain_tr)
    metric.update(correct[:4], perturbed[:4])
    metric.update(correct[4:], perturbed[4:])
    tr = M.truth_ratio(correct, perturbed).double().numpy()
    expected = ks_2samp(tr, [retain_tr[i] for i in range(12)]).pvalue
    assert metric.compute().item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="retain model's truth ratios"):
        LM.ForgetQuality(retain_truth_ratios=[])


def test_model_utility_matches_scipy():
    from scipy.stats import hmean

    values = [0.9, 0.4, 0.75, 0.2, 0.66, 0.5, 0.31, 0.8, 0.12]
    metric = LM.ModelUtility()
    metric.update(values[:3])
    metric.update(torch.tensor(values[3:]))
    assert metric.compute().item() == pytest.approx(hmean(values), rel=1e-6)


def test_rouge_l_recall_matches_functional():
    preds = ["the cat sat", "a dog", "books are red", ""]
    refs = ["the cat sat on the mat", "a dog barked", "red books", "nothing"]
    metric = LM.RougeLRecall()
    metric.update(preds[:1], refs[:1], index=torch.tensor([3]))
    metric.update(preds[1:], refs[1:], index=torch.tensor([0, 1, 2]))
    expected = M.rouge_l_recall(preds, refs)
    assert metric.compute().item() == pytest.approx(sum(expected) / 4)
    assert metric.value_by_index() == pytest.approx({3: expected[0], 0: expected[1], 1: expected[2], 2: expected[3]})


def test_extraction_likelihood_matches_functional():
    g = torch.Generator().manual_seed(8)
    targets = [torch.randint(0, 3, (n,), generator=g).tolist() for n in (5, 7, 6)]
    conts = [[torch.randint(0, 3, (len(t) - k,), generator=g).tolist() for k in range(len(t))] for t in targets]
    metric = LM.ExtractionLikelihood(n=2)
    metric.update(conts[:1], targets[:1])
    metric.update(conts[1:], targets[1:])
    expected = [M.extraction_likelihood(c, t, 2) for c, t in zip(conts, targets)]
    assert metric.compute().item() == pytest.approx(sum(expected) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="2 continuation lists but 1 targets"):
        metric.update(conts[:2], targets[:1])


def test_perplexity_matches_functional():
    logits, labels = make_batch(9)
    logp, mask = token_logprobs(logits, labels)
    metric = LM.Perplexity()
    for s in chunks(6):
        metric.update(logits[s], labels[s])
    expected = M.perplexity(-(logp * mask).sum(), mask.sum())
    assert metric.compute().item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------- MIA


@pytest.mark.parametrize("score", ["loss", "zlib", "min_k", "min_k_plus_plus"])
def test_mia_auc_matches_sklearn(score):
    from sklearn.metrics import roc_auc_score

    forget_logits, forget_labels = make_batch(10, B=6)
    holdout_logits, holdout_labels = make_batch(11, B=6)
    forget_logits = forget_logits * 1.5
    texts = [f"sample text number {i} " * (i + 1) for i in range(6)]
    f_scores = LM.mia_scores(forget_logits, forget_labels, score, 0.4, texts)
    h_scores = LM.mia_scores(holdout_logits, holdout_labels, score, 0.4, texts[::-1])
    expected = roc_auc_score([0] * 6 + [1] * 6, f_scores.tolist() + h_scores.tolist())

    metric = LM.MIAAUC(score=score)
    metric.update(holdout_logits[:4], holdout_labels[:4], member=False, texts=texts[::-1][:4], index=torch.arange(4))
    metric.update(forget_logits, forget_labels, member=True, texts=texts, index=torch.arange(6))
    metric.update(
        holdout_logits[4:], holdout_labels[4:], member=False, texts=texts[::-1][4:], index=torch.tensor([4, 5])
    )
    metric.update(forget_logits[:1], forget_labels[:1], member=True, texts=texts[:1], index=torch.tensor([0]))  # dup
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)

    expected_score = {
        "loss": lambda: M.loss_score(*token_logprobs(forget_logits, forget_labels)),
        "zlib": lambda: M.zlib_score(M.loss_score(*token_logprobs(forget_logits, forget_labels)), texts),
        "min_k": lambda: M.min_k_score(*token_logprobs(forget_logits, forget_labels), k=0.4),
        "min_k_plus_plus": lambda: M.min_k_plus_plus_score(forget_logits, forget_labels, k=0.4),
    }[score]()
    assert torch.allclose(f_scores, expected_score)


def test_mia_and_privleak_errors_and_value():
    logits, labels = make_batch(12)
    metric = LM.MIAAUC(score="loss")
    metric.update(logits, labels, member=True)
    with pytest.raises(ValueError, match="needs both forget"):
        metric.compute()
    with pytest.raises(ValueError, match="needs the decoded `texts`"):
        LM.MIAAUC(score="zlib").update(logits, labels, member=True)
    with pytest.raises(ValueError, match="score must be one of"):
        LM.MIAAUC(score="gradnorm")
    with pytest.raises(ValueError, match="retain_auc=1.0"):
        LM.PrivLeak(retain_auc=1.0)

    holdout_logits, holdout_labels = make_batch(13)
    leak = LM.PrivLeak(retain_auc=0.4, score="min_k")
    auc = LM.MIAAUC(score="min_k")
    for m in (leak, auc):
        m.update(logits, labels, member=True)
        m.update(holdout_logits, holdout_labels, member=False)
    a = auc.compute().item()
    assert leak.compute().item() == pytest.approx(((1 - a) - 0.6) / 0.6 * 100, rel=1e-5)
