"""The relearning attack under DDP: 2 CPU processes (gloo, launched with torchrun) with global batch 4 (2 per
process) give the 1-process recovery curve with batch 4.

This file is also the worker (``torchrun --nproc_per_node 2 tests/test_relearn_distributed.py CONFIG_JSON``):
every process runs the attack; rank 0 writes the result.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_distributed import finish_worker, launch, tiny_model_dir  # noqa: E402,F401

HERE = Path(__file__).resolve()
#: the TOFU suite on 4 forget rows (probability and truth ratio move continuously with the weights)
EVAL = dict(max_samples=4, max_new_tokens=2, utility=False, mia=False, batch_size=4, max_length=64)


def worker(config: dict) -> None:
    import torch

    from lit_unlearn.attacks import RelearnConfig, relearn_attack
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    torch.set_num_threads(1)
    tokenizer = load_tokenizer(config["model"])
    model = load_causal_lm(config["model"], tokenizer)
    devices = config["devices"]
    relearn = RelearnConfig(steps=(0, 2, 5), lr=3e-3, batch_size=4, seed=0, progress=False, accelerator="cpu",
                            devices=devices, strategy="ddp" if devices > 1 else "auto")
    out = relearn_attack(model, tokenizer, relearn, EVAL)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(config["out"]).write_text(json.dumps({"curve": out["curve"], "train_rows": out["train_rows"]}))


def test_relearning_under_ddp_gives_the_one_process_curve(tiny_model_dir, tmp_path):
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"curve{nproc}.json"
        launch(HERE, {"model": tiny_model_dir, "devices": nproc, "out": str(out)}, nproc)
        results[nproc] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert one["train_rows"] == two["train_rows"]
    probability = one["curve"]["forget/probability"]
    assert probability[-1] != pytest.approx(probability[0], rel=1e-3)  # the fine-tune moved the model
    for metric, values in one["curve"].items():
        if all(v is not None for v in values):
            assert two["curve"][metric] == pytest.approx(values, rel=1e-4, abs=1e-6), metric


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
    finish_worker()
