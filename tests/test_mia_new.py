"""GradNorm and reference-model MIAs and the Min-K% k sweep (functional.mia, metrics.mia) against
independent computations: a per-sample loop with loss.backward() and a Python-float norm, cross_entropy by
hand, sklearn's roc_auc_score; and a 2-process gloo run equal to one process."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as TF
from sklearn.metrics import roc_auc_score
from torch.utils.data import DistributedSampler

from conftest import free_port, spawn_and_wait
from lit_unlearn import metrics as LM
from lit_unlearn.functional import metrics as F
from lit_unlearn.functional.mia import gradnorm_scores, min_k_sweep_scores, reference_scores
from lit_unlearn.models.tiny import tiny_llama

V = 12


def small_model(seed: int = 0, dtype=torch.float64):
    return tiny_llama(seed=seed, vocab_size=V, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=16).to(dtype)


def make_batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (n, 7), generator=g)
    att = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :3] = -100  # prompt
    att[1::2, 6:] = 0  # right padding on every other row
    labels[1::2, 6:] = -100
    return ids, att, labels


def naive_nll(logits_row: torch.Tensor, labels_row: torch.Tensor) -> torch.Tensor:
    """Mean NLL of the labelled tokens of one sample (shifted, ignore -100) with cross_entropy."""
    return TF.cross_entropy(logits_row[:-1], labels_row[1:], ignore_index=-100)


def naive_gradnorm(model, ids, att, labels, p: float, aggregation: str) -> list[float]:
    out = []
    for b in range(ids.shape[0]):
        model.zero_grad()
        logits = model(input_ids=ids[b : b + 1], attention_mask=att[b : b + 1]).logits[0]
        naive_nll(logits, labels[b]).backward()
        per_tensor = []
        for param in model.parameters():
            values = [0.0] if param.grad is None else [abs(x) for x in param.grad.flatten().tolist()]
            per_tensor.append(max(values) if p == math.inf else sum(x**p for x in values) ** (1 / p))
        if aggregation == "global":
            values = [abs(x) for param in model.parameters() if param.grad is not None
                      for x in param.grad.flatten().tolist()]
            out.append(max(values) if p == math.inf else sum(x**p for x in values) ** (1 / p))
        else:
            out.append(sum(per_tensor) / len(per_tensor))
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("p,aggregation", [(2.0, "global"), (1.0, "global"), (math.inf, "global"),
                                           (2.0, "layer_mean")])
def test_gradnorm_matches_per_sample_backward_loop(p, aggregation):
    model = small_model().eval()
    ids, att, labels = make_batch(4)
    ours = gradnorm_scores(model, ids, att, labels, p=p, aggregation=aggregation)
    naive = naive_gradnorm(model, ids, att, labels, p, aggregation)
    assert ours.shape == (4,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), torch.tensor(naive, dtype=torch.float64), rtol=1e-5, atol=0)


def test_gradnorm_leaves_model_state_alone():
    model = small_model().train()
    frozen = model.model.embed_tokens.weight
    frozen.requires_grad_(False)
    ids, att, labels = make_batch(2)
    gradnorm_scores(model, ids, att, labels)
    assert model.training and not frozen.requires_grad
    assert all(p.grad is None for p in model.parameters())
    with_frozen = gradnorm_scores(model, ids, att, labels)
    frozen.requires_grad_(True)  # the frozen embedding counts too: same score as with every weight trainable
    torch.testing.assert_close(with_frozen, gradnorm_scores(model, ids, att, labels), rtol=0, atol=0)


def test_gradnorm_bad_input():
    model = small_model()
    ids, att, labels = make_batch(2)
    with pytest.raises(ValueError, match="p must be a number >= 1"):
        gradnorm_scores(model, ids, att, labels, p=0.5)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        LM.GradNormMIAAUC(aggregation="max")
    labels[1] = -100
    with pytest.raises(ValueError, match="sample 1 of the batch has no labelled token"):
        gradnorm_scores(model, ids, att, labels)


def test_reference_scores_by_hand():
    g = torch.Generator().manual_seed(1)
    logits, ref = torch.randn(3, 7, V, generator=g), torch.randn(3, 7, V, generator=g)
    _, _, labels = make_batch(3)
    expected = [naive_nll(logits[b], labels[b]) - naive_nll(ref[b], labels[b]) for b in range(3)]
    torch.testing.assert_close(reference_scores(logits, ref, labels), torch.stack(expected), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="disagree on"):
        reference_scores(logits, ref[:, :5], labels)


def sk_auc(forget, holdout) -> float:
    return roc_auc_score([0] * len(forget) + [1] * len(holdout), list(forget) + list(holdout))


def test_gradnorm_and_reference_auc_against_sklearn():
    model = small_model()
    ids_f, att_f, lab_f = make_batch(5, seed=2)
    ids_h, att_h, lab_h = make_batch(4, seed=3)
    metric, leak = LM.GradNormMIAAUC(), LM.GradNormPrivLeak(retain_auc=0.4)
    for m in (metric, leak):
        m.update(model, ids_f, att_f, lab_f, member=True, index=torch.arange(5))
        m.update(model, ids_h, att_h, lab_h, member=False, index=torch.arange(4))
    f_scores = naive_gradnorm(model, ids_f, att_f, lab_f, 2.0, "global")
    h_scores = naive_gradnorm(model, ids_h, att_h, lab_h, 2.0, "global")
    auc = sk_auc(f_scores, h_scores)
    assert float(metric.compute()) == pytest.approx(auc, abs=1e-6)
    assert float(leak.compute()) == pytest.approx(((1 - auc) - 0.6) / 0.6 * 100, abs=1e-4)

    g = torch.Generator().manual_seed(4)
    lf, rf, lh, rh = (torch.randn(n, 7, V, generator=g) for n in (5, 5, 4, 4))
    ref, ref_leak = LM.ReferenceMIAAUC(), LM.ReferencePrivLeak(retain_auc=0.5)
    for m in (ref, ref_leak):
        m.update(lf, rf, lab_f, member=True)
        m.update(lh, rh, lab_h, member=False)
    fs = [float(naive_nll(lf[b], lab_f[b]) - naive_nll(rf[b], lab_f[b])) for b in range(5)]
    hs = [float(naive_nll(lh[b], lab_h[b]) - naive_nll(rh[b], lab_h[b])) for b in range(4)]
    assert float(ref.compute()) == pytest.approx(sk_auc(fs, hs), abs=1e-6)
    assert float(ref_leak.compute()) == pytest.approx(((1 - sk_auc(fs, hs)) - 0.5) / 0.5 * 100, abs=1e-4)


@pytest.mark.parametrize("score", ["min_k", "min_k_plus_plus"])
def test_k_sweep_equals_single_k_metrics_and_sklearn(score):
    g = torch.Generator().manual_seed(5)
    lf, lh = torch.randn(6, 7, V, generator=g), torch.randn(5, 7, V, generator=g)
    _, _, lab_f = make_batch(6, seed=6)
    _, _, lab_h = make_batch(5, seed=7)
    ks = (0.1, 0.3, 0.5, 0.6)
    sweep = LM.MIAKSweep(score=score, ks=ks)
    sweep.update(lf, lab_f, member=True)
    sweep.update(lh, lab_h, member=False)
    result = sweep.compute()
    assert list(result) == list(ks)
    cols_f, cols_h = min_k_sweep_scores(lf, lab_f, ks, score), min_k_sweep_scores(lh, lab_h, ks, score)
    for j, k in enumerate(ks):
        single = LM.MIAAUC(score=score, k=k)
        single.update(lf, lab_f, member=True)
        single.update(lh, lab_h, member=False)
        assert float(result[k]) == pytest.approx(float(single.compute()), abs=1e-7)
        assert float(result[k]) == pytest.approx(sk_auc(cols_f[:, j].tolist(), cols_h[:, j].tolist()), abs=1e-6)
    with pytest.raises(ValueError, match="ks is empty"):
        LM.MIAKSweep(ks=())
    with pytest.raises(ValueError):
        LM.MIAKSweep(ks=(0.0, 0.5))


# -- 2 processes (gloo): sharded updates equal one process ---------------------------------------------------
N_F, N_H, WORLD = 5, 4, 2


def _shard(n: int, rank: int, world: int) -> list[int]:
    return list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False))


def run_new_metrics(rank: int, world: int) -> dict:
    model = small_model(dtype=torch.float32)
    ids_f, att_f, lab_f = make_batch(N_F, seed=2)
    ids_h, att_h, lab_h = make_batch(N_H, seed=3)
    g = torch.Generator().manual_seed(8)
    lf, rf, lh, rh = (torch.randn(n, 7, V, generator=g) for n in (N_F, N_F, N_H, N_H))
    grad, ref, sweep = LM.GradNormMIAAUC(), LM.ReferenceMIAAUC(), LM.MIAKSweep(ks=(0.2, 0.5))
    for member, n, ids, att, lab, logits, rlogits in ((True, N_F, ids_f, att_f, lab_f, lf, rf),
                                                      (False, N_H, ids_h, att_h, lab_h, lh, rh)):
        idx = torch.tensor(_shard(n, rank, world))  # padded with a repeated row: dropped by index
        grad.update(model, ids[idx], att[idx], lab[idx], member=member, index=idx)
        ref.update(logits[idx], rlogits[idx], lab[idx], member=member, index=idx)
        sweep.update(logits[idx], lab[idx], member=member, index=idx)
    return {"grad": float(grad.compute()), "ref": float(ref.compute()),
            **{f"sweep{k}": float(v) for k, v in sweep.compute().items()}}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(run_new_metrics(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    expected = run_new_metrics(0, 1)
    spawn_and_wait(_worker, (WORLD, free_port(), str(tmp_path)), nprocs=WORLD, timeout=300,
                   what="the 2-process gloo run of the new MIA metrics")
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got == pytest.approx(expected, abs=1e-6), rank
