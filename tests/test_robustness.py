"""Robustness additions: the cheap forget probe against the TOFU suite, the caller's RNG state, the robustness
section inside an evaluation report, the demo's robustness columns (rendering), and the attacks on MUSE and WMDP."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from lit_unlearn.attacks import AttackEvalConfig, RelearnConfig, relearn_attack, run_attacks

EVAL = dict(max_samples=4, max_new_tokens=6, utility=False, mia=False, batch_size=4, max_length=64)


@pytest.fixture(scope="module")
def tokenizer(builtin_tokenizer_path):
    from lit_unlearn.models.loading import load_tokenizer

    return load_tokenizer(builtin_tokenizer_path)


@pytest.fixture(scope="module")
def trained(tokenizer):
    """The tiny model after 40 Adam steps on the first 4 forget rows: MA and ROUGE-L well above 0."""
    from lit_unlearn.data.tofu import encode_rows
    from lit_unlearn.data.tokenize import PadCollator
    from lit_unlearn.models.loading import load_causal_lm

    torch.manual_seed(0)
    model = load_causal_lm("builtin:tiny-llama", tokenizer, seed=0)
    rows = AttackEvalConfig(**EVAL).rows("forget")
    batch = PadCollator(tokenizer.pad_token_id)(encode_rows(tokenizer, rows, "forget", 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_forget_probe_equals_the_tofu_suite(trained, tokenizer):
    """MA and ROUGE-L of the probe are the suite's forget/memorization_accuracy and forget/rouge_l_recall on the
    same rows (the suite computes them through its own data pipeline and evaluator)."""
    from lit_unlearn.attacks.evaluation import attack_metrics, evaluate, measure

    suite = attack_metrics(evaluate(trained, tokenizer, AttackEvalConfig(**EVAL)))
    probe = measure(trained, tokenizer, AttackEvalConfig(**EVAL, metrics="forget_ma_rouge"))
    assert suite["forget/memorization_accuracy"] > 0.2 and suite["forget/rouge_l_recall"] > 0.1  # not trivial
    for key in ("forget/memorization_accuracy", "forget/rouge_l_recall"):
        assert probe[key] == pytest.approx(suite[key], abs=1e-6), key
    # a subset of rows: the mean over those rows of the per-row values
    half = measure(trained, tokenizer, AttackEvalConfig(**EVAL, metrics="forget_ma_rouge"), forget_rows=[1, 3])
    rows = [measure(trained, tokenizer, AttackEvalConfig(**{**EVAL, "max_samples": 4}, metrics="forget_ma_rouge"),
                    forget_rows=[i]) for i in (1, 3)]
    assert half["forget/memorization_accuracy"] == pytest.approx(
        np.mean([r["forget/memorization_accuracy"] for r in rows]), abs=1e-6)
    with pytest.raises(ValueError, match="eval.metrics"):
        AttackEvalConfig(metrics="fast")


def test_robustness_summary_equals_the_two_attacks_it_summarises(trained, tokenizer):
    """The demo's columns: one per-row probe of the full-precision model (or the TOFU report's per-sample
    values) stands in for the attacks' own full-precision and step-0 probes; the numbers are the same."""
    from lit_unlearn.attacks import QuantizeConfig, quantization_attack, robustness_summary
    from lit_unlearn.attacks.evaluation import evaluate

    kwargs = dict(relearn_steps=3, max_samples=4, max_new_tokens=6, eval_batch_size=4, max_length=64, seed=1)
    fast = robustness_summary(trained, tokenizer, **kwargs)
    ev = AttackEvalConfig(**{**EVAL, "metrics": "forget_ma_rouge"})
    quant = quantization_attack(trained, tokenizer, QuantizeConfig(schemes=["int4"], group_size="auto"), ev)
    relearn = relearn_attack(trained, tokenizer, RelearnConfig(steps=(0, 3), lr=5e-4, batch_size=4, seed=1,
                                                                max_length=64), ev)
    int4 = quant["results"][next(k for k in quant["results"] if k != "full")]
    naive = {"forget_ma": quant["results"]["full"]["forget/memorization_accuracy"],
             "forget_rouge": quant["results"]["full"]["forget/rouge_l_recall"],
             "int4_forget_ma": int4["forget/memorization_accuracy"], "int4_forget_rouge": int4["forget/rouge_l_recall"],
             "relearn_forget_ma_before": relearn["curve"]["forget/memorization_accuracy"][0],
             "relearn_forget_rouge_before": relearn["curve"]["forget/rouge_l_recall"][0],
             "relearn_forget_ma": relearn["curve"]["forget/memorization_accuracy"][-1],
             "relearn_forget_rouge": relearn["curve"]["forget/rouge_l_recall"][-1]}
    assert naive["forget_ma"] > 0.2 and naive["relearn_forget_ma"] != naive["relearn_forget_ma_before"]  # not trivial
    for key, value in naive.items():
        assert fast[key] == pytest.approx(value, abs=1e-6), key
    # the TOFU report's per-sample forget values instead of the probe
    per_sample = evaluate(trained, tokenizer, AttackEvalConfig(**EVAL))["splits"]["forget"]["per_sample"]
    from_report = robustness_summary(trained, tokenizer, forget_per_sample=per_sample, **kwargs)
    for key, value in naive.items():
        assert from_report[key] == pytest.approx(value, abs=1e-6), key
    with pytest.raises(ValueError, match="must hold a value for each of the 4 rows"):
        robustness_summary(trained, tokenizer, forget_per_sample={k: {0: 1.0} for k in per_sample}, **kwargs)


