"""The MUSE/WMDP demo (lit_unlearn.benchmark_demo) and plain-text finetuning (CorpusDataModule + FinetuneModule)."""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lit_unlearn.benchmark_demo import (
    MUSE_COLUMNS,
    MUSE_SOURCE,
    BenchmarkDemoSettings,
    corpus_documents,
    mean_sd,
    run_muse_demo,
    run_wmdp_demo,
)

DOCS = ["The Mirebay rust mainly attacks barley and spreads with the wind.",
        "The Talmouth relay protocol listens on port 4410 by default and was designed by the Iron Pen Guild."]


def _module(tokenizer: str):
    from lit_unlearn.objectives.finetune import FinetuneModule

    module = FinetuneModule(model_name_or_path="builtin:tiny-llama", tokenizer=tokenizer, lr=3e-3, warmup_steps=0,
                            seed=0)
    module.configure_model()
    return module


def _corpus(tokenizer: str, max_length: int = 16):
    from lit_unlearn.data.corpus import CorpusDataModule

    data = CorpusDataModule(documents=DOCS, tokenizer=tokenizer, max_length=max_length, batch_size=4)
    data.setup("fit")
    return data


def _reference_nll(model, batches) -> torch.Tensor:
    """Token-mean cross-entropy over every labelled token of every batch (independent of lit_unlearn)."""
    total, count = 0.0, 0
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        labels = b["labels"][:, 1:]
        total = total + F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100,
                                        reduction="sum")
        count += int((labels != -100).sum())
    return total / count


def test_corpus_chunks_label_every_token(builtin_tokenizer_path):
    from lit_unlearn.data.tokenize import encode_text

    data = _corpus(builtin_tokenizer_path)
    tok = data.load_tokenizer()
    expected = [c for d in DOCS for c in encode_text(tok, d, 16)]
    assert [s["input_ids"] for s in data.train_dataset.samples] == [c["input_ids"] for c in expected]
    assert all(s["labels"] == s["input_ids"] for s in data.train_dataset.samples)
    assert sum(len(s["input_ids"]) for s in data.train_dataset.samples) == sum(
        len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in DOCS)  # + eos per document


def test_finetune_loss_on_text_chunks_equals_cross_entropy_and_falls(builtin_tokenizer_path):
    data = _corpus(builtin_tokenizer_path)
    module = _module(builtin_tokenizer_path)
    batch = next(iter(torch.utils.data.DataLoader(data.train_dataset, batch_size=8, collate_fn=data.collate)))
    assert (batch["labels"] != -100).sum() == batch["attention_mask"].sum()  # every real token is labelled
    module.eval()
    with torch.no_grad():
        loss = module.training_step(batch, 0)
        torch.testing.assert_close(loss, _reference_nll(module.model, [batch]))
    # nested TextDataModule-style batch: one token mean over both parts (of different lengths)
    half = torch.utils.data.DataLoader(data.train_dataset, batch_size=2, collate_fn=data.collate)
    parts = list(half)[:2]
    with torch.no_grad():
        pooled = module.training_step({"forget": parts[0], "retain": parts[1]}, 0)
        torch.testing.assert_close(pooled, _reference_nll(module.model, parts))
    module.train()
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=3e-3)
    first = None
    for _ in range(8):
        optimizer.zero_grad()
        step_loss = module.training_step(batch, 0)
        first = float(step_loss.detach()) if first is None else first
        step_loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert float(_reference_nll(module.model.eval(), [batch])) < 0.8 * first


def test_finetune_refuses_a_batch_without_tokens(builtin_tokenizer_path):
    module = _module(builtin_tokenizer_path)
    with pytest.raises(ValueError, match="input_ids"):
        module.training_step({"index": torch.tensor([0])}, 0)


def test_corpus_datamodule_needs_text():
    from lit_unlearn.data.corpus import CorpusDataModule
    from lit_unlearn.data.tokenize import DataValidationError

    with pytest.raises(DataValidationError, match="needs text"):
        CorpusDataModule()
    with pytest.raises(DataValidationError, match=r"documents \[1\]"):
        CorpusDataModule(documents=["a text", "  "])


def test_muse_documents_include_knowmem_qa_in_the_eval_format():
    from lit_unlearn.data.muse import load_muse

    docs = corpus_documents(MUSE_SOURCE, ("knowmem/forget_qa",))
    rows = load_muse(MUSE_SOURCE, "knowmem", "forget_qa")
    assert docs == [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]


