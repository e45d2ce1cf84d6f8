"""lit_unlearn.functional.metrics and .generation against independent computations.

References: naive Python loops over tokens, hand-derived values, scipy, sklearn and rouge_score.
"""
from __future__ import annotations

import math
import zlib

import pytest
import torch
from scipy.stats import hmean, ks_2samp
from sklearn.metrics import roc_auc_score

from lit_unlearn.functional import generation as G
from lit_unlearn.functional import metrics as M
from lit_unlearn.functional.tokens import token_logprobs


# ----------------------------------------------------------------------------- fixtures and naive helpers


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny matmuls are fastest on one thread (and 2 threads crawl when the 2 cores are busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(seed: int = 0, B: int = 4, T: int = 9, V: int = 7):
    """Random logits and right-padded labels with a prompt of 1–3 tokens and 2+ answer tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2.0
    labels = torch.randint(0, V, (B, T), generator=g)
    for b in range(B):
        prompt = 1 + b % 3
        end = T - (b % 2)  # some rows padded at the end
        labels[b, :prompt] = -100
        labels[b, end:] = -100
    return logits, labels


def answer_positions(labels: torch.Tensor, b: int, exclude_last: bool) -> list[int]:
    """Token positions t (>= 1) of row b that are labelled, i.e. predicted from logits[t-1]."""
    pos = [t for t in range(1, labels.shape[1]) if labels[b, t] != -100]
    return pos[:-1] if exclude_last else pos


def naive_logp(logits: torch.Tensor, b: int, t: int, token: int) -> float:
    row = [float(x) for x in logits[b, t - 1]]
    top = max(row)
    lse = top + math.log(sum(math.exp(x - top) for x in row))
    return row[token] - lse


def lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


# ----------------------------------------------------------------------------- likelihood metrics


def test_probability_matches_naive_loop():
    logits, labels = make_batch(1)
    logp, mask = token_logprobs(logits, labels)
    got = M.probability(logp, mask)
    for b in range(labels.shape[0]):
        pos = answer_positions(labels, b, exclude_last=False)  # probability includes the EOS
        nll = -sum(naive_logp(logits, b, t, int(labels[b, t])) for t in pos)
        assert got[b].item() == pytest.approx(math.exp(-nll / len(pos)), rel=1e-5)


def test_probability_rejects_empty_rows():
    logp, mask = torch.zeros(2, 3), torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        M.probability(logp, mask)


def test_truth_ratio_matches_naive_and_aggregates():
    correct = torch.tensor([0.5, 1.2, 2.0])
    perturbed = torch.tensor([[1.0, 2.0, 0.3], [0.1, 0.2, 0.3], [2.0, 2.0, 2.0]])
    tr = M.truth_ratio(correct, perturbed)
    for i in range(3):
        c = math.exp(-correct[i].item())
        w = math.exp(-sum(perturbed[i].tolist()) / 3)
        assert tr[i].item() == pytest.approx(w / c, rel=1e-6)
    forget = [min(x, 1 / x) for x in tr.tolist()]
    other = [max(0.0, 1 - x) for x in tr.tolist()]
    assert M.truth_ratio_score(tr, "forget").tolist() == pytest.approx(forget, rel=1e-6)
    assert M.truth_ratio_score(tr, "other").tolist() == pytest.approx(other, rel=1e-6, abs=1e-7)
    assert M.truth_ratio(torch.tensor([1.0]), torch.tensor([[1.0]])).item() == pytest.approx(1.0)


def test_truth_ratio_bad_input():
    with pytest.raises(ValueError, match="perturbed_avg_nll"):
        M.truth_ratio(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="J>=1"):
        M.truth_ratio(torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="split"):
        M.truth_ratio_score(torch.ones(2), "retain")


def test_normalized_probability_matches_naive():
    correct = torch.tensor([0.5, 3.0])
    perturbed = torch.tensor([[1.0, 2.0], [0.1, 0.2]])
    got = M.normalized_probability(correct, perturbed)
    for i in range(2):
        pc = math.exp(-correct[i].item())
        pw = sum(math.exp(-x) for x in perturbed[i].tolist())
        assert got[i].item() == pytest.approx(pc / (pc + pw), rel=1e-6)


def test_perplexity_matches_closed_form():
    assert M.perplexity(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0])).item() == pytest.approx(math.exp(1.5))
    with pytest.raises(ValueError, match="at least one token"):
        M.perplexity(0.0, 0)


# ----------------------------------------------------------------------------- aggregates (scipy)


def test_forget_quality_matches_scipy_and_is_invariant_to_inversion():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(30, generator=g) + 0.1
    b = torch.rand(25, generator=g) * 0.8 + 0.3
    expected = ks_2samp(a.double().numpy(), b.double().numpy()).pvalue
    assert M.forget_quality(a, b) == pytest.approx(expected, rel=1e-12)
    assert M.forget_quality(a.tolist(), b.tolist()) == pytest.approx(expected, rel=1e-12)
    # TOFU's code uses c/w = 1/TR; the KS p-value is the same
    assert M.forget_quality(1 / a, 1 / b) == pytest.approx(expected, rel=1e-9)
    assert M.forget_quality(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tr_retain is empty"):
        M.forget_quality(a, [])


def test_model_utility_matches_scipy_hmean():
    values = [0.9, 0.4, 0.75, 0.2, 0.66, 0.5, 0.31, 0.8, 0.12]
    assert M.model_utility(values) == pytest.approx(float(hmean(values)), rel=1e-12)
    assert M.model_utility(torch.tensor([0.5, 0.25])) == pytest.approx(1 / 3)
    assert M.model_utility([0.5, 0.0, 1.0]) == 0.0 == float(hmean([0.5, 0.0, 1.0]))
    with pytest.raises(ValueError, match=">= 0"):
        M.model_utility([0.5, -0.1])
    with pytest.raises(ValueError, match="empty"):
        M.model_utility([])
    with pytest.raises(ValueError, match="NaN"):
        M.model_utility([0.5, float("nan")])


# ----------------------------------------------------------------------------- tokenwise metrics


@pytest.mark.parametrize("exclude_last", [True, False])
def test_memorization_accuracy_matches_naive_loop(exclude_last):
    logits, labels = make_batch(2, V=3)  # small vocab: some argmax hits
    got = M.memorization_accuracy(logits, labels, exclude_last=exclude_last)
    hits_seen = 0
    for b in range(labels.shape[0]):
        pos = answer_positions(labels, b, exclude_last)
        hits = sum(int(logits[b, t - 1].argmax()) == int(labels[b, t]) for t in pos)
        hits_seen += hits
        assert got[b].item() == pytest.approx(hits / len(pos))
    assert hits_seen > 0


def test_memorization_accuracy_excludes_final_eos_and_rejects_eos_only():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = 1.0  # right on the answer token
    logits[0, 1, 0] = 1.0  # wrong on the EOS (2)
    labels = torch.tensor([[-100, 1, 2]])
    assert M.memorization_accuracy(logits, labels).item() == 1.0
    assert M.memorization_accuracy(logits, labels, exclude_last=False).item() == 0.5
    with pytest.raises(ValueError, match="no answer tokens"):
        M.memorization_accuracy(logits, torch.tensor([[-100, -100, 2]]))
    with pytest.raises(ValueError, match="logits must be"):
        M.memorization_accuracy(logits[0], labels)


def test_drop_last_token():
    mask = torch.tensor([[True, True, False], [False, True, True], [False, False, False]])
    assert M.drop_last_token(mask).tolist() == [[True, False, False], [False, True, False], [False, False, False]]


def test_unlearning_accuracy():
    assert M.unlearning_accuracy(0.25) == 0.75
    assert M.unlearning_accuracy(torch.tensor([0.0, 1.0])).tolist() == [1.0, 0.0]


def naive_extraction_strength(logits, labels, b):
    """Try every prefix length k from 0 and check the argmax on the whole remaining answer."""
    pos = answer_positions(labels, b, exclude_last=True)
    for k in range(len(pos)):
        if all(int(logits[b, t - 1].argmax()) == int(labels[b, t]) for t in pos[k:]):
            return 1 - k / len(pos)
    return 0.0


def test_extraction_strength_from_logits_matches_naive_loop():
    for seed in range(5):
        logits, labels = make_batch(seed, V=2)  # V=2: long correct suffixes happen
        got = M.extraction_strength_from_logits(logits, labels)
        for b in range(labels.shape[0]):
            assert got[b].item() == pytest.approx(naive_extraction_strength(logits, labels, b))


def test_extraction_strength_hand_values():
    target = [4, 5, 6, 7]
    assert M.extraction_strength([[4, 5, 6, 7], [5, 6, 7], [6, 7], [7]], target) == 1.0
    assert M.extraction_strength([[1], [5, 6, 0], [6, 7], [7]], target) == 0.5
    assert M.extraction_strength([[1], [1], [1], [1]], target) == 0.0
    assert M.extraction_strength([[1], [1], [1], [7, 9, 9]], target) == 0.25  # truncated to N-k tokens
    with pytest.raises(ValueError, match="one greedy continuation per prefix"):
        M.extraction_strength([[4]], target)


def test_ngram_overlap_and_extraction_likelihood_hand_values():
    assert M.ngram_overlap([1, 2, 3, 9], [1, 2, 3, 4], 2) == pytest.approx(2 / 3)
    assert M.ngram_overlap([1, 2, 1, 2], [1, 2], 2) == pytest.approx(2 / 3)  # (1,2) counted twice in a
    assert M.ngram_overlap([1], [1, 2], 2) == 0.0  # shorter than n: nothing extracted
    target = [1, 2, 3, 4, 5]
    conts = [[1, 2, 3, 4, 5], [9, 3, 4, 5], [3, 4, 9], [9, 9], [5]]
    # n=2: prefixes k=0,1,2: overlaps 4/4, 2/3, 1/2
    assert M.extraction_likelihood(conts, target, n=2) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    # n=1: prefixes k=0..3: 5/5, 3/4, 2/3 (9 not in [3,4,5]), 0/2
    assert M.extraction_likelihood(conts, target, n=1) == pytest.approx((1 + 3 / 4 + 2 / 3 + 0) / 4)
    with pytest.raises(ValueError, match="needs more than n=5"):
        M.extraction_likelihood(conts, target, n=5)


def naive_extraction_likelihood(conts, target, n):
    total = 0.0
    for k in range(len(target) - n):
        gen = conts[k][: len(target) - k]
        suffix = target[k:]
        gen_grams = [gen[i : i + n] for i in range(len(gen) - n + 1)]
        suffix_grams = [suffix[i : i + n] for i in range(len(suffix) - n + 1)]
        hits = sum(1 for gram in gen_grams if gram in suffix_grams)
        total += hits / len(gen_grams) if gen_grams else 0.0
    return total / (len(target) - n)


def test_extraction_likelihood_matches_naive_on_random_lists():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        N = int(torch.randint(4, 12, (1,), generator=g))
        target = torch.randint(0, 3, (N,), generator=g).tolist()
        lengths = [int(torch.randint(0, N - k + 2, (1,), generator=g)) for k in range(N)]  # some too long/short
        conts = [torch.randint(0, 3, (length,), generator=g).tolist() for length in lengths]
        for n in (1, 2, 3):
            expected = naive_extraction_likelihood(conts, target, n)
            assert M.extraction_likelihood(conts, target, n) == pytest.approx(expected)


# ----------------------------------------------------------------------------- membership inference


def naive_min_k(values: list[float], k: float) -> float:
    m = max(1, int(k * len(values)))
    return -sum(sorted(values)[:m]) / m


@pytest.mark.parametrize("k", [0.2, 0.4, 1.0])
def test_min_k_score_matches_naive_loop(k):
    logits, labels = make_batch(4, T=12)
    logp, mask = token_logprobs(logits, labels)
    got = M.min_k_score(logp, mask, k=k)
    for b in range(labels.shape[0]):
        pos = answer_positions(labels, b, exclude_last=True)
        values = [naive_logp(logits, b, t, int(labels[b, t])) for t in pos]
        assert got[b].item() == pytest.approx(naive_min_k(values, k), rel=1e-5)
    with pytest.raises(ValueError, match="k must be"):
        M.min_k_score(logp, mask, k=0.0)


def test_min_k_plus_plus_matches_naive_loop():
    logits, labels = make_batch(5, T=10, V=6)
    got = M.min_k_plus_plus_score(logits, labels, k=0.5)
    for b in range(labels.shape[0]):
        zs = []
        for t in answer_positions(labels, b, exclude_last=True):
            logps = [naive_logp(logits, b, t, v) for v in range(logits.shape[-1])]
            probs = [math.exp(x) for x in logps]
            mu = sum(p * x for p, x in zip(probs, logps))
            var = sum(p * x * x for p, x in zip(probs, logps)) - mu * mu
            zs.append((logps[int(labels[b, t])] - mu) / math.sqrt(var))
        assert got[b].item() == pytest.approx(naive_min_k(zs, 0.5), rel=1e-4, abs=1e-5)


def test_min_k_plus_plus_flat_distribution_gives_zero():
    assert M.min_k_plus_plus_score(torch.zeros(1, 4, 5), torch.tensor([[-100, 1, 2, 3]])).item() == 0.0


def test_loss_and_zlib_scores():
    logits, labels = make_batch(6)
    logp, mask = token_logprobs(logits, labels)
    loss = M.loss_score(logp, mask)
    texts = ["alpha beta", "gamma gamma gamma gamma", "", "über naïve"]
    zl = M.zlib_score(loss, texts)
    for b in range(labels.shape[0]):
        pos = answer_positions(labels, b, exclude_last=False)
        avg = -sum(naive_logp(logits, b, t, int(labels[b, t])) for t in pos) / len(pos)
        assert loss[b].item() == pytest.approx(avg, rel=1e-5)
        assert zl[b].item() == pytest.approx(avg / len(zlib.compress(texts[b].encode("utf-8"))), rel=1e-5)
    with pytest.raises(ValueError, match="one text per score"):
        M.zlib_score(loss, texts[:2])


def test_mia_auc_matches_sklearn_with_and_without_ties():
    g = torch.Generator().manual_seed(7)
    for trial in range(10):
        n0, n1 = 5 + trial, 13 - trial
        if trial % 2:  # integer scores: many ties
            forget = torch.randint(0, 4, (n0,), generator=g).float()
            holdout = torch.randint(0, 4, (n1,), generator=g).float()
        else:
            forget, holdout = torch.randn(n0, generator=g), torch.randn(n1, generator=g) + 0.5
        y = [0] * n0 + [1] * n1
        expected = roc_auc_score(y, forget.tolist() + holdout.tolist())
        assert M.mia_auc(forget, holdout) == pytest.approx(expected, abs=1e-12)
    assert M.mia_auc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert M.mia_auc([2.0, 3.0], [0.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="holdout_scores is empty"):
        M.mia_auc([1.0], [])


def test_privleak_hand_values():
    assert M.privleak(0.5, 0.5) == 0.0
    assert M.privleak(0.9, 0.5) == pytest.approx(-80.0)
    assert M.privleak(0.25, 0.5) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="retain_auc=1.0"):
        M.privleak(0.5, 1.0)


# ----------------------------------------------------------------------------- ROUGE


def test_rouge_l_recall_matches_naive_lcs_recall():
    predictions = ["the cat sat on the mat", "a red dog ran", "", "big big cat"]
    references = ["the cat is on the mat", "the dog ran far away", "some words", "cat big"]
    got = M.rouge_l_recall(predictions, references)
    for pred, ref, value in zip(predictions, references, got):
        assert value == pytest.approx(lcs(pred.split(), ref.split()) / len(ref.split()))
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        M.rouge_l_recall(["a", "b"], ["a"])


def test_rouge_l_recall_equals_rouge_score_with_stemming():
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    pred, ref = "She was running to the Libraries.", "she runs to the library every day"
    assert M.rouge_l_recall([pred], [ref]) == [scorer.score(ref, pred)["rougeL"].recall]
    assert M.rouge_l_recall([pred], [ref])[0] == pytest.approx(5 / 7)  # she, run, to, the, librari


# ----------------------------------------------------------------------------- greedy generation


@pytest.fixture(scope="module")
def tiny_model():
    from lit_unlearn.models.tiny import tiny_llama

    return tiny_llama(seed=0, vocab_size=32, hidden_size=32, num_hidden_layers=2, intermediate_size=64).eval()


def naive_greedy(model, prompt: list[int], max_new: int, eos: int) -> list[int]:
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new):
            tok = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if tok == eos:
                break
            out.append(tok)
            ids.append(tok)
    return out


def test_prefix_continuations_match_naive_greedy(tiny_model):
    eos = tiny_model.config.eos_token_id
    prompt, target = [1, 7, 8, 9], [10, 11, 12, 13, 14, 15]
    got = G.prefix_continuations(tiny_model, prompt, target, batch_size=4)  # 2 batches of prefixes
    assert len(got) == len(target)
    for k in range(len(target)):
        assert got[k] == naive_greedy(tiny_model, prompt + target[:k], len(target) - k, eos)


def test_greedy_generate_stops_at_eos(tiny_model):
    prompt = [1, 5, 6]
    first = naive_greedy(tiny_model, prompt, 1, eos=-1)[0]
    assert G.greedy_generate(tiny_model, [prompt, [3, 4, 5, 6, 7]], 3, eos_token_id=first) == [
        [],
        naive_greedy(tiny_model, [3, 4, 5, 6, 7], 3, first),
    ]
    with pytest.raises(ValueError, match="at least one token"):
        G.greedy_generate(tiny_model, [[]], 3)


def test_extraction_strength_from_logits_equals_greedy_definition(tiny_model):
    eos = tiny_model.config.eos_token_id
    prompt = [1, 4, 9]
    memorised = naive_greedy(tiny_model, prompt, 6, eos=-1)  # the model's own greedy answer: ES = 1
    for target in (memorised, [memorised[0] ^ 1] + memorised[1:], memorised[:3] + [memorised[3] ^ 1] + memorised[4:]):
        ids = torch.tensor([prompt + target + [eos]])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        es_logits = M.extraction_strength_from_logits(tiny_model(ids).logits.detach(), labels).item()
        conts = G.prefix_continuations(tiny_model, prompt, target, eos_token_id=eos)
        assert es_logits == pytest.approx(M.extraction_strength(conts, target))
    assert es_logits < 1.0  # the last target was perturbed in the middle


def test_batch_prefix_continuations_splits_prompt_and_answer(tiny_model):
    eos = tiny_model.config.eos_token_id
    input_ids = torch.tensor([[1, 5, 6, 10, 11, 12, eos], [1, 7, 13, 14, eos, 0, 0]])
    attention_mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 10, 11, 12, eos], [-100, -100, 13, 14, eos, -100, -100]])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    conts, targets = G.batch_prefix_continuations(tiny_model, batch, batch_size=2)
    assert targets == [[10, 11, 12], [13, 14]]
    assert conts[1] == [naive_greedy(tiny_model, [1, 7] + [13, 14][:k], 2 - k, eos) for k in range(2)]
    assert G.split_prompt_answer(input_ids, labels, attention_mask, exclude_last=False)[1] == ([1, 7], [13, 14, eos])
    # plain text, every token labelled: the first token becomes the prompt
    assert G.split_prompt_answer(input_ids[:1], input_ids[:1], attention_mask[:1])[0] == ([1], [5, 6, 10, 11, 12])
    with pytest.raises(ValueError, match="row 0 has no answer tokens besides the final EOS"):
        G.split_prompt_answer(input_ids[:1], torch.tensor([[-100] * 6 + [eos]]), attention_mask[:1])
