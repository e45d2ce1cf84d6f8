"""MRD scores (lit_unlearn/analysis/mrd.py) against a literal Algorithm 1, closed forms and hand values."""
from __future__ import annotations

import math
import os

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn
from transformers import LlamaForCausalLM

from conftest import free_port
from lit_unlearn.analysis.mrd import ParameterPerturbation, mrd_scores, perturbation, relative_change
from lit_unlearn.models.tiny import tiny_llama_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Single-threaded BLAS: tiny matmuls are faster and timings do not collapse on a busy 2-core box."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------
# Helpers: a tiny Llama and a right-padded dataset in the library's batch convention
# ----------------------------------------------------------------------------------------------

VOCAB, PROMPT = 64, 4


def small_llama(seed: int = 0, tied: bool = False, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    config = tiny_llama_config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64)
    config.tie_word_embeddings = tied
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


def make_dataset(n: int, max_len: int = 16, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(PROMPT + 4, max_len + 1, (1,), generator=gen))
        ids = torch.zeros(max_len, dtype=torch.long)
        ids[:length] = torch.randint(3, VOCAB, (length,), generator=gen)
        attention = (torch.arange(max_len) < length).long()
        labels = ids.clone()
        labels[:PROMPT] = -100
        labels[attention == 0] = -100
        rows.append({"input_ids": ids, "attention_mask": attention, "labels": labels, "index": torch.tensor(i)})
    return rows


def loader(rows: list[dict], batch_size: int, **kw) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, **kw)


def naive_algorithm1(model: nn.Module, row: dict, sigma: float, num_samples: int, seed: int = 0,
                     antithetic: bool = False, normalization: str = "token", p_floor: float = 1e-6) -> float:
    """MRD paper Algorithm 1, literally: one sample, K perturbations, weights copied, δ_k added, restored."""
    deltas = naive_deltas(model, row, sigma, num_samples, seed, antithetic, normalization, p_floor)
    return sum(abs(d) for d in deltas) / num_samples


def naive_deltas(model: nn.Module, row: dict, sigma: float, num_samples: int, seed: int = 0,
                 antithetic: bool = False, normalization: str = "token", p_floor: float = 1e-6) -> list[float]:
    """Δ_1 … Δ_K of one sample, computed literally (Algorithm 1 lines 3-12)."""
    length = int(row["attention_mask"].sum())
    ids, labels = row["input_ids"][None, :length], row["labels"][None, :length]

    def token_logps() -> list[float]:  # P_t for every labelled token t, in order
        logits = model(input_ids=ids).logits[0].double()  # (T, V); exact log-softmax in float64
        logps = torch.log_softmax(logits, dim=-1)
        return [float(logps[t - 1, labels[0, t]]) for t in range(1, length) if labels[0, t] != -100]

    model.eval()
    with torch.no_grad():
        p_theta = token_logps()
        deltas = []
        for k in range(num_samples):
            saved = {name: p.detach().clone() for name, p in model.named_parameters()}
            for name, p in model.named_parameters():
                p.add_(perturbation(name, p.shape, k, sigma=sigma, seed=seed, antithetic=antithetic).to(p.dtype))
            p_pert = token_logps()
            for name, p in model.named_parameters():
                p.copy_(saved[name])
            if normalization == "token":
                delta = sum((a - b) / -max(abs(a), p_floor) for a, b in zip(p_theta, p_pert))
            else:
                delta = (sum(p_theta) - sum(p_pert)) / -max(abs(sum(p_theta)), p_floor)
            deltas.append(delta)
    return deltas


def literal_gradient(model: nn.Module, row: dict, normalization: str = "token",
                     p_floor: float = 1e-6) -> dict[str, torch.Tensor]:
    """g = ∇_θ Σ_t P_t(θ)/P_t(θ₀) at θ₀ (denominators held fixed), by torch.func.grad of a float64 log-softmax."""
    from torch.func import functional_call, grad

    length = int(row["attention_mask"].sum())
    ids, labels = row["input_ids"][None, :length], row["labels"][0:length]
    labelled = [t for t in range(1, length) if labels[t] != -100]
    weights = {name: p.detach() for name, p in model.named_parameters()}

    def token_logps(params: dict) -> torch.Tensor:
        logps = torch.log_softmax(functional_call(model, params, (ids,)).logits[0].double(), dim=-1)  # (T, V)
        return torch.stack([logps[t - 1, labels[t]] for t in labelled])

    p0 = token_logps(weights).detach()

    def objective(params: dict) -> torch.Tensor:
        if normalization == "token":
            return (token_logps(params) / -p0.abs().clamp_min(p_floor)).sum()
        return token_logps(params).sum() / -p0.sum().abs().clamp_min(p_floor)

    return grad(objective)(weights)


