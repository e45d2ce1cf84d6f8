"""MRD and G-effect on ``peft`` adapter models (issue 20, item 3).

* ``mrd_params="trainable"`` perturbs only the adapter weights (the base weights are never written, not even
  during a perturbed forward) and equals a literal perturb-by-copy Algorithm 1 over the adapter weights;
* ``mrd_params="all"`` on a LoRA model equals MRD of the merged model (W + (α/r)·B·A perturbed by the same
  δ_k), and on a model without adapters is exactly the default;
* G-effect groups of a LoRA model are layers (adapter factors of a layer summed in one group) and each
  group's value equals an independent per-layer inner product.
"""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM

pytest.importorskip("peft")

from lit_unlearn.analysis.geffect import g_effect, layer_groups, risk  # noqa: E402
from lit_unlearn.analysis.mrd import mrd_scores, perturbation, perturbed_parameters  # noqa: E402
from lit_unlearn.models.adapters import adapter_parameter_names, wrap_with_adapters  # noqa: E402
from lit_unlearn.models.tiny import tiny_llama_config  # noqa: E402

VOCAB, PROMPT = 64, 4
LORA = {"r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"],
        "init_lora_weights": False}  # B ≠ 0: the adapter model differs from its base


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread per test


def small_llama(dtype: torch.dtype = torch.float64) -> LlamaForCausalLM:
    config = tiny_llama_config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(dtype)


def lora_llama(dtype: torch.dtype = torch.float64):
    return wrap_with_adapters(small_llama(dtype), LORA, seed=1)


def rows(n: int = 6, max_len: int = 14) -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    out = []
    for i in range(n):
        length = int(torch.randint(PROMPT + 4, max_len + 1, (1,), generator=gen))
        ids = torch.zeros(max_len, dtype=torch.long)
        ids[:length] = torch.randint(3, VOCAB, (length,), generator=gen)
        attention = (torch.arange(max_len) < length).long()
        labels = ids.clone()
        labels[:PROMPT] = -100
        labels[attention == 0] = -100
        out.append({"input_ids": ids, "attention_mask": attention, "labels": labels, "index": torch.tensor(i)})
    return out


def loader(batch_size: int = 3) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(rows(), batch_size=batch_size)


def naive_logp(model, sample: dict) -> list[float]:
    """log p(y_t | y_<t) of one sample's labelled tokens, one position at a time (float64 log_softmax)."""
    with torch.no_grad():
        logits = model(input_ids=sample["input_ids"][None], attention_mask=sample["attention_mask"][None]).logits[0]
    out = []
    for t in range(1, sample["input_ids"].shape[0]):
        y = int(sample["labels"][t])
        if y != -100:
            out.append(float(torch.log_softmax(logits[t - 1].double(), dim=-1)[y]))
    return out


def naive_mean_abs(model, names: list[str], k_draws: int, sigma: float, seed: int) -> list[float]:
    """Algorithm 1 by copy: θ_names += δ_k in place, score, restore; Δ_k = Σ_t (P_t − P_t^k) / P_t."""
    params = dict(model.named_parameters())
    base = [naive_logp(model, s) for s in rows()]
    totals = [0.0] * len(base)
    for k in range(k_draws):
        saved = {n: params[n].detach().clone() for n in names}
        with torch.no_grad():
            for n in names:
                params[n].add_(perturbation(n, params[n].shape, k, sigma=sigma, seed=seed).to(params[n].dtype))
        for i, s in enumerate(rows()):
            perturbed = naive_logp(model, s)
            totals[i] += abs(sum((p0 - p1) / p0 for p0, p1 in zip(base[i], perturbed)))
        with torch.no_grad():
            for n in names:
                params[n].copy_(saved[n])
    return [t / k_draws for t in totals]


# ------------------------------------------------------------------------------------------------
# MRD


def test_trainable_perturbs_only_adapter_weights_and_equals_naive():
    model = lora_llama().eval()
    adapters = adapter_parameter_names(model)
    assert set(perturbed_parameters(model, "trainable")) == set(adapters)
    base = {n: p for n, p in model.named_parameters() if n not in adapters}
    saved = {n: p.detach().clone() for n, p in base.items()}
    pointers = {n: p.data_ptr() for n, p in base.items()}
    seen_changed = []

    def check(module, args, output):  # every forward, perturbed or not, sees the original base weights
        for n, p in base.items():
            if p.data_ptr() != pointers[n] or not torch.equal(p.data, saved[n]):
                seen_changed.append(n)

    handles = [m.register_forward_hook(check) for m in model.modules() if not list(m.children())]
    scores = mrd_scores(model, loader(), sigma=1e-3, num_samples=3, seed=5, progress=False, mrd_params="trainable")
    for h in handles:
        h.remove()
    assert not seen_changed
    assert all(torch.equal(p, saved[n]) for n, p in base.items())
    names = [n for n, _ in model.named_parameters() if n in adapters]
    naive = naive_mean_abs(model, names, k_draws=3, sigma=1e-3, seed=5)
    torch.testing.assert_close(scores.double(), torch.tensor(naive, dtype=torch.float64), rtol=1e-5, atol=0)
    # the default ("all") perturbs other weights and gives other scores
    assert not torch.allclose(scores, mrd_scores(model, loader(), sigma=1e-3, num_samples=3, seed=5,
                                                 progress=False), rtol=1e-3)


