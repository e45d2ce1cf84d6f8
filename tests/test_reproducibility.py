"""Reproducibility: the lock file pins every dependency, runs record their environment and thread count, the
demo gives identical reports in two processes, and the results pages are generated from recorded runs."""
from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lit_unlearn import results
from lit_unlearn.utils import environment

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- lock file


def _lock() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((ROOT / "requirements" / "lock.txt").read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"lock.txt line {number} is not `name==version`: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def test_lock_file_pins_every_requirement_within_its_range():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requirements = [r for r in config["options"]["install_requires"].splitlines() if r.strip()]
    requirements += [r for r in config["options.extras_require"]["test"].splitlines() if r.strip()]
    pins = _lock()
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "torch":  # pinned by the Makefile's TORCH variable (CPU or CUDA build)
            continue
        assert name in pins, f"{req.name} is not in requirements/lock.txt: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"lock.txt pins {req.name}=={pins[name]} outside setup.cfg's {req.specifier}: run `make lock`"
    assert "torch" not in pins and "lit-unlearn" not in pins


def test_lock_file_matches_this_environment():
    """The suite runs in the locked environment (``make test``), so what is installed is what the lock says."""
    from importlib import metadata

    if os.environ.get("LIT_UNLEARN_UNLOCKED"):
        pytest.skip("LIT_UNLEARN_UNLOCKED is set: running outside the locked environment on purpose")
    mismatched = {}
    for name, version in _lock().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            mismatched[name] = (version, installed)
    assert not mismatched, f"installed versions differ from requirements/lock.txt (lock, installed): {mismatched}"


def test_makefile_installs_from_the_lock_file():
    makefile = (ROOT / "Makefile").read_text()
    assert "-r $(LOCK)" in makefile and "LOCK := requirements/lock.txt" in makefile
    assert "--no-deps -e" in makefile  # the package itself adds no unpinned dependency


# ----------------------------------------------------------------------------- environment


def test_environment_info_records_versions_cpu_and_threads():
    import lightning
    import transformers

    previous = torch.get_num_threads()
    try:
        assert environment.set_num_threads(1) == 1
        info = environment.environment_info()
    finally:
        torch.set_num_threads(previous)
    assert info["torch_num_threads"] == 1
    packages = info["packages"]
    assert packages["torch"] == torch.__version__.split("+")[0] or packages["torch"] == torch.__version__
    assert packages["transformers"] == transformers.__version__ and packages["lightning"] == lightning.__version__
    for name in ("tokenizers", "torchmetrics", "datasets", "numpy"):
        assert packages[name], name
    assert info["python"].count(".") == 2 and info["cpu"] and isinstance(info["gpus"], list)


def test_thread_count_comes_from_the_environment_variable(monkeypatch):
    monkeypatch.setenv(environment.NUM_THREADS_ENV, "3")
    assert environment.default_num_threads() == 3
    monkeypatch.setenv(environment.NUM_THREADS_ENV, "two")
    with pytest.raises(ValueError, match="LIT_UNLEARN_NUM_THREADS='two' is not an integer"):
        environment.default_num_threads()
    monkeypatch.setenv(environment.NUM_THREADS_ENV, "0")
    with pytest.raises(ValueError, match="at least 1"):
        environment.default_num_threads()
    monkeypatch.delenv(environment.NUM_THREADS_ENV)
    assert environment.default_num_threads() == environment.DEFAULT_NUM_THREADS


def test_cli_fixes_the_thread_count_and_deterministic_kernels():
    from lit_unlearn.cli import lightning_cli

    previous = torch.get_num_threads()
    try:
        cli = lightning_cli(["--model", "GA", "--model.init_args.model_name_or_path", "builtin:tiny-llama",
                             "--data", "UnlearningDataModule", "--num_threads", "1", "--trainer.accelerator", "cpu",
                             "--trainer.logger", "false"],
                            run=False)
        assert torch.get_num_threads() == 1
        assert cli.config["num_threads"] == 1 and cli.config["trainer"]["deterministic"] == "warn"
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(False)


# ----------------------------------------------------------------------------- results rendering


def _record(name, protocol, seed, mu, fq, steps=10, reached=None):
    summary = {key: None for key, _ in results.METRICS}
    summary.update(model_utility=mu, forget_quality=fq)
    return {"name": name, "protocol": protocol, "seed": seed, "steps": steps, "reached": reached, "summary": summary}


def test_spread_matches_numpy():
    values = [0.31, 0.12, 0.44, None]
    stats = results.spread(values)
    xs = np.array([0.31, 0.12, 0.44])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(xs.mean())
    assert stats["std"] == pytest.approx(xs.std(ddof=1)) and (stats["min"], stats["max"]) == (0.12, 0.44)
    assert results.spread([None])["mean"] is None and results.spread([0.5])["std"] == 0.0


def test_aggregate_groups_by_name_and_protocol_and_separation_is_range_overlap():
    records = [_record("A", "budget", s, mu, 0.1) for s, mu in enumerate([0.40, 0.42, 0.41])]
    records += [_record("B", "budget", s, mu, 0.2) for s, mu in enumerate([0.30, 0.39, 0.35])]
    records += [_record("C", "budget", s, mu, 0.3) for s, mu in enumerate([0.36, 0.45, 0.38])]
    stats = results.aggregate(records)
    assert list(stats) == ["A", "B", "C"] and stats["A"]["budget"]["model_utility"]["n"] == 3
    assert results.separated(stats["A"]["budget"]["model_utility"], stats["B"]["budget"]["model_utility"])
    assert not results.separated(stats["A"]["budget"]["model_utility"], stats["C"]["budget"]["model_utility"])
    summary = {"aggregate": stats}
    text = "\n".join(results.separation_text(summary, "budget"))
    assert "A > B" in text and "A vs C" in text and "C vs B" in text


def _robust_record(name: str, seed: int, ma: float, int4: float, held: float, relearned: float) -> dict:
    record = _record(name, "matched", seed, 0.4, 0.1)
    record["robustness"] = {"forget_ma": ma, "forget_rouge": ma, "int4_forget_ma": int4, "int4_forget_rouge": int4,
                            "relearn_forget_ma_before": held, "relearn_forget_rouge_before": held,
                            "relearn_forget_ma": relearned, "relearn_forget_rouge": relearned, "relearn_steps": 25}
    return record


def test_robustness_statement_names_recovery_beyond_the_spread_and_above_the_retain_reference():
    # Q: int4 lifts MA beyond the seed spread; R: relearning lifts MA above the retain model's relearned 0.70 on
    # every seed; S: relearning lifts it beyond its own spread but one seed stays below the retain reference
    records = [_robust_record("Q", s, ma, ma + 0.2, ma, ma + 0.01) for s, ma in enumerate([0.50, 0.52, 0.51])]
    records += [_robust_record("R", s, 0.5, 0.5, held, held + 0.3) for s, held in enumerate([0.50, 0.52, 0.51])]
    records += [_robust_record("S", s, 0.5, 0.5, held, after) for s, (held, after) in
                enumerate([(0.50, 0.68), (0.52, 0.75), (0.51, 0.74)])]
    summary = {"aggregate": results.aggregate(records), "settings": {"seeds": [0, 1, 2]},
               "robustness_references": {"retain": {"relearn_forget_ma_before": 0.60, "relearn_forget_ma": 0.70}}}
    text = results.robustness_statement(summary)
    assert "reproduces here for 1 of 3 configurations (Q)" in text
    assert "for 2 of 3 configurations: R, S; not for Q." in text
    assert "from held-out forget MA 0.600 to 0.700" in text and "comes back: R (1 of 3)." in text
    # no robustness columns: nothing to say
    plain = {"aggregate": results.aggregate([_record("A", "matched", 0, 0.4, 0.1)])}
    assert results.robustness_statement(plain) == ""


def test_readme_robustness_statement_is_generated_from_the_recorded_demo():
    """README.md's robustness block is what `--section robustness` renders from docs/results/demo_full.json."""
    text = (ROOT / "README.md").read_text()
    expected = results.robustness_statement(results.load_summary(ROOT / "docs" / "results" / "demo_full.json"))
    assert expected, "docs/results/demo_full.json has no robustness columns"
    assert results.replace_block(text, "robustness", expected) == text, \
        "README.md's robustness block differs from docs/results/demo_full.json; regenerate it (see README.md)"


def test_step_cost_table_is_the_recorded_output():
    """docs/benchmarks.md shows benchmarks/step_cost.py's recorded output verbatim (no number typed by hand)."""
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    recorded = (ROOT / "docs" / "results" / "step_cost_2.txt").read_text()
    assert results.replace_block(page, "step-cost-2", "```\n" + recorded + "```\n") == page


@pytest.mark.parametrize("page", ["README.md", "docs/benchmarks.md"])
def test_step_overhead_block_is_the_recorded_output(page):
    """README.md and docs/benchmarks.md show benchmarks/step_overhead.py's recorded output verbatim."""
    text = (ROOT / page).read_text()
    recorded = (ROOT / "benchmarks" / "results" / "step_overhead.txt").read_text()
    assert results.replace_block(text, "step-overhead", "```\n" + recorded + "```\n") == text


def test_many_configurations_list_only_the_pairs_that_are_not_separated():
    """Above MAX_LISTED_CONFIGS configurations the text names the ties only; they are exactly the pairs whose
    min-max ranges overlap (checked pair by pair), and the count of separated pairs is the rest."""
    import itertools

    n = results.MAX_LISTED_CONFIGS + 2
    values = {f"C{i}": [0.1 * (i // 2) + d for d in (0.0, 0.02, 0.04)] for i in range(n)}  # pairs of equals
    records = [_record(name, "budget", s, mu, 0.1) for name, mus in values.items() for s, mu in enumerate(mus)]
    stats = results.aggregate(records)
    text = "\n".join(results.separation_text({"aggregate": stats}, "budget"))
    ties = {frozenset((a, b)) for a, b in itertools.combinations(values, 2)
            if not results.separated(stats[a]["budget"]["model_utility"], stats[b]["budget"]["model_utility"])}
    listed = text.split("Not separated (cannot be told apart at this scale): ")[1].rstrip(".").split("; ")
    assert {frozenset(pair.split(" vs ")) for pair in listed} == ties
    assert f"{n * (n - 1) // 2 - len(ties)} of {n * (n - 1) // 2} pairs are separated" in text


def test_replace_block_rewrites_only_the_named_block():
    page = "intro\n<!-- BEGIN GENERATED: demo -->\nold\n<!-- END GENERATED: demo -->\ntail\n"
    new = results.replace_block(page, "demo", "new table\n")
    assert new == "intro\n<!-- BEGIN GENERATED: demo -->\nnew table\n<!-- END GENERATED: demo -->\ntail\n"
    with pytest.raises(ValueError, match="no generated block 'other'"):
        results.replace_block(page, "other", "x")


def test_results_pages_are_generated_from_the_recorded_summaries():
    """Every generated block of docs/results.md equals what `python -m lit_unlearn.results` renders from the
    summary.json files recorded next to it (so no number there is typed by hand)."""
    page = ROOT / "docs" / "results.md"
    recorded = ROOT / "docs" / "results"
    text = page.read_text()
    load = results.load_summary
    blocks = {
        "demo": lambda: results.render(load(recorded / "demo.json")),
        "demo-full": lambda: results.render(load(recorded / "demo_full.json")),
        # the 1-thread run was recorded on the Intel Xeon, like the 2-thread run it is compared with
        "threads": lambda: results.render_comparison(load(recorded / "demo_intel_xeon.json"),
                                                     load(recorded / "demo_1thread.json")),
        "processors": lambda: results.render_comparison(load(recorded / "demo_intel_xeon.json"),
                                                        load(recorded / "demo_amd_epyc.json")),
    }
    found = re.findall(r"<!-- BEGIN GENERATED: ([\w-]+) -->", text)
    assert found and set(found) <= set(blocks), f"unknown generated blocks in docs/results.md: {found}"
    for block in found:
        assert results.replace_block(text, block, blocks[block]()) == text, \
            f"docs/results.md block {block!r} differs from its recorded summary; regenerate it (see the page)"
    assert "BEGIN GENERATED: demo -->" in text


# ----------------------------------------------------------------------------- determinism


_DEMO_SCRIPT = textwrap.dedent("""
    import sys
    from lit_unlearn.pipeline import DemoSettings, run_demo
    settings = DemoSettings(epochs=30, target_splits=("forget01", "real_authors"), retain_splits=("real_authors",),
                            unlearn_epochs=2, batch_size=10, mrd_samples=4, mrd_every_n_epochs=1, max_new_tokens=8,
                            eval_batch_size=8, max_samples=4, geffect_every=1, seeds=(0, 1), matched_max_epochs=2,
                            matched_check_every=1, num_threads=1, workers=int(sys.argv[2]))
    if __name__ == "__main__":  # workers > 1 spawn processes that import this script
        run_demo(sys.argv[1], forget_split="forget01", runs=("NPO+MRD",), settings=settings, progress=False)
""")

# timings, and the number of worker processes (which must change no number: one run of the test uses 1, the other 2)
_VOLATILE = {"timestamp", "stage_seconds", "wall_seconds", "date", "runtime_s", "workers"}


def _normalised(obj):
    if isinstance(obj, dict):
        return {k: _normalised(v) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, list):
        return [_normalised(v) for v in obj]
    return obj


def _differences(a, b, path="") -> list[str]:
    """The paths at which two JSON values differ (for a readable assertion message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"[:300]]


def _load(tmp_path: Path, name: str, relative: Path):
    """A JSON file of run ``name`` with its own folders (output and cache) replaced by placeholders."""
    text = (tmp_path / name / relative).read_text()
    text = text.replace(str(tmp_path / f"home_{name}"), "<home>").replace(str(tmp_path / name), "<out>")
    return _normalised(json.loads(text))


def test_micro_demo_is_identical_in_two_processes(tmp_path):
    """Two separate processes (each training its own target and retain model in its own cache), one running the
    unlearning runs itself and one in a pool of two worker processes, give the same summary and the same report
    for every run, timings and paths aside."""
    script = tmp_path / "demo.py"
    script.write_text(_DEMO_SCRIPT)
    procs = []
    for name, workers in (("a", "1"), ("b", "2")):
        env = {**os.environ, "LIT_UNLEARN_HOME": str(tmp_path / f"home_{name}")}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / name), workers], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-3000:]
    reports_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("report.json"))
    reports_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("report.json"))
    assert reports_a == reports_b and len(reports_a) == 2 + 4  # retain, target, NPO+MRD x 2 protocols x 2 seeds
    for relative in [Path("summary.json"), *reports_a]:
        a, b = _load(tmp_path, "a", relative), _load(tmp_path, "b", relative)
        assert a == b, f"{relative} differs between the two processes: {_differences(a, b)[:5]}"
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["environment"]["torch_num_threads"] == 1
    assert (summary["workers"], json.loads((tmp_path / "b" / "summary.json").read_text())["workers"]) == (1, 2)
    # the seeds really differ: the two seeds' runs are not copies of each other
    seeds = [r for r in summary["records"] if r["protocol"] == "budget"]
    assert seeds[0]["summary"] != seeds[1]["summary"] or seeds[0]["ma_checks"] != seeds[1]["ma_checks"]


def test_variance_table_is_generated_from_its_recorded_study():
    """docs/reproducibility.md's `variance` block equals what benchmarks/demo_variance.py renders from the
    recorded docs/results/variance.json."""
    import importlib.util

    page = (ROOT / "docs" / "reproducibility.md").read_text()
    recorded = ROOT / "docs" / "results" / "variance.json"
    assert "BEGIN GENERATED: variance -->" in page
    spec = importlib.util.spec_from_file_location("demo_variance", ROOT / "benchmarks" / "demo_variance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render(json.loads(recorded.read_text()))
    assert results.replace_block(page, "variance", text) == page


def _pinned_in_subprocess(env_overrides: dict[str, str]) -> dict:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR",
                                                             "LIT_UNLEARN_PORTABLE_KERNELS")}
    env.update(env_overrides)
    code = ("import json, os\n"
            "from lit_unlearn.utils.cpu_kernels import pin_portable_cpu_kernels\n"
            "chosen = pin_portable_cpu_kernels()\n"
            "import torch\n"
            "print(json.dumps({'chosen': chosen, 'capability': torch.backends.cpu.get_cpu_capability(),"
            " 'mkl_cbwr': os.environ.get('MKL_CBWR')}))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_portable_cpu_kernels_pin_avx2_before_torch_loads():
    import platform

    from lit_unlearn.utils.cpu_kernels import PORTABLE_KERNELS, cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("needs an x86 processor with AVX2 and FMA")
    pinned = _pinned_in_subprocess({})
    assert pinned == {"chosen": PORTABLE_KERNELS, "capability": "AVX2", "mkl_cbwr": "AVX2"}
    # the user's own choice wins, and the switch turns the pinning off
    assert _pinned_in_subprocess({"ATEN_CPU_CAPABILITY": "default"})["capability"] == "DEFAULT"
    off = _pinned_in_subprocess({"LIT_UNLEARN_PORTABLE_KERNELS": "0"})
    assert off["chosen"] == {} and off["mkl_cbwr"] is None


def test_portable_cpu_kernels_do_nothing_once_torch_is_loaded(monkeypatch):
    import os

    import torch  # noqa: F401  (loaded: too late for the variables to take effect)

    from lit_unlearn.utils.cpu_kernels import pin_portable_cpu_kernels
    from lit_unlearn.utils.environment import environment_info

    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert pin_portable_cpu_kernels() == {} and "MKL_CBWR" not in os.environ
    info = environment_info()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and "mkl_cbwr" in info
