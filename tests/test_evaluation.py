"""The TOFU evaluation suite on real (tiny) models: every aggregate recomputed by naive per-sample loops,
Lightning ``validate`` (1 process, CLI, callback, and 2-process DDP) equal to the plain-Python run, a target
model versus a retain model, and bad inputs."""
from __future__ import annotations

import json
import math
import zlib

import pytest
import torch
from rouge_score.rouge_scorer import RougeScorer
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

from conftest import finetune_tiny, free_port, spawn_and_wait

from lit_unlearn.data.builtin import BUILTIN_VERSION
from lit_unlearn.data import DataValidationError
from lit_unlearn.data.sources import load_rows
from lit_unlearn.data.tokenize import encode_qa, prompt_ids
from lit_unlearn.evaluation import EvalConfig, TOFUEvaluation, load_report
from lit_unlearn.evaluation.report import MODEL_UTILITY_COMPONENTS
from lit_unlearn.evaluation.suite import extraction_likelihood_any_length
from lit_unlearn.functional import metrics as F
from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

torch.set_num_threads(1)

N = 4  # samples per split in the exact-recomputation test
MAX_NEW = 16
EL_N = 4
MAX_LENGTH = 64
FULL_SPLITS = {"forget": "forget10_perturbed", "retain": "retain_perturbed", "real_authors": "real_authors_perturbed",
               "world_facts": "world_facts_perturbed", "holdout": "holdout10"}
SMALL = dict(max_new_tokens=MAX_NEW, el_n=EL_N, max_length=MAX_LENGTH, progress=False)


