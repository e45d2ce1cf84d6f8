"""The demo pipeline end to end on a micro configuration: files exist and parse, numbers are sane."""
from __future__ import annotations

import json

import pytest

from lit_unlearn.pipeline import DemoSettings, run_demo


@pytest.fixture(scope="module")
def micro_demo(tmp_path_factory):
    settings = DemoSettings(
        epochs=40, target_splits=("forget01", "real_authors"), retain_splits=("real_authors",),
        unlearn_epochs=2, batch_size=10, mrd_samples=4, mrd_every_n_epochs=1, max_new_tokens=12,
        eval_batch_size=8, max_samples=6, geffect_every=1,
    )
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, forget_split="forget01", runs=("GA", "NPO+MRD"), settings=settings, progress=False)


def test_micro_demo_writes_every_artifact(micro_demo):
    out = micro_demo.out_dir
    for name in ("report.md", "uc_ut.png", "comparison.json", "comparison.md", "summary.json",
                 "geffect_curves.png", "data/forget01.jsonl"):
        assert (out / name).is_file(), name
    report_md = (out / "report.md").read_text()
    assert "| GA |" in report_md and "| NPO+MRD |" in report_md and "![UC vs UT](uc_ut.png)" in report_md
    assert "mrd/" in report_md  # the MRD histogram of the curriculum run is linked
    for run in ("retain", "target", "GA", "NPO_MRD"):
        report = json.loads((out / "runs" / run / "report.json").read_text())
        assert report["summary"]["forget_memorization_accuracy"] is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"] == ["GA", "NPO+MRD"] and "unlearn GA" in summary["stage_seconds"]
    assert (out / "uc_ut.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_micro_demo_numbers_are_sane(micro_demo):
    comparison = json.loads((micro_demo.out_dir / "comparison.json").read_text())
    rows = {row["name"]: row for row in comparison["runs"]}
    # the retain model against its own report is indistinguishable from itself
    assert rows["retain"]["forget_quality"] == pytest.approx(1.0)
    # the target memorised the forget set; unlearning lowered its memorisation
    assert micro_demo.memorization["target/forget"] >= 0.8
    assert rows["GA"]["forget_memorization_accuracy"] < rows["target"]["forget_memorization_accuracy"]


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
    assert overrides == {"IdkDPO": 3e-4, "RMU": 1e-2, "IdkDPO+MRD": 3e-4}  # benchmarks/demo_lr_sweep.py
