"""Metric variants (issue #14, item 9): the truth-ratio aggregate mean c/(c+w), ROUGE-1 / ROUGE-L F1 beside
ROUGE-L recall, the relative difference to the retain model, RMU over answer tokens only. Each against an
independent computation (naive loops over rouge_score's tokens, closed forms), and the defaults unchanged."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from rouge_score.tokenizers import DefaultTokenizer

from lit_unlearn.evaluation import EvalConfig, TOFUEvaluation
from lit_unlearn.evaluation.config import METRIC_VARIANTS
from lit_unlearn.evaluation.report import finalize_report
from lit_unlearn.functional import metrics as F
from lit_unlearn.metrics import Rouge, TruthRatio

PAIRS = [  # (prediction, reference)
    ("the cat sat", "the cat sat on the mat"),
    ("a cat was sitting on a mat", "the cat sat on the mat"),
    ("mat the on sat cat the", "the cat sat on the mat"),
    ("", "the cat sat on the mat"),
    ("running dogs ran quickly", "the dog runs quick"),
    ("Born in 1952 in Varenholt, Norway.", "She was born in Varenholt, Norway, in 1952."),
    ("nothing in common", "totally different words"),
]


# ----------------------------------------------------------------------------- independent ROUGE


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
    return table[len(a)][len(b)]


def naive_rouge(pred: str, ref: str, rouge_type: str, measure: str, stem: bool = True) -> float:
    """ROUGE from its definition (Lin, 2004) on rouge_score's tokens: unigram overlap or LCS length."""
    tok = DefaultTokenizer(use_stemmer=stem)
    p, r = tok.tokenize(pred), tok.tokenize(ref)
    if rouge_type == "rouge1":
        cp, cr = Counter(p), Counter(r)
        match = sum(min(cp[w], cr[w]) for w in cp)
    else:
        match = _lcs(r, p)
    recall = match / len(r) if r else 0.0
    precision = match / len(p) if p else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"recall": recall, "precision": precision, "f1": f1}[measure]


@pytest.mark.parametrize("rouge_type", ["rouge1", "rougeL"])
@pytest.mark.parametrize("measure", ["recall", "precision", "f1"])
@pytest.mark.parametrize("stem", [True, False])
def test_rouge_scores_match_naive_definition(rouge_type, measure, stem):
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    got = F.rouge_scores(preds, refs, rouge_type, measure, use_stemmer=stem)
    expected = [naive_rouge(p, r, rouge_type, measure, stem) for p, r in PAIRS]
    assert got == pytest.approx(expected, abs=1e-12)
    metric = Rouge(rouge_type, measure, use_stemmer=stem)
    metric.update(preds[:3], refs[:3], index=torch.tensor([0, 1, 2]))
    metric.update(preds[3:], refs[3:], index=torch.tensor(list(range(3, len(PAIRS)))))
    assert float(metric.compute()) == pytest.approx(sum(expected) / len(expected), abs=1e-6)
    assert metric.value_by_index() == pytest.approx(dict(enumerate(expected)), abs=1e-6)


def test_rouge_l_recall_default_is_unchanged_and_variants_differ():
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    assert F.rouge_scores(preds, refs, "rougeL", "recall") == F.rouge_l_recall(preds, refs)
    assert F.rouge_scores(preds, refs, "rougeL", "f1") != F.rouge_l_recall(preds, refs)
    assert F.rouge_scores(preds, refs, "rouge1", "recall") != F.rouge_l_recall(preds, refs)  # order matters for L only


def test_rouge_bad_arguments():
    with pytest.raises(ValueError, match="rouge_type must be one of"):
        F.rouge_scores(["a"], ["a"], "rouge2")
    with pytest.raises(ValueError, match="measure must be one of"):
        Rouge("rougeL", "fmeasure")
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        F.rouge_scores(["a"], ["a", "b"])


# ----------------------------------------------------------------------------- truth ratio c/(c+w)


