"""``ModelCheckpoint(monitor="eval/...", mode=...)`` over in-fit evaluations keeps the evaluation with the best
logged value, for ``mode="max"`` and ``mode="min"``.

The monitored metric is the forget split's mean answer probability (``eval/forget/probability``) under
gradient ascent (GA, lr 2e-3): it moves at every evaluation (checked: all logged values differ), unlike the
selection score of an untrained tiny model, whose generation-based parts are 0 and tie. A recorder takes
the logged value and a copy of the weights at the end of every validation; the test checks that the kept
checkpoint's score is the best logged value, its file name is that evaluation's epoch/step, its weights
are the weights of that evaluation (and not of the others), and the value equals the evaluation's report.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_fit_eval import _data, _module

torch.set_num_threads(1)
MONITOR = "eval/forget/probability"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, builtin_tokenizer_path) -> str:
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(builtin_tokenizer_path)
    out = tmp_path_factory.mktemp("tiny_best")
    load_causal_lm("builtin:tiny-llama", tok, seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _recorder():
    from lightning.pytorch import Callback

    class Recorder(Callback):
        """The logged monitor value, the step and the weights at the end of every in-fit validation."""

        def __init__(self):
            self.history: list[dict] = []

        def on_validation_end(self, trainer, pl_module):
            self.history.append({"value": float(trainer.callback_metrics[MONITOR]), "epoch": trainer.current_epoch,
                                 "step": trainer.global_step,
                                 "weights": {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}})

    return Recorder()


@pytest.mark.parametrize("mode", ["max", "min"])
def test_checkpoint_kept_is_the_best_logged_evaluation(tiny_dir, tmp_path, mode):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=MONITOR, mode=mode, save_top_k=1)
    rec = _recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, check_val_every_n_epoch=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[rec, ckpt], default_root_dir=str(tmp_path))
    module = _module(tiny_dir, tmp_path / "report")
    trainer.fit(module, datamodule=_data(tiny_dir, batch_size=8))

    values = [h["value"] for h in rec.history]
    assert len(values) == 3 and len(set(values)) == 3, values  # the monitored value really changes
    reports = [r for _, r in module._eval_runner.history]
    assert values == pytest.approx([r["splits"]["forget"]["metrics"]["probability"] for r in reports], rel=1e-6)
    best = (max if mode == "max" else min)(range(3), key=lambda i: values[i])
    assert float(ckpt.best_model_score) == pytest.approx(values[best], rel=1e-6)
    kept = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert kept == [f"epoch={rec.history[best]['epoch']}-step={rec.history[best]['step']}.ckpt"]
    assert Path(ckpt.best_model_path).name == kept[0]
    state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    for i, h in enumerate(rec.history):  # the kept weights are those of the best evaluation only
        same = set(weights) == set(h["weights"]) and all(torch.equal(weights[k], h["weights"][k]) for k in weights)
        assert same == (i == best), i