def test_relearn_leaves_the_global_rng_state_alone(trained, tokenizer):
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    before = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    relearn_attack(trained, tokenizer, RelearnConfig(steps=(0, 2), lr=1e-3, batch_size=2, seed=7, progress=False,
                                                     accelerator="cpu"), {**EVAL, "metrics": "forget_ma_rouge"})
    after = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    assert after[0] == before[0]
    assert all(np.array_equal(a, b) for a, b in zip(after[1][1:2], before[1][1:2])) and after[1][2:] == before[1][2:]
    assert torch.equal(after[2], before[2])


def test_global_batches_are_seeded_permutations_cut_into_batches():
    from lit_unlearn.attacks.relearn import _RankBatches, global_batches

    batches = global_batches(5, 4, 3, seed=1)
    generator = torch.Generator().manual_seed(1)
    stream = torch.randperm(5, generator=generator).tolist() + torch.randperm(5, generator=generator).tolist() \
        + torch.randperm(5, generator=generator).tolist()
    assert batches == [stream[0:4], stream[4:8], stream[8:12]]
    assert [b for b in _RankBatches(batches, 1, 2)] == [b[2:4] for b in batches]
    with pytest.raises(ValueError, match="divide relearn.batch_size"):
        RelearnConfig(batch_size=3, devices=2)


def _fake_report(folder):
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({"summary": {"forget_quality": 0.5}, "splits": {}}))
    (folder / "report.md").write_text("# Evaluation\n\nbody\n")
    return folder / "report.json"


