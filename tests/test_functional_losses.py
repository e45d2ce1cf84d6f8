"""Tests for lit_unlearn.functional.losses against independent computations.

Every value is checked against a naive Python loop over sequences and tokens (``math`` on floats),
a hand-derived closed form, or finite differences; gradients of the detached-weight losses are
checked against w_t / N derived by hand.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_unlearn.functional import losses

# ----------------------------------------------------------------------------------------------
# fixtures and naive helpers


def make_mask(B: int, L: int, seed: int) -> torch.Tensor:
    """Prompt zeros, then >= 1 answer token, then padding zeros (right padding)."""
    g = torch.Generator().manual_seed(1000 + seed)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        prompt = int(torch.randint(0, 3, (1,), generator=g))
        n = int(torch.randint(1, L - prompt + 1, (1,), generator=g))
        mask[b, prompt : prompt + n] = True
    return mask


def make_logp(seed: int, B: int = 3, L: int = 9, V: int = 7, dtype=torch.float64) -> torch.Tensor:
    """Real log-probabilities: log_softmax of random logits picked at random targets (B, L)."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(B, L, V, generator=g, dtype=dtype)
    targets = torch.randint(V, (B, L), generator=g)
    return F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def batch(seed: int = 0, B: int = 3, L: int = 9, dtype=torch.float64):
    """(logp, ref_logp, mask); logp is a leaf requiring grad. Masked positions hold real values too."""
    logp = make_logp(seed, B, L, dtype=dtype).requires_grad_()
    ref_logp = make_logp(seed + 500, B, L, dtype=dtype)
    return logp, ref_logp, make_mask(B, L, seed)


def valid(logp: torch.Tensor, mask: torch.Tensor):
    """Per-sequence lists of the valid log-probabilities, as Python floats."""
    lp, m = logp.detach().tolist(), mask.tolist()
    return [[x for x, keep in zip(row, mrow) if keep] for row, mrow in zip(lp, m)]


def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def naive_weighted(logp, mask, weight_fn):
    """-(1/N) Σ w(p_t) ℓ_t with Python loops; returns (value, per-token weights w_t / N as a tensor)."""
    N = int(mask.sum())
    total = 0.0
    grad = torch.zeros(logp.shape, dtype=torch.float64)
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if mask[b, t]:
                x = float(logp[b, t].detach())
                w = weight_fn(b, t, math.exp(x))
                total += w * (-x)
                grad[b, t] = w / N  # d/dlogp of -(1/N) w ℓ = w / N (weights constant)
    return -total / N, grad


def grad_of(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g


# ----------------------------------------------------------------------------------------------
# NLL and GA


def test_nll_and_ga_match_token_loop():
    logp, _, mask = batch(0)
    rows = valid(logp, mask)
    nll_naive = -sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    assert losses.nll(logp, mask).item() == pytest.approx(nll_naive, rel=1e-12)
    assert losses.ga(logp, mask).item() == pytest.approx(-nll_naive, rel=1e-12)
    # gradient of GA wrt logp_t is +1/N on valid tokens, 0 elsewhere
    N = int(mask.sum())
    assert torch.equal(grad_of(losses.ga(logp, mask), logp), mask.double() / N)


# ----------------------------------------------------------------------------------------------
# NPO, SimNPO, IdkDPO


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0])
def test_npo_matches_sequence_loop(beta):
    logp, ref, mask = batch(1)
    rows, ref_rows = valid(logp, mask), valid(ref, mask)
    terms = [softplus(beta * (sum(r) - sum(q))) for r, q in zip(rows, ref_rows)]
    expected = 2.0 / beta * sum(terms) / len(terms)
    assert losses.npo(logp, ref, mask, beta=beta).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_npo_and_idk_dpo_equal_2ln2_over_beta_at_reference(beta):
    logp, _, mask = batch(2)
    ref = logp.detach().clone()
    assert losses.npo(logp, ref, mask, beta=beta).item() == pytest.approx(2 * math.log(2) / beta, rel=1e-12)
    idk, _, mask_idk = batch(3, L=5)
    value = losses.idk_dpo(idk, idk.detach().clone(), mask_idk, logp, ref, mask, beta=beta)
    assert value.item() == pytest.approx(2 * math.log(2) / beta, rel=1e-12)


