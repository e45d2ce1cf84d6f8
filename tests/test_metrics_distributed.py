"""2-process gloo run of the metric classes: every rank updates with its shard (DistributedSampler
order, padded with a repeated sample), and compute()/value_by_index() equal the single-process values."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from conftest import free_port, spawn_and_wait
from lit_unlearn import metrics as LM

N_FORGET, N_HOLDOUT, WORLD_SIZE = 7, 5, 2


def make_data():
    """The same random logits, labels and truth-ratio inputs on every process."""
    g = torch.Generator().manual_seed(0)
    n = N_FORGET + N_HOLDOUT
    logits = torch.randn(n, 8, 3, generator=g)
    labels = torch.randint(0, 3, (n, 8), generator=g)
    labels[:, :2] = -100
    labels[::3, 6:] = -100  # some right padding
    correct, perturbed = torch.rand(N_FORGET, generator=g) * 3, torch.rand(N_FORGET, 3, generator=g) * 3
    return logits[:N_FORGET], labels[:N_FORGET], logits[N_FORGET:], labels[N_FORGET:], correct, perturbed


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """The dataset rows a rank sees under DistributedSampler (pads by repeating the first rows)."""
    return list(DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=False))


def run_metrics(rank: int, world_size: int) -> dict:
    """Update every metric with this rank's rows in batches of 3 and return the computed results."""
    logits, labels, h_logits, h_labels, correct, perturbed = make_data()
    ma, tr, prob = LM.MemorizationAccuracy(), LM.TruthRatio(split="forget"), LM.Probability()
    fq = LM.ForgetQuality(retain_truth_ratios=[0.3, 0.5, 0.9, 1.1, 0.7])
    mia, ppl = LM.MIAAUC(score="min_k"), LM.Perplexity()

    rows = shard(N_FORGET, rank, world_size)
    for start in range(0, len(rows), 3):
        idx = torch.tensor(rows[start : start + 3])
        ma.update(logits[idx], labels[idx], index=idx)
        prob.update(logits[idx], labels[idx], index=idx)
        tr.update(correct[idx], perturbed[idx], index=idx)
        fq.update(correct[idx], perturbed[idx], index=idx)
        mia.update(logits[idx], labels[idx], member=True, index=idx)
    for start in range(0, len(h_rows := shard(N_HOLDOUT, rank, world_size)), 3):
        idx = torch.tensor(h_rows[start : start + 3])
        mia.update(h_logits[idx], h_labels[idx], member=False, index=idx)
    own = list(range(rank, N_FORGET, world_size))  # sum states: an exact split, no padding
    ppl.update(logits[own], labels[own])

    prob_by_index = prob.value_by_index()  # before compute(): must sync by itself
    return {
        "ma": ma.compute().item(),
        "ma_by_index": ma.value_by_index(),
        "tr": tr.compute().item(),
        "tr_by_index": tr.value_by_index(),
        "prob": prob.compute().item(),
        "prob_by_index": prob_by_index,
        "fq": fq.compute().item(),
        "mia": mia.compute().item(),
        "ppl": ppl.compute().item(),
        "local_ma_rows": sum(t.numel() for t in ma.indices),  # local states are restored after compute
    }


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(run_metrics(rank, world_size), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    expected = run_metrics(rank=0, world_size=1)
    spawn_and_wait(_worker, (WORLD_SIZE, free_port(), str(tmp_path)), nprocs=WORLD_SIZE, timeout=120,
                   what="the 2-process gloo run")

    for rank in range(WORLD_SIZE):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for key in ("ma", "tr", "prob", "fq", "mia", "ppl"):
            assert got[key] == pytest.approx(expected[key], rel=1e-5), (rank, key)
        for key in ("ma_by_index", "tr_by_index", "prob_by_index"):
            assert list(got[key]) == list(range(N_FORGET)), (rank, key)
            assert got[key] == pytest.approx(expected[key], rel=1e-6), (rank, key)
        assert got["local_ma_rows"] == 4  # each rank keeps only its own rows between computes
