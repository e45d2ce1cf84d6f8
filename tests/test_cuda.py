"""GPU paths: MRD numerics under TF32 and bf16 on CUDA, and an unlearning run with MRD on a GPU.

Skipped where CUDA is absent (CI has no GPU); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""
from __future__ import annotations

import importlib.util
import math
import types
from pathlib import Path

import pytest
import torch

from lit_unlearn.analysis.mrd import mrd_scores, perturbation
from test_mrd import loader, make_dataset, small_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def load_benchmark(name: str) -> types.ModuleType:
    """A script of benchmarks/ as a module (its naive Algorithm 1 is the reference here)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tf32_switched_on():
    """A user who enabled TF32 globally (common on Ampere+): MRD must not inherit it."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def test_cuda_scores_match_literal_algorithm1_even_with_tf32_on(tf32_switched_on):
    model = small_llama(seed=1).to(CUDA)
    rows = make_dataset(6, seed=1)
    ours = mrd_scores(model, loader(rows, 3), sigma=1e-5, num_samples=8, progress=False)
    assert torch.backends.cuda.matmul.allow_tf32  # the user's setting is back
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference runs in true fp32
    # Algorithm 1 literally, per sample and perturbation, with the same CUDA-drawn δ_k
    naive = load_benchmark("mrd_speed").naive_algorithm1(model, rows, sigma=1e-5, num_samples=8)
    torch.testing.assert_close(ours, naive, rtol=2e-3, atol=0)


def test_cuda_noise_is_drawn_on_the_gpu_and_reproducible():
    a = perturbation("w", (64, 32), 3, sigma=1e-5, device=CUDA)
    assert a.device.type == "cuda" and a.dtype == torch.float32
    torch.testing.assert_close(a, perturbation("w", (64, 32), 3, sigma=1e-5, device=CUDA), rtol=0, atol=0)
    assert abs(a.std().item() / 1e-5 - 1) < 0.05


def test_cuda_weights_bit_exact_after_scoring():
    model = small_llama(seed=2).to(CUDA)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for estimator in ("mean_abs", "abs_mean", "analytic"):
        mrd_scores(model, loader(make_dataset(4), 2), num_samples=4, estimator=estimator, progress=False)
    for name, p in model.named_parameters():
        assert p.device.type == "cuda" and torch.equal(p, before[name]), name


def test_cuda_bf16_model_upcast_equals_its_fp32_copy():
    model = small_llama(seed=5).to(CUDA, torch.bfloat16)
    dl = loader(make_dataset(4), 2)
    with pytest.raises(ValueError, match="bf16|bfloat16"):
        mrd_scores(model, dl, num_samples=2, progress=False)
    upcast = mrd_scores(model, dl, num_samples=4, upcast=True, progress=False)
    reference = mrd_scores(small_llama(seed=5).to(CUDA, torch.bfloat16).float(), dl, num_samples=4, progress=False)
    torch.testing.assert_close(upcast, reference, rtol=0, atol=0)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_analytic_scores_agree_between_cpu_and_cuda():
    # the analytic estimator draws no noise, so the two devices must agree up to float32 reduction order
    rows = make_dataset(6, seed=4)
    cpu = mrd_scores(small_llama(seed=4), loader(rows, 3), estimator="analytic", progress=False)
    gpu = mrd_scores(small_llama(seed=4).to(CUDA), loader(rows, 3), estimator="analytic", progress=False)
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=0)


@pytest.mark.parametrize("kw", [dict(estimator="analytic"), dict(control_variate=True, num_samples=4)],
                         ids=["analytic", "control_variate"])
def test_per_sample_gradients_on_cuda_take_the_vmap_path_and_match_the_loop(kw, monkeypatch):
    import lit_unlearn.analysis.mrd as mrd

    model, rows = small_llama(seed=8).to(CUDA), make_dataset(9, seed=8)
    loop = mrd_scores(model, loader(rows, 5), per_sample="loop", progress=False, **kw)
    calls = []
    original = mrd._vmap_gradient_chunks
    monkeypatch.setattr(mrd, "_vmap_gradient_chunks", lambda *a, **k: calls.append(1) or original(*a, **k))
    auto = mrd_scores(model, loader(rows, 5), progress=False, **kw)
    assert len(calls) == 2  # both batches
    torch.testing.assert_close(auto, loop, rtol=1e-4, atol=0)


def test_unlearning_with_mrd_curriculum_on_a_gpu(finetuned_tiny, tmp_path):
    from lit_unlearn.pipeline import DemoSettings, UnlearnSpec, unlearn

    settings = DemoSettings(unlearn_epochs=2, mrd_samples=4, mrd_every_n_epochs=1, accelerator="gpu")
    module, callbacks = unlearn(UnlearnSpec("NPO+MRD", "NPO", mrd=True), Path(finetuned_tiny), "builtin:tofu-mini",
                                "forget10", tmp_path, settings, progress=False)
    assert module.trainer.strategy.root_device.type == "cuda"  # (Lightning moves the module back to CPU after fit)
    curriculum = callbacks[0]
    assert len(curriculum.history) >= 2  # before training, then every epoch
    scores = torch.tensor(curriculum.history[-1]["scores"])
    assert torch.isfinite(scores).all() and (scores > 0).all()
    loss = module.trainer.callback_metrics.get("train/loss")
    assert loss is not None and math.isfinite(float(loss))


# -- quantization attack through bitsandbytes (lit_unlearn.attacks.quantization) -------------------------------
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
@pytest.mark.parametrize("scheme", ["llm.int8", "nf4"])
def test_cuda_bitsandbytes_quantized_copy(scheme):
    from lit_unlearn.attacks.quantization import quantize_model
    from lit_unlearn.models.tiny import tiny_llama

    model = tiny_llama(seed=3, vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    quantized = quantize_model(model, scheme, backend="bitsandbytes")
    for n, p in model.named_parameters():  # the user's model is untouched (and still on the CPU)
        assert p.device.type == "cpu" and torch.equal(p, before[n]), n
    linear_cls = {"llm.int8": "Linear8bitLt", "nf4": "Linear4bit"}[scheme]
    assert type(quantized.model.layers[0].mlp.down_proj).__name__ == linear_cls
    assert type(quantized.lm_head).__name__ == "Linear"  # the head stays at full precision
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
        out = quantized(input_ids=ids.to(CUDA)).logits.float().cpu()
    assert torch.isfinite(out).all()
    # quantized logits stay close to the full-precision ones (nf4 is coarser than LLM.int8)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < {"llm.int8": 0.05, "nf4": 0.3}[scheme], rel
