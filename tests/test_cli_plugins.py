"""A user's own objective from the CLI: a module in the working directory, or an installed package that
registers it under the ``lit_unlearn.objectives`` entry-point group (simulated with a ``*.dist-info`` folder on
``sys.path``, which is what ``pip install`` leaves, without running pip)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_unlearn.registry import ENTRY_POINT_GROUP, PluginError, load_objective_plugins, objective_entry_points

CONSOLE_SCRIPT = Path(sys.executable).with_name("lit-unlearn")

OBJECTIVE_SOURCE = '''
from lit_unlearn.objectives import GA


class {name}(GA):
    """Gradient ascent with a cap on the forget loss."""

    def __init__(self, cap: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.cap = cap
'''


def fake_distribution(root: Path, package: str, entry_points: str) -> None:
    """``root/package/__init__.py`` plus ``root/package-0.1.dist-info`` declaring ``entry_points``."""
    dist = root / f"{package}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}\n")


def run_console(args: list[str], cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    if not CONSOLE_SCRIPT.is_file():
        pytest.skip(f"no console script at {CONSOLE_SCRIPT} (package not installed in this environment)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_module_in_working_directory_is_importable(tmp_path):
    """``lit-unlearn fit --model my_objective.CappedGA`` from the folder holding ``my_objective.py``."""
    (tmp_path / "my_objective.py").write_text(OBJECTIVE_SOURCE.format(name="CappedGA"))
    out = run_console(["fit", "--model", "my_objective.CappedGA", "--model.cap", "2.5",
                       "--data", "UnlearningDataModule", "--print_config"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "class_path: my_objective.CappedGA" in out.stdout
    assert "cap: 2.5" in out.stdout


def test_installed_plugin_objective_by_short_name(tmp_path):
    """An entry point in group ``lit_unlearn.objectives`` makes ``--model PluginCappedGA`` resolve."""
    site = tmp_path / "site"
    (site / "capped_plugin").mkdir(parents=True)
    (site / "capped_plugin" / "__init__.py").write_text(OBJECTIVE_SOURCE.format(name="PluginCappedGA"))
    fake_distribution(site, "capped_plugin", "PluginCappedGA = capped_plugin:PluginCappedGA")
    work = tmp_path / "work"  # the working directory holds nothing: only the entry point can find the class
    work.mkdir()
    args = ["fit", "--model", "PluginCappedGA", "--data", "UnlearningDataModule", "--print_config"]
    out = run_console(args, cwd=work, pythonpath=site)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "class_path: capped_plugin.PluginCappedGA" in out.stdout


def test_plugin_entry_points_are_listed_and_loaded(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "plain_plugin", "PlainModule = plain_plugin:PlainModule")
    (tmp_path / "plain_plugin").mkdir()
    (tmp_path / "plain_plugin" / "__init__.py").write_text(
        "import lightning as L\n\nclass PlainModule(L.LightningModule):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [e.name for e in objective_entry_points()] == ["PlainModule"]
    loaded = load_objective_plugins()
    assert list(loaded) == ["PlainModule"] and loaded["PlainModule"].__module__ == "plain_plugin"


@pytest.mark.parametrize("value, source, message", [
    ("missing_plugin_module:Thing", None, "Cannot load the entry point 'Broken'"),
    ("not_a_class_plugin:VALUE", "VALUE = 3\n", "not a LightningModule subclass"),
])
def test_broken_plugin_is_a_clear_error(tmp_path, monkeypatch, value, source, message):
    package = value.split(":")[0]
    fake_distribution(tmp_path, package, f"Broken = {value}")
    if source is not None:
        (tmp_path / f"{package}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as error:
        load_objective_plugins()
    text = str(error.value)
    assert message in text and repr(package) in text and ENTRY_POINT_GROUP in text
