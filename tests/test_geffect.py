"""G-effect toolkit (analysis/geffect.py) and GEffectMonitor (callbacks/geffect.py)."""
from __future__ import annotations

import csv
import json
import os
import types

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import transformers
from torch import nn
from torch.utils.data import DataLoader, Dataset

from conftest import free_port
from lit_unlearn.analysis.geffect import (
    g_effect,
    layer_groups,
    objective_gradient,
    per_instance_g_effect,
    risk,
    trainable_parameters,
)
from lit_unlearn.callbacks.geffect import GEffectMonitor
from lit_unlearn.functional.tokens import nll_mean, token_logprobs
from lit_unlearn.models.tiny import tiny_llama

V = 64


def small_llama(seed: int = 0) -> nn.Module:
    return tiny_llama(
        seed=seed, vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )


def small_gpt2(seed: int = 0, dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=V, bos_token_id=0, eos_token_id=0,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )
    return transformers.GPT2LMHeadModel(config)


def make_batch(seed: int, batch_size: int = 3, length: int = 10) -> dict[str, torch.Tensor]:
    """Random tokens, right padding, labels -100 on a prompt of 2..4 tokens and on the padding."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, V, (batch_size, length), generator=g)
    lengths = torch.randint(length - 3, length + 1, (batch_size,), generator=g)
    prompts = torch.randint(2, 5, (batch_size,), generator=g)
    positions = torch.arange(length)
    attention_mask = (positions[None, :] < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    labels = input_ids.masked_fill((positions[None, :] < prompts[:, None]) | (attention_mask == 0), -100)
    index = torch.arange(batch_size) + 100 * seed
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "index": index}


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def naive_risk_grad(model: nn.Module, batch: dict) -> list[torch.Tensor]:
    """Independent risk gradient: HF's own shifted cross-entropy (token mean), eval mode."""
    model.eval()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return list(torch.autograd.grad(out.loss, trainable_parameters(model), allow_unused=False))


# ----------------------------------------------------------------------------------------------
# layer_groups


def assert_partition(model: nn.Module, groups: dict) -> None:
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


def test_layer_groups_llama():
    model = small_llama()
    groups = layer_groups(model)
    assert list(groups) == ["embedding", "block.0", "block.1", "norm", "head"]
    assert groups["embedding"] == [model.model.embed_tokens.weight]
    for i in range(2):
        assert [id(p) for p in groups[f"block.{i}"]] == [id(p) for p in model.model.layers[i].parameters()]
    assert groups["norm"] == [model.model.norm.weight]
    assert groups["head"] == [model.lm_head.weight]
    assert_partition(model, groups)