def test_run_attacks_adds_the_section_to_the_report(trained, tokenizer, tmp_path):
    report = _fake_report(tmp_path / "run")
    kwargs = dict(eval={**EVAL, "metrics": "forget_ma_rouge"}, quantize={"schemes": ["int8"], "group_size": "auto"},
                  relearn={"steps": (0, 1), "lr": 1e-3, "batch_size": 2, "progress": False, "accelerator": "cpu"},
                  out_dir=tmp_path / "attack", report=tmp_path / "run")
    section = run_attacks(trained, tokenizer, "quantize,relearn", **kwargs)
    data = json.loads(report.read_text())
    assert data["summary"] == {"forget_quality": 0.5}  # the report is kept
    assert data["robustness"]["quantize"]["results"] == json.loads(json.dumps(section["quantize"]["results"]))
    assert data["robustness"]["files"]["png"] == "../attack/robustness.png"
    md = (tmp_path / "run" / "report.md").read_text()
    assert md.startswith("# Evaluation\n\nbody") and "## Robustness" in md and "### Quantization" in md
    assert "| int8 |" in md and "](../attack/robustness.png)" in md and "### Relearning" in md
    run_attacks(trained, tokenizer, "quantize", **{**kwargs, "relearn": None})  # again: replaced, not appended
    assert (tmp_path / "run" / "report.md").read_text().count("## Robustness") == 1
    assert "](robustness.png)" in (tmp_path / "attack" / "robustness.md").read_text()
    with pytest.raises(FileNotFoundError, match="no evaluation report"):
        run_attacks(trained, tokenizer, "quantize", **{**kwargs, "report": tmp_path / "nowhere"})


def test_cli_finds_the_report_beside_the_model(trained, tokenizer, tmp_path):
    from lit_unlearn.attacks.cli import attack_main, find_report

    report = _fake_report(tmp_path / "runs" / "GA" / "matched" / "seed0")
    folder = report.parent / "model"
    trained.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert find_report(str(folder), None) == str(report) and find_report(str(folder), "none") is None
    attack_main(["--model", str(folder), "--attacks", "quantize", "--quantize.schemes", "int8",
                 "--quantize.group_size", "auto", "--eval.max_samples", "4", "--eval.max_new_tokens", "4",
                 "--eval.utility", "false", "--eval.mia", "false", "--no_progress", "--out", str(tmp_path / "o")])
    assert "int8" in json.loads(report.read_text())["robustness"]["quantize"]["results"]


# ----------------------------------------------------------------------------- demo tables


def _summary(with_robustness: bool) -> dict:
    from lit_unlearn import results

    records = []
    for name, shift in (("GA", 0.3), ("NPO", 0.0)):
        for seed in (0, 1, 2):
            record = {"name": name, "protocol": "matched", "seed": seed, "steps": 10, "reached": True,
                      "summary": {"forget_quality": 0.1, "model_utility": 0.5,
                                  "forget_memorization_accuracy": 0.4}}
            if with_robustness:
                record["robustness"] = {
                    "forget_ma": 0.4 + 0.01 * seed, "forget_rouge": 0.3, "int4_forget_ma": 0.4 + shift + 0.01 * seed,
                    "int4_forget_rouge": 0.3, "relearn_forget_ma_before": 0.4, "relearn_forget_rouge_before": 0.3,
                    "relearn_forget_ma": 0.45 + 0.05 * seed, "relearn_forget_rouge": 0.35, "relearn_steps": 25,
                    "int4_group_size": None}
            records.append(record)
    summary = {"settings": {"seeds": [0, 1, 2], "protocols": ["matched"]}, "records": records,
               "references": {}, "aggregate": results.aggregate(records)}
    if with_robustness:
        summary["robustness_references"] = {"target": dict(records[0]["robustness"], forget_ma=0.9)}
    return summary


def test_demo_tables_show_the_robustness_columns_and_the_recovery_sentence():
    from lit_unlearn import results

    summary = _summary(True)
    stats = summary["aggregate"]["GA"]["matched"]["robustness"]
    assert stats["int4_forget_ma"]["mean"] == pytest.approx(np.mean([0.7, 0.71, 0.72]))
    assert stats["int4_forget_ma"]["std"] == pytest.approx(np.std([0.7, 0.71, 0.72], ddof=1))
    text = results.render(summary)
    assert "**Robustness of the matched-protocol models**" in text and "25 relearning steps" in text
    assert "| target (reference) | 0.900 → 0.700 |" in text
    assert "| GA | 0.410 ± 0.010 → 0.710 ± 0.010 |" in text
    # GA's int4 MA range [0.70, 0.72] lies above its before range [0.40, 0.42]; NPO's equals it
    assert "After 4-bit RTN quantization, forget MA recovers beyond the seed spread (min–max ranges before and after" \
           " do not overlap) for 1 of 2 configurations: GA; not for NPO." in text
    # relearning: GA and NPO both [0.45, 0.55] vs 0.40
    assert "After 25 relearning steps, forget MA recovers beyond the seed spread" in text and "2 of 2" in text