@pytest.mark.parametrize("estimator", ["mean_abs", "analytic"])
def test_all_on_lora_equals_the_merged_model(estimator):
    lora = lora_llama().eval()
    merged = copy.deepcopy(lora).merge_and_unload().eval()
    streams = perturbed_parameters(lora, "all")
    assert sorted(streams.values()) == sorted(n for n, _ in merged.named_parameters())
    assert not any("lora_" in n for n in streams)
    kw = dict(sigma=1e-4, num_samples=4, seed=2, progress=False, estimator=estimator, per_sample="loop")
    if estimator == "analytic":
        kw.pop("num_samples")
    ours = mrd_scores(lora, loader(), mrd_params="all", **kw)
    reference = mrd_scores(merged, loader(), **kw)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=0)


def test_analytic_trainable_equals_gradient_norm_over_adapters():
    """√(2/π)·σ·‖∇_φ Σ_t P_t / P_t‖ over the adapter weights φ only, by autograd on one sample at a time."""
    model = lora_llama().eval()
    names = adapter_parameter_names(model)
    params = [p for n, p in model.named_parameters() if n in names]
    sigma = 1e-5
    scores = mrd_scores(model, loader(), sigma=sigma, estimator="analytic", progress=False, mrd_params="trainable",
                        per_sample="loop")
    expected = []
    for s in rows():
        logits = model(input_ids=s["input_ids"][None], attention_mask=s["attention_mask"][None]).logits[0]
        objective = 0.0
        for t in range(1, s["input_ids"].shape[0]):
            y = int(s["labels"][t])
            if y != -100:
                lp = torch.log_softmax(logits[t - 1], dim=-1)[y]
                objective = objective + lp / lp.detach()
        grads = torch.autograd.grad(objective, params)
        norm = sum(float(g.double().pow(2).sum()) for g in grads) ** 0.5
        expected.append((2 / torch.pi) ** 0.5 * sigma * norm)
    torch.testing.assert_close(scores.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=0)


def test_vmap_trainable_equals_loop():
    model = lora_llama(torch.float32).eval()
    kw = dict(sigma=1e-5, estimator="analytic", progress=False, mrd_params="trainable")
    torch.testing.assert_close(mrd_scores(model, loader(), per_sample="vmap", **kw),
                               mrd_scores(model, loader(), per_sample="loop", **kw), rtol=1e-4, atol=0)


def test_all_without_adapters_is_the_default():
    model = small_llama(torch.float32).eval()
    streams = perturbed_parameters(model, "all")
    assert list(streams.items()) == [(n, n) for n, _ in model.named_parameters()]
    kw = dict(sigma=1e-5, num_samples=4, seed=0, progress=False)
    assert torch.equal(mrd_scores(model, loader(), **kw), mrd_scores(model, loader(), mrd_params="all", **kw))


def test_bad_mrd_params_and_frozen_model_are_refused():
    from lit_unlearn.callbacks import MRDCurriculum

    model = small_llama(torch.float32)
    with pytest.raises(ValueError, match="mrd_params must be one of"):
        mrd_scores(model, loader(), mrd_params="adapters", progress=False)
    with pytest.raises(ValueError, match="mrd_params must be one of"):
        MRDCurriculum(mrd_params="lora")
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad"):
        mrd_scores(model, loader(), mrd_params="trainable", progress=False)


def test_trainable_scores_fp32_adapters_on_a_bf16_base():
    """Only the perturbed weights need fp32: adapters in fp32 on a bf16 base are scored without upcast."""
    model = lora_llama(torch.float32)
    names = adapter_parameter_names(model)
    for n, p in model.named_parameters():
        if n not in names:
            p.data = p.data.to(torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        mrd_scores(model, loader(), progress=False, num_samples=2)
    from lit_unlearn.analysis.mrd import _check_precision

    assert _check_precision(model, False, False, perturbed_parameters(model, "trainable")) is model


# ------------------------------------------------------------------------------------------------
# G-effect


def test_geffect_per_layer_groups_equal_per_layer_inner_products():
    model = lora_llama(torch.float32)
    adapters = adapter_parameter_names(model)
    batch = torch.utils.data.default_collate(rows())
    forget = {k: batch[k][:3] for k in ("input_ids", "attention_mask", "labels")}
    retain = {k: batch[k][3:] for k in ("input_ids", "attention_mask", "labels")}
    groups = layer_groups(model)
    assert list(groups) == ["block.0", "block.1"]  # layers, not lora_A / lora_B
    named = {id(p): n for n, p in model.named_parameters()}
    for i, params in enumerate(groups.values()):
        got = {named[id(p)] for p in params}
        assert got == {n for n in adapters if f".layers.{i}." in n}
        assert any("lora_A" in n for n in got) and any("lora_B" in n for n in got)
    # an objective gradient: gradient ascent on the forget batch
    model.eval()
    params = [p for n, p in model.named_parameters() if n in adapters]
    objective = [g.detach() for g in torch.autograd.grad(-risk(model, forget), params)]
    effect = g_effect(model, objective, forget, retain)
    # independent: per layer i, Σ over that layer's adapter tensors of ⟨∇R, o⟩ in float64
    for which, batch_ in (("unlearning", forget), ("retaining", retain)):
        risk_grads = torch.autograd.grad(risk(model, batch_), params)
        per_layer = {}
        for (n, _), g, o in zip([(n, p) for n, p in model.named_parameters() if n in adapters], risk_grads,
                                objective):
            layer = int(n.split(".layers.")[1].split(".")[0])
            per_layer[f"block.{layer}"] = per_layer.get(f"block.{layer}", 0.0) + float((g.double() * o.double()).sum())
        values = getattr(effect, which)
        assert set(values) == set(per_layer)
        for name, value in per_layer.items():
            assert values[name] == pytest.approx(value, rel=1e-5, abs=1e-12), (which, name)
