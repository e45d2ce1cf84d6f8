"""MUSE metrics: the ICL prompt against a naive loop, VerbMem/KnowMem against rouge_score, PrivLeak against
sklearn, and greedy generation on builtin muse-mini against a naive token-by-token loop."""
from __future__ import annotations

import math

import pytest
import torch
from rouge_score.rouge_scorer import RougeScorer
from sklearn.metrics import roc_auc_score

from lit_unlearn.data.muse import knowmem_qa, verbmem_pairs
from lit_unlearn.functional import muse as M
from lit_unlearn.metrics import KnowMem, MUSEPrivLeak, VerbMem

SCORER = RougeScorer(["rougeL"], use_stemmer=False)  # what MUSE's own evaluation uses (F1 = fmeasure)


def muse_reference_rouge(pred: str, ref: str) -> float:
    return SCORER.score(ref, pred)["rougeL"].fmeasure


@pytest.mark.parametrize("n_shots", [0, 1, 3])
def test_icl_prompt_matches_naive_loop(n_shots):
    examples = [(f"Who founded club {i}?", f"Person {i}") for i in range(n_shots)]
    question = "Where is Fena Beloberg from?"
    naive = ""
    for q, a in examples:
        naive = naive + "Question: " + q + "\n" + "Answer: " + a + "\n" + "\n"
    naive = naive + "Question: " + question + "\n" + "Answer: "
    assert M.icl_prompt(question, examples) == naive
    assert M.icl_prompts([question, "Q?"], examples) == [naive, M.icl_prompt("Q?", examples)]


def test_cut_at_stop_strings():
    assert M.cut_at_stop_strings("Paris\n\nQuestion: x") == "Paris"
    assert M.cut_at_stop_strings("Paris\nQuestion: x") == "Paris"
    assert M.cut_at_stop_strings("Paris Question: x") == "Paris "
    assert M.cut_at_stop_strings("Paris\nis nice") == "Paris\nis nice"


PAIRS = [("the cat sat", "the cat sat on the mat"), ("running dogs ran", "the dog runs"),
         ("", "something"), ("Varenholt, Norway", "She lives in Varenholt, Norway.")]


def test_verbmem_and_knowmem_match_rouge_score_rougeL_f1_without_stemmer():
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    expected = [muse_reference_rouge(p, r) for p, r in PAIRS]
    assert M.verbmem_scores(preds, refs) == pytest.approx(expected, abs=1e-12)
    # the stemmer matters on "running dogs ran" vs "the dog runs": MUSE's choice (no stemmer) is the default
    assert M.verbmem_scores(preds, refs, use_stemmer=True) != M.verbmem_scores(preds, refs)
    metric = VerbMem()
    metric.update(preds, refs, index=torch.arange(len(preds)))
    assert float(metric.compute()) == pytest.approx(sum(expected) / len(expected), abs=1e-6)
    generations = ["Paris\n\nQuestion: Who?", "Rome\nQuestion: x", "the Iron Pen Guild Question: no"]
    answers = ["Paris", "Rome, Italy", "The Iron Pen Guild"]
    cut = ["Paris", "Rome", "the Iron Pen Guild "]
    expected_k = [muse_reference_rouge(c, a) for c, a in zip(cut, answers)]
    assert M.knowmem_scores(generations, answers) == pytest.approx(expected_k, abs=1e-12)
    metric = KnowMem()
    metric.update(generations, answers)
    assert float(metric.compute()) == pytest.approx(sum(expected_k) / 3, abs=1e-6)
    recall = KnowMem(measure="recall", use_stemmer=True)
    recall.update(generations[1:2], answers[1:2])
    assert float(recall.compute()) == pytest.approx(0.5)  # "rome" of "rome italy"


def naive_min_k(logits: torch.Tensor, labels: torch.Tensor, k: float) -> list[float]:
    """−mean of the lowest floor(k·n) (at least 1) answer-token log-probs, final labelled token excluded."""
    out = []
    for b in range(logits.shape[0]):
        positions = [t for t in range(1, logits.shape[1]) if labels[b, t] != -100][:-1]
        logps = sorted(float(torch.log_softmax(logits[b, t - 1].double(), -1)[labels[b, t]]) for t in positions)
        m = max(1, int(k * len(logps)))
        out.append(-sum(logps[:m]) / m)
    return out


def test_privleak_matches_sklearn_auc():
    g = torch.Generator().manual_seed(0)
    forget_scores, holdout_scores = torch.randn(15, generator=g) - 0.7, torch.randn(11, generator=g)
    auc = roc_auc_score([0] * 15 + [1] * 11, torch.cat([forget_scores, holdout_scores]).tolist())
    retain_auc = 0.47
    expected = ((1 - auc) - (1 - retain_auc)) / (1 - retain_auc) * 100
    assert M.privleak_from_scores(forget_scores, holdout_scores, retain_auc) == pytest.approx(expected, rel=1e-12)

    labels = torch.randint(0, 7, (6, 9), generator=g)
    labels[:, :2] = -100
    labels[3, 7:] = -100
    forget_logits, holdout_logits = torch.randn(6, 9, 7, generator=g) * 2, torch.randn(6, 9, 7, generator=g)
    metric = MUSEPrivLeak(retain_auc=retain_auc)
    assert (metric.score, metric.k) == ("min_k", 0.4)
    metric.update(forget_logits, labels, member=True)
    metric.update(holdout_logits, labels, member=False)
    scores = naive_min_k(forget_logits, labels, 0.4) + naive_min_k(holdout_logits, labels, 0.4)
    auc = roc_auc_score([0] * 6 + [1] * 6, scores)
    expected = ((1 - auc) - (1 - retain_auc)) / (1 - retain_auc) * 100
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-5, abs=1e-4)


def test_relative_to_reference():
    assert M.relative_to_reference(0.3, 0.6) == pytest.approx(-50.0)
    with pytest.raises(ValueError, match="reference = 0"):
        M.relative_to_reference(0.3, 0.0)


def test_knowmem_and_verbmem_on_muse_mini_with_naive_greedy(finetuned_tiny):
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(finetuned_tiny)
    model = load_causal_lm(finetuned_tiny, tokenizer).eval()
    qa, icl = knowmem_qa("builtin:muse-mini", "forget")
    prompts = M.icl_prompts([q for q, _ in qa[:3]], icl)
    max_new = 6
    got = M.greedy_texts(model, tokenizer, prompts, max_new, batch_size=2)
    naive = []
    for prompt in prompts:  # token by token, no cache, no padding
        ids = tokenizer(prompt)["input_ids"]
        new = []
        for _ in range(max_new):
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            new.append(nxt)
        naive.append(tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=True))
    assert got == naive
    metric = KnowMem()
    metric.update(got, [a for _, a in qa[:3]], index=torch.arange(3))
    expected = [muse_reference_rouge(M.cut_at_stop_strings(g), a) for g, (_, a) in zip(got, qa[:3])]
    assert list(metric.value_by_index().values()) == pytest.approx(expected, abs=1e-6)

    (prompt, gt), = verbmem_pairs("builtin:muse-mini")[:1]
    reference = M.truncate_to_tokens(tokenizer, gt, 8)
    assert len(tokenizer(reference, add_special_tokens=False)["input_ids"]) <= 8
    assert gt.startswith(reference.strip()[: max(1, len(reference.strip()) - 1)])
    continuation = M.greedy_texts(model, tokenizer, [prompt], 8)
    verbmem = VerbMem()
    verbmem.update(continuation, [reference])
    assert math.isclose(float(verbmem.compute()), muse_reference_rouge(continuation[0], reference), abs_tol=1e-6)