def test_truth_ratio_prob_mean_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    correct = torch.rand(9, generator=g) * 3  # avg NLLs
    perturbed = torch.rand(9, 4, generator=g) * 3
    expected = []
    for i in range(9):
        c = math.exp(-float(correct[i]))
        w = math.exp(-sum(float(x) for x in perturbed[i]) / 4)
        expected.append(c / (c + w))
    metric = TruthRatio(split="prob_mean")
    metric.update(correct[:5], perturbed[:5], index=torch.arange(5))
    metric.update(correct[5:], perturbed[5:], index=torch.arange(5, 9))
    assert float(metric.compute()) == pytest.approx(sum(expected) / 9, rel=1e-6)
    assert list(metric.value_by_index().values()) == pytest.approx(expected, rel=1e-6)
    tr = F.truth_ratio(correct, perturbed)
    assert F.truth_ratio_score(tr, "prob_mean").tolist() == pytest.approx(expected, rel=1e-6)
    # the two existing aggregates and their per-sample raw TR are untouched
    for split in ("forget", "other"):
        m = TruthRatio(split=split)
        m.update(correct, perturbed, index=torch.arange(9))
        assert list(m.value_by_index().values()) == pytest.approx(tr.tolist(), rel=1e-6)
    with pytest.raises(ValueError, match="'forget', 'other' or 'prob_mean'"):
        TruthRatio(split="mean")


# ----------------------------------------------------------------------------- relative difference


def test_relative_difference_closed_form_and_errors():
    assert F.relative_difference(0.3, 0.4) == pytest.approx(-0.25)
    assert F.relative_difference(0.6, 0.4) == pytest.approx(0.5)
    assert F.relative_difference(-1.0, -2.0) == pytest.approx(0.5)  # |reference|
    with pytest.raises(ValueError, match="reference = 0"):
        F.relative_difference(0.3, 0.0)
    with pytest.raises(ValueError, match="finite"):
        F.relative_difference(float("nan"), 0.5)


def _fake_results(scale: float) -> dict:
    def split(name: str, role: str) -> dict:
        metrics = {"probability": 0.5 * scale, "truth_ratio": 0.25 * scale, "rouge_l_recall": 0.8 * scale}
        return {"split": name, "role": role, "num_samples": 2, "metrics": metrics,
                "per_sample": {"probability": {0: 0.5, 1: 0.5}, "truth_ratio": {0: 0.9, 1: 1.1 * scale}},
                "generations": {}, "el_reduced_n": None}

    return {"splits": {"forget": split("forget10_perturbed", "forget"), "retain": split("retain_perturbed", "retain")},
            "mia": {}}


def test_relative_to_retain_in_report_only_when_asked(tmp_path):
    meta = {"data_version": "v", "source": "s", "model": "m"}
    retain = finalize_report(_fake_results(1.0), {**meta, "eval_config": EvalConfig().to_dict()})
    assert "relative_to_retain" not in retain  # default: the report's keys are unchanged
    on = {**meta, "eval_config": EvalConfig(relative_to_retain=True).to_dict()}
    report = finalize_report(_fake_results(0.5), on, retain_report=retain)
    values = report["relative_to_retain"]["values"]
    assert report["relative_to_retain"]["available"]
    assert set(values) == {f"{k}/{m}" for k in ("forget", "retain") for m in ("probability", "truth_ratio",
                                                                              "rouge_l_recall")}
    for entry in values.values():
        assert entry["relative_difference"] == pytest.approx((entry["value"] - entry["retain_value"])
                                                             / abs(entry["retain_value"]))
        assert entry["relative_difference"] == pytest.approx(-0.5)
    missing = finalize_report(_fake_results(0.5), on, retain_report=None)["relative_to_retain"]
    assert not missing["available"] and "retain_report" in missing["reason"]


def test_eval_config_variants_validated():
    assert EvalConfig().metric_variants is None and EvalConfig().relative_to_retain is False
    with pytest.raises(ValueError, match="unknown names \\['rouge2'\\]"):
        EvalConfig(metric_variants=["rouge2"])
    with pytest.raises(ValueError, match="need greedy generations"):
        EvalConfig(metric_variants=["rouge1_f1"], generation=False)
    EvalConfig(metric_variants=["truth_ratio_prob_mean"], generation=False)


# ----------------------------------------------------------------------------- in the TOFU suite


SPLITS = {"forget": "forget10_perturbed", "real_authors": "real_authors_perturbed"}
RUN = dict(splits=SPLITS, max_samples=4, batch_size=4, max_length=64, progress=False, plots=False)