# ----------------------------------------------------------------------------------------------
# δ_k: common random numbers
# ----------------------------------------------------------------------------------------------


def test_perturbation_is_deterministic_named_and_antithetic():
    a = perturbation("w", (3, 1000), 5, sigma=0.1, seed=7)
    assert torch.equal(a, perturbation("w", (3, 1000), 5, sigma=0.1, seed=7))
    assert not torch.equal(a, perturbation("w", (3, 1000), 6, sigma=0.1, seed=7))
    assert not torch.equal(a, perturbation("v", (3, 1000), 5, sigma=0.1, seed=7))
    assert not torch.equal(a, perturbation("w", (3, 1000), 5, sigma=0.1, seed=8))
    assert a.dtype == torch.float32
    assert abs(a.mean().item()) < 0.01 and abs(a.std().item() - 0.1) < 0.005
    plus = perturbation("w", (50,), 4, sigma=0.1, antithetic=True)
    assert torch.equal(perturbation("w", (50,), 5, sigma=0.1, antithetic=True), -plus)
    assert torch.equal(plus, perturbation("w", (50,), 2, sigma=0.1))  # pair j uses plain draw j


def test_global_rng_untouched_and_modes_restored():
    model = small_llama()
    model.train()
    model.model.layers[0].eval()  # a mixed mode must survive too
    state = torch.get_rng_state()
    precision = torch.backends.cudnn.conv.fp32_precision
    mrd_scores(model, loader(make_dataset(3), 3), num_samples=2, progress=False)
    assert torch.equal(state, torch.get_rng_state())
    assert model.training and model.model.layers[1].training and not model.model.layers[0].training
    assert torch.backends.cudnn.conv.fp32_precision == precision


# ----------------------------------------------------------------------------------------------
# Agreement with Algorithm 1, batch invariance, bit-exact restoration
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_matches_literal_algorithm1(tied, normalization):
    # float64 weights: batched and single-sample forwards agree to ~1e-15 and both sides keep P_t in
    # float64 (the naive with log_softmax), so the paper's σ = 1e-5 is resolved and the match is tight.
    model = small_llama(seed=1, tied=tied, dtype=torch.float64)
    rows = make_dataset(5, seed=1)
    sigma, k = 1e-5, 6
    ours = mrd_scores(model, loader(rows, 3), sigma=sigma, num_samples=k, seed=3,
                      normalization=normalization, progress=False)
    naive = torch.tensor([naive_algorithm1(model, r, sigma, k, seed=3, normalization=normalization) for r in rows])
    assert ours.shape == (5,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, naive.float(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_control_variate_matches_literal_computation(tied, normalization):
    # (1/K) Σ_k (|Δ_k| − |g·δ_k|) + √(2/π)·σ·‖g‖ with Δ_k from the literal loop and g from torch.func.grad.
    # σ = 1e-3: the part of Δ_k beyond first order is a few percent, so the control-variate estimate differs
    # from plain Algorithm 1 and from the analytic score by far more than the tolerance.
    model = small_llama(seed=8, tied=tied, dtype=torch.float64)
    rows = make_dataset(5, seed=8)
    sigma, k = 1e-3, 6
    ours = mrd_scores(model, loader(rows, 3), sigma=sigma, num_samples=k, seed=2, normalization=normalization,
                      control_variate=True, progress=False)
    names = [name for name, _ in model.named_parameters()]
    expected = []
    for row in rows:
        deltas = naive_deltas(model, row, sigma, k, seed=2, normalization=normalization)
        g = literal_gradient(model, row, normalization)
        dots = [sum(float((g[n].double() * perturbation(n, g[n].shape, j, sigma=sigma, seed=2).double()).sum())
                    for n in names) for j in range(k)]  # g·δ_j
        norm = math.sqrt(sum(float(g[n].double().pow(2).sum()) for n in names))
        expected.append(sum(abs(d) - abs(x) for d, x in zip(deltas, dots)) / k + math.sqrt(2 / math.pi) * sigma * norm)
        assert max(abs(d + x) for d, x in zip(deltas, dots)) < 0.2 * max(abs(d) for d in deltas)  # Δ_k ≈ −g·δ_k
    expected = torch.tensor(expected)
    torch.testing.assert_close(ours, expected.float(), rtol=1e-5, atol=0)
    plain = mrd_scores(model, loader(rows, 3), sigma=sigma, num_samples=k, seed=2, normalization=normalization,
                       progress=False)
    analytic = mrd_scores(model, loader(rows, 3), sigma=sigma, estimator="analytic", normalization=normalization,
                          progress=False)
    assert ((plain - ours).abs() / ours).max() > 1e-3 and ((analytic - ours).abs() / ours).max() > 1e-3


def test_control_variate_removes_most_monte_carlo_noise_and_keeps_the_mean():
    # σ = 1e-5: Δ_k is nearly linear in δ_k, so the control variate leaves almost no noise. Two seeds at K=8
    # agree closely with it, not without it; and it estimates the same mean as plain Algorithm 1 at K=400.
    model, rows = small_llama(seed=9), make_dataset(8, max_len=20, seed=9)

    def scores(k: int, seed: int, control_variate: bool) -> torch.Tensor:
        return mrd_scores(model, loader(rows, 8), num_samples=k, seed=seed, control_variate=control_variate,
                          progress=False)

    def spread(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b).abs() / b).max())

    assert spread(scores(8, 0, True), scores(8, 1, True)) < 0.02
    assert spread(scores(8, 0, False), scores(8, 1, False)) > 0.1
    ratio = scores(8, 0, True) / scores(400, 0, False)  # plain K=400: ~4% noise per sample, ~1.3% on the mean
    assert abs(ratio.mean().item() - 1) < 0.03, ratio