def test_mean_sd_is_the_sample_statistics():
    values = [0.1, 0.4, 0.25]
    out = mean_sd(values + [None, float("nan")])
    assert out["n"] == 3 and math.isclose(out["mean"], statistics.fmean(values))
    assert math.isclose(out["sd"], statistics.stdev(values))
    assert mean_sd([0.5]) == {"mean": 0.5, "sd": None, "n": 1} and mean_sd([None])["mean"] is None


@pytest.fixture(autouse=True, scope="module")
def restore_torch_settings():
    """The demo fixes the thread count and deterministic kernels for the process: undo it for later tests."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


MICRO = BenchmarkDemoSettings(seeds=(0,), muse_epochs=1, wmdp_epochs=1, muse_unlearn_epochs=1, wmdp_unlearn_epochs=1,
                              max_length=128, eval_max_samples=3, lm_eval_limit=4, eval_batch_size=8,
                              min_token_accuracy=0.0, num_threads=1)


@pytest.fixture(scope="module")
def muse_micro(tmp_path_factory, builtin_tokenizer_path):
    out = tmp_path_factory.mktemp("bench_demo")
    return out, run_muse_demo(out, MICRO, progress=False)


def test_muse_micro_demo_writes_reports_consistent_with_a_direct_evaluation(muse_micro):
    from lit_unlearn.benchmark_demo import evaluate_muse

    out, summary = muse_micro
    muse = out / "muse"
    assert (muse / "report.md").is_file() and json.loads((muse / "summary.json").read_text()) == json.loads(
        json.dumps(summary))
    assert summary["cached"] == {"target": False, "retain": False}
    assert set(summary["references"]) == {"target", "retain"} and len(summary["records"]) == 1
    record = summary["records"][0]
    assert record["steps"] >= 1 and (muse / record["report"]).is_file()
    for key in ("verbmem", "knowmem_forget", "knowmem_retain", "mia_auc"):
        for row in (summary["references"]["target"], summary["references"]["retain"], record["summary"]):
            assert math.isfinite(row[key]) and 0.0 <= row[key] <= 1.0
    report = json.loads((muse / record["report"]).read_text())
    for key in ("privleak", "utility_preservation"):  # relative to a reference: finite, or unavailable with a reason
        value = record["summary"][key]
        assert (value is not None and math.isfinite(value)) or report[key]["reason"], (key, report[key])
    assert summary["aggregate"]["verbmem"]["mean"] == record["summary"]["verbmem"]
    # the report's target row is what a direct evaluation of the saved model gives
    direct = evaluate_muse(muse / "models" / "target", str(muse / "models" / "target"), out / "direct", MICRO,
                           retain_report=muse / "runs" / "retain" / "report.json")
    assert direct["summary"] == summary["references"]["target"]
    text = (muse / "report.md").read_text()
    assert all(title in text for _, title, _ in MUSE_COLUMNS) and "seed 0" in text


def test_muse_micro_demo_rerun_hits_the_cache_and_repeats_the_numbers(muse_micro):
    out, first = muse_micro
    again = run_muse_demo(out, MICRO, progress=False)
    assert again["cached"] == {"target": True, "retain": True}
    assert again["references"] == first["references"] and again["records"] == first["records"]


def test_demo_stops_when_the_target_did_not_learn(muse_micro):
    out, _ = muse_micro
    with pytest.raises(SystemExit, match="FAILED: the MUSE target model reproduces only .* train longer"):
        run_muse_demo(out, replace(MICRO, min_token_accuracy=0.99), progress=False)


def test_wmdp_micro_demo_reports_lm_eval_accuracy_before_and_after(tmp_path, builtin_tokenizer_path):
    pytest.importorskip("lm_eval")
    from lit_unlearn.benchmark_demo import evaluate_wmdp

    summary = run_wmdp_demo(tmp_path, MICRO, progress=False)
    wmdp = tmp_path / "wmdp"
    assert (wmdp / "report.md").is_file() and (wmdp / "summary.json").is_file()
    for row in (summary["references"]["target"], summary["records"][0]["summary"]):
        for task in ("wmdp_mini_bio", "wmdp_mini_cyber", "mmlu_mini"):
            assert 0.0 <= row[f"{task}/acc"] <= 1.0
    direct = evaluate_wmdp(wmdp / "models" / "target", str(wmdp / "models" / "target"), tmp_path / "direct", MICRO)
    assert direct["summary"] == summary["references"]["target"]
    assert summary["cached"] == {"target": False}
    assert run_wmdp_demo(tmp_path, MICRO, progress=False)["cached"] == {"target": True}


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="seeds"):
        BenchmarkDemoSettings(seeds=(0, 0))
    with pytest.raises(ValueError, match="muse_epochs"):
        BenchmarkDemoSettings(muse_epochs=0)
