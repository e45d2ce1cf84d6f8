"""Token log-probabilities: the plain and the precision-preserving form against float64 log_softmax."""
import pytest
import torch

from lit_unlearn.functional.tokens import IGNORE_INDEX, precise_token_logprobs, token_logprobs


def _reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Naive loop: log_softmax in float64, labelled positions only (0 elsewhere)."""
    B, T, _ = logits.shape
    out = torch.zeros(B, T - 1, dtype=torch.float64)
    for b in range(B):
        for t in range(T - 1):
            if labels[b, t + 1] != IGNORE_INDEX:
                out[b, t] = torch.log_softmax(logits[b, t].double(), dim=-1)[labels[b, t + 1]]
    return out


def _confident_logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Trained-model-like logits: |logit| ~ 10-20, the label is the top token by a margin of ~7-9."""
    gen = torch.Generator().manual_seed(seed)
    B, T, V = 3, 6, 50
    logits = 10 + torch.randn(B, T, V, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=gen)
    for b in range(B):
        for t in range(T - 1):
            logits[b, t, labels[b, t + 1]] += 7 + 2 * torch.rand((), generator=gen, dtype=torch.float64)
    labels[:, :2] = IGNORE_INDEX  # a prompt
    labels[0, -1] = IGNORE_INDEX  # padding
    return logits, labels


def test_precise_matches_float64_reference_and_mask():
    logits, labels = _confident_logits()
    ref = _reference(logits, labels)
    dense = lambda x, y: precise_token_logprobs(x, y, dense=True)
    for fn in (token_logprobs, precise_token_logprobs, dense):
        logp, mask = fn(logits, labels)  # float64 in -> float64 out
        assert logp.dtype == torch.float64 and torch.equal(mask, labels[:, 1:] != IGNORE_INDEX)
        torch.testing.assert_close(logp, ref, rtol=1e-12, atol=1e-14)


def test_precise_keeps_relative_precision_of_confident_tokens_in_float32():
    logits, labels = _confident_logits(seed=1)
    ref = _reference(logits, labels)
    mask = labels[:, 1:] != IGNORE_INDEX
    assert ref[mask].max() > -1e-2  # confident tokens: log p of order -1e-3
    rel = lambda x: ((x.double() - ref).abs() / ref.abs())[mask].max().item()
    plain, _ = token_logprobs(logits.float(), labels)
    precise, _ = precise_token_logprobs(logits.float(), labels)
    assert precise.dtype == torch.float32
    assert torch.equal(precise_token_logprobs(logits.float(), labels, dense=True)[0], precise)
    # the plain form is quantised at ulp(|logit| ~ 18) ~ 2e-6 absolute: ~1e-3 relative at log p ~ -1e-3
    assert rel(plain) > 1e-4
    # the precise form is limited by float32 input rounding of the logits (~1e-6 absolute on l_j - l_max,
    # weighted by exp(l_j - l_max)), i.e. a few 1e-6 relative at most
    assert rel(precise) < 1e-5


def test_precise_handles_ties_and_targets_below_the_top():
    # rows: a tie at the top, a target below the top, a uniform row (the last row predicts nothing)
    logits = torch.tensor([[[2.0, 2.0, -1.0], [0.0, 5.0, 1.0], [0.0, 0.0, 0.0], [9.0, 0.0, 0.0]]],
                          dtype=torch.float64)
    labels = torch.tensor([[IGNORE_INDEX, 0, 2, 1]])
    logp, mask = precise_token_logprobs(logits, labels)
    assert mask.all() and torch.equal(precise_token_logprobs(logits, labels, dense=True)[0], logp)
    expected = torch.log_softmax(logits[0, :3], dim=-1)[[0, 1, 2], [0, 2, 1]]
    torch.testing.assert_close(logp[0], expected, rtol=1e-14, atol=1e-15)


def test_precise_gradient_equals_log_softmax_gradient():
    logits, labels = _confident_logits(seed=2)
    logits.requires_grad_(True)
    torch.autograd.gradcheck(lambda x: precise_token_logprobs(x, labels)[0], (logits,))
    torch.autograd.gradcheck(lambda x: precise_token_logprobs(x, labels, dense=True)[0], (logits,))
    (g_precise,) = torch.autograd.grad(precise_token_logprobs(logits, labels)[0].sum(), logits)
    (g_plain,) = torch.autograd.grad(token_logprobs(logits, labels)[0].sum(), logits)
    torch.testing.assert_close(g_precise, g_plain, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_upcast(dtype):
    logits, labels = _confident_logits(seed=3)
    logp, _ = precise_token_logprobs(logits.to(dtype), labels)
    assert logp.dtype == torch.float32