def test_control_variate_warns_when_sigma_is_too_large_for_it():
    # σ = 0.1 on a random tiny model: Δ_k is far from −g·δ_k, and one sample's estimate comes out negative
    model, rows = small_llama(seed=1), make_dataset(6, seed=1)
    with pytest.warns(UserWarning, match=r"negative for samples \[4\]"):
        mrd_scores(model, loader(rows, 6), sigma=0.1, num_samples=4, control_variate=True, progress=False)


def test_float32_scores_of_a_confident_model_match_float64(finetuned_tiny):
    # A trained model puts log p ~ -1e-3 on many answer tokens; σ = 1e-5 moves it by ~1e-7, below the
    # ~1e-6 quantisation of float32 "logit - logsumexp". MRD's precise log-softmax keeps these changes.
    from lit_unlearn.data.tofu import TOFUDataModule
    from lit_unlearn.functional import tokens
    from lit_unlearn.models.loading import load_causal_lm

    data = TOFUDataModule(tokenizer=finetuned_tiny, splits=["forget10"], max_length=64)
    data.setup("fit")
    rows = data.collate([data.train_dataset[i] for i in range(8)])
    dl = loader([{k: rows[k][i] for k in ("input_ids", "attention_mask", "labels", "index")} for i in range(8)], 8)
    model32 = load_causal_lm(finetuned_tiny).float().eval()
    model64 = load_causal_lm(finetuned_tiny).double().eval()
    logp, mask = tokens.token_logprobs(model64(input_ids=rows["input_ids"][:8]).logits, rows["labels"][:8])
    assert (logp[mask] > -5e-2).float().mean() > 0.5  # the regime that matters: many confident tokens

    def plain_logprobs(model, batch):  # what MRD used before: float32 "logit - logsumexp"
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return tokens.token_logprobs(out.logits, batch["labels"])

    kw = dict(sigma=1e-5, num_samples=8, progress=False)
    exact = mrd_scores(model64, dl, **kw)
    precise = mrd_scores(model32, dl, **kw)
    plain = mrd_scores(model32, dl, logprob_fn=plain_logprobs, **kw)
    err_precise = ((precise - exact).abs() / exact).mean()  # ~0.5% on this model (K = 8)
    err_plain = ((plain - exact).abs() / exact).mean()  # ~3%: rounding noise adds to every |Δ_k|
    assert err_precise < 0.01
    assert err_plain > 3 * err_precise  # the failure this guards against


