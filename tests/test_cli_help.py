"""The ``lit-unlearn`` front door: quick top-level help without Lightning, per-objective help, command errors."""
from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_unlearn.cli import COMMANDS, LIGHTNING_COMMANDS, main, objective_help_argv, top_level_help

ROOT = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).with_name("lit-unlearn")
EXPECTED_COMMANDS = ("fit", "validate", "test", "demo", "demo-benchmarks", "report", "export", "attack")


def test_top_level_help_names_program_and_every_command():
    text = top_level_help()
    assert text.startswith("lit-unlearn: machine unlearning for LLMs")
    listed = [line.split()[0] for line in text.split("commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()]
    assert listed == list(EXPECTED_COMMANDS) == [c.name for c in COMMANDS]
    assert "--model.help NPO" in text and "lit_unlearn.objectives" in text  # the per-objective help is discoverable


@pytest.mark.parametrize("args", [["--help"], ["-h"], []], ids=["--help", "-h", "no-args"])
def test_console_script_help_is_quick(args):
    if not CONSOLE_SCRIPT.is_file():
        pytest.skip(f"no console script at {CONSOLE_SCRIPT} (package not installed in this environment)")
    start = time.perf_counter()
    out = subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("lit-unlearn: machine unlearning for LLMs")
    assert all(f"\n  {name} " in out.stdout for name in EXPECTED_COMMANDS)
    assert elapsed < 5.0, f"`lit-unlearn {' '.join(args)}` took {elapsed:.1f} s"


def test_help_imports_neither_lightning_nor_transformers():
    code = ("import sys; from lit_unlearn.cli import main; main(['--help']); "
            "heavy = sorted(m for m in ('lightning', 'transformers', 'torch') if m in sys.modules); "
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_every_command_target_is_callable():
    for command in COMMANDS:
        if command.target is None:
            assert command.name in LIGHTNING_COMMANDS
            continue
        module, function = command.target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), command


@pytest.mark.parametrize("argv, expected", [
    (["fit", "--model", "NPO", "--help"], ["fit", "--model.help", "NPO"]),
    (["fit", "--model=NPO", "-h"], ["fit", "--model.help", "NPO"]),
    (["validate", "--config", "c.yaml", "--model", "my_module.Capped", "--help"],
     ["validate", "--model.help", "my_module.Capped"]),
    (["fit", "--model", "configs/objective/npo.yaml", "--help"], ["fit", "--model.help", "lit_unlearn.objectives.NPO"]),
    (["fit", "--help"], None),  # no --model: the command's own help
    (["fit", "--model", "NPO"], None),  # no help asked
    (["demo", "--model", "NPO", "--help"], None),  # not a Lightning command
])
def test_objective_help_argv(argv, expected, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert objective_help_argv(argv) == expected


@pytest.mark.parametrize("model", ["NPO", "configs/objective/npo.yaml"])
def test_fit_model_help_shows_the_objectives_parameters(model, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model", model, "--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "lit_unlearn.objectives.NPO" in out
    # NPO's own parameters and the inherited ones, not the generic trainer help
    assert "--model.beta" in out and "--model.reference" in out and "--model.lr" in out
    assert "--trainer.max_epochs" not in out


def test_unknown_command_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fitt", "--config", "x.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'fitt'" in err and "Did you mean 'fit'" in err and "demo" in err


def test_version(capsys):
    import lit_unlearn

    main(["--version"])
    assert capsys.readouterr().out.strip() == f"lit_unlearn {lit_unlearn.__version__}"
