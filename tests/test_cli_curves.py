"""Every run leaves its curves: the shipped configs log to CSV under default_root_dir, and the curves plot.

Also: the saved model's ``lit_unlearn.json`` records the objective's class and hyperparameters, and the CLI
drops the known third-party noise (Lightning's litlogger tip, torch's LeafSpec deprecation) and nothing else.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest

from lit_unlearn.utils.curves import latest_metrics_csv, plot_curves, read_metrics
from lit_unlearn.utils.hparams import jsonable, objective_record
from lit_unlearn.utils.warnings import silence_known_noise

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs" / "tofu_mini").glob("*.yaml")) + sorted(
    (ROOT / "configs" / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_log_to_csv(path):
    import yaml

    trainer = yaml.safe_load(path.read_text())["trainer"]
    assert trainer["logger"] == {"class_path": "lit_unlearn.loggers.RunCSVLogger"}
    assert trainer["log_every_n_steps"] == 1 and trainer["default_root_dir"]


def test_read_metrics_skips_empty_cells(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,step,train/loss,eval/forget_quality\n0,0,2.5,\n0,1,2.25,\n0,1,,0.125\n1,2,2.0,\n")
    assert read_metrics(csv_path) == {"train/loss": [(0, 2.5), (1, 2.25), (2, 2.0)],
                                      "eval/forget_quality": [(1, 0.125)]}


def test_read_metrics_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "metrics.csv"
    bad.write_text("epoch,step,train/loss\n0,0,1.0\n0,1,oops\n")
    with pytest.raises(ValueError, match=r"metrics.csv, line 3"):
        read_metrics(bad)
    with pytest.raises(FileNotFoundError, match="no such metrics file"):
        read_metrics(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="no values logged for \\['train/nll'\\]"):
        (tmp_path / "ok.csv").write_text("step,train/loss\n0,1.0\n")
        plot_curves(tmp_path / "ok.csv", tmp_path / "x.png", keys=["train/nll"])


def test_latest_metrics_csv_orders_versions_numerically(tmp_path):
    for version in (2, 10, 9):
        folder = tmp_path / "lightning_logs" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    assert latest_metrics_csv(tmp_path) == tmp_path / "lightning_logs" / "version_10" / "metrics.csv"
    with pytest.raises(FileNotFoundError, match="no version_<n>/metrics.csv"):
        latest_metrics_csv(tmp_path / "elsewhere")


def test_silence_known_noise_drops_only_the_listed_messages():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`",
                      FutureWarning)
        warnings.warn("some other future change", FutureWarning)
    assert [str(w.message) for w in caught] == ["some other future change"]

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        logger.warning("💡 Tip: For seamless cloud logging, try installing "
                       "[litlogger](https://pypi.org/project/litlogger/)")
        logger.warning("GPU available: False, used: False")
    finally:
        logger.removeHandler(handler)
    assert records == ["GPU available: False, used: False"]


def test_objective_record_is_json_and_drops_private_entries():
    from dataclasses import dataclass

    @dataclass
    class Settings:
        k: int = 3

    class Module:
        hparams = {"lr": 0.5, "cfg": Settings(), "path": Path("a/b"), "_instantiator": "x", "nan": float("nan")}

    record = objective_record(Module())
    owner = "test_objective_record_is_json_and_drops_private_entries"
    assert record == {"class_path": f"{__name__}.{owner}.<locals>.Module",
                      "init_args": {"cfg": {"k": 3}, "lr": 0.5, "nan": "nan", "path": "a/b"}}
    assert json.loads(json.dumps(record)) == record
    assert jsonable((1, {"a": [2.0]})) == [1, {"a": [2.0]}]


def test_three_step_fit_leaves_curves_and_objective_record(tmp_path, builtin_tokenizer_path):
    """The shipped unlearning config, made tiny: a CSV under default_root_dir, a plot, the objective record."""
    from matplotlib.image import imread

    from lit_unlearn.cli import main

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            main([
                "fit", "--config", str(ROOT / "configs" / "tofu_mini" / "unlearn.yaml"),
                "--model.init_args.model_name_or_path=builtin:tiny-llama", "--model.init_args.lr=0.002",
                f"--model.init_args.save_dir={tmp_path / 'model'}",
                f"--data.init_args.tokenizer={builtin_tokenizer_path}", "--data.init_args.forget_split=forget01",
                "--data.init_args.retain_split=retain99", "--data.init_args.batch_size=2",
                "--data.init_args.max_length=48", "--trainer.max_steps=3", f"--trainer.default_root_dir={tmp_path}",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            ])
    finally:
        rank_zero.removeHandler(handler)

    metrics_csv = latest_metrics_csv(tmp_path)
    assert metrics_csv == tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    series = read_metrics(metrics_csv)
    assert [step for step, _ in series["train/loss"]] == [0, 1, 2]
    assert {"train/forget_loss", "train/retain_loss"} <= set(series)
    png = plot_curves(metrics_csv, tmp_path / "curves.png")
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    info = json.loads((tmp_path / "model" / "lit_unlearn.json").read_text())
    assert info["objective"]["class_path"] == "lit_unlearn.objectives.ga.GradDiff"
    init_args = info["objective"]["init_args"]
    assert init_args["lr"] == 0.002 and init_args["model_name_or_path"] == "builtin:tiny-llama"
    assert init_args["tokenizer"] == builtin_tokenizer_path  # linked from data.tokenizer

    assert any(r.startswith("GPU available") for r in records)  # the handler did see Lightning's info records
    assert not any("litlogger" in r or "litmodels" in r for r in records)
    assert not any("LeafSpec" in str(w.message) for w in caught)


def test_curves_command_plots_the_latest_run(tmp_path, capsys):
    from lit_unlearn.utils import curves

    folder = tmp_path / "lightning_logs" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("epoch,step,train/loss,train/forget_loss\n0,0,3.0,1.0\n0,1,2.0,1.5\n")
    out = curves.main([str(tmp_path)])
    assert out == folder / "curves.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in capsys.readouterr().out