def test_batch_size_and_order_invariance():
    rows = make_dataset(8, seed=2)
    model = small_llama(seed=2, dtype=torch.float64)
    one = mrd_scores(model, loader(rows, 1), num_samples=8, progress=False)
    four = mrd_scores(model, loader(rows, 4), num_samples=8, progress=False)
    shuffled = mrd_scores(model, loader(rows, 4, shuffle=True, generator=torch.Generator().manual_seed(0)),
                          num_samples=8, progress=False)
    torch.testing.assert_close(one, four, rtol=1e-5, atol=0)
    torch.testing.assert_close(one, shuffled, rtol=1e-5, atol=0)
    # fp32 weights: only rounding of the forward differs between batch shapes
    model32 = small_llama(seed=2)
    one32 = mrd_scores(model32, loader(rows, 1), num_samples=8, progress=False)
    four32 = mrd_scores(model32, loader(rows, 4), num_samples=8, progress=False)
    torch.testing.assert_close(one32, four32, rtol=2e-2, atol=0)
    torch.testing.assert_close(one32, one.float(), rtol=2e-2, atol=0)


def _snapshot(model: nn.Module) -> list[tuple[torch.Tensor, int]]:
    return [(p.detach().clone(), p.data_ptr()) for p in model.parameters()]


def _assert_unchanged(model: nn.Module, snap) -> None:
    for p, (before, ptr) in zip(model.parameters(), snap):
        assert torch.equal(p.data, before) and p.data_ptr() == ptr and p.dtype == before.dtype


@pytest.mark.parametrize("estimator", ["mean_abs", "abs_mean", "analytic", "control_variate"])
def test_weights_bit_exact_after_scoring(estimator):
    model = small_llama(seed=3, tied=True)
    flags = [p.requires_grad for p in model.parameters()]
    model.model.norm.weight.requires_grad_(False)
    snap = _snapshot(model)
    kw = dict(control_variate=True) if estimator == "control_variate" else dict(estimator=estimator)
    mrd_scores(model, loader(make_dataset(4), 2), num_samples=4, progress=False, **kw)
    _assert_unchanged(model, snap)
    assert all(p.grad is None for p in model.parameters())
    assert not model.model.norm.weight.requires_grad and flags[0] == model.model.embed_tokens.weight.requires_grad


def test_works_inside_inference_mode():
    # e.g. a callback running inside Lightning's validation loop
    model, rows = small_llama(seed=3), make_dataset(3)
    expected = mrd_scores(model, loader(rows, 3), estimator="analytic", progress=False)
    with torch.inference_mode():
        got = mrd_scores(model, loader(make_dataset(3), 3), estimator="analytic", progress=False)
        assert mrd_scores(model, loader(rows, 3), num_samples=2, progress=False).shape == (3,)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class Boom(nn.Linear):
    """A linear layer whose forward can raise after it has run with (perturbed) weights."""

    armed_at, calls, saw_perturbed = -1, 0, False

    def forward(self, x):
        out = super().forward(x)
        Boom.calls += 1
        if Boom.calls == Boom.armed_at:
            Boom.saw_perturbed = not torch.equal(self.weight.data, Boom.original)
            raise RuntimeError("boom")
        return out


def test_weights_bit_exact_after_exception_in_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Boom(4, 1))
    Boom.original, Boom.calls, Boom.armed_at = model[1].weight.detach().clone(), 0, 3  # 3rd = 2nd perturbed pass
    snap = _snapshot(model)
    rows = [{"x": torch.randn(4), "index": torch.tensor(i)} for i in range(2)]

    def logprob_fn(m, batch):
        logp = -nn.functional.softplus(m(batch["x"]))  # (B, 1), a fake log-probability
        return logp, torch.ones_like(logp, dtype=torch.bool)

    with pytest.raises(RuntimeError, match="boom"):
        mrd_scores(model, loader(rows, 2), num_samples=4, logprob_fn=logprob_fn, progress=False)
    assert Boom.saw_perturbed  # the exception hit while the weights were perturbed
    _assert_unchanged(model, snap)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_nested_modules_sharing_a_parameter_see_one_delta():
    class Child(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, x):
            return x * self.w

    class Parent(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(5))
            self.child = Child(self.w)

        def forward(self, x):
            return self.child(x) + x * self.w

    model, x = Parent(), torch.arange(5.0)
    with torch.no_grad(), ParameterPerturbation(model, sigma=0.1, seed=1) as perturb:
        with perturb.draw(0):
            out = model(x)
    delta = perturbation("w", (5,), 0, sigma=0.1, seed=1)
    torch.testing.assert_close(out, 2 * x * (1 + delta))
    assert torch.equal(model.w.data, torch.ones(5))


