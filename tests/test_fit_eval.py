"""Evaluation during ``fit``: the benchmark's suite runs in the validation epochs, logs ``eval/...`` and
``eval/selection_score``, writes one report folder per evaluation, ``ModelCheckpoint`` keeps the best by the
selection score, and under 2-process DDP (gloo) the in-fit report equals the 1-process evaluation of the
same weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy.stats import hmean

from test_evaluation import assert_same_values

from lit_unlearn.evaluation import TOFUEvaluation, load_report

torch.set_num_threads(1)

SPLITS = {"forget": "forget01_perturbed", "retain": "retain_perturbed", "real_authors": "real_authors_perturbed",
          "world_facts": "world_facts_perturbed"}
EVAL = {"max_new_tokens": 4, "el_splits": [], "plots": False}
MAX_LENGTH = 48


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, builtin_tokenizer_path) -> str:
    """A fresh tiny Llama (seed 0) and the builtin tokenizer saved as a folder (no training)."""
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(builtin_tokenizer_path)
    out = tmp_path_factory.mktemp("tiny")
    load_causal_lm("builtin:tiny-llama", tok, seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _data(path: str, batch_size: int):
    from lit_unlearn.data import UnlearningDataModule

    return UnlearningDataModule(tokenizer=path, forget_split="forget01", retain_split=None, batch_size=batch_size,
                                max_length=MAX_LENGTH, eval_splits=SPLITS, eval_max_samples=2, eval_batch_size=2,
                                eval_during_fit=True)


def _module(path: str, report_dir: Path, save_dir: Path | None = None):
    from lit_unlearn.objectives import GA

    return GA(path, tokenizer=path, lr=2e-3, save_dir=None if save_dir is None else str(save_dir),
              eval_config={**EVAL, "report_dir": str(report_dir)})


def test_model_checkpoint_keeps_the_best_selection_score(tiny_dir, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="eval/selection_score", mode="max", save_top_k=1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, check_val_every_n_epoch=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[ckpt], default_root_dir=str(tmp_path))
    module = _module(tiny_dir, tmp_path / "report")
    trainer.fit(module, datamodule=_data(tiny_dir, batch_size=8))

    history = module._eval_runner.history
    assert len(history) == 3
    folders = [Path(folder) for folder, _ in history]
    assert len(set(folders)) == 3 and all((f / "report.json").is_file() for f in folders)  # one per evaluation
    steps = [load_report(f)["metadata"]["global_step"] for f in folders]
    assert steps == [3, 6, 9] and [f.name for f in folders] == ["epoch000-step000003", "epoch001-step000006",
                                                                "epoch002-step000009"]
    scores = []
    for _, report in history:  # no retain report: hmean(1 − forget ROUGE-L recall, model utility)
        assert report["forget_quality"]["value"] is None
        a, b = 1 - report["splits"]["forget"]["metrics"]["rouge_l_recall"], report["model_utility"]["value"]
        scores.append(float(hmean([a, b])) if a > 0 and b > 0 else 0.0)
    best = max(range(3), key=lambda i: scores[i])
    assert float(ckpt.best_model_score) == pytest.approx(scores[best], rel=1e-6)
    assert Path(ckpt.best_model_path).name == f"epoch={best}-step={steps[best]}.ckpt"
    assert float(trainer.callback_metrics["eval/selection_score"]) == pytest.approx(scores[-1], rel=1e-6)


def test_in_fit_evaluation_two_processes_equals_one_process(tiny_dir, tmp_path):
    """2 gloo processes (ddp_spawn): the report written by the in-fit evaluation at the end of the epoch
    equals TOFUEvaluation of the saved weights (the same weights) in one process."""
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(_module(tiny_dir, tmp_path / "report", tmp_path / "model"),
                datamodule=_data(tiny_dir, batch_size=4))
    written = sorted((tmp_path / "report").glob("*/report.json"))
    assert [p.parent.name for p in written] == ["epoch000-step000003"]
    got = load_report(written[0])
    assert got["metadata"]["world_size"] == 2 and got["metadata"]["global_step"] == 3
    want = TOFUEvaluation(str(tmp_path / "model"), splits=SPLITS, max_samples=2, batch_size=2, max_length=MAX_LENGTH,
                          progress=False, **EVAL).run()
    assert_same_values(got, want)


def test_every_rank_takes_rank_zeros_report_folder(tmp_path):
    """The report folder's free name is chosen on rank 0 and broadcast: a rank that looks after rank 0 has
    written ``epoch000-step000003`` must not pick ``epoch000-step000003-1`` for itself."""
    from types import SimpleNamespace

    from lit_unlearn.evaluation.lightning import LightningEvalRunner

    runner = LightningEvalRunner({"report_dir": str(tmp_path / "report"), "plots": False})
    sent = {}

    def trainer(rank: int):
        def broadcast(obj, src=0):
            if rank == src:
                sent["value"] = obj
            return sent["value"]

        return SimpleNamespace(is_global_zero=rank == 0, default_root_dir=str(tmp_path), current_epoch=0,
                               global_step=3, state=SimpleNamespace(fn="fit"),
                               strategy=SimpleNamespace(broadcast=broadcast))

    chosen = runner._shared_report_dir(trainer(0))
    assert Path(chosen).name == "epoch000-step000003"
    Path(chosen).mkdir(parents=True)  # rank 0 wrote its report before rank 1 got here
    assert Path(runner.report_dir(trainer(1))).name == "epoch000-step000003-1"  # what rank 1 would pick alone
    assert runner._shared_report_dir(trainer(1)) == chosen
    assert LightningEvalRunner({"write_report": False})._shared_report_dir(trainer(1)) is None