def test_npo_at_reference_on_tiny_llama_float32():
    from lit_unlearn.functional.tokens import token_logprobs
    from lit_unlearn.models.tiny import tiny_llama

    model = tiny_llama(seed=0, vocab_size=64, hidden_size=32, num_hidden_layers=1, intermediate_size=64)
    ids = torch.randint(3, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[1, 8:] = -100
    logp, mask = token_logprobs(model(input_ids=ids).logits, labels)
    assert logp.dtype == torch.float32
    value = losses.npo(logp, logp.detach(), mask, beta=0.1)
    assert value.item() == pytest.approx(20 * math.log(2), rel=1e-6)


@pytest.mark.parametrize("beta,delta", [(4.5, 0.0), (1.0, 0.7), (2.5, -0.3)])
def test_simnpo_matches_formula_by_hand(beta, delta):
    logp, _, mask = batch(4)
    terms = []
    for r in valid(logp, mask):
        nll_avg = -sum(r) / len(r)
        # SimNPO paper form: -(2/β) log σ(β·NLL_avg − γ) with γ = β·δ
        z = beta * nll_avg - beta * delta
        terms.append(-2.0 / beta * math.log(1.0 / (1.0 + math.exp(-z))))
    expected = sum(terms) / len(terms)
    assert losses.simnpo(logp, mask, beta=beta, delta=delta).item() == pytest.approx(expected, rel=1e-10)


def test_idk_dpo_matches_sequence_loop_with_different_lengths():
    beta = 0.3
    logp_f, ref_f, mask_f = batch(5, L=9)
    logp_i, ref_i, mask_i = batch(6, L=4)
    terms = []
    for wi, wr, li, lr in zip(valid(logp_i, mask_i), valid(ref_i, mask_i), valid(logp_f, mask_f), valid(ref_f, mask_f)):
        r = (sum(wi) - sum(wr)) - (sum(li) - sum(lr))
        terms.append(-2.0 / beta * math.log(1.0 / (1.0 + math.exp(-beta * r))))
    expected = sum(terms) / len(terms)
    value = losses.idk_dpo(logp_i, ref_i, mask_i, logp_f, ref_f, mask_f, beta=beta)
    assert value.item() == pytest.approx(expected, rel=1e-10)


# ----------------------------------------------------------------------------------------------
# token-weighted losses: values and detached-weight gradients


def test_wga_value_and_gradient_are_weight_times_nll_gradient():
    beta = 1.7
    logp, _, mask = batch(7)
    expected, expected_grad = naive_weighted(logp, mask, lambda b, t, p: p**beta)
    loss = losses.wga(logp, mask, beta=beta)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(grad_of(loss, logp), expected_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("beta1,beta2", [(5.0, 0.1), (1.0, 2.0), (0.0, 0.0)])
def test_satimp_value_and_gradient(beta1, beta2):
    logp, _, mask = batch(8)
    expected, expected_grad = naive_weighted(logp, mask, lambda b, t, p: p**beta1 * (1 - p) ** beta2)
    loss = losses.satimp(logp, mask, beta1=beta1, beta2=beta2)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    torch.testing.assert_close(grad_of(loss, logp), expected_grad, rtol=1e-9, atol=1e-15)


def test_satimp_with_zero_exponents_is_ga():
    logp, _, mask = batch(9)
    rows = valid(logp, mask)
    ga_naive = sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    assert losses.satimp(logp, mask, beta1=0.0, beta2=0.0).item() == pytest.approx(ga_naive, rel=1e-12)


def test_simsat_and_simimp():
    logp, _, mask = batch(10)
    sat, _ = naive_weighted(logp, mask, lambda b, t, p: p**2.0)
    imp, imp_grad = naive_weighted(logp, mask, lambda b, t, p: (1 - p) ** 3.0)
    assert losses.simsat(logp, mask, beta=2.0).item() == pytest.approx(sat, rel=1e-10)
    loss = losses.simimp(logp, mask, beta=3.0)
    assert loss.item() == pytest.approx(imp, rel=1e-10)
    torch.testing.assert_close(grad_of(loss, logp), imp_grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("beta,eps", [(4.0, 1e-5), (1.0, 0.0), (2.0, 0.3)])
def test_tnpo_returns_true_value_with_surrogate_gradient(beta, eps):
    logp, ref, mask = batch(11)
    # true TNPO: (2/β) mean_t log(1 + (p_t / p_ref,t)^β)
    rows, ref_rows = valid(logp, mask), valid(ref, mask)
    terms = [math.log1p((math.exp(x) / math.exp(y)) ** beta) for r, q in zip(rows, ref_rows) for x, y in zip(r, q)]
    true_value = 2.0 / beta * sum(terms) / len(terms)
    # surrogate gradient: w_t / N, w_t = 2 p^β / (p^β + p_ref^β + ε)
    ref_d = ref.detach()
    _, surrogate_grad = naive_weighted(
        logp, mask, lambda b, t, p: 2 * p**beta / (p**beta + math.exp(float(ref_d[b, t])) ** beta + eps)
    )
    loss = losses.tnpo(logp, ref, mask, beta=beta, eps=eps)
    assert loss.item() == pytest.approx(true_value, rel=1e-10)
    assert losses.tnpo_value(logp, ref, mask, beta=beta).item() == pytest.approx(true_value, rel=1e-10)
    torch.testing.assert_close(grad_of(loss, logp), surrogate_grad, rtol=1e-10, atol=1e-15)


def test_tnpo_gradient_is_the_surrogate_not_the_value_gradient_when_eps_large():
    logp, ref, mask = batch(12)
    g_tnpo = grad_of(losses.tnpo(logp, ref, mask, beta=1.0, eps=0.5), logp)
    g_value = grad_of(losses.tnpo_value(logp, ref, mask, beta=1.0), logp)
    assert not torch.allclose(g_tnpo, g_value)
    # ... and with ε = 0 they coincide (docstring's derivation)
    g_tnpo0 = grad_of(losses.tnpo(logp, ref, mask, beta=1.0, eps=0.0), logp)
    torch.testing.assert_close(g_tnpo0, g_value, rtol=1e-12, atol=1e-15)


def test_wtnpo_value_and_gradient():
    beta, alpha, eps = 4.0, 1.5, 1e-5
    logp, ref, mask = batch(13)
    ref_d = ref.detach()
    expected, expected_grad = naive_weighted(
        logp,
        mask,
        lambda b, t, p: 2 * p ** (beta + alpha) / (p**beta + math.exp(float(ref_d[b, t])) ** beta + eps),
    )
    loss = losses.wtnpo(logp, ref, mask, beta=beta, alpha=alpha, eps=eps)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(grad_of(loss, logp), expected_grad, rtol=1e-10, atol=1e-15)


def test_reference_receives_no_gradient():
    logp, ref, mask = batch(14)
    ref.requires_grad_()
    for loss in (losses.npo(logp, ref, mask), losses.tnpo(logp, ref, mask), losses.wtnpo(logp, ref, mask)):
        (g,) = torch.autograd.grad(loss, ref, allow_unused=True)
        assert g is None or torch.count_nonzero(g) == 0


# ----------------------------------------------------------------------------------------------
# SatImp instance- and group-level


def test_satimp_instance_matches_sequence_loop():
    beta1, beta2 = 0.5, 0.3  # small exponents so that the weights are not all ~0
    logp, _, mask = batch(15, L=5)
    terms, grads = [], torch.zeros(logp.shape, dtype=torch.float64)
    B = logp.shape[0]
    for b, r in enumerate(valid(logp, mask)):
        nll_sum = -sum(r)
        P = math.exp(-nll_sum)
        w = P**beta1 * (1 - P) ** beta2
        terms.append(w * nll_sum)
        grads[b] = mask[b].double() * w / B  # d/dlogp_t of -(1/B) w · NLL_sum
    loss = losses.satimp_instance(logp, mask, beta1=beta1, beta2=beta2)
    assert loss.item() == pytest.approx(-sum(terms) / len(terms), rel=1e-10)
    torch.testing.assert_close(grad_of(loss, logp), grads, rtol=1e-10, atol=1e-15)


def naive_group_weights(logp, mask, beta1, beta2, G):
    """Sort each row's valid weights ascending, average consecutive groups of G, put back."""
    lp, out = logp.detach().tolist(), torch.zeros(logp.shape, dtype=torch.float64)
    for b in range(logp.shape[0]):
        items = [(math.exp(x) ** beta1 * (1 - math.exp(x)) ** beta2, t) for t, x in enumerate(lp[b]) if mask[b, t]]
        items.sort(key=lambda wt: wt[0])
        for start in range(0, len(items), G):
            group = items[start : start + G]
            mean_w = sum(w for w, _ in group) / len(group)
            for _, t in group:
                out[b, t] = mean_w
    return out


@pytest.mark.parametrize("G", [1, 2, 3, 100])
def test_satimp_group_matches_sorted_group_loop(G):
    beta1, beta2 = 1.0, 0.5
    logp, _, mask = batch(16, B=4, L=11)
    w = naive_group_weights(logp, mask, beta1, beta2, G)
    expected, expected_grad = naive_weighted(logp, mask, lambda b, t, p: float(w[b, t]))
    loss = losses.satimp_group(logp, mask, beta1=beta1, beta2=beta2, group_size=G)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(grad_of(loss, logp), expected_grad, rtol=1e-10, atol=1e-15)


def test_satimp_group_of_one_is_satimp_and_large_group_is_sequence_mean():
    logp, _, mask = batch(17)
    a = losses.satimp_group(logp, mask, beta1=2.0, beta2=0.5, group_size=1)
    assert a.item() == pytest.approx(losses.satimp(logp, mask, beta1=2.0, beta2=0.5).item(), rel=1e-12)
    # group_size >= n_b: every valid token of row b gets the row's mean weight
    rows = valid(logp, mask)
    N = sum(len(r) for r in rows)
    expected = 0.0
    for r in rows:
        mean_w = sum(math.exp(x) ** 2.0 * (1 - math.exp(x)) ** 0.5 for x in r) / len(r)
        expected += mean_w * sum(r)
    b = losses.satimp_group(logp, mask, beta1=2.0, beta2=0.5, group_size=50)
    assert b.item() == pytest.approx(expected / N, rel=1e-10)


# ----------------------------------------------------------------------------------------------
# masks are respected: garbage at masked positions changes neither value nor gradient

TOKEN_LOSSES = {
    "nll": lambda lp, ref, m: losses.nll(lp, m),
    "ga": lambda lp, ref, m: losses.ga(lp, m),
    "npo": lambda lp, ref, m: losses.npo(lp, ref, m, beta=0.5),
    "simnpo": lambda lp, ref, m: losses.simnpo(lp, m, beta=2.0, delta=0.1),
    "idk_dpo": lambda lp, ref, m: losses.idk_dpo(lp, ref, m, lp.flip(0), ref.flip(0), m.flip(0), beta=0.5),
    "wga": lambda lp, ref, m: losses.wga(lp, m, beta=2.0),
    "tnpo": lambda lp, ref, m: losses.tnpo(lp, ref, m, beta=2.0),
    "tnpo_value": lambda lp, ref, m: losses.tnpo_value(lp, ref, m, beta=2.0),
    "wtnpo": lambda lp, ref, m: losses.wtnpo(lp, ref, m, beta=2.0, alpha=1.0),
    "satimp": lambda lp, ref, m: losses.satimp(lp, m, beta1=2.0, beta2=0.5),
    "simsat": lambda lp, ref, m: losses.simsat(lp, m, beta=2.0),
    "simimp": lambda lp, ref, m: losses.simimp(lp, m, beta=2.0),
    "satimp_instance": lambda lp, ref, m: losses.satimp_instance(lp, m, beta1=0.5, beta2=0.5),
    "satimp_group": lambda lp, ref, m: losses.satimp_group(lp, m, beta1=2.0, beta2=0.5, group_size=2),
}


@pytest.mark.parametrize("name", sorted(TOKEN_LOSSES))
def test_masked_positions_change_neither_value_nor_gradient(name):
    fn = TOKEN_LOSSES[name]
    logp, ref, mask = batch(18)
    base = fn(logp, ref, mask)
    g = grad_of(base, logp)
    garbage = torch.tensor([float("nan"), 50.0, -1e4, float("inf")], dtype=torch.float64)
    noise = garbage[torch.arange(mask.numel()) % 4].view(mask.shape)
    logp2 = torch.where(mask, logp.detach(), noise).requires_grad_()
    ref2 = torch.where(mask, ref, noise)
    other = fn(logp2, ref2, mask)
    assert other.item() == base.item()
    g2 = grad_of(other, logp2)
    assert torch.equal(g2, g)
    assert torch.count_nonzero(g2[~mask]) == 0


# ----------------------------------------------------------------------------------------------
# finite-difference gradient checks wrt a small logits tensor (float64)


def logp_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Float64 shifted-free token log-probs (tokens.token_logprobs would cast to float32)."""
    return F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L)


def small_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, L, V = 2, 4, 5
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64).requires_grad_()
    ref_logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    targets = torch.randint(V, (B, L), generator=g)
    mask = torch.tensor([[False, True, True, True], [True, True, False, False]])
    return logits, ref_logits, targets, mask


# losses whose value and gradient are consistent: plain gradcheck of the public function
CONSISTENT = ["nll", "ga", "npo", "simnpo", "idk_dpo", "tnpo_value"]


@pytest.mark.parametrize("name", CONSISTENT)
def test_gradcheck_value_consistent_losses(name):
    logits, ref_logits, targets, mask = small_problem(1)
    ref = logp_from_logits(ref_logits, targets)
    fn = TOKEN_LOSSES[name]
    assert torch.autograd.gradcheck(lambda x: fn(logp_from_logits(x, targets), ref, mask), (logits,))


def test_gradcheck_tnpo_with_zero_eps():
    # with ε = 0 TNPO's surrogate gradient is exactly the gradient of its returned value
    logits, ref_logits, targets, mask = small_problem(2)
    ref = logp_from_logits(ref_logits, targets)
    fn = lambda x: losses.tnpo(logp_from_logits(x, targets), ref, mask, beta=2.0, eps=0.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))


def central_differences(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        flat[i] = (f(x + e) - f(x - e)) / (2 * h)
    return grad


WEIGHTED = {
    # name: (loss on logp, naive per-token weight from (logp, ref, mask) at the current point)
    "wga": (lambda lp, ref, m: losses.wga(lp, m, beta=2.0), lambda lp, ref, m: lp.exp() ** 2.0),
    "satimp": (
        lambda lp, ref, m: losses.satimp(lp, m, beta1=2.0, beta2=0.5),
        lambda lp, ref, m: lp.exp() ** 2.0 * (1 - lp.exp()) ** 0.5,
    ),
    "tnpo": (
        lambda lp, ref, m: losses.tnpo(lp, ref, m, beta=2.0, eps=0.1),
        lambda lp, ref, m: 2 * lp.exp() ** 2 / (lp.exp() ** 2 + ref.exp() ** 2 + 0.1),
    ),
    "wtnpo": (
        lambda lp, ref, m: losses.wtnpo(lp, ref, m, beta=2.0, alpha=1.0, eps=0.1),
        lambda lp, ref, m: 2 * lp.exp() ** 3 / (lp.exp() ** 2 + ref.exp() ** 2 + 0.1),
    ),
    "satimp_group": (
        lambda lp, ref, m: losses.satimp_group(lp, m, beta1=1.0, beta2=0.5, group_size=2),
        lambda lp, ref, m: naive_group_weights(lp, m, 1.0, 0.5, 2),
    ),
}


@pytest.mark.parametrize("name", sorted(WEIGHTED))
def test_finite_difference_gradient_of_detached_weight_losses(name):
    """Autograd gradient wrt logits = finite differences of -(1/N) Σ w_t ℓ_t with w frozen at x0."""
    loss_fn, weight_fn = WEIGHTED[name]
    logits, ref_logits, targets, mask = small_problem(3)
    ref = logp_from_logits(ref_logits, targets)
    with torch.no_grad():
        w0 = weight_fn(logp_from_logits(logits, targets), ref, mask).double()
    N = int(mask.sum())
    frozen = lambda x: (w0 * logp_from_logits(x, targets) * mask).sum() / N  # noqa: E731
    numeric = central_differences(frozen, logits.detach())
    analytic = grad_of(loss_fn(logp_from_logits(logits, targets), ref, mask), logits)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_finite_difference_gradient_of_satimp_instance():
    logits, _, targets, mask = small_problem(4)
    with torch.no_grad():
        seq = (logp_from_logits(logits, targets) * mask).sum(-1)  # log P_b
        w0 = seq.exp() ** 0.5 * (1 - seq.exp()) ** 0.5
    frozen = lambda x: (w0 * (logp_from_logits(x, targets) * mask).sum(-1)).mean()  # noqa: E731
    numeric = central_differences(frozen, logits.detach())
    analytic = grad_of(losses.satimp_instance(logp_from_logits(logits, targets), mask, 0.5, 0.5), logits)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# KL retain


def test_kl_retain_matches_loop_over_non_padding_positions():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    ref_logits = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    total, count = 0.0, 0
    for b in range(3):
        for s in range(6):
            if attention_mask[b, s]:
                q = [math.exp(v) for v in logits[b, s].tolist()]
                p = [math.exp(v) for v in ref_logits[b, s].tolist()]
                q = [v / sum(q) for v in q]
                p = [v / sum(p) for v in p]
                total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
                count += 1
    value = losses.kl_retain(logits, ref_logits, attention_mask)
    assert value.item() == pytest.approx(total / count, rel=1e-10)
    # padding contents are irrelevant
    noisy = torch.where(attention_mask.bool().unsqueeze(-1), logits, torch.full_like(logits, 30.0))
    assert losses.kl_retain(noisy, ref_logits, attention_mask).item() == pytest.approx(total / count, rel=1e-12)


def test_kl_retain_is_zero_at_reference_and_gradchecks():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    attention_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert losses.kl_retain(logits, logits.detach().clone(), attention_mask).item() == pytest.approx(0.0, abs=1e-14)
    # bf16/float32 inputs are computed in float32
    low = logits.detach().bfloat16()
    assert losses.kl_retain(low, low, attention_mask).dtype == torch.float32
    ref = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: losses.kl_retain(x, ref, attention_mask), (logits,))


# ----------------------------------------------------------------------------------------------
# RMU


def test_rmu_by_hand_with_steering_vector_and_reference_hidden_states():
    g = torch.Generator().manual_seed(7)
    B, T, D = 2, 4, 3
    hidden = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    ref_hidden = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    control = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    for target in (control, ref_hidden):
        per_seq = []
        for b in range(B):
            acc, n = 0.0, 0
            for s in range(T):
                if mask[b, s]:
                    tgt = target.tolist() if target.dim() == 1 else target[b, s].tolist()
                    acc += sum((h - c) ** 2 for h, c in zip(hidden[b, s].tolist(), tgt)) / D
                    n += 1
            per_seq.append(acc / n)
        assert losses.rmu(hidden, target, mask).item() == pytest.approx(sum(per_seq) / B, rel=1e-12)
    h = hidden.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: losses.rmu(x, control, mask), (h,))


def test_rmu_control_vector_is_seeded_scaled_nonnegative_unit_direction():
    state = torch.random.get_rng_state()
    v = losses.rmu_control_vector(16, coeff=6.5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert v.shape == (16,) and v.dtype == torch.float32
    assert v.norm().item() == pytest.approx(6.5, rel=1e-6)
    assert bool((v >= 0).all())  # U[0,1) entries, normalised
    assert torch.equal(v, losses.rmu_control_vector(16, coeff=6.5, seed=3))
    assert not torch.allclose(v, losses.rmu_control_vector(16, coeff=6.5, seed=4))
    u = torch.rand(16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(v, 6.5 * u / u.norm())


# ----------------------------------------------------------------------------------------------
# invalid inputs


@pytest.mark.parametrize(
    "call",
    [
        lambda lp, ref, m: losses.npo(lp, ref, m, beta=0.0),
        lambda lp, ref, m: losses.npo(lp, ref, m, beta=-1.0),
        lambda lp, ref, m: losses.simnpo(lp, m, beta=0.0),
        lambda lp, ref, m: losses.idk_dpo(lp, ref, m, lp, ref, m, beta=-0.1),
        lambda lp, ref, m: losses.wga(lp, m, beta=0.0),
        lambda lp, ref, m: losses.tnpo(lp, ref, m, beta=0.0),
        lambda lp, ref, m: losses.tnpo(lp, ref, m, eps=-1.0),
        lambda lp, ref, m: losses.wtnpo(lp, ref, m, beta=float("nan")),
        lambda lp, ref, m: losses.satimp(lp, m, beta1=-1.0),
        lambda lp, ref, m: losses.simsat(lp, m, beta=0.0),
        lambda lp, ref, m: losses.simimp(lp, m, beta=-2.0),
        lambda lp, ref, m: losses.satimp_group(lp, m, 5.0, 0.1, group_size=0),
    ],
)
def test_bad_hyperparameters_raise(call):
    logp, ref, mask = batch(19)
    with pytest.raises(ValueError, match=r"beta|eps|group_size"):
        call(logp, ref, mask)


def test_shape_mismatch_and_empty_masks_raise():
    logp, ref, mask = batch(20)
    with pytest.raises(ValueError, match="mask"):
        losses.ga(logp, mask[:, :-1])
    with pytest.raises(ValueError, match="ref_logp"):
        losses.npo(logp, ref[:, :-1], mask)
    with pytest.raises(ValueError, match="logp"):
        losses.ga(logp.unsqueeze(0), mask)
    with pytest.raises(ValueError, match="no valid token"):
        losses.satimp(logp, torch.zeros_like(mask))
    one_empty = mask.clone()
    one_empty[1] = False
    with pytest.raises(ValueError, match=r"sequences \[1\]"):
        losses.npo(logp, ref, one_empty)
    with pytest.raises(ValueError, match="batch size"):
        losses.idk_dpo(logp, ref, mask, logp[:2], ref[:2], mask[:2])
    with pytest.raises(ValueError, match="attention_mask"):
        losses.kl_retain(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="no non-padding"):
        losses.kl_retain(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="ref_logits"):
        losses.kl_retain(torch.randn(2, 3, 4), torch.randn(2, 3, 5), torch.ones(2, 3))
    with pytest.raises(ValueError, match="target"):
        losses.rmu(torch.randn(2, 3, 4), torch.randn(5), torch.ones(2, 3))
    with pytest.raises(ValueError, match="no non-padding"):
        losses.rmu(torch.randn(2, 3, 4), torch.randn(4), torch.tensor([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="coeff"):
        losses.rmu_control_vector(8, coeff=0.0, seed=0)
    with pytest.raises(ValueError, match="hidden_size"):
        losses.rmu_control_vector(0, coeff=1.0, seed=0)
