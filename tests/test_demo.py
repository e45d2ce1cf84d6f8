"""The demo pipeline end to end on a micro configuration: files exist and parse, numbers are sane."""
from __future__ import annotations

import json
import math

import pytest

from lit_unlearn.pipeline import DemoSettings, run_demo

#: a demo small enough for the test suite: 2 seeds, both protocols, 6 evaluation rows per split
MICRO = DemoSettings(
    epochs=40, target_splits=("forget01", "real_authors"), retain_splits=("real_authors",),
    unlearn_epochs=2, batch_size=10, mrd_samples=4, mrd_every_n_epochs=1, max_new_tokens=12,
    eval_batch_size=8, max_samples=6, geffect_every=1, seeds=(0, 1), matched_max_epochs=3, matched_check_every=1,
    robustness_relearn_steps=3,
)


@pytest.fixture(scope="module")
def micro_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, forget_split="forget01", runs=("GA", "NPO+MRD"), settings=MICRO, progress=False)


def test_micro_demo_writes_every_artifact(micro_demo):
    out = micro_demo.out_dir
    for name in ("report.md", "uc_ut.png", "uc_ut_seeds.png", "comparison.json", "comparison.md", "summary.json",
                 "geffect_curves.png", "data/forget01.jsonl", "models/target/lit_unlearn.json",
                 "models/retain/config.json"):
        assert (out / name).is_file(), name
    report_md = (out / "report.md").read_text()
    assert "| GA |" in report_md and "| NPO+MRD |" in report_md and "uc_ut_seeds.png" in report_md
    assert "Matched forgetting" in report_md and "Fixed budget" in report_md
    assert "mrd/" in report_md  # the MRD histogram of the curriculum run is linked
    for run in ("retain", "target", "GA/budget/seed0", "GA/matched/seed1", "NPO_MRD/budget/seed1"):
        report = json.loads((out / "runs" / run / "report.json").read_text())
        assert report["summary"]["forget_memorization_accuracy"] is not None
        assert report["metadata"]["environment"]["torch_num_threads"] == MICRO.num_threads
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"] == ["GA", "NPO+MRD"] and "unlearn GA [seed 0]" in summary["stage_seconds"]
    assert summary["environment"]["packages"]["torch"] and summary["environment"]["torch_num_threads"] == MICRO.num_threads
    assert [(r["name"], r["protocol"], r["seed"]) for r in summary["records"]] == [
        (n, p, s) for n in ("GA", "NPO+MRD") for p in ("budget", "matched") for s in (0, 1)]
    assert (out / "uc_ut_seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "models" / "target" / "lit_unlearn.json").read_text())
    assert meta["finetune_config"]["num_threads"] == MICRO.num_threads


def test_micro_demo_numbers_are_sane(micro_demo):
    comparison = json.loads((micro_demo.out_dir / "comparison.json").read_text())
    rows = {row["name"]: row for row in comparison["runs"]}
    # the retain model against its own report is indistinguishable from itself
    assert rows["retain"]["forget_quality"] == pytest.approx(1.0)
    # the target memorised the forget set; unlearning lowered its memorisation
    assert micro_demo.memorization["target/forget"] >= 0.8
    for seed in (0, 1):
        assert rows[f"GA/budget/seed{seed}"]["forget_memorization_accuracy"] < rows["target"]["forget_memorization_accuracy"]


def test_micro_demo_aggregates_each_configuration_over_its_seeds(micro_demo):
    import numpy as np

    summary = micro_demo.summary
    for name in ("GA", "NPO+MRD"):
        for protocol in ("budget", "matched"):
            values = [r["summary"]["model_utility"] for r in summary["records"]
                      if r["name"] == name and r["protocol"] == protocol]
            stats = summary["aggregate"][name][protocol]["model_utility"]
            assert stats["n"] == 2 and stats["mean"] == pytest.approx(np.mean(values))
            assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    budget = [r for r in summary["records"] if r["protocol"] == "budget"]
    assert {r["steps"] for r in budget} == {MICRO.unlearn_epochs * steps_per_epoch(micro_demo.out_dir)}


def steps_per_epoch(out) -> int:
    """Optimizer steps per pass over the demo's forget01 split (as written to out/data) at MICRO's batch size."""
    samples = len((out / "data" / "forget01.jsonl").read_text().splitlines())
    return math.ceil(samples / MICRO.batch_size)


def test_matched_protocol_stops_at_the_retain_models_forget_ma(micro_demo):
    """Each matched run either reached the threshold (its last check is at or below it, earlier ones above)
    or trained the whole cap."""
    summary = micro_demo.summary
    threshold = summary["matched_threshold"]
    assert 0.0 <= threshold < micro_demo.memorization["target/forget"]
    cap = MICRO.matched_max_epochs * steps_per_epoch(micro_demo.out_dir)
    for record in summary["records"]:
        if record["protocol"] != "matched":
            continue
        assert record["reached"] in (True, False)
        assert record["steps"] <= cap
        checks = record["ma_checks"]
        assert [step for step, _ in checks] == list(range(1, record["steps"] + 1))  # every step (check_every 1)
        assert all(ma > threshold for _, ma in checks[:-1])
        if record["reached"]:
            assert checks[-1][1] <= threshold
        else:
            assert record["steps"] == cap and checks[-1][1] > threshold


@pytest.mark.parametrize("name", ["GA", "NPO+MRD"])
def test_one_run_gives_each_protocol_the_model_of_its_own_run(micro_demo, tmp_path, name):
    """The demo trains once per seed and takes both protocols' models from that run; two separate fits (one
    per protocol, the naive equivalent) end with bit-identical weights, steps and forget-MA checks."""
    import torch

    from lit_unlearn.pipeline import ALL_RUNS, unlearn, unlearn_protocols

    spec = next(s for s in ALL_RUNS if s.name == name)
    threshold = micro_demo.summary["matched_threshold"]
    args = (micro_demo.target, "builtin:tofu-mini", "forget01")
    _, _, outcomes = unlearn_protocols(spec, *args, tmp_path / "both", MICRO, progress=False, seed=1,
                                       ma_threshold=threshold)
    for protocol in ("budget", "matched"):
        module, callbacks = unlearn(spec, *args, tmp_path / protocol, MICRO, progress=False, seed=1,
                                    protocol=protocol, ma_threshold=threshold)
        outcome = outcomes[protocol]
        assert outcome.steps == module.global_step
        separate = module.model.state_dict()
        for key, value in outcome.model.state_dict().items():
            assert torch.equal(value, separate[key]), (protocol, key)
        if protocol == "matched":
            stopper = next(c for c in callbacks if hasattr(c, "stopped_step"))
            assert outcome.reached == (stopper.stopped_step is not None)
            assert outcome.ma_checks == [[h["step"], h["ma_mean"]] for h in stopper.history]


def test_reference_reports_are_cached_with_the_models(micro_demo, tmp_path):
    """A rerun reuses the retain/target reports (same model, settings and evaluation code) and gets the
    report the first run computed; another evaluation setting is evaluated afresh."""
    from dataclasses import replace

    from lit_unlearn.pipeline import cached_reference_report

    retain_report = micro_demo.out_dir / "runs" / "retain" / "report.json"
    report, cached = cached_reference_report("target", micro_demo.target, "builtin:tofu-mini", "forget01",
                                             tmp_path / "target", MICRO, retain_report, progress=False)
    assert cached and report["summary"] == micro_demo.reports["target"]["summary"]
    assert (tmp_path / "target" / "report.md").is_file()
    _, cached = cached_reference_report("target", micro_demo.target, "builtin:tofu-mini", "forget01",
                                        tmp_path / "other", replace(MICRO, max_new_tokens=MICRO.max_new_tokens + 1),
                                        retain_report,
                                        progress=False)
    assert not cached


def test_micro_demo_robustness_columns_are_the_attacks_on_the_saved_matched_model(micro_demo):
    """Each matched record's robustness columns equal a direct call of the attacks on its saved model; budget
    records have none; the references and the report's table are there."""
    from lit_unlearn.attacks import AttackEvalConfig, QuantizeConfig, RelearnConfig, quantization_attack, relearn_attack
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    summary, out = micro_demo.summary, micro_demo.out_dir
    assert not any("robustness" in r for r in summary["records"] if r["protocol"] == "budget")
    matched = [r for r in summary["records"] if r["protocol"] == "matched"]
    assert all("robustness" in r and (out / r["model"] / "config.json").is_file() for r in matched)
    assert set(summary["robustness_references"]) == {"retain", "target"}
    assert summary["aggregate"]["GA"]["matched"]["robustness"]["int4_forget_ma"]["n"] == 2
    assert "Robustness of the matched-protocol models" in (out / "report.md").read_text()
    record = next(r for r in matched if r["name"] == "GA" and r["seed"] == 1)
    tokenizer = load_tokenizer(str(out / record["model"]))
    model = load_causal_lm(str(out / record["model"]), tokenizer)
    ev = AttackEvalConfig(forget_split="forget01", utility=False, mia=False, max_new_tokens=MICRO.max_new_tokens,
                          max_samples=MICRO.max_samples, batch_size=MICRO.eval_batch_size, max_length=64,
                          metrics="forget_ma_rouge")
    quant = quantization_attack(model, tokenizer, QuantizeConfig(schemes=["int4"], group_size="auto"), ev)
    relearn = relearn_attack(model, tokenizer, RelearnConfig(
        steps=(0, MICRO.robustness_relearn_steps), lr=MICRO.robustness_lr, batch_size=MICRO.robustness_batch_size,
        seed=1, progress=False, accelerator="cpu", max_length=64), ev)
    got = record["robustness"]
    expected = {"forget_ma": quant["results"]["full"]["forget/memorization_accuracy"],
                "forget_rouge": quant["results"]["full"]["forget/rouge_l_recall"],
                "int4_forget_ma": quant["results"]["int4"]["forget/memorization_accuracy"],
                "int4_forget_rouge": quant["results"]["int4"]["forget/rouge_l_recall"],
                "relearn_forget_ma_before": relearn["curve"]["forget/memorization_accuracy"][0],
                "relearn_forget_ma": relearn["curve"]["forget/memorization_accuracy"][-1],
                "relearn_forget_rouge": relearn["curve"]["forget/rouge_l_recall"][-1]}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    # the matched model's forget MA in the report and in the robustness columns are the same rows and metric
    report = json.loads((out / record["report"]).read_text())
    assert got["forget_ma"] == pytest.approx(report["summary"]["forget_memorization_accuracy"], abs=1e-5)


def test_unknown_run_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown demo runs"):
        run_demo(tmp_path, runs=("GA", "Nope"))


def test_learning_rate_belongs_in_the_spec_not_in_kwargs(tmp_path):
    from lit_unlearn.pipeline import UnlearnSpec, unlearn

    with pytest.raises(ValueError, match="UnlearnSpec.lr"):
        unlearn(UnlearnSpec("GA", "GA", {"lr": 1e-3}), tmp_path, "builtin:tofu-mini", "forget10", tmp_path,
                DemoSettings(), progress=False)


def test_per_run_learning_rates_are_the_sweep_picks():
    from lit_unlearn.pipeline import ALL_RUNS

    overrides = {s.name: s.lr for s in ALL_RUNS if s.lr is not None}
    assert overrides == {"IdkDPO": 3e-4, "RMU": 1e-2, "IdkDPO+MRD": 3e-4, "PDU": 3e-4, "AltPO": 3e-4}  # benchmarks/demo_lr_sweep.py
