"""Report assembly and files: forget quality/model utility/privleak against scipy, bad inputs, the
Markdown/JSON/PNG writers and the ``lit-unlearn report`` comparison CLI. No model needed."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from scipy.stats import hmean, ks_2samp

from lit_unlearn.evaluation.cli import report_main
from lit_unlearn.evaluation.report import (
    RetainReportMismatch,
    MODEL_UTILITY_COMPONENTS,
    compare_reports,
    finalize_report,
    forget_quality_from_reports,
    load_report,
    render_markdown,
    write_report,
)
from lit_unlearn.functional import metrics as F

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_results(seed: int = 0, n_forget: int = 12, rouge: float | None = 0.5, with_holdout: bool = True) -> dict:
    """Raw evaluator results with random per-sample values (what TOFUEvaluator.compute returns)."""
    g = torch.Generator().manual_seed(seed)

    def split(name: str, n: int, role: str, metrics: list[str]) -> dict:
        per_sample = {m: {i: float(torch.rand(1, generator=g)) + 0.05 for i in range(n)} for m in metrics}
        if "truth_ratio" in per_sample:  # raw TR: spread around 1
            per_sample["truth_ratio"] = {i: float(torch.rand(1, generator=g) * 2 + 0.05) for i in range(n)}
        if rouge is not None and "rouge_l_recall" in metrics:
            per_sample["rouge_l_recall"] = {i: rouge for i in range(n)}
        agg = {m: sum(v.values()) / n for m, v in per_sample.items()}
        if "truth_ratio" in agg:
            tr = torch.tensor(list(per_sample["truth_ratio"].values()))
            agg["truth_ratio"] = float(F.truth_ratio_score(tr, "forget" if role == "forget" else "other").mean())
        return {"split": name, "role": role, "num_samples": n, "metrics": agg, "per_sample": per_sample,
                "generations": {}, "el_reduced_n": 0}

    base = ["probability", "truth_ratio", "memorization_accuracy"] + (["rouge_l_recall"] if rouge is not None else [])
    splits = {
        "forget": split("forget10_perturbed", n_forget, "forget", base),
        "retain": split("retain_perturbed", 10, "retain", base),
        "real_authors": split("real_authors_perturbed", 8, "general", base + ["normalized_probability"]),
        "world_facts": split("world_facts_perturbed", 8, "general", base + ["normalized_probability"]),
    }
    mia = {}
    if with_holdout:
        splits["holdout"] = split("holdout10", n_forget, "holdout", ["probability"])
        mia = {s: {"auc": 0.3 + 0.1 * seed + 0.05 * k} for k, s in enumerate(["loss", "zlib", "min_k", "min_k_plus_plus"])}
    return {"splits": splits, "mia": mia}


META = {"data_version": "tofu-gen-1/tofu-mini/seed0", "model": "m"}


def write(tmp_path, name: str, report: dict) -> str:
    write_report(report, tmp_path / name / "report", plots=False)
    return str(tmp_path / name / "report" / "report.json")


def test_forget_quality_matches_scipy_ks(tmp_path):
    retain = finalize_report(fake_results(seed=1), {**META, "model": "retain"})
    retain_path = write(tmp_path, "retain", retain)
    results = fake_results(seed=2)
    report = finalize_report(results, META, retain_path)
    ours = results["splits"]["forget"]["per_sample"]["truth_ratio"]
    theirs = retain["splits"]["forget"]["per_sample"]["truth_ratio"]
    expected = ks_2samp([ours[i] for i in range(12)], [theirs[i] for i in range(12)]).pvalue
    assert report["forget_quality"]["available"] is True
    assert report["forget_quality"]["value"] == pytest.approx(expected, rel=1e-12)
    assert forget_quality_from_reports(report, retain_path) == pytest.approx(expected, rel=1e-12)
    # the retain model against itself: identical truth ratios, p-value 1
    assert forget_quality_from_reports(retain, retain_path) == pytest.approx(1.0)
    # privleak from the retain report's AUCs, every score
    for score, entry in report["mia"].items():
        r_auc = retain["mia"][score]["auc"]
        assert entry["retain_auc"] == pytest.approx(r_auc)
        assert entry["privleak"] == pytest.approx(((1 - entry["auc"]) - (1 - r_auc)) / (1 - r_auc) * 100)
    assert report["summary"]["privleak"] == report["mia"]["min_k"]["privleak"]


def test_model_utility_matches_scipy_hmean():
    report = finalize_report(fake_results(), META)
    values = [report["splits"][s]["metrics"][m] for s, m in MODEL_UTILITY_COMPONENTS]
    assert len(values) == 9
    assert report["model_utility"]["value"] == pytest.approx(hmean(values), rel=1e-12)
    assert report["model_utility"]["components"] == {f"{s}/{m}": v for (s, m), v in zip(MODEL_UTILITY_COMPONENTS, values)}


def test_missing_pieces_are_unavailable_not_errors(tmp_path):
    report = finalize_report(fake_results(rouge=None), META, retain_report=None)
    assert report["forget_quality"] == {"value": None, "available": False, "retain_report": None,
                                        "reason": report["forget_quality"]["reason"]}
    assert "no retain_report given" in report["forget_quality"]["reason"]
    assert report["model_utility"]["available"] is False
    assert "retain/rouge_l_recall" in report["model_utility"]["reason"]
    assert all(e["privleak"] is None and e["privleak_reason"] for e in report["mia"].values())
    missing = finalize_report(fake_results(), META, retain_report=tmp_path / "nope" / "report.json")
    assert missing["forget_quality"]["available"] is False
    assert "not found" in missing["forget_quality"]["reason"]


def test_mismatched_reports_raise(tmp_path):
    retain = finalize_report(fake_results(seed=1, n_forget=10), META)
    path = write(tmp_path, "retain10", retain)
    # other samples: forget quality (and privleak) unavailable with the reason; an error in strict mode
    fq = finalize_report(fake_results(seed=2, n_forget=12), META, path)["forget_quality"]
    assert fq["available"] is False and fq["value"] is None and fq["mismatch"] is True
    assert re.search("Forget samples differ.*12 samples here vs 10 there", fq["reason"])
    with pytest.raises(RetainReportMismatch, match="Forget samples differ.*12 samples here vs 10 there"):
        finalize_report(fake_results(seed=2, n_forget=12), META, path, strict=True)
    other = fake_results(seed=1)
    other["splits"]["forget"]["split"] = "forget05_perturbed"
    path = write(tmp_path, "retain05", finalize_report(other, META))
    with pytest.raises(ValueError, match="Forget split mismatch"):
        forget_quality_from_reports(finalize_report(fake_results(seed=2), META), path)
    no_forget = finalize_report(fake_results(seed=1), META)
    del no_forget["splits"]["forget"]
    with pytest.raises(ValueError, match="no 'forget' split"):
        forget_quality_from_reports(finalize_report(fake_results(seed=2), META), no_forget)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_report(bad)
    with pytest.raises(FileNotFoundError):
        load_report(tmp_path / "missing.json")


def test_data_version_mismatch_makes_forget_quality_unavailable(tmp_path):
    path = write(tmp_path, "retain", finalize_report(fake_results(seed=1), {**META, "data_version": "other"}))
    report = finalize_report(fake_results(seed=2), META, path)
    fq = report["forget_quality"]
    assert fq["available"] is False and fq["value"] is None and fq["mismatch"] is True
    assert "data version" in fq["reason"] and "'other' in the retain report" in fq["reason"]
    assert all(entry["privleak"] is None for entry in report["mia"].values())
    with pytest.raises(RetainReportMismatch, match="data version"):
        finalize_report(fake_results(seed=2), META, path, strict=True)


def test_write_report_files_and_roundtrip(tmp_path):
    report = finalize_report(fake_results(), META)
    paths = write_report(report, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"report.json", "report.md", "metrics.png"}
    assert paths["png"].read_bytes().startswith(PNG_MAGIC)
    loaded = load_report(tmp_path / "out")  # a folder works too
    assert loaded["splits"]["forget"]["per_sample"]["truth_ratio"] == report["splits"]["forget"]["per_sample"]["truth_ratio"]
    assert loaded["model_utility"]["value"] == pytest.approx(report["model_utility"]["value"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| split | n |" in md and "forget (`forget10_perturbed`) | 12 |" in md and "Model utility" in md
    assert md == render_markdown(report)
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temp files


def test_compare_reports_and_cli(tmp_path, capsys):
    retain_path = write(tmp_path, "retain", finalize_report(fake_results(seed=1), {**META, "model": "retain"}))
    a = write(tmp_path, "npo", finalize_report(fake_results(seed=2), META, retain_path))
    b = write(tmp_path, "ga", finalize_report(fake_results(seed=3, rouge=0.2), META, retain_path))
    result = report_main([a, str(tmp_path / "ga"), "--out", str(tmp_path / "cmp")])
    files = {p.name for p in (tmp_path / "cmp").iterdir()}
    assert files == {"comparison.md", "comparison.json", "uc_ut.png"}
    assert (tmp_path / "cmp" / "uc_ut.png").read_bytes().startswith(PNG_MAGIC)
    table = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert table["uc"] == "forget quality" and [r["name"] for r in table["runs"]] == ["npo", "ga"]
    assert table["runs"][0]["uc"] == pytest.approx(load_report(a)["forget_quality"]["value"])
    assert table["runs"][1]["ut"] == pytest.approx(load_report(b)["model_utility"]["value"])
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| npo |" in md and "| ga |" in md and "UC = forget quality" in md
    assert "UC = forget quality" in capsys.readouterr().out
    assert result["table"] == table

    # a run without forget quality: UC falls back to 1 - forget ROUGE-L for every run, and says so
    c = write(tmp_path, "noretain", finalize_report(fake_results(seed=4, rouge=0.3), META))
    table = compare_reports([a, c], tmp_path / "cmp2", names=["A", "C"])["table"]
    assert table["uc"] == "1 − forget ROUGE-L recall"
    assert [r["uc"] for r in table["runs"]] == pytest.approx([0.5, 0.7])


def test_report_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        report_main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert err.value.code == 2
    assert "No evaluation report" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report_main(["--out", str(tmp_path / "o")])  # no runs


def test_nan_free_formatting():
    report = finalize_report(fake_results(), META)
    assert "nan" not in render_markdown(report)
    assert not any(isinstance(v, float) and math.isnan(v) for v in report["summary"].values() if v is not None)
