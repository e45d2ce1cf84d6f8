"""LightningCLI wiring: every YAML under configs/ parses, short names resolve, and `fit` runs end to end."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lit_unlearn.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# how each folder's YAML is applied: a whole config, or one section of it
SECTION = {"trainer": "--trainer", "objective": "--model", "model": "--model", "data": "--data"}


def all_configs() -> list[Path]:
    return sorted(CONFIGS.rglob("*.yaml"))


def test_there_are_configs():
    assert any(p.parent.name == "tofu_mini" for p in all_configs())


@pytest.mark.parametrize("path", all_configs(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses(path, capsys):
    flag = SECTION.get(path.parent.name, "--config")
    args = ["fit", flag, str(path), "--print_config"]
    if path.parent.name == "peft":  # an adapter config is the value of one init argument
        args = ["fit", "--model", "GA", "--data", "UnlearningDataModule", "--model.init_args.peft", str(path),
                "--print_config"]
    elif flag == "--trainer":
        args[1:1] = ["--config", str(CONFIGS / "tofu_mini" / "finetune_target.yaml")]
    elif flag in ("--model", "--data"):
        args[1:1] = ["--data", "UnlearningDataModule"] if flag == "--model" else ["--model", "FinetuneModule"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model:" in printed and "data:" in printed


def test_short_class_names_resolve(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model", "FinetuneModule", "--data", "TOFUDataModule", "--print_config"])
    out = capsys.readouterr().out
    assert "class_path: lit_unlearn.objectives.FinetuneModule" in out
    assert "class_path: lit_unlearn.data.TOFUDataModule" in out


def test_fit_writes_model_folder(tmp_path, builtin_tokenizer_path):
    save = tmp_path / "target"
    main([
        "fit", "--config", str(CONFIGS / "tofu_mini" / "finetune_target.yaml"),
        f"--data.init_args.tokenizer={builtin_tokenizer_path}", "--data.init_args.splits=[forget01]",
        f"--model.init_args.save_dir={save}", "--trainer.max_steps=2", "--trainer.max_epochs=1",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
    ])
    assert (save / "config.json").is_file() and (save / "tokenizer.json").is_file()


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "lit_unlearn", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "fit" in out.stdout and "validate" in out.stdout