# ----------------------------------------------------------------------------------------------
# Estimators: analytic ≈ Monte Carlo, and the Hessian-trace quantity of Theorem 3.2
# ----------------------------------------------------------------------------------------------


def test_analytic_agrees_with_monte_carlo_at_large_k():
    model = small_llama(seed=4)
    rows = make_dataset(10, max_len=20, seed=4)
    mc = mrd_scores(model, loader(rows, 10), num_samples=200, progress=False)
    analytic = mrd_scores(model, loader(rows, 10), estimator="analytic", progress=False)
    ratio = analytic / mc
    assert abs(ratio.mean().item() - 1) < 0.1, ratio
    assert (ratio - 1).abs().max() < 0.25, ratio
    assert spearmanr(analytic.numpy(), mc.numpy()).statistic > 0.7


GRADIENT_RUNS = {"analytic": dict(estimator="analytic"),
                 "control_variate": dict(control_variate=True, num_samples=3, sigma=1e-3)}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("normalization", ["token", "sequence"])
@pytest.mark.parametrize("run", list(GRADIENT_RUNS))
def test_per_sample_gradients_by_vmap_equal_the_loop(tied, normalization, run, monkeypatch):
    # float64: the two ways of getting per-sample gradients must agree to rounding, padding and chunks included
    import lit_unlearn.analysis.mrd as mrd

    model = small_llama(seed=6, tied=tied, dtype=torch.float64)
    rows = make_dataset(7, max_len=18, seed=6)  # right-padded, lengths 8..18
    kw = dict(normalization=normalization, progress=False, **GRADIENT_RUNS[run])
    loop = mrd_scores(model, loader(rows, 4), per_sample="loop", **kw)
    vmapped = mrd_scores(model, loader(rows, 4), per_sample="vmap", **kw)
    torch.testing.assert_close(vmapped, loop, rtol=1e-6, atol=0)
    monkeypatch.setattr(mrd, "_samples_per_chunk", lambda params, device: 3)  # chunks of 3 within batches of 4
    torch.testing.assert_close(mrd_scores(model, loader(rows, 4), per_sample="vmap", **kw), loop, rtol=1e-6, atol=0)
    torch.testing.assert_close(mrd_scores(model, loader(rows, 4), per_sample="loop", **kw), loop, rtol=1e-6, atol=0)


def test_analytic_per_sample_modes_choose_and_refuse(monkeypatch):
    import lit_unlearn.analysis.mrd as mrd

    model, rows = small_llama(seed=7), make_dataset(4, seed=7)
    with pytest.raises(ValueError, match="per_sample"):
        mrd_scores(model, loader(rows, 2), estimator="analytic", per_sample="batched", progress=False)
    custom = lambda m, b: mrd.causal_lm_logprobs(m, b)  # noqa: E731
    with pytest.raises(ValueError, match="custom logprob_fn"):
        mrd_scores(model, loader(rows, 2), estimator="analytic", per_sample="vmap", logprob_fn=custom,
                   progress=False)
    left = [{**r, "attention_mask": r["attention_mask"].flip(0), "input_ids": r["input_ids"].flip(0),
             "labels": r["labels"].flip(0)} for r in rows]  # left-padded
    with pytest.raises(ValueError, match="right-padded"):
        mrd_scores(model, loader(left, 2), estimator="analytic", per_sample="vmap", progress=False)

    def no_vmap(*args, **kwargs):
        raise AssertionError("vmap path taken")

    monkeypatch.setattr(mrd, "_vmap_gradient_chunks", no_vmap)
    # "auto" on a CPU, a custom logprob_fn, or a left-padded batch: the loop
    mrd_scores(model, loader(rows, 2), estimator="analytic", progress=False)
    mrd_scores(model, loader(left, 2), estimator="analytic", progress=False)


class BranchingLlama(LlamaForCausalLM):
    """A causal LM whose forward branches on tensor values: torch.func.vmap cannot trace it."""

    def forward(self, input_ids=None, **kwargs):
        if bool(input_ids.max() < 0):  # never true; data-dependent control flow all the same
            raise AssertionError
        return super().forward(input_ids=input_ids, **kwargs)


