"""The MUSE benchmark through the evaluation core on builtin:muse-mini with a tiny model: every aggregate
recomputed independently (a token-by-token greedy loop, a naive ICL prompt, rouge_score, a naive Min-K%
loop and sklearn's AUC), PrivLeak / utility preservation against reference reports, Lightning ``validate``
(CLI with MUSEDataModule) equal to the plain-Python run, and bad input."""
from __future__ import annotations

import json

import pytest
import torch
from rouge_score.rouge_scorer import RougeScorer
from sklearn.metrics import roc_auc_score

from lit_unlearn.data.muse import knowmem_qa, muse_texts, verbmem_pairs
from lit_unlearn.evaluation.benchmarks.muse import MUSEConfig, MUSEEvaluation, finalize_muse_report
from lit_unlearn.evaluation.report import load_report
from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

torch.set_num_threads(1)

N = 3
NEW = 6
SRC = "builtin:muse-mini"
CFG = {"verbmem_max_new_tokens": NEW, "knowmem_max_new_tokens": NEW, "privleak_max_length": 48}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, builtin_tokenizer_path) -> str:
    """A fresh tiny Llama (seed 0) saved as a folder."""
    tok = load_tokenizer(builtin_tokenizer_path)
    model = load_causal_lm("builtin:tiny-llama", tok, seed=0)
    out = tmp_path_factory.mktemp("muse_model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def plain_report(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("muse_report")
    report = MUSEEvaluation(model_dir, max_samples=N, batch_size=2, progress=False, out_dir=out, config=CFG).run()
    return report, out


def naive_greedy(model, tokenizer, prompt: str, new: int) -> str:
    ids = tokenizer(prompt)["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(new):
            tok = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if tok == tokenizer.eos_token_id:
                break
            out.append(tok)
    return tokenizer.decode(out, skip_special_tokens=True)


def naive_prompt(question: str, shots) -> str:
    text = ""
    for q, a in shots:
        text += "Question: " + q + "\nAnswer: " + a + "\n\n"
    return text + "Question: " + question + "\nAnswer: "


def naive_cut(text: str) -> str:
    for stop in ("\n\n", "\nQuestion", "Question:"):
        if stop in text:
            text = text[: text.index(stop)]
    return text


def naive_min_k(model, tokenizer, text: str, k: float = 0.4, max_len: int = 48) -> float:
    ids = tokenizer(text)["input_ids"][:max_len]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    values = sorted(float(logp[t - 1, ids[t]]) for t in range(1, len(ids) - 1))  # the last token excluded
    m = max(1, int(k * len(values)))
    return -sum(values[:m]) / m


def test_every_aggregate_recomputed_independently(plain_report, model_dir):
    report, out = plain_report
    model = load_causal_lm(model_dir).eval()
    tok = load_tokenizer(model_dir)
    scorer = RougeScorer(["rougeL"], use_stemmer=False)

    # VerbMem: continuation of each verbmem prompt vs its gt cut to NEW tokens
    verb = report["splits"]["verbmem_forget"]
    for i, (prompt, gt) in enumerate(verbmem_pairs(SRC)[:N]):
        text = naive_greedy(model, tok, prompt, NEW)
        assert verb["generations"][i] == text
        ref = tok.decode(tok(gt, add_special_tokens=False)["input_ids"][:NEW], skip_special_tokens=True)
        assert verb["per_sample"]["verbmem"][i] == pytest.approx(scorer.score(ref, text)["rougeL"].fmeasure, abs=1e-6)
    assert report["verbmem"]["value"] == pytest.approx(sum(verb["per_sample"]["verbmem"].values()) / N, abs=1e-6)

    # KnowMem on forget and retain: the few-shot prompt, greedy answer cut at the stop strings
    for key, which in (("knowmem_forget", "forget"), ("knowmem_retain", "retain")):
        qa, icl = knowmem_qa(SRC, which)
        split = report["splits"][key]
        values = []
        for i, (q, a) in enumerate(qa[:N]):
            text = naive_greedy(model, tok, naive_prompt(q, icl), NEW)
            assert split["generations"][i] == text
            values.append(scorer.score(a, naive_cut(text))["rougeL"].fmeasure)
        assert report[key]["value"] == pytest.approx(sum(values) / N, abs=1e-6)

    # PrivLeak's AUC: Min-K% (k = 0.4) forget (0) vs holdout (1), sklearn
    forget = [naive_min_k(model, tok, t) for t in muse_texts(SRC, "privleak", "forget")[:N]]
    holdout = [naive_min_k(model, tok, t) for t in muse_texts(SRC, "privleak", "holdout")[:N]]
    auc = roc_auc_score([0] * N + [1] * N, forget + holdout)
    assert report["mia"]["min_k"]["auc"] == pytest.approx(auc, abs=1e-6)  # a float32 metric state
    assert report["privleak"]["available"] is False and "retain_report" in report["privleak"]["reason"]
    assert {"report.json", "report.md"} <= {p.name for p in out.iterdir()}
    assert load_report(out)["summary"] == pytest.approx(report["summary"])


def test_privleak_and_utility_preservation_against_references(tmp_path):
    meta = {"source": SRC, "data_version": "v"}

    def results(auc: float, keep: float) -> dict:
        return {"splits": {"knowmem_retain": {"num_samples": 2, "metrics": {"knowmem": keep}, "per_sample": {},
                                              "generations": {}}},
                "mia": {"min_k": {"auc": auc}}}

    cfg = MUSEConfig(keys=["knowmem_retain", "privleak_forget", "privleak_holdout"])
    for name, (auc, keep) in {"retain": (0.5, 0.3), "target": (0.2, 0.8)}.items():
        rep = finalize_muse_report(results(auc, keep), meta, cfg)
        from lit_unlearn.evaluation.benchmarks.muse import MUSEBenchmark

        MUSEBenchmark(cfg).write(rep, tmp_path / name)
    cfg = MUSEConfig(retain_report=str(tmp_path / "retain"), target_report=str(tmp_path / "target"))
    report = finalize_muse_report(results(0.35, 0.6), meta, cfg)
    # MUSE: (AUC' − AUC'_retain) / AUC'_retain · 100 with AUC' = 1 − our AUC (forget as the positive class)
    assert report["privleak"]["value"] == pytest.approx(((1 - 0.35) - (1 - 0.5)) / (1 - 0.5) * 100)
    assert report["utility_preservation"]["value"] == pytest.approx((0.6 - 0.8) / 0.8 * 100)
    # a reference of other data: unavailable with the reason, an error with strict
    other = {"source": SRC, "data_version": "other"}
    report = finalize_muse_report(results(0.35, 0.6), other, cfg)
    assert report["privleak"]["value"] is None and "data version" in report["privleak"]["reason"]
    with pytest.raises(ValueError, match="data version"):
        finalize_muse_report(results(0.35, 0.6), other, cfg, strict=True)


def test_cli_validate_with_muse_datamodule_equals_plain(plain_report, model_dir, tmp_path, monkeypatch):
    """`lit-unlearn validate --data MUSEDataModule` runs the MUSE suite through the same core (one loader per
    split) and writes the same numbers as MUSEEvaluation."""
    from lit_unlearn.cli import lightning_cli

    monkeypatch.setattr("sys.argv", ["lit-unlearn"])
    lightning_cli([
        "validate", "--model", "FinetuneModule", "--model.model_name_or_path", model_dir,
        "--data", "lit_unlearn.evaluation.benchmarks.muse.MUSEDataModule", "--data.tokenizer", model_dir,
        "--data.eval_config", json.dumps(CFG), "--data.eval_max_samples", str(N), "--data.eval_batch_size", "2",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
    ])
    got = load_report(tmp_path / "report")
    want = plain_report[0]
    assert got["format"] == "lit_unlearn.muse_report/1" and got["metadata"]["benchmark"] == "muse"
    assert got["summary"] == pytest.approx(want["summary"], abs=1e-6)
    for key in want["splits"]:
        assert got["splits"][key]["generations"] == want["splits"][key]["generations"]


def test_bad_input(model_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown or no keys"):
        MUSEConfig(keys=["verbmem"])
    with pytest.raises(ValueError, match="Unknown MUSE evaluation settings"):
        MUSEConfig.coerce({"max_new_tokens": 3})
    (tmp_path / "tofu").mkdir()
    (tmp_path / "tofu" / "report.json").write_text(json.dumps({"format": "lit_unlearn.tofu_report/1", "splits": {}}))
    with pytest.raises(ValueError, match="is not a MUSE report"):
        MUSEEvaluation(model_dir, retain_report=str(tmp_path / "tofu"), max_samples=1, progress=False).run()
    from lit_unlearn.data import DataValidationError

    (tmp_path / "muse" / "raw").mkdir(parents=True)
    with pytest.raises(DataValidationError, match="no configuration folder 'verbmem'"):
        MUSEEvaluation(model_dir, source=str(tmp_path / "muse"), max_samples=1, progress=False).run()
