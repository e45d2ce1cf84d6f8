"""The chunked per-token log-probs (large vocabularies): the same values and gradients as the unchunked
computation, bit-identical results below the memory bound, and extra memory bounded by one chunk."""
from __future__ import annotations

import pytest
import torch

from lit_unlearn.functional import tokens
from lit_unlearn.functional.tokens import IGNORE_INDEX, chunked_label_logprobs, token_logprobs


def reference_logprobs(logits: torch.Tensor, labels: torch.Tensor):
    """The unchunked computation, written out independently: log_softmax of the upcast logits, gathered."""
    logits = logits[:, :-1]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logq = torch.log_softmax(logits.to(dtype), dim=-1)
    picked = logq.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked, torch.zeros_like(picked)), mask


def random_batch(B=3, T=11, V=37, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, T, V, generator=g)).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :4] = IGNORE_INDEX  # a prompt
    labels[-1, -3:] = IGNORE_INDEX  # padding
    return logits, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("chunk_rows", [1, 4, 7, 1000])
def test_chunked_matches_unchunked_values_and_gradients(dtype, chunk_rows):
    logits, labels = random_batch(dtype=dtype)
    itemsize = 8 if dtype == torch.float64 else 4
    chunk_bytes = chunk_rows * logits.shape[-1] * itemsize
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    logp_chunked, mask_chunked = token_logprobs(a, labels, max_bytes=0, chunk_bytes=chunk_bytes)  # forced
    logp_ref, mask_ref = reference_logprobs(b, labels)
    assert torch.equal(mask_chunked, mask_ref)
    assert logp_chunked.dtype == logp_ref.dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(logp_chunked, logp_ref, rtol=tol, atol=tol)
    assert torch.all(logp_chunked[~mask_chunked] == 0)
    weights = torch.randn(logp_ref.shape, generator=torch.Generator().manual_seed(1), dtype=logp_ref.dtype)
    (logp_chunked * weights).sum().backward()
    (logp_ref * weights).sum().backward()
    gtol = 1e-12 if dtype == torch.float64 else (1e-2 if dtype == torch.bfloat16 else 1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=gtol, atol=gtol)
    assert torch.all(a.grad[:, -1] == 0)  # the last position predicts nothing


def test_chunked_gradient_matches_finite_differences():
    logits, labels = random_batch(B=2, T=5, V=6, dtype=torch.float64)
    logits.requires_grad_(True)
    fn = lambda x: token_logprobs(x, labels, max_bytes=0, chunk_bytes=2 * 6 * 8)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))


def test_below_the_bound_is_bit_identical_to_the_unchunked_code():
    logits, labels = random_batch(B=4, T=16, V=64)
    # today's computation, verbatim: upcast, gather, logsumexp over the whole tensor
    full = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    expected = (full.gather(-1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
                - torch.logsumexp(full, dim=-1)).masked_fill(~mask, 0.0)
    size = 4 * 15 * 64 * 4
    for bound in (size, 10 * size, tokens.LOGPROB_MEMORY_BOUND):  # at or above the copy's size: unchunked
        logp, m = token_logprobs(logits, labels, max_bytes=bound)
        assert torch.equal(logp, expected) and torch.equal(m, mask)
    logp, _ = token_logprobs(logits, labels)  # the default bound
    assert torch.equal(logp, expected)


def test_module_constant_is_the_default_bound(monkeypatch):
    logits, labels = random_batch()
    chunk_rows = []
    original = tokens._ChunkedLabelLogprob.apply
    monkeypatch.setattr(tokens._ChunkedLabelLogprob, "apply", lambda *a: chunk_rows.append(a[2]) or original(*a))
    token_logprobs(logits, labels)
    assert chunk_rows == [3 * 11]  # 3·10·37·4 bytes, far below 256 MiB: one chunk of every row
    monkeypatch.setattr(tokens, "LOGPROB_MEMORY_BOUND", 100)
    monkeypatch.setattr(tokens, "LOGPROB_CHUNK_BYTES", 2 * 37 * 4)
    token_logprobs(logits, labels)
    assert chunk_rows[-1] == 2


def test_backward_keeps_no_float32_copy_of_the_logits():
    """What autograd keeps for the backward pass (``saved_tensors_hooks``): neither the chunked path nor the
    one-chunk path below the bound keeps a float32 (B, T-1, V) upcast of bf16 logits (the backward pass
    recomputes the softmax from the bf16 logits and the saved logsumexp)."""
    logits, labels = random_batch(B=2, T=33, V=512, dtype=torch.bfloat16)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size() if t.dtype == torch.float32 else 0)
        return t

    for max_bytes in (0, None):
        saved.clear()
        x = logits.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logp, _ = token_logprobs(x, labels, max_bytes=max_bytes, chunk_bytes=4 * 512 * 4)
        logp.sum().backward()
        full = 2 * 32 * 512 * 4
        assert 0 < max(saved) < full, (max_bytes, max(saved))  # the (B, T) logsumexp only


def test_chunked_handles_sequences_of_one_token():
    logits = torch.randn(2, 1, 5)
    labels = torch.zeros(2, 1, dtype=torch.long)
    logp, mask = token_logprobs(logits, labels, max_bytes=0)
    assert logp.shape == (2, 0) and mask.shape == (2, 0)
    assert chunked_label_logprobs(torch.randn(1, 3, 4), torch.zeros(1, 2, dtype=torch.long)).shape == (1, 2)


def test_objective_gradients_through_a_model_agree(builtin_tokenizer_path, monkeypatch):
    """An objective trained through the chunked path: same loss and parameter gradients as unchunked."""
    from lit_unlearn.data import UnlearningDataModule
    from lit_unlearn.objectives import GradDiff

    data = UnlearningDataModule(tokenizer=builtin_tokenizer_path, forget_split="forget01", retain_split="retain99",
                                batch_size=4, max_length=48)
    data.setup("fit")
    batch = data.collate([data.forget_dataset[i] for i in range(2)])
    module = GradDiff(tokenizer=builtin_tokenizer_path)
    module.configure_model()
    module.eval()

    def loss_and_grads():
        module.zero_grad(set_to_none=True)
        loss = module.forget_loss(batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in module.model.parameters()]

    loss, grads = loss_and_grads()
    monkeypatch.setattr(tokens, "LOGPROB_MEMORY_BOUND", 0)
    monkeypatch.setattr(tokens, "LOGPROB_CHUNK_BYTES", 5 * 2048 * 4)  # 5 rows of the 2048-token vocabulary
    chunked_loss, chunked_grads = loss_and_grads()
    torch.testing.assert_close(chunked_loss, loss, rtol=1e-6, atol=1e-6)
    for a, b in zip(chunked_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