@pytest.fixture(scope="module")
def full_report(finetuned_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("full_report")
    report = TOFUEvaluation(finetuned_tiny, splits=FULL_SPLITS, max_samples=N, batch_size=3, out_dir=out, **SMALL).run()
    return report, out


# ----------------------------------------------------------------------------- naive references


class Naive:
    """Per-sample, unbatched, unpadded computations with explicit loops (no lit_unlearn metric code)."""

    def __init__(self, path: str):
        self.tok = load_tokenizer(path)
        self.model = load_causal_lm(path, self.tok).eval()
        self.eos = self.tok.eos_token_id

    @torch.no_grad()
    def token_stats(self, question: str, answer: str):
        """Per answer token (EOS included): log p(y_t), argmax hit, and the full log-softmax row."""
        enc = encode_qa(self.tok, question, answer, MAX_LENGTH)
        ids, labels = enc["input_ids"], enc["labels"]
        logits = self.model(torch.tensor([ids])).logits[0].double()
        logps, hits, rows = [], [], []
        for t in range(1, len(ids)):
            if labels[t] == -100:
                continue
            row = torch.log_softmax(logits[t - 1], dim=-1)
            logps.append(float(row[ids[t]]))
            hits.append(int(row.argmax()) == ids[t])
            rows.append(row)
        return logps, hits, rows, ids, labels

    def avg_nll(self, q, a) -> float:
        logps = self.token_stats(q, a)[0]
        return -sum(logps) / len(logps)

    @torch.no_grad()
    def greedy(self, ids: list[int], n: int) -> list[int]:
        ids, out = list(ids), []
        for _ in range(n):
            nxt = int(self.model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt == self.eos:
                break
            out.append(nxt)
            ids.append(nxt)
        return out


def naive_el(conts, target, n):
    def grams(x):
        return [tuple(x[i : i + n]) for i in range(len(x) - n + 1)]

    vals = []
    for k in range(len(target) - n):
        a, b = grams(conts[k][: len(target) - k]), set(grams(target[k:]))
        vals.append(sum(g in b for g in a) / len(a) if a else 0.0)
    return sum(vals) / len(vals)


def naive_split(naive: Naive, key: str, split: str, scorer) -> dict:
    rows = load_rows("builtin:tofu-mini", split)[:N]
    out = {m: {} for m in ("probability", "tr", "norm_prob", "ma", "es", "el", "rouge", "loss", "zlib", "min_k", "min_k_pp")}
    for i, row in enumerate(rows):
        q, a = row["question"], row["answer"]
        logps, hits, lrows, ids, labels = naive.token_stats(q, a)
        out["probability"][i] = math.exp(sum(logps) / len(logps))
        out["loss"][i] = -sum(logps) / len(logps)
        out["zlib"][i] = out["loss"][i] / len(zlib.compress(a.encode()))
        body = logps[:-1]  # tokenwise metrics drop the final EOS
        m = max(1, int(0.4 * len(body)))
        out["min_k"][i] = -sum(sorted(body)[:m]) / m
        zs = []
        for lp, row_ in zip(body, lrows[:-1]):
            p = row_.exp()
            mu = float((p * row_).sum())
            sigma = math.sqrt(float((p * (row_ - mu) ** 2).sum()))
            zs.append((lp - mu) / sigma)
        out["min_k_pp"][i] = -sum(sorted(zs)[:m]) / m
        if key == "holdout":
            continue
        out["ma"][i] = sum(hits[:-1]) / len(hits[:-1])
        correct = a if key in ("real_authors", "world_facts") else row["paraphrased_answer"]
        c = naive.avg_nll(q, correct)
        ws = [naive.avg_nll(q, p) for p in row["perturbed_answer"]]
        out["tr"][i] = math.exp(c - sum(ws) / len(ws))
        out["norm_prob"][i] = math.exp(-c) / (math.exp(-c) + sum(math.exp(-w) for w in ws))
        prompt = prompt_ids(naive.tok, q)
        gen = naive.tok.decode(naive.greedy(prompt, MAX_NEW), skip_special_tokens=True).strip()
        out["rouge"][i] = scorer.score(a, gen)["rougeL"].recall
        if key == "forget":  # extraction metrics from every answer prefix (EOS excluded)
            target = [ids[t] for t in range(len(ids)) if labels[t] != -100][:-1]
            conts = [naive.greedy(prompt + target[:k], len(target) - k) for k in range(len(target))]
            out["es"][i] = next((1 - k / len(target) for k in range(len(target))
                                 if conts[k][: len(target) - k] == target[k:]), 0.0)
            out["el"][i] = naive_el(conts, target, EL_N)
    return out


def mean(d: dict) -> float:
    return sum(d.values()) / len(d)


def test_every_aggregate_recomputed_naively(full_report, finetuned_tiny):
    report, out_dir = full_report
    naive = Naive(finetuned_tiny)
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    ref = {key: naive_split(naive, key, split, scorer) for key, split in FULL_SPLITS.items()}
    splits = report["splits"]
    for key in FULL_SPLITS:
        s = splits[key]
        assert s["num_samples"] == N and list(s["per_sample"]["probability"]) == list(range(N))
        assert s["per_sample"]["probability"] == pytest.approx(ref[key]["probability"], rel=1e-4)
        assert s["metrics"]["probability"] == pytest.approx(mean(ref[key]["probability"]), rel=1e-4)
        if key == "holdout":
            continue
        trs = ref[key]["tr"]
        assert s["per_sample"]["truth_ratio"] == pytest.approx(trs, rel=1e-4)  # raw TR_i
        agg = (mean({i: min(t, 1 / t) for i, t in trs.items()}) if key == "forget"
               else mean({i: max(0.0, 1 - t) for i, t in trs.items()}))
        assert s["metrics"]["truth_ratio"] == pytest.approx(agg, rel=1e-4, abs=1e-6)
        assert s["per_sample"]["memorization_accuracy"] == pytest.approx(ref[key]["ma"], abs=1e-6)
        assert s["metrics"]["memorization_accuracy"] == pytest.approx(mean(ref[key]["ma"]), abs=1e-6)
        assert s["per_sample"]["rouge_l_recall"] == pytest.approx(ref[key]["rouge"], abs=1e-6)
        assert s["metrics"]["rouge_l_recall"] == pytest.approx(mean(ref[key]["rouge"]), abs=1e-6)
        if key in ("real_authors", "world_facts"):
            assert s["metrics"]["normalized_probability"] == pytest.approx(mean(ref[key]["norm_prob"]), rel=1e-4)
    forget = splits["forget"]
    assert forget["per_sample"]["extraction_strength"] == pytest.approx(ref["forget"]["es"], abs=1e-6)
    assert forget["per_sample"]["extraction_likelihood"] == pytest.approx(ref["forget"]["el"], abs=1e-6)
    assert forget["metrics"]["unlearning_accuracy"] == pytest.approx(1 - mean(ref["forget"]["ma"]), abs=1e-6)

    # MIA AUCs against sklearn on the naive scores (forget = 0, holdout = 1)
    for score, name in (("loss", "loss"), ("zlib", "zlib"), ("min_k", "min_k"), ("min_k_plus_plus", "min_k_pp")):
        scores = list(ref["forget"][name].values()) + list(ref["holdout"][name].values())
        expected = roc_auc_score([0] * N + [1] * N, scores)
        assert report["mia"][score]["auc"] == pytest.approx(expected, abs=1e-9), score

    # model utility: scipy's harmonic mean of the 9 naive values
    naive_values = {
        "probability": lambda k: mean(ref[k]["probability"]),
        "normalized_probability": lambda k: mean(ref[k]["norm_prob"]),
        "rouge_l_recall": lambda k: mean(ref[k]["rouge"]),
        "truth_ratio": lambda k: mean({i: max(0.0, 1 - t) for i, t in ref[k]["tr"].items()}),
    }
    values = [naive_values[m](s) for s, m in MODEL_UTILITY_COMPONENTS]
    assert report["model_utility"]["value"] == pytest.approx(hmean(values), rel=1e-4)

    # the files: JSON round trip keeps per-sample values by index, Markdown table, PNG
    loaded = load_report(out_dir)
    assert loaded["splits"]["forget"]["per_sample"]["truth_ratio"] == report["splits"]["forget"]["per_sample"]["truth_ratio"]
    meta = loaded["metadata"]
    for key in ("data_version", "model", "world_size", "strategy", "precision", "effective_batch_size",
                "lit_unlearn_version", "timestamp"):
        assert key in meta, key
    assert meta["data_version"] == f"{BUILTIN_VERSION}/tofu-mini/seed0" and meta["world_size"] == 1
    assert (out_dir / "report.md").read_text().count("| forget (`forget10_perturbed`) | 4 |") == 1
    assert (out_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert loaded["forget_quality"]["available"] is False and "retain_report" in loaded["forget_quality"]["reason"]


def test_extraction_likelihood_short_answers():
    target = [5, 6, 7]
    conts = [[5, 6, 7], [6, 9], [7]]
    assert extraction_likelihood_any_length(conts, target, 10) == F.extraction_likelihood(conts, target, 2)
    assert extraction_likelihood_any_length([[5]], [5], 10) == 1.0
    assert extraction_likelihood_any_length([[4]], [5], 10) == 0.0
    long = list(range(12))
    assert extraction_likelihood_any_length([long[k:] for k in range(12)], long, 10) == 1.0


# ----------------------------------------------------------------------------- Lightning wiring

SMALL_SPLITS = {"forget": "forget10_perturbed", "real_authors": "real_authors_perturbed", "holdout": "holdout10"}


def assert_same_values(a: dict, b: dict, rel: float = 1e-4) -> None:
    assert a["splits"].keys() == b["splits"].keys()
    for key in a["splits"]:
        sa, sb = a["splits"][key], b["splits"][key]
        assert sa["num_samples"] == sb["num_samples"], key
        assert sa["metrics"] == pytest.approx(sb["metrics"], rel=rel, abs=1e-6), key
        for name in sa["per_sample"]:
            assert list(sa["per_sample"][name]) == list(sb["per_sample"][name]), (key, name)
            assert sa["per_sample"][name] == pytest.approx(sb["per_sample"][name], rel=rel, abs=1e-6), (key, name)
        assert sa["generations"] == sb["generations"], key
    for score in a["mia"]:
        assert a["mia"][score]["auc"] == pytest.approx(b["mia"][score]["auc"], abs=1e-9)
    assert a["model_utility"]["value"] == b["model_utility"]["value"]


@pytest.fixture(scope="module")
def small_plain_report(finetuned_tiny):
    return TOFUEvaluation(finetuned_tiny, splits=SMALL_SPLITS, max_samples=5, batch_size=4, **SMALL).run()


def _datamodule(path: str, batch_size: int):
    from lit_unlearn.data import TOFUDataModule

    return TOFUDataModule(tokenizer=path, splits=["forget10"], max_length=MAX_LENGTH, eval_splits=SMALL_SPLITS,
                          eval_max_samples=5, eval_batch_size=batch_size)


def test_lightning_ddp_two_processes_equal_one_process(finetuned_tiny, small_plain_report, tmp_path):
    """Trainer.validate with 2 gloo processes (DistributedSampler shards, torchmetrics sync, rank-0 write)
    gives the report of the single-process plain-Python run."""
    import lightning as L

    from lit_unlearn.objectives import FinetuneModule

    module = FinetuneModule(model_name_or_path=finetuned_tiny, tokenizer=finetuned_tiny,
                            eval_config=EvalConfig(max_new_tokens=MAX_NEW, el_n=EL_N, plots=False))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.validate(module, datamodule=_datamodule(finetuned_tiny, batch_size=2), verbose=False)
    report = load_report(tmp_path / "report" / "report.json")
    assert report["metadata"]["world_size"] == 2 and report["metadata"]["strategy"] == "DDPStrategy"
    assert report["metadata"]["effective_batch_size"] == 4
    assert_same_values(report, small_plain_report)


def _dist_worker(rank: int, world_size: int, port: int, path: str, out: str) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        report = TOFUEvaluation(path, splits=SMALL_SPLITS, max_samples=5, batch_size=2, out_dir=out, plots=False,
                                **SMALL).run()
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"summary": report["summary"], "world_size": report["metadata"]["world_size"]}, f)
    finally:
        dist.destroy_process_group()


def test_plain_evaluation_under_torch_distributed(finetuned_tiny, small_plain_report, tmp_path):
    """TOFUEvaluation on each rank of an initialised gloo group shards the samples and agrees with 1 process."""
    spawn_and_wait(_dist_worker, (2, free_port(), finetuned_tiny, str(tmp_path)), nprocs=2, timeout=240,
                   what="the 2-process evaluation")
    report = load_report(tmp_path / "report.json")  # written by rank 0 only
    assert report["metadata"]["world_size"] == 2 and report["metadata"]["effective_batch_size"] == 4
    assert_same_values(report, small_plain_report)
    for rank in range(2):  # every rank computed the same (synced) numbers
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["summary"] == pytest.approx(report["summary"])


def test_cli_validate_with_model_path_writes_report(finetuned_tiny, small_plain_report, tmp_path, monkeypatch):
    """`lit-unlearn validate --model.model_name_or_path DIR` (no checkpoint) evaluates and writes the report."""
    from lit_unlearn.cli import lightning_cli

    monkeypatch.setattr("sys.argv", ["lit-unlearn"])

    lightning_cli([
        "validate", "--model", "FinetuneModule", "--model.model_name_or_path", finetuned_tiny,
        "--model.eval_config.max_new_tokens", str(MAX_NEW), "--model.eval_config.el_n", str(EL_N),
        "--data", "TOFUDataModule", "--data.tokenizer", finetuned_tiny, "--data.max_length", str(MAX_LENGTH),
        "--data.eval_splits", json.dumps(SMALL_SPLITS), "--data.eval_max_samples", "5", "--data.eval_batch_size", "3",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
    ])
    report = load_report(tmp_path / "report")
    assert {"report.json", "report.md", "metrics.png"} <= {p.name for p in (tmp_path / "report").iterdir()}
    assert report["metadata"]["model"] == finetuned_tiny and report["metadata"]["stage"] == "validate"
    assert_same_values(report, small_plain_report)


def test_report_callback_on_any_lightning_module(finetuned_tiny, small_plain_report, tmp_path):
    """TOFUReport drives the same evaluation for a LightningModule that only owns `self.model`; test() too."""
    import lightning as L

    from lit_unlearn.callbacks.report import TOFUReport

    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = load_causal_lm(finetuned_tiny)

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            return None

        test_step = validation_step

    callback = TOFUReport(max_new_tokens=MAX_NEW, el_n=EL_N, report_dir=str(tmp_path / "cb"), plots=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    results = trainer.test(Plain(), datamodule=_datamodule(finetuned_tiny, batch_size=5), verbose=False)
    assert_same_values(callback.last_report, small_plain_report)
    assert results[0]["eval/forget/probability"] == pytest.approx(small_plain_report["splits"]["forget"]["metrics"]["probability"], rel=1e-4)
    assert load_report(tmp_path / "cb")["metadata"]["stage"] == "test"


def test_fit_does_not_run_the_suite_unless_asked(builtin_tokenizer_path):
    from lit_unlearn.data import TOFUDataModule

    data = TOFUDataModule(tokenizer=builtin_tokenizer_path, splits=["forget10"])

    class FakeTrainer:
        class state:
            class fn:
                value = "fit"

    data.trainer = FakeTrainer()
    assert data.val_dataloader() == []
    data.eval_during_fit, data.eval_max_samples = True, 2
    loaders = data.val_dataloader()
    assert [loader.dataset.spec.key for loader in loaders] == list(FULL_SPLITS)
    assert [len(loader.dataset) for loader in loaders] == [2] * 5


def test_unlearning_datamodule_eval_splits_follow_forget_split(builtin_tokenizer_path):
    from lit_unlearn.data import UnlearningDataModule

    data = UnlearningDataModule(tokenizer=builtin_tokenizer_path, forget_split="forget05", retain_split="retain95",
                                eval_max_samples=1)
    splits = {ds.spec.key: ds.spec.split for ds in data.eval_datasets()}
    assert splits["forget"] == "forget05_perturbed" and splits["holdout"] == "holdout05"


# ----------------------------------------------------------------------------- target vs retain model


@pytest.fixture(scope="module")
def retain_tiny(tmp_path_factory, builtin_tokenizer_path) -> str:
    """A retain model for `finetuned_tiny` (trained on forget10 + real_authors): the same recipe without
    the forget authors."""
    path = tmp_path_factory.mktemp("models") / "retain_tiny"
    finetune_tiny(path, builtin_tokenizer_path, ["real_authors"], max_steps=60)
    return str(path)


def test_target_vs_retain_model(finetuned_tiny, retain_tiny, tmp_path):
    splits = {"forget": "forget10_perturbed", "holdout": "holdout10"}
    common = dict(splits=splits, max_samples=16, batch_size=16, max_new_tokens=24, el_n=EL_N, max_length=MAX_LENGTH,
                  progress=False)
    retain = TOFUEvaluation(retain_tiny, out_dir=tmp_path / "retain", **common).run()
    retain_path = tmp_path / "retain" / "report.json"
    target = TOFUEvaluation(finetuned_tiny, retain_report=retain_path, out_dir=tmp_path / "target", **common).run()
    t, r = target["splits"]["forget"]["metrics"], retain["splits"]["forget"]["metrics"]
    assert t["memorization_accuracy"] > 0.6 and t["rouge_l_recall"] > 0.5 and t["probability"] > 0.3, t
    assert r["memorization_accuracy"] < 0.3 and r["rouge_l_recall"] < 0.2 and r["probability"] < 0.1, r
    assert t["memorization_accuracy"] - r["memorization_accuracy"] > 0.4
    assert t["extraction_likelihood"] > r["extraction_likelihood"]
    # the target is far from the retain model: low forget quality, and its forget set leaks (privleak < 0)
    fq = target["forget_quality"]
    assert fq["available"] and fq["value"] < 0.05 and fq["retain_report"] == str(retain_path)
    assert target["mia"]["min_k"]["privleak"] < 0
    # the retain model evaluated against its own report: forget quality 1, privleak 0
    again = TOFUEvaluation(retain_tiny, retain_report=tmp_path / "retain", generation=False, el_splits=[],
                           **{k: v for k, v in common.items() if k != "max_new_tokens"}).run()
    assert again["forget_quality"]["value"] == pytest.approx(1.0)
    assert all(e["privleak"] == pytest.approx(0.0, abs=1e-9) for e in again["mia"].values())


def test_in_memory_model_is_labelled_as_such(finetuned_tiny):
    from lit_unlearn.models.loading import load_causal_lm

    model = load_causal_lm(finetuned_tiny)
    kw = dict(splits={"forget": "forget10_perturbed"}, max_samples=2, generation=False, el_splits=[], progress=False)
    by_path = TOFUEvaluation(finetuned_tiny, **kw).run()
    in_memory = TOFUEvaluation(model, tokenizer=finetuned_tiny, **kw).run()
    assert by_path["metadata"]["model"] == finetuned_tiny
    # an unlearned model's weights differ from the folder it was loaded from: the label must not claim that folder
    assert in_memory["metadata"]["model"] == f"in-memory {type(model).__name__} (initialised from {finetuned_tiny})"
    assert in_memory["summary"] == by_path["summary"]


# ----------------------------------------------------------------------------- bad input


def test_missing_retain_report_is_unavailable(finetuned_tiny, tmp_path):
    report = TOFUEvaluation(finetuned_tiny, splits={"forget": "forget10_perturbed"}, max_samples=2, generation=False,
                            el_splits=[], retain_report=tmp_path / "nope.json", progress=False).run()
    fq = report["forget_quality"]
    assert fq["available"] is False and fq["value"] is None and "not found" in fq["reason"]
    assert report["model_utility"]["available"] is False and "retain/probability" in report["model_utility"]["reason"]
    assert report["mia"] == {}


def test_mismatched_retain_report_fails_before_evaluating(full_report, finetuned_tiny, tmp_path):
    report, out_dir = full_report
    data = json.loads((out_dir / "report.json").read_text())
    del data["splits"]["forget"]["per_sample"]["truth_ratio"]["3"]
    (tmp_path / "r.json").write_text(json.dumps(data))
    kw = dict(splits={"forget": "forget10_perturbed"}, max_samples=N, generation=False, el_splits=[], progress=False)
    with pytest.raises(ValueError, match="Forget samples differ.*4 samples here vs 3 there"):
        TOFUEvaluation(finetuned_tiny, retain_report=tmp_path / "r.json", **kw).run()
    with pytest.raises(ValueError, match="Forget split mismatch"):
        TOFUEvaluation(finetuned_tiny, retain_report=out_dir, **{**kw, "splits": {"forget": "forget05_perturbed"}}).run()


def test_bad_splits(finetuned_tiny, tmp_path):
    kw = dict(max_samples=2, generation=False, el_splits=[], progress=False)
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "empty.jsonl").write_text("")
    (folder / "uneven.jsonl").write_text(
        json.dumps({"question": "Q1?", "answer": "A1.", "paraphrased_answer": "A1!", "perturbed_answer": ["B", "C"]}) + "\n"
        + json.dumps({"question": "Q2?", "answer": "A2.", "paraphrased_answer": "A2!", "perturbed_answer": ["D"]}) + "\n"
    )
    with pytest.raises((DataValidationError, ValueError), match="empty"):
        TOFUEvaluation(finetuned_tiny, source=str(folder), splits={"forget": "empty"}, **kw).run()
    with pytest.raises(DataValidationError, match="row 1 has 1 perturbed answers, earlier rows 2"):
        TOFUEvaluation(finetuned_tiny, source=str(folder), splits={"forget": "uneven"}, **kw).run()
    with pytest.raises(ValueError, match="Unknown evaluation split keys"):
        TOFUEvaluation(finetuned_tiny, splits={"forgt": "forget10_perturbed"}, **kw)
    with pytest.raises(ValueError, match="No evaluation splits"):
        TOFUEvaluation(finetuned_tiny, splits={}, **kw)
    with pytest.raises(ValueError, match="max_new_tokens"):
        EvalConfig(max_new_tokens=0)
    with pytest.raises(DataValidationError, match="Unknown split 'nope'"):
        TOFUEvaluation(finetuned_tiny, splits={"forget": "nope"}, **kw).run()