def test_variants_in_tofu_suite_match_independent_values(finetuned_tiny):
    common = dict(max_new_tokens=8, el_splits=[], plots=False)
    plain = TOFUEvaluation(finetuned_tiny, config=EvalConfig(**common), **RUN).run()
    with_variants = TOFUEvaluation(finetuned_tiny, config=EvalConfig(metric_variants=list(METRIC_VARIANTS),
                                                                     **common), **RUN).run()
    from lit_unlearn.data.sources import load_rows

    defaults = {"probability", "truth_ratio", "memorization_accuracy", "extraction_strength", "rouge_l_recall"}
    assert set(plain["splits"]["forget"]["metrics"]) == defaults | {"unlearning_accuracy"}
    assert set(plain["splits"]["real_authors"]["metrics"]) == defaults | {"normalized_probability"}
    for key, split in with_variants["splits"].items():
        base = plain["splits"][key]
        for name, value in base["metrics"].items():  # the default metrics are exactly the same
            assert split["metrics"][name] == value, (key, name)
        assert set(split["metrics"]) - set(base["metrics"]) == set(METRIC_VARIANTS)
        assert set(with_variants) == set(plain) and "relative_to_retain" not in with_variants
        answers = [row["answer"] for row in load_rows("builtin:tofu-mini", SPLITS[key])[:4]]
        gens = [split["generations"][i] for i in range(4)]
        for name, (rouge_type, measure) in {"rouge1_recall": ("rouge1", "recall"), "rouge1_f1": ("rouge1", "f1"),
                                            "rouge_l_f1": ("rougeL", "f1")}.items():
            expected = [naive_rouge(g, a, rouge_type, measure) for g, a in zip(gens, answers)]
            assert split["metrics"][name] == pytest.approx(sum(expected) / 4, abs=1e-6), (key, name)
        trs = split["per_sample"]["truth_ratio"]
        expected_tr = [1.0 / (1.0 + trs[i]) for i in range(4)]
        assert split["metrics"]["truth_ratio_prob_mean"] == pytest.approx(sum(expected_tr) / 4, rel=1e-5)
        assert list(split["per_sample"]["truth_ratio_prob_mean"].values()) == pytest.approx(expected_tr, rel=1e-5)


# ----------------------------------------------------------------------------- RMU over answer tokens


def test_rmu_answer_tokens_only_by_hand(finetuned_tiny, builtin_tokenizer_path):
    from lit_unlearn.data import UnlearningDataModule
    from lit_unlearn.objectives import RMU

    dm = UnlearningDataModule(tokenizer=builtin_tokenizer_path, forget_split="forget10", retain_split="retain90",
                              max_length=64, batch_size=4)
    dm.setup("fit")
    batch = dm.collate([dm.forget_dataset[i] for i in (5, 17, 33)])
    module = RMU(finetuned_tiny, tokenizer=builtin_tokenizer_path, steering_coeff=6.5, seed=3, answer_tokens_only=True)
    module.configure_model()
    module.eval()
    with torch.no_grad():
        for p in module.model.parameters():  # make the trained model differ from the frozen one
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    layer = module.layer
    with torch.no_grad():
        hidden = module.model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[layer + 1]
        ref = module.ref_model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[layer + 1]
        got_forget, got_retain = module.forget_loss(batch), module.retain_term(batch)
    u = module.control_vector
    f_terms, r_terms, f_all = [], [], []
    for b in range(ids.shape[0]):
        positions = [t for t in range(ids.shape[1]) if attn[b, t] == 1 and labels[b, t] != -100]
        assert 0 < len(positions) < int(attn[b].sum())  # the prompt is excluded
        f_terms.append(sum(float(((hidden[b, t] - u) ** 2).mean()) for t in positions) / len(positions))
        r_terms.append(sum(float(((hidden[b, t] - ref[b, t]) ** 2).mean()) for t in positions) / len(positions))
        every = [t for t in range(ids.shape[1]) if attn[b, t] == 1]
        f_all.append(sum(float(((hidden[b, t] - u) ** 2).mean()) for t in every) / len(every))
    assert float(got_forget) == pytest.approx(sum(f_terms) / len(f_terms), rel=1e-5)
    assert float(got_retain) == pytest.approx(sum(r_terms) / len(r_terms), rel=1e-4)
    assert float(got_forget) != pytest.approx(sum(f_all) / len(f_all), rel=1e-4)  # differs from the default
    module.answer_tokens_only = False
    with torch.no_grad():
        assert float(module.forget_loss(batch)) == pytest.approx(sum(f_all) / len(f_all), rel=1e-5)
    module.answer_tokens_only = True
    with pytest.raises(ValueError, match="needs `labels` in the batch"):
        module.forget_loss({"input_ids": ids, "attention_mask": attn})
    with pytest.raises(ValueError, match="answer_tokens_only must be True or False"):
        RMU(finetuned_tiny, tokenizer=builtin_tokenizer_path, answer_tokens_only="yes")