@pytest.mark.parametrize("run", list(GRADIENT_RUNS))
def test_auto_falls_back_to_the_loop_when_vmap_cannot_trace_the_model(run, monkeypatch):
    import lit_unlearn.analysis.mrd as mrd

    model = small_llama(seed=9)
    branching = BranchingLlama(model.config)
    branching.load_state_dict(model.state_dict())
    rows = make_dataset(6, seed=9)
    kw = dict(progress=False, **GRADIENT_RUNS[run])
    loop = mrd_scores(model, loader(rows, 3), per_sample="loop", **kw)
    with pytest.raises(RuntimeError, match="vmap"):
        mrd_scores(branching, loader(rows, 3), per_sample="vmap", **kw)
    monkeypatch.setattr(mrd, "_vmap_pays_off", lambda device: True)  # what "auto" does on CUDA
    with pytest.warns(UserWarning, match="vmap failed for BranchingLlama"):
        auto = mrd_scores(branching, loader(rows, 3), **kw)
    torch.testing.assert_close(auto, loop, rtol=1e-5, atol=0)


class Quadratic(nn.Module):
    """P_t(θ) = c_t + b_t·θ − ½ Σ_i a_ti θ_i²: H_t = −diag(a_t), so tr(H_t) = −Σ_i a_ti exactly."""

    def __init__(self, dim: int):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(dim, dtype=torch.float64) * 0.1)

    def forward(self, batch):
        a, b, c = batch["a"], batch["b"], batch["c"]  # (B, T, d), (B, T, d), (B, T)
        return c + b @ self.theta - 0.5 * (a * self.theta ** 2).sum(-1)  # (B, T)


def quadratic_logprob_fn(model, batch):
    logp = model(batch)
    return logp, torch.ones_like(logp, dtype=torch.bool)