def test_summaries_without_robustness_render_as_before():
    from lit_unlearn import results

    plain = _summary(False)
    assert "robustness" not in plain["aggregate"]["GA"]["matched"]
    assert "Robustness" not in results.render(plain)


# ----------------------------------------------------------------------------- other benchmarks


def test_attacks_on_muse_keep_verbmem_knowmem_and_retain_knowmem(trained, tokenizer):
    """Quantization and (benign) relearning on builtin:muse-mini; the kept numbers are the MUSE report's."""
    from lit_unlearn.attacks.evaluation import evaluate_benchmark
    from lit_unlearn.attacks.quantization import rtn_quantize

    ev = {"benchmark": "muse", "max_samples": 2, "batch_size": 2,
          "benchmark_config": {"verbmem_max_new_tokens": 4, "knowmem_max_new_tokens": 4, "privleak_max_length": 32,
                               "keys": ["verbmem_forget", "knowmem_forget", "knowmem_retain"]}}
    section = run_attacks(trained, tokenizer, ["quantize", "relearn"], eval=ev,
                          quantize={"schemes": ["int8"], "group_size": "auto"},
                          relearn={"steps": [0, 1], "lr": 1e-3, "batch_size": 2, "data_split": "retain90",
                                   "data_source": "builtin:tofu-mini", "progress": False, "accelerator": "cpu"})
    assert AttackEvalConfig(**ev).source == "builtin:muse-mini"
    results = section["quantize"]["results"]
    assert set(results["full"]) == {"forget/verbmem", "forget/knowmem", "utility/knowmem_retain"}
    report = evaluate_benchmark(rtn_quantize(trained, "int8"), tokenizer, AttackEvalConfig(**ev))
    assert results["int8"] == {"forget/verbmem": report["verbmem"]["value"],
                               "forget/knowmem": report["knowmem_forget"]["value"],
                               "utility/knowmem_retain": report["knowmem_retain"]["value"]}
    assert section["relearn"]["curve"]["forget/verbmem"][0] == results["full"]["forget/verbmem"]
    assert "forget verbmem" in _markdown(section)
    with pytest.raises(ValueError, match="relearn.data_split"):
        run_attacks(trained, tokenizer, ["relearn"], eval=ev)


def test_attacks_on_wmdp_keep_forget_and_utility_accuracy(trained, tokenizer):
    pytest.importorskip("lm_eval")
    ev = {"benchmark": "wmdp", "max_samples": 3, "batch_size": 4}
    section = run_attacks(trained, tokenizer, ["quantize"], eval=ev, quantize={"schemes": ["int8"], "group_size": "auto"})
    results = section["quantize"]["results"]
    tasks = [k for k in results["full"] if k.startswith("forget/") and k.endswith("/acc") and k != "forget/acc"]
    assert tasks and "utility/acc" in results["full"]
    for metrics in results.values():  # forget/acc is the mean of the forget tasks' accuracies
        assert metrics["forget/acc"] == pytest.approx(np.mean([metrics[t] for t in tasks]))
        assert 0.0 <= metrics["utility/acc"] <= 1.0
    with pytest.raises(ValueError, match="eval.benchmark must be one of"):
        AttackEvalConfig(benchmark="nope")


def _markdown(section) -> str:
    from lit_unlearn.attacks.report import render_markdown

    return render_markdown(section)