def test_layer_groups_gpt2_tied_head_counted_once_in_embedding():
    model = small_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    groups = layer_groups(model)
    assert list(groups) == ["embedding", "block.0", "block.1", "norm"]  # no separate head: tied
    assert {id(p) for p in groups["embedding"]} == {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    assert {id(p) for p in groups["norm"]} == {id(p) for p in model.transformer.ln_f.parameters()}
    assert_partition(model, groups)


def test_layer_groups_skip_frozen_and_collect_other():
    model = small_llama()
    for p in model.model.layers[0].parameters():
        p.requires_grad_(False)
    model.extra = nn.Linear(3, 3)  # outside the base model and not the head
    groups = layer_groups(model)
    assert list(groups) == ["embedding", "block.1", "norm", "head", "other"]
    assert {id(p) for p in groups["other"]} == {id(p) for p in model.extra.parameters()}
    assert_partition(model, groups)


# ----------------------------------------------------------------------------------------------
# g_effect values


def test_ga_unlearning_effect_is_minus_squared_gradient_norm():
    model = small_llama()
    forget, retain = make_batch(1), make_batch(2)
    objective = objective_gradient(model, lambda b: -risk(model, b), forget)  # GA: L_u = -R(forget)
    effect = g_effect(model, objective, forget, retain)

    g_f, g_r = flat(naive_risk_grad(model, forget)), flat(naive_risk_grad(model, retain))
    assert effect.total_unlearning < 0
    torch.testing.assert_close(effect.total_unlearning, -float(g_f.double() @ g_f.double()), rtol=1e-5, atol=0)
    torch.testing.assert_close(effect.total_retaining, -float(g_r.double() @ g_f.double()), rtol=1e-5, atol=1e-7)
    # per-layer effects sum to the total and are each -||grad_group||^2
    assert sum(effect.unlearning.values()) == pytest.approx(effect.total_unlearning, rel=1e-12)
    for name, params in layer_groups(model).items():
        grads = torch.autograd.grad(-risk(model.eval(), forget), params)
        assert effect.unlearning[name] == pytest.approx(-float(flat(grads).double().square().sum()), rel=1e-5)


def test_matches_flattened_naive_computation_per_group_with_random_objective():
    model = small_gpt2(dropout=0.0)
    forget, retain = make_batch(3), make_batch(4)
    params = trainable_parameters(model)
    g = torch.Generator().manual_seed(0)
    objective = [torch.randn(p.shape, generator=g) for p in params]
    effect = g_effect(model, objective, forget, retain)

    g_f, g_r, o = flat(naive_risk_grad(model, forget)), flat(naive_risk_grad(model, retain)), flat(objective)
    torch.testing.assert_close(effect.total_unlearning, float(g_f.double() @ o.double()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(effect.total_retaining, float(g_r.double() @ o.double()), rtol=1e-5, atol=1e-6)
    # per group: mask of the flat vector
    position = {id(p): i for i, p in enumerate(params)}
    offsets = torch.tensor([0] + [p.numel() for p in params]).cumsum(0)
    for name, group in layer_groups(model).items():
        mask = torch.zeros(len(o), dtype=torch.bool)
        for p in group:
            i = position[id(p)]
            mask[offsets[i] : offsets[i + 1]] = True
        expected = float((g_f * o * mask).double().sum())
        assert effect.unlearning[name] == pytest.approx(expected, rel=1e-4, abs=1e-6)


class Bigram(nn.Module):
    """logits[b, t] = W[x_bt] + c: a log-linear model whose NLL gradient has a closed form."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Embedding(V, V)
        self.table.weight.data = torch.randn(V, V, generator=g)
        self.bias = nn.Parameter(torch.randn(V, generator=g))

    def forward(self, input_ids, attention_mask):
        return types.SimpleNamespace(logits=self.table(input_ids) + self.bias)


def closed_form_risk_grad(model: Bigram, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """∂R/∂W[x] = Σ_t (softmax(W[x_t]+c) − e_{y_t}) / N over labelled positions t with x_t = x; ∂R/∂c = Σ_t (...) / N."""
    W, c = model.table.weight.detach().double(), model.bias.detach().double()
    grad_w, grad_c, n = torch.zeros_like(W), torch.zeros_like(c), 0
    for b in range(batch["input_ids"].shape[0]):
        for t in range(batch["input_ids"].shape[1] - 1):
            y = int(batch["labels"][b, t + 1])
            if y == -100:
                continue
            x = int(batch["input_ids"][b, t])
            residual = torch.softmax(W[x] + c, dim=0)
            residual[y] -= 1.0
            grad_w[x] += residual
            grad_c += residual
            n += 1
    return grad_w / n, grad_c / n


def test_log_linear_toy_against_closed_form_gradients():
    model = Bigram(seed=0)
    forget, retain = make_batch(5, batch_size=4), make_batch(6, batch_size=4)
    g = torch.Generator().manual_seed(1)
    o_w, o_c = torch.randn(V, V, generator=g), torch.randn(V, generator=g)
    objective = [o_c if p is model.bias else o_w for p in trainable_parameters(model)]  # bias comes first
    effect = g_effect(model, objective, forget, retain)

    assert list(effect.unlearning) == ["embedding", "norm"]  # no blocks, no head: the bias is "norm"
    for batch, result in ((forget, effect.unlearning), (retain, effect.retaining)):
        grad_w, grad_c = closed_form_risk_grad(model, batch)
        assert result["embedding"] == pytest.approx(float((grad_w * o_w.double()).sum()), rel=1e-5)
        assert result["norm"] == pytest.approx(float((grad_c * o_c.double()).sum()), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# per-instance mode


def test_per_instance_ga_weighted_sum_equals_batch_effect():
    model = small_llama()
    forget, retain = make_batch(7, batch_size=4), make_batch(8)
    ga = lambda b: -risk(model, b)  # noqa: E731
    instances = per_instance_g_effect(model, ga, forget, retain)
    assert len(instances) == 4

    # the batch GA gradient is Σ_i (n_i / N) ∇(−R_i), so the effects combine with the same weights
    n = (forget["labels"][:, 1:] != -100).sum(dim=1).double()
    weights = n / n.sum()
    batch = g_effect(model, objective_gradient(model, ga, forget), forget, retain)
    combined_u = sum(float(w) * e.total_unlearning for w, e in zip(weights, instances))
    combined_r = sum(float(w) * e.total_retaining for w, e in zip(weights, instances))
    assert combined_u == pytest.approx(batch.total_unlearning, rel=1e-5)
    assert combined_r == pytest.approx(batch.total_retaining, rel=1e-4, abs=1e-7)

    # each instance against the naive flat computation
    g_f = flat(naive_risk_grad(model, forget)).double()
    for i, effect in enumerate(instances):
        sample = {k: v[i : i + 1] for k, v in forget.items()}
        o_i = -flat(naive_risk_grad(model, sample)).double()
        assert effect.total_unlearning == pytest.approx(float(g_f @ o_i), rel=1e-5)
        assert sum(effect.unlearning.values()) == pytest.approx(effect.total_unlearning, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# side effects


def test_measurement_leaves_grad_rng_and_modes_untouched():
    model = small_gpt2(dropout=0.1)  # dropout on: eval-mode measurement must be deterministic
    model.train()
    model.transformer.h[1].eval()  # a sub-module deliberately in eval mode
    forget, retain = make_batch(9), make_batch(10)
    out = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"], labels=forget["labels"])
    out.loss.backward()
    params = trainable_parameters(model)
    grad_objects = [p.grad for p in params]
    grad_values = [p.grad.clone() for p in params]
    modes = [m.training for m in model.modules()]
    torch.manual_seed(123)
    rng = torch.get_rng_state()

    first = g_effect(model, [p.grad for p in params], forget, retain)
    per_instance_g_effect(model, lambda b: -risk(model, b), forget, retain)
    objective_gradient(model, lambda b: risk(model, b), retain)
    second = g_effect(model, [p.grad for p in params], forget, retain)

    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is g for p, g in zip(params, grad_objects))
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grad_values))
    assert first == second
    # measured in eval mode (dropout off): equals the naive eval-mode computation
    g_f = flat(naive_risk_grad(model, forget)).double()
    assert first.total_unlearning == pytest.approx(float(g_f @ flat(grad_values).double()), rel=1e-5)


def test_bad_input_raises_clear_errors():
    model = small_llama()
    forget, retain = make_batch(1), make_batch(2)
    params = trainable_parameters(model)
    zeros = [torch.zeros_like(p) for p in params]
    with pytest.raises(ValueError, match="objective_grads has"):
        g_effect(model, zeros[:-1], forget, retain)
    with pytest.raises(ValueError, match=r"objective_grads\[0\] has shape"):
        g_effect(model, [torch.zeros(3)] + zeros[1:], forget, retain)
    with pytest.raises(ValueError, match="retain_batch is missing"):
        g_effect(model, zeros, forget, {"input_ids": retain["input_ids"]})
    unlabelled = dict(forget, labels=torch.full_like(forget["labels"], -100))
    with pytest.raises(ValueError, match="forget_batch has no labelled tokens"):
        g_effect(model, zeros, unlabelled, retain)
    groups = layer_groups(model)
    del groups["head"]
    with pytest.raises(ValueError, match="partition"):
        g_effect(model, zeros, forget, retain, groups=groups)
    with pytest.raises(ValueError, match="scalar"):
        objective_gradient(model, lambda b: torch.zeros(2), forget)
    with pytest.raises(ValueError, match="every_n_steps"):
        GEffectMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="ema"):
        GEffectMonitor(ema=1.5)


# ----------------------------------------------------------------------------------------------
# GEffectMonitor on a plain LightningModule


class PairDataset(Dataset):
    def __init__(self, n: int = 4) -> None:
        self.forget = make_batch(11, batch_size=n)
        self.retain = make_batch(12, batch_size=n)

    def __len__(self) -> int:
        return self.forget["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"forget": {k: v[i] for k, v in self.forget.items()}, "retain": {k: v[i] for k, v in self.retain.items()}}


class PlainGradDiff(pl.LightningModule):
    """Written only from the monitor's protocol: `self.model`, a {"forget", "retain"} batch, `forget_loss`."""

    def __init__(self) -> None:
        super().__init__()
        self.model = small_llama(seed=0)

    def nll(self, batch: dict) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return nll_mean(*token_logprobs(logits, batch["labels"]))

    def forget_loss(self, batch: dict) -> torch.Tensor:
        return -self.nll(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.forget_loss(batch["forget"]) + self.nll(batch["retain"])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def fit(tmp_path, callbacks: list, steps: int = 4) -> PlainGradDiff:
    """``steps`` optimizer steps over 2 batches per epoch: later epochs' shuffles draw from the global RNG."""
    pl.seed_everything(0, verbose=False)
    module = PlainGradDiff()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=callbacks,
    )
    trainer.fit(module, DataLoader(PairDataset(), batch_size=2, shuffle=True))
    return module


def test_monitor_writes_files_and_does_not_change_training(tmp_path):
    out_dir = tmp_path / "out"
    monitor = GEffectMonitor(every_n_steps=2, per_instance=True, ema=0.5, output_dir=str(out_dir))
    monitored = fit(tmp_path, [monitor])
    plain = fit(tmp_path, [])
    for (name, a), (_, b) in zip(monitored.named_parameters(), plain.named_parameters()):
        assert torch.equal(a, b), name

    # step 0 against an independent measurement on the initial weights and the first batch
    pl.seed_everything(0, verbose=False)
    module = PlainGradDiff()
    first = next(iter(DataLoader(PairDataset(), batch_size=2, shuffle=True)))
    loss = module.training_step(first, 0)
    objective = torch.autograd.grad(loss, trainable_parameters(module.model))
    expected = g_effect(module.model, objective, first["forget"], first["retain"])
    assert [r["step"] for r in monitor.rows] == [0, 2]
    assert monitor.rows[0]["total_unlearning"] == pytest.approx(expected.total_unlearning, rel=1e-5)
    assert monitor.rows[0]["total_retaining"] == pytest.approx(expected.total_retaining, rel=1e-4, abs=1e-7)
    assert monitor.rows[0]["unlearning"] == pytest.approx(expected.unlearning, rel=1e-4, abs=1e-7)
    assert [r["index"] for r in monitor.instance_rows[:2]] == first["forget"]["index"].tolist()

    names = {"geffect.csv", "geffect.json", "geffect_instances.csv", "geffect_totals.png",
             "geffect_layers_unlearning.png", "geffect_layers_retaining.png"}
    assert set(os.listdir(out_dir)) == names  # no temp files left behind
    for png in [n for n in names if n.endswith(".png")]:
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((out_dir / "geffect.json").read_text())
    assert report["steps"] == [0, 2]
    assert report["groups"] == ["embedding", "block.0", "block.1", "norm", "head"]
    u = report["total_unlearning"]
    assert report["total_unlearning_ema"] == pytest.approx([u[0], 0.5 * u[0] + 0.5 * u[1]])
    with open(out_dir / "geffect.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (5 + 2)  # 5 groups + total + total_ema per step
    for step in (0, 2):
        per_group = [float(r["e_u"]) for r in rows if r["step"] == str(step) and r["group"] not in ("total", "total_ema")]
        total = next(float(r["e_u"]) for r in rows if r["step"] == str(step) and r["group"] == "total")
        assert sum(per_group) == pytest.approx(total, rel=1e-9)
    assert total == pytest.approx(u[1])


def test_monitor_default_output_dir(tmp_path):
    fit(tmp_path, [GEffectMonitor(every_n_steps=1)], steps=1)
    assert (tmp_path / "geffect" / "geffect.csv").is_file()
    assert not (tmp_path / "geffect" / "geffect_instances.csv").exists()


def test_monitor_rejects_module_without_protocol(tmp_path):
    class NoModel(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(2, 2)

        def training_step(self, batch, batch_idx):
            return self.net(batch["forget"]["input_ids"].float()[:, :2]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[GEffectMonitor()])
    with pytest.raises(ValueError, match=r"NoModel\.model"):
        trainer.fit(NoModel(), DataLoader(PairDataset(), batch_size=2))


# ----------------------------------------------------------------------------------------------
# distributed: risk gradients averaged over 2 gloo processes


def _random_objective(model: nn.Module) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(p.shape, generator=g) for p in trainable_parameters(model)]


def _all_reduce_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # forked child: keep OpenMP out of it
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = small_llama()
        effect = g_effect(model, _random_objective(model), make_batch(20 + rank), make_batch(30 + rank), all_reduce=True)
        torch.save({"unlearning": effect.unlearning, "retaining": effect.retaining}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_all_reduce_averages_risk_gradients_over_ranks(tmp_path):
    port = free_port()
    # fork: the children reuse the imported modules (spawn would spend seconds re-importing them)
    mp.start_processes(_all_reduce_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="fork")

    # single process: the G-effect is linear in the risk gradient, so the rank average is the mean effect
    model = small_llama()
    objective = _random_objective(model)
    local = [g_effect(model, objective, make_batch(20 + r), make_batch(30 + r)) for r in range(2)]
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt")
        for key in ("unlearning", "retaining"):
            expected = {g: (getattr(local[0], key)[g] + getattr(local[1], key)[g]) / 2 for g in result[key]}
            assert result[key] == pytest.approx(expected, rel=1e-4, abs=1e-6)