def test_abs_mean_with_antithetic_pairs_recovers_hessian_trace():
    torch.manual_seed(0)
    n, t, dim, sigma = 4, 3, 20000, 1e-3
    model = Quadratic(dim)
    f64 = dict(dtype=torch.float64)
    rows = [{"a": torch.rand(t, dim, **f64) + 0.5, "b": 3 * torch.randn(t, dim, **f64),
             "c": -torch.rand(t, **f64) * 4 - 1, "index": torch.tensor(i)} for i in range(n)]
    with torch.no_grad():
        stacked = {key: torch.stack([r[key] for r in rows]) for key in ("a", "b", "c")}
        p_theta = model(stacked)  # (B, T)
        trace = -stacked["a"].sum(-1)  # (B, T) = tr(H_t)
        expected = (0.5 * sigma ** 2 * (trace / p_theta).sum(-1)).abs()  # Theorem 3.2
    kw = dict(sigma=sigma, num_samples=8, estimator="abs_mean", logprob_fn=quadratic_logprob_fn, progress=False)
    paired = mrd_scores(model, loader(rows, 2), antithetic=True, **kw).double()
    plain = mrd_scores(model, loader(rows, 2), antithetic=False, **kw).double()
    assert ((paired - expected).abs() / expected).max() < 0.05, (paired, expected)
    assert ((plain - expected).abs() / expected).mean() > 1.0, (plain, expected)  # first-order noise wins
    # the first-order score: mean_abs ≈ analytic = √(2/π)·σ·‖Σ_t b_t − a_t θ) / P_t‖
    with torch.no_grad():
        grad = ((stacked["b"] - stacked["a"] * model.theta) / p_theta[..., None]).sum(1)  # (B, d)
        first_order = math.sqrt(2 / math.pi) * sigma * grad.norm(dim=-1)
    analytic = mrd_scores(model, loader(rows, 2), sigma=sigma, estimator="analytic",
                          logprob_fn=quadratic_logprob_fn, progress=False).double()
    torch.testing.assert_close(analytic, first_order, rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------------------------
# Normalisation, numerics, input validation
# ----------------------------------------------------------------------------------------------


def test_relative_change_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -5.0], [0.0, -4.0, -1.0]])
    pert = torch.tensor([[-1.1, -2.3, -9.0], [-1e-6, -4.4, -1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    token = relative_change(logp, pert, mask, "token", p_floor=1e-6)
    # row 0: 0.1/-1 + 0.3/-2 = -0.25; row 1: P=0 floored to -1e-6: 1e-6/-1e-6 + 0.4/-4 + 0 = -1.1
    torch.testing.assert_close(token, torch.tensor([-0.25, -1.1], dtype=torch.float64), rtol=1e-5, atol=1e-6)
    sequence = relative_change(logp, pert, mask, "sequence")
    # row 0: (-3 + 3.4)/-3; row 1: (-5 + 5.400001)/-5
    torch.testing.assert_close(sequence, torch.tensor([-0.4 / 3, -0.400001 / 5], dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)


def test_low_precision_refused_unless_allowed():
    model = small_llama(seed=5).to(torch.bfloat16)
    dl = loader(make_dataset(2), 2)
    with pytest.raises(ValueError, match="bf16|bfloat16"):
        mrd_scores(model, dl, num_samples=2, progress=False)
    assert mrd_scores(model, dl, num_samples=2, allow_low_precision=True, progress=False).shape == (2,)
    upcast = mrd_scores(model, dl, num_samples=4, upcast=True, progress=False)
    reference = mrd_scores(small_llama(seed=5).to(torch.bfloat16).float(), dl, num_samples=4, progress=False)
    torch.testing.assert_close(upcast, reference, rtol=0, atol=0)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_bad_input_raises():
    model, rows = small_llama(), make_dataset(4)
    dl = loader(rows, 2)
    for kwargs, message in [
        (dict(estimator="median"), "estimator"),
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(normalization="word"), "normalization"),
        (dict(p_floor=-1.0), "p_floor"),
        (dict(num_samples=0), "num_samples"),
        (dict(estimator="abs_mean", num_samples=3), "even"),
        (dict(estimator="abs_mean", num_samples=2, control_variate=True), "control_variate"),
        (dict(estimator="analytic", control_variate=True), "control_variate"),
    ]:
        with pytest.raises(ValueError, match=message):
            mrd_scores(model, dl, progress=False, **kwargs)
    model.lm_head.weight.ds_id = 0  # looks ZeRO-3 partitioned
    with pytest.raises(ValueError, match="ZeRO-3"):
        mrd_scores(model, dl, num_samples=2, control_variate=True, progress=False)
    del model.lm_head.weight.ds_id
    with pytest.raises(ValueError, match="covered 2 of 4"):
        mrd_scores(model, loader(rows, 2, sampler=[0, 1]), num_samples=2, progress=False)
    no_index = [{k: v for k, v in r.items() if k != "index"} for r in rows]
    with pytest.raises(ValueError, match="'index'"):
        mrd_scores(model, loader(no_index, 2), num_samples=2, progress=False)
    empty = [dict(r) for r in rows]
    empty[3]["labels"] = torch.full_like(empty[3]["labels"], -100)
    with pytest.raises(ValueError, match=r"index \[3\] have no labelled tokens"):
        mrd_scores(model, loader(empty, 2), num_samples=2, progress=False)


# ----------------------------------------------------------------------------------------------
# Distributed: 2 gloo processes with DistributedSampler shards == 1 process
# ----------------------------------------------------------------------------------------------


ESTIMATOR_RUNS = {"mean_abs": dict(estimator="mean_abs"), "analytic": dict(estimator="analytic"),
                  "control_variate": dict(estimator="mean_abs", control_variate=True)}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = make_dataset(7, seed=6)  # odd: the sampler pads one shard with a repeated sample
        sampler = torch.utils.data.DistributedSampler(rows, num_replicas=world, rank=rank, shuffle=True, seed=1)
        model = small_llama(seed=6, dtype=torch.float64)
        for estimator in ESTIMATOR_RUNS:
            scores = mrd_scores(model, loader(rows, 2, sampler=sampler), num_samples=6, progress=False,
                                **ESTIMATOR_RUNS[estimator])
            torch.save(scores, os.path.join(out_dir, f"{estimator}_{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    model, rows = small_llama(seed=6, dtype=torch.float64), make_dataset(7, seed=6)
    for estimator in ESTIMATOR_RUNS:
        single = mrd_scores(model, loader(rows, 3), num_samples=6, progress=False, **ESTIMATOR_RUNS[estimator])
        rank0, rank1 = (torch.load(tmp_path / f"{estimator}_{r}.pt") for r in range(2))
        assert torch.equal(rank0, rank1)
        torch.testing.assert_close(rank0, single, rtol=1e-5, atol=0)
