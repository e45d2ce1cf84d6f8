"""The benchmark-agnostic evaluation core: the registry, a new benchmark added in one module (checked
against a naive loop, 1 process and 2 gloo processes), the selection scores, the import layering, and the
WMDP benchmark's report with lm-eval's results stood in (the adapter itself is tested in test_lm_eval.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import torch
from scipy.stats import hmean
from torch.utils.data import Dataset

from conftest import free_port, spawn_and_wait

from lit_unlearn.evaluation import core
from lit_unlearn.evaluation.core import Benchmark, BenchmarkEvaluation, get_benchmark, register_benchmark

torch.set_num_threads(1)

TEXTS = ["Alpha beta gamma delta.", "The river runs to the sea.", "Seven small stones.", "Bright lamps at night.",
         "A quiet harbour town."]


# ----------------------------------------------------------------------------- a benchmark in one module


class _Texts(Dataset):
    key = "texts"
    split = "texts"

    def __init__(self, benchmark, tokenizer):
        self.benchmark, self.tokenizer = benchmark, tokenizer
        self.ids = [tokenizer(t)["input_ids"] for t in TEXTS]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i], "index": i}

    def collate_fn(self, rows):
        from lit_unlearn.data.tokenize import PadCollator

        return PadCollator(self.tokenizer.pad_token_id)(rows)


class _NLLEvaluator:
    def __init__(self):
        from lit_unlearn.metrics import Probability

        self.metric = Probability()

    def check_model(self, model):
        pass

    @torch.no_grad()
    def update(self, key, batch, model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        self.metric.update(logits, batch["labels"], index=batch["index"])

    def compute(self):
        return {"probability": float(self.metric.compute()), "per_sample": self.metric.value_by_index()}


class ProbabilityBenchmark(Benchmark):
    """A toy benchmark: the mean length-normalised probability of fixed texts."""

    name = "toy_probability"

    def datasets(self, tokenizer):
        return [_Texts(self, tokenizer)]

    def evaluator(self, keys, tokenizer):
        return _NLLEvaluator()

    def finalize(self, results, metadata, strict=False):
        return {"format": "toy/1", "metadata": dict(metadata), "splits": {}, **results}

    def selection_score(self, report):
        return report["probability"]

    def scalar_logs(self, report, prefix="eval"):
        return {f"{prefix}/probability": report["probability"], f"{prefix}/selection_score": report["probability"]}

    def write(self, report, out_dir, plots=True):
        from pathlib import Path

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "per_sample"}))
        return {}


def naive_probability(model, tokenizer) -> list[float]:
    out = []
    with torch.no_grad():
        for text in TEXTS:
            ids = tokenizer(text)["input_ids"]
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            nll = -sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids))) / (len(ids) - 1)
            out.append(float(torch.exp(torch.tensor(-nll))))
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, builtin_tokenizer_path) -> str:
    """A fresh tiny Llama (seed 0) and the builtin tokenizer saved as a folder (no training)."""
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(builtin_tokenizer_path)
    out = tmp_path_factory.mktemp("tiny")
    load_causal_lm("builtin:tiny-llama", tok, seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def toy_model(tiny_dir):
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_dir).eval(), load_tokenizer(tiny_dir)


def test_registry_and_a_new_benchmark_in_one_module(toy_model, tmp_path):
    assert {"tofu", "muse", "wmdp"} <= set(core.benchmark_names())
    assert get_benchmark("tofu").name == "tofu" and get_benchmark("muse").name == "muse"
    with pytest.raises(ValueError, match="Unknown benchmark 'nope'; choose from"):
        get_benchmark("nope")
    register_benchmark("toy_probability", ProbabilityBenchmark)
    try:
        model, tok = toy_model
        report = BenchmarkEvaluation("toy_probability", model, tok, batch_size=2, out_dir=tmp_path,
                                     progress=False).run()
    finally:
        core.BENCHMARKS.pop("toy_probability")
    want = naive_probability(model, tok)
    assert report["per_sample"] == pytest.approx(dict(enumerate(want)), rel=1e-5)
    assert report["probability"] == pytest.approx(sum(want) / len(want), rel=1e-5)
    assert report["metadata"]["benchmark"] == "toy_probability" and report["metadata"]["world_size"] == 1
    assert json.loads((tmp_path / "report.json").read_text())["probability"] == report["probability"]


def _toy_worker(rank: int, world_size: int, port: int, path: str, out: str) -> None:
    import os

    import torch.distributed as dist

    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        report = BenchmarkEvaluation(ProbabilityBenchmark(), load_causal_lm(path), load_tokenizer(path),
                                     batch_size=2, progress=False).run()
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"probability": report["probability"], "per_sample": report["per_sample"],
                       "world_size": report["metadata"]["world_size"]}, f)
    finally:
        dist.destroy_process_group()


def test_core_shards_and_syncs_across_two_processes(toy_model, tiny_dir, tmp_path):
    """5 samples over 2 gloo ranks (the DistributedSampler pads one): every rank gets the 1-process values."""
    spawn_and_wait(_toy_worker, (2, free_port(), tiny_dir, str(tmp_path)), nprocs=2, timeout=1200,
                   what="the 2-process toy benchmark")
    want = naive_probability(*toy_model)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["world_size"] == 2
        assert {int(k): v for k, v in got["per_sample"].items()} == pytest.approx(dict(enumerate(want)), rel=1e-5)
        assert got["probability"] == pytest.approx(sum(want) / len(want), rel=1e-5)


# ----------------------------------------------------------------------------- selection scores


def test_harmonic_mean_and_selection_scores():
    from lit_unlearn.evaluation.benchmarks.muse import muse_selection_score
    from lit_unlearn.evaluation.benchmarks.tofu import tofu_selection_score
    from lit_unlearn.evaluation.benchmarks.wmdp import wmdp_selection_score

    for values in ([0.2, 0.7], [1e-6, 0.5], [0.3, 0.3, 0.9]):
        assert core.harmonic_mean(values) == pytest.approx(float(hmean(values)), rel=1e-12)
    assert core.harmonic_mean([0.0, 0.5]) == 0.0
    tofu = {"forget_quality": {"value": 0.01}, "model_utility": {"value": 0.6},
            "splits": {"forget": {"metrics": {"rouge_l_recall": 0.4}}}}
    assert tofu_selection_score(tofu) == (pytest.approx(float(hmean([0.01, 0.6]))), "hmean(forget_quality, model_utility)")
    tofu["forget_quality"]["value"] = None  # no retain report: 1 − forget ROUGE-L recall stands in
    assert tofu_selection_score(tofu)[0] == pytest.approx(float(hmean([0.6, 0.6])))
    tofu["model_utility"]["value"] = None
    assert tofu_selection_score(tofu) == (None, None)
    muse = {"verbmem": {"value": 0.2}, "knowmem_forget": {"value": 0.4}, "knowmem_retain": {"value": 0.5}}
    assert muse_selection_score(muse) == pytest.approx(float(hmean([1 - 0.3, 0.5])))
    assert wmdp_selection_score({"forget_acc": 0.3, "utility_acc": 0.6}) == pytest.approx(float(hmean([0.7, 0.6])))


# ----------------------------------------------------------------------------- layering


def test_data_layer_does_not_import_evaluation_and_no_cycle():
    code = (
        "import sys\n"
        "import lit_unlearn.data.tofu, lit_unlearn.data.text, lit_unlearn.data.muse, lit_unlearn.data.tofu_eval\n"
        "from lit_unlearn.data import TOFUDataModule\n"
        "assert not [m for m in sys.modules if m.startswith('lit_unlearn.evaluation')], 'data imported evaluation'\n"
        "import lit_unlearn.evaluation.lightning\n"
        "assert 'lit_unlearn.callbacks.report' not in sys.modules, 'evaluation.lightning imported the callbacks'\n"
        "import lit_unlearn.callbacks.report\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


def test_old_names_still_importable():
    from lit_unlearn.callbacks import TOFUReport
    from lit_unlearn.evaluation import EvalDataset, EvalSplit, TOFUEvaluation, TOFUEvaluator
    from lit_unlearn.evaluation.data import EvalCollator, build_eval_datasets
    from lit_unlearn.evaluation.lightning import EvaluationCallback, LightningEvalRunner, find_report_callback
    from lit_unlearn.evaluation.suite import base_metadata, eval_dataloader

    from lit_unlearn.data import tofu_eval

    assert EvalDataset is tofu_eval.EvalDataset and EvalCollator is tofu_eval.EvalCollator
    assert issubclass(TOFUReport, EvaluationCallback)
    assert all(callable(x) for x in (TOFUEvaluation, TOFUEvaluator, EvalSplit, build_eval_datasets, LightningEvalRunner,
                                     find_report_callback, base_metadata, eval_dataloader))


# ----------------------------------------------------------------------------- WMDP report (lm-eval stood in)


def test_wmdp_report_from_lm_eval_results(toy_model, tmp_path, monkeypatch):
    from lit_unlearn.evaluation import lm_eval_adapter
    from lit_unlearn.evaluation.benchmarks.wmdp import WMDPConfig, WMDPEvaluation

    calls: list[dict[str, Any]] = []
    fake = {"wmdp_bio": {"acc": 0.25, "acc_norm": 0.5, "n": 4.0}, "wmdp_cyber": {"acc": 0.75, "n": 4.0},
            "mmlu": {"acc": 0.5, "n": 8.0}}

    def evaluate_tasks(model, tokenizer, tasks, include_path=None, batch_size=8, limit=None, num_fewshot=None, **kw):
        calls.append({"tasks": list(tasks), "include_path": include_path, "limit": limit, "batch_size": batch_size})
        return {t: dict(fake[t]) for t in tasks}

    def check_tasks(tasks, include_path=None):
        unknown = [t for t in tasks if t not in fake]
        if unknown:
            raise ValueError(f"unknown lm-eval tasks {unknown}")
        return list(tasks)

    monkeypatch.setattr(lm_eval_adapter, "evaluate_tasks", evaluate_tasks)
    monkeypatch.setattr(lm_eval_adapter, "check_tasks", check_tasks)
    model, tok = toy_model
    report = WMDPEvaluation(model, tok, limit=4, lm_eval_batch_size=2, out_dir=tmp_path).run()
    assert calls == [{"tasks": ["wmdp_bio", "wmdp_cyber", "mmlu"], "include_path": None, "limit": 4, "batch_size": 2}]
    assert report["lm_eval"]["wmdp_bio"]["acc"] == 0.25 and report["lm_eval"]["wmdp_bio"]["acc_norm"] == 0.5
    assert report["forget_acc"] == pytest.approx(0.5) and report["utility_acc"] == pytest.approx(0.5)
    assert report["selection"]["value"] == pytest.approx(float(hmean([0.5, 0.5])))
    assert json.loads((tmp_path / "report.json").read_text())["lm_eval"]["mmlu"]["acc"] == 0.5
    assert "| wmdp_cyber | forget | 0.7500 |" in (tmp_path / "report.md").read_text()
    from lit_unlearn.evaluation.benchmarks.wmdp import WMDPBenchmark

    logs = WMDPBenchmark().scalar_logs(report)
    assert logs["eval/lm_eval/wmdp_bio/acc"] == 0.25 and logs["eval/selection_score"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"unknown lm-eval tasks \['nope'\]"):
        WMDPEvaluation(model, tok, forget_tasks=["nope"]).run()
    assert len(calls) == 1  # the bad task name failed before any model work
    with pytest.raises(ValueError, match="both forget and utility"):
        WMDPConfig(forget_tasks=["mmlu"], utility_tasks=["mmlu"])


def test_wmdp_mini_through_lm_eval_plain_and_lightning(tiny_dir, tmp_path):
    """builtin:wmdp-mini with the real lm-eval: `lit-unlearn validate`-style Lightning run (WMDPDataModule: one
    placeholder batch, lm-eval on the in-memory model) gives the plain-Python report's numbers."""
    pytest.importorskip("lm_eval")
    import lightning as L

    from lit_unlearn.evaluation.benchmarks.wmdp import WMDPDataModule, WMDPEvaluation
    from lit_unlearn.evaluation.report import load_report
    from lit_unlearn.objectives import FinetuneModule

    cfg = {"source": "builtin:wmdp-mini", "limit": 3, "batch_size": 4}
    plain = WMDPEvaluation(tiny_dir, config=cfg).run()
    assert set(plain["lm_eval"]) >= {"wmdp_mini_bio", "wmdp_mini_cyber", "mmlu_mini"}
    assert all(plain["lm_eval"][t]["n"] == 3 and 0 <= plain["lm_eval"][t]["acc"] <= 1 for t in plain["forget_tasks"])
    module = FinetuneModule(model_name_or_path=tiny_dir, tokenizer=tiny_dir)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    metrics = trainer.validate(module, datamodule=WMDPDataModule(tokenizer=tiny_dir, eval_config=cfg),
                               verbose=False)[0]
    got = load_report(tmp_path / "report")
    assert got["format"] == "lit_unlearn.wmdp_report/1" and got["metadata"]["stage"] == "validate"
    assert got["lm_eval"].keys() == plain["lm_eval"].keys() and got["summary"] == pytest.approx(plain["summary"])
    for task, values in plain["lm_eval"].items():
        assert got["lm_eval"][task] == pytest.approx(values), task
    assert metrics["eval/lm_eval/wmdp_mini_bio/acc"] == pytest.approx(plain["lm_eval"]["wmdp_mini_bio"]["acc"])


def test_lower_layers_never_import_objectives_callbacks_or_drivers():
    """functional, metrics, analysis, data, models, utils and evaluation import nothing from the layers above
    them: no ``import``/``from`` and no ``importlib.import_module("...")`` of objectives, callbacks, attacks,
    the CLI or the drivers (pipeline, benchmark_demo, muse_sequences, results)."""
    import ast
    from pathlib import Path

    import lit_unlearn

    root = Path(lit_unlearn.__file__).parent
    above = ("objectives", "callbacks", "attacks", "cli", "cli_support", "lightning_cli", "registry", "pipeline",
             "benchmark_demo", "muse_sequences", "results", "export")
    forbidden = tuple(f"lit_unlearn.{name}" for name in above)

    def imported(tree: ast.AST):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                  in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
                yield str(node.args[0].value)

    bad = []
    for layer in ("functional", "metrics", "analysis", "data", "models", "utils", "evaluation"):
        for path in sorted((root / layer).rglob("*.py")):
            for name in imported(ast.parse(path.read_text(), str(path))):
                if name in forbidden or name.startswith(tuple(f"{f}." for f in forbidden)):
                    bad.append(f"{path.relative_to(root)} imports {name}")
    assert not bad, "\n".join(bad)
