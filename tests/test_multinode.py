"""Multi-node launch on one machine: two torchrun "nodes" (``--nnodes 2 --nproc_per_node 1``, node ranks 0 and 1,
rendezvous on 127.0.0.1) running ``lit-unlearn fit --trainer.num_nodes 2``, under DDP and under the CPU ZeRO-3
strategy (``configs/trainer/deepspeed_zero3_cpu.yaml``), give the losses and final weights of the 1-process run
with the same global batch (4 = 2 nodes × 2), and the saved metadata records ``num_nodes: 2``.

This is the README's multi-node command with the nodes on the loopback address (gloo on CPU).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port
from test_distributed import launch, make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
TIMEOUT_S = 400


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, builtin_tokenizer_path) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("multinode_model") / "tiny", builtin_tokenizer_path)


def fit_args(model: str, out: Path, batch_size: int, trainer: list[str]) -> list[str]:
    return [
        "fit", "--config", "configs/tofu_mini/unlearn.yaml", "--model", "configs/objective/npo.yaml",
        "--model.init_args.model_name_or_path", model, "--model.init_args.lr", "5e-3",
        "--model.init_args.retain_loss", "nll", "--model.init_args.save_dir", str(out / "model"),
        "--data.init_args.tokenizer", model, "--data.init_args.forget_split", "forget01",
        "--data.init_args.retain_split", "retain99", "--data.init_args.batch_size", str(batch_size),
        "--data.init_args.max_length", "48", "--trainer.max_steps", str(STEPS), "--trainer.num_sanity_val_steps",
        "0", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(out), *trainer,
    ]


def launch_two_nodes(args: list[str], timeout: int = TIMEOUT_S) -> None:
    """``torchrun --nnodes 2 --nproc_per_node 1 --node_rank R --master_addr 127.0.0.1`` for R = 0, 1 at once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore", "DS_ACCELERATOR": "cpu"}
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
             str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "lit_unlearn", *args],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    failed = [(rank, out) for rank, (proc, out) in enumerate(zip(procs, outputs)) if proc.returncode != 0]
    assert not failed, "\n".join(f"node {rank} failed:\n{out[-5000:]}" for rank, out in failed)


def losses(out: Path) -> list[float]:
    """``train/loss`` per step from the run's metrics.csv (the config's CSV logger, rank 0)."""
    (metrics,) = list(out.glob("lightning_logs/version_*/metrics.csv"))
    with open(metrics) as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    return [float(row["train/loss"]) for row in sorted(rows, key=lambda r: int(r["step"]))]


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def single(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    launch("-m lit_unlearn", fit_args(model_dir, out, 4, ["--trainer.devices", "1"]), nproc=1, timeout=TIMEOUT_S)
    return out


TRAINERS = {
    "ddp": ["--trainer.strategy", "ddp"],
    "zero3": ["--trainer", "configs/trainer/deepspeed_zero3_cpu.yaml"],
}


@pytest.mark.parametrize("strategy", sorted(TRAINERS))
def test_two_nodes_match_one_process(single, model_dir, tmp_path, strategy):
    out = tmp_path / strategy
    launch_two_nodes(fit_args(model_dir, out, 2, [*TRAINERS[strategy], "--trainer.accelerator", "cpu",
                                                  "--trainer.devices", "1", "--trainer.num_nodes", "2"]))
    ref, got = losses(single), losses(out)
    assert len(ref) == len(got) == STEPS
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64),
                               rtol=1e-4, atol=1e-6)
    ref_w, got_w = weights(single), weights(out)
    assert set(ref_w) == set(got_w)
    moved = max(float((ref_w[k] - load).abs().max()) for k, load in weights_initial(model_dir).items() if k in ref_w)
    assert moved > 1e-3  # training moved the weights, so equal weights mean equal updates
    for key, value in ref_w.items():
        torch.testing.assert_close(got_w[key], value, rtol=1e-4, atol=5e-5, msg=key)
    info = json.loads((out / "model" / "lit_unlearn.json").read_text())
    assert info["num_nodes"] == 2 and info["world_size"] == 2 and info["effective_batch_size"] == 4
    assert info["zero_stage"] == (3 if strategy == "zero3" else None)
    assert json.loads((single / "model" / "lit_unlearn.json").read_text())["num_nodes"] == 1


def weights_initial(model_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(model_dir) / "model.safetensors")
