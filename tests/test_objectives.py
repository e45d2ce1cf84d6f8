"""The objectives as LightningModules: reference handling, module loss = functional loss, gradients,
end-to-end unlearning on a tiny finetuned model, NaN handling, and hyperparameter validation."""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger

from lit_unlearn.functional import losses
from lit_unlearn.objectives import (
    GA, NPO, RMU, TNPO, WGA, WTNPO, GradDiff, IdkDPO, IdkNLL, SatImp, SatImpGroup, SatImpInstance, SimImp, SimNPO,
    SimSat,
)

torch.set_num_threads(1)

ALL_OBJECTIVES = [GA, GradDiff, NPO, SimNPO, IdkNLL, IdkDPO, WGA, TNPO, WTNPO, SatImp, SimSat, SimImp,
                  SatImpInstance, SatImpGroup, RMU]
REFERENCE_OBJECTIVES = [NPO, IdkDPO, TNPO, WTNPO]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "objective"


# ------------------------------------------------------------------------------------------------
# helpers


def make_data(tokenizer: str):
    from lit_unlearn.data import UnlearningDataModule

    return UnlearningDataModule(tokenizer=tokenizer, forget_split="forget10", retain_split="retain90",
                                max_length=64, batch_size=8)


@pytest.fixture(scope="module")
def data(builtin_tokenizer_path):
    dm = make_data(builtin_tokenizer_path)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def forget_batch(data):
    """A forget batch whose composition differs from the in-order batches used to fill the cache."""
    return data.collate([data.forget_dataset[i] for i in (41, 3, 77, 12, 58, 99)])


def make_module(cls, path: str, tokenizer: str, **kwargs):
    module = cls(path, tokenizer=tokenizer, **kwargs)
    module.configure_model()
    module.eval()
    return module


def fill_cache(module, data) -> None:
    """What ``on_fit_start`` does, without a Trainer: the reference pass over the forget set, in order."""
    loader = torch.utils.data.DataLoader(data.forget_dataset, batch_size=8, shuffle=False, collate_fn=data.collate)
    module.ref_cache.fill(module.sample_logprobs, loader, module.reference_keys)


def perturb(model: torch.nn.Module, scale: float = 0.02, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator).to(p.dtype))


def naive_logprobs(logits: torch.Tensor, labels: torch.Tensor):
    """Independent of ``tokens.token_logprobs``: explicit loops over positions."""
    B, T, _ = logits.shape
    logp = torch.zeros(B, T - 1, dtype=torch.float64)
    mask = torch.zeros(B, T - 1, dtype=torch.bool)
    for b in range(B):
        for t in range(T - 1):
            if labels[b, t + 1] != -100:
                logp[b, t] = torch.log_softmax(logits[b, t].double(), -1)[labels[b, t + 1]]
                mask[b, t] = True
    return logp, mask


@torch.no_grad()
def forget_nll(model: torch.nn.Module, data) -> float:
    """Token-mean NLL of every forget answer, eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in data.forget_scoring_dataloader(batch_size=50):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
        total, count = total + nll.item(), count + int((labels != -100).sum())
    model.train(was_training)
    return total / count


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**defaults, **kwargs})


# ------------------------------------------------------------------------------------------------
# (a), (b) reference: cached == live, and 2·ln2/β at θ = ref


@pytest.mark.parametrize("cls", REFERENCE_OBJECTIVES, ids=lambda c: c.__name__)
def test_cached_and_live_reference_agree(cls, finetuned_tiny, builtin_tokenizer_path, data, forget_batch):
    cached = make_module(cls, finetuned_tiny, builtin_tokenizer_path, reference="cached")
    live = make_module(cls, finetuned_tiny, builtin_tokenizer_path, reference="live")
    assert cached.ref_model is None and live.ref_model is not None
    fill_cache(cached, data)
    perturb(cached.model)  # θ ≠ ref, the same θ in both
    perturb(live.model)
    with torch.no_grad():
        a, b = cached.forget_loss(forget_batch), live.forget_loss(forget_batch)
    assert torch.isfinite(a)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reference", ["cached", "live"])
@pytest.mark.parametrize("cls,beta", [(NPO, 0.1), (IdkDPO, 0.1), (NPO, 0.7), (IdkDPO, 2.0)])
def test_loss_at_reference_is_2ln2_over_beta(cls, beta, reference, finetuned_tiny, builtin_tokenizer_path, data,
                                             forget_batch):
    module = make_module(cls, finetuned_tiny, builtin_tokenizer_path, beta=beta, reference=reference)
    if reference == "cached":
        fill_cache(module, data)
    with torch.no_grad():
        loss = module.forget_loss(forget_batch)
    assert loss.item() == pytest.approx(2 * math.log(2) / beta, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# (c) module loss == functional loss, computed independently from the model's logits


@pytest.fixture(scope="module")
def reference_hf(finetuned_tiny):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(finetuned_tiny).eval()


CASES = [
    (GA, {}, lambda lp, rp, m: losses.ga(lp, m)),
    (SimNPO, {"beta": 2.0, "delta": 0.5}, lambda lp, rp, m: losses.simnpo(lp, m, beta=2.0, delta=0.5)),
    (WGA, {"beta": 1.0}, lambda lp, rp, m: losses.wga(lp, m, beta=1.0)),
    (SatImp, {}, lambda lp, rp, m: losses.satimp(lp, m, beta1=5.0, beta2=0.1)),
    (SatImpGroup, {"group_size": 3}, lambda lp, rp, m: losses.satimp_group(lp, m, 5.0, 0.1, group_size=3)),
    (SatImpInstance, {}, lambda lp, rp, m: losses.satimp_instance(lp, m, beta1=5.0, beta2=0.1)),
    (SimSat, {}, lambda lp, rp, m: losses.simsat(lp, m, beta=5.0)),
    (SimImp, {}, lambda lp, rp, m: losses.simimp(lp, m, beta=1.0)),
    (TNPO, {}, lambda lp, rp, m: losses.tnpo_value(lp, rp, m, beta=4.0)),
    (WTNPO, {}, lambda lp, rp, m: losses.wtnpo(lp, rp, m, beta=4.0, alpha=1.5, eps=1e-5)),
    # NPO by hand: (2/β)·mean_b softplus(β·(Σ ref − Σ θ)) with Σ the summed answer log-probs
    (NPO, {"beta": 0.5}, lambda lp, rp, m: 4.0 * F.softplus(0.5 * ((lp - rp) * m).sum(-1)).mean()),
]


@pytest.mark.parametrize("cls,kwargs,expected_fn", CASES, ids=[c[0].__name__ for c in CASES])
def test_module_loss_equals_functional(cls, kwargs, expected_fn, finetuned_tiny, builtin_tokenizer_path,
                                       forget_batch, reference_hf):
    module = make_module(cls, finetuned_tiny, builtin_tokenizer_path, reference="live", **kwargs)
    perturb(module.model)
    ids, attn, labels = forget_batch["input_ids"], forget_batch["attention_mask"], forget_batch["labels"]
    with torch.no_grad():
        logp, mask = naive_logprobs(module.model(input_ids=ids, attention_mask=attn).logits, labels)
        ref_logp, _ = naive_logprobs(reference_hf(input_ids=ids, attention_mask=attn).logits, labels)
        got = module.forget_loss(forget_batch)
    expected = expected_fn(logp, ref_logp, mask)
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-4, atol=1e-5)


def test_idknll_is_nll_of_the_refusal_answer(finetuned_tiny, builtin_tokenizer_path, forget_batch):
    module = make_module(IdkNLL, finetuned_tiny, builtin_tokenizer_path)
    idk = forget_batch["idk"]
    with torch.no_grad():
        logits = module.model(input_ids=idk["input_ids"], attention_mask=idk["attention_mask"]).logits
        expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idk["labels"][:, 1:].reshape(-1))
        got = module.forget_loss(forget_batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_rmu_loss_by_hand_from_hidden_states(finetuned_tiny, builtin_tokenizer_path, forget_batch):
    module = make_module(RMU, finetuned_tiny, builtin_tokenizer_path, steering_coeff=6.5, seed=3)
    assert module.layer == 2  # the middle block of 4
    u = module.control_vector
    assert u.shape == (128,) and u.norm().item() == pytest.approx(6.5, rel=1e-5)
    assert "control_vector" in module.state_dict()
    torch.testing.assert_close(u, losses.rmu_control_vector(128, 6.5, seed=3))
    perturb(module.model)
    ids, attn = forget_batch["input_ids"], forget_batch["attention_mask"]
    with torch.no_grad():
        hidden = module.model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[3]
        ref_hidden = module.ref_model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[3]
        got_forget, got_retain = module.forget_loss(forget_batch), module.retain_term(forget_batch)
    expected_forget, expected_retain = [], []
    for b in range(ids.shape[0]):
        valid = attn[b].bool()
        expected_forget.append(((hidden[b, valid] - u) ** 2).mean(-1).mean())
        expected_retain.append(((hidden[b, valid] - ref_hidden[b, valid]) ** 2).mean(-1).mean())
    torch.testing.assert_close(got_forget, torch.stack(expected_forget).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_retain, torch.stack(expected_retain).mean(), rtol=1e-5, atol=1e-7)
    assert got_retain > 0


# ------------------------------------------------------------------------------------------------
# (d) gradients


def test_ga_step_lowers_forget_loglikelihood(finetuned_tiny, builtin_tokenizer_path, forget_batch):
    module = make_module(GA, finetuned_tiny, builtin_tokenizer_path)
    before = -module.forget_loss(forget_batch).item()  # NLL_mean
    module.forget_loss(forget_batch).backward()
    with torch.no_grad():
        for p in module.trainable_parameters():
            p.sub_(1e-2 * p.grad)
        after = -module.forget_loss(forget_batch).item()
    assert after > before + 1e-4


@pytest.mark.parametrize("cls,kwargs", [(NPO, {"beta": 0.5}), (TNPO, {"eps": 0.0})], ids=["NPO", "TNPO"])
def test_finite_difference_along_random_direction(cls, kwargs, finetuned_tiny, builtin_tokenizer_path,
                                                  forget_batch):
    """d/dε loss(θ + εv) by central differences equals ⟨∇loss, v⟩ from autograd (TNPO: the surrogate's
    gradient equals the derivative of the true value at ε_TNPO = 0)."""
    module = make_module(cls, finetuned_tiny, builtin_tokenizer_path, reference="live", **kwargs).double()
    perturb(module.model, scale=0.02)
    params = module.trainable_parameters()
    generator = torch.Generator().manual_seed(7)
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    norm = torch.sqrt(sum((d**2).sum() for d in direction))
    direction = [d / norm for d in direction]
    loss = module.forget_loss(forget_batch)
    grads = torch.autograd.grad(loss, params)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()

    def loss_at(step: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(step * d)
            value = module.forget_loss(forget_batch).item()
            for p, d in zip(params, direction):
                p.sub_(step * d)
        return value

    # Llama's RMSNorm computes in float32 even in a float64 model, so round-off is ~1e-7 of the loss: a
    # five-point stencil keeps truncation at O(h⁴) while h stays large enough for that round-off
    h = 5e-2
    numeric = (-loss_at(2 * h) + 8 * loss_at(h) - 8 * loss_at(-h) + loss_at(-2 * h)) / (12 * h)
    assert abs(analytic) > 1e-4  # a real, non-vanishing directional derivative
    assert numeric == pytest.approx(analytic, rel=5e-3)


# ------------------------------------------------------------------------------------------------
# (e) every objective unlearns in a few Lightning steps


@pytest.fixture(scope="module")
def initial_state(finetuned_tiny, reference_hf, data):
    return {k: v.clone() for k, v in reference_hf.state_dict().items()}, forget_nll(reference_hf, data)


@pytest.mark.parametrize("cls", ALL_OBJECTIVES, ids=lambda c: c.__name__)
def test_every_objective_unlearns(cls, finetuned_tiny, builtin_tokenizer_path, initial_state):
    state0, nll0 = initial_state
    L.seed_everything(0, verbose=False)
    dm = make_data(builtin_tokenizer_path)
    # RMU trains 3 matrices only: lr 3e-3 and open-unlearning's retain weight α=1 (with the WMDP code's α=100
    # the retain term dominates a 6-step run)
    extra = {"alpha": 1.0, "lr": 3e-3} if cls is RMU else {"lr": 1e-3}
    module = cls(finetuned_tiny, tokenizer=builtin_tokenizer_path, **extra)
    losses_seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            assert pl_module.model.training and (pl_module.ref_model is None or not pl_module.ref_model.training)
            losses_seen.append(outputs["loss"].item())

    trainer(max_steps=6, callbacks=[Record()]).fit(module, datamodule=dm)
    assert len(losses_seen) == 6 and all(math.isfinite(v) for v in losses_seen)
    nll1 = forget_nll(module.model, dm)
    assert nll1 > nll0 + 0.05, f"{cls.__name__}: forget NLL {nll0:.4f} -> {nll1:.4f}"
    if cls is RMU:  # RMU minimises a distance: it must have gone down
        assert losses_seen[-1] < losses_seen[0]
    state1 = module.model.state_dict()
    assert state1.keys() == state0.keys()
    if cls is RMU:
        trained = {f"model.layers.{i}.mlp.down_proj.weight" for i in module.trainable_blocks}
        assert trained == {n for n, p in module.model.named_parameters() if p.requires_grad}
        for name, value in state1.items():
            assert torch.equal(value, state0[name]) != (name in trained), name
    else:
        unchanged = [n for n, v in state1.items() if torch.equal(v, state0[n])]
        assert not unchanged, f"{cls.__name__}: parameters not updated: {unchanged}"


# ------------------------------------------------------------------------------------------------
# (f) TNPO logs the true TNPO value


class CaptureLogger(Logger):
    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    name, version = "capture", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


def test_tnpo_logs_true_value(finetuned_tiny, builtin_tokenizer_path, reference_hf):
    L.seed_everything(0, verbose=False)
    module = TNPO(finetuned_tiny, tokenizer=builtin_tokenizer_path, lr=1e-3)
    expected: list[float] = []

    class Expect(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            forget = batch["forget"]
            with torch.no_grad():
                logp, mask = pl_module.sample_logprobs(forget)
                ref_logits = reference_hf(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"])
                ref_logp, _ = naive_logprobs(ref_logits.logits, forget["labels"])
            expected.append(losses.tnpo_value(logp, ref_logp.float(), mask, beta=4.0).item())

    logger = CaptureLogger()
    trainer(max_steps=3, logger=logger, log_every_n_steps=1, callbacks=[Expect()]).fit(
        module, datamodule=make_data(builtin_tokenizer_path))
    logged = [m["train/forget_loss"] for _, m in logger.rows if "train/forget_loss" in m]
    assert len(logged) == 3
    assert logged[0] == pytest.approx(2 * math.log(2) / 4.0, rel=1e-5)  # θ = ref at the first step
    assert logged == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert logged[-1] != pytest.approx(logged[0], rel=1e-3)  # the value moved with θ


# ------------------------------------------------------------------------------------------------
# (g) a NaN loss stops training; the last good checkpoint stays loadable


def test_nan_loss_raises_and_keeps_checkpoint(finetuned_tiny, builtin_tokenizer_path, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    class NaNAtStep3(GA):
        def forget_loss(self, batch):
            loss = super().forget_loss(batch)
            return loss * float("nan") if self.global_step == 2 else loss

    module = NaNAtStep3(finetuned_tiny, tokenizer=builtin_tokenizer_path, lr=1e-3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    with pytest.raises(FloatingPointError, match="nan at step 2"):
        trainer(max_steps=10, enable_checkpointing=True, callbacks=[checkpoint]).fit(
            module, datamodule=make_data(builtin_tokenizer_path))
    files = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert files == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt"]
    ckpt = torch.load(tmp_path / "epoch=0-step=2.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    restored = make_module(GA, finetuned_tiny, builtin_tokenizer_path)
    restored.load_state_dict(ckpt["state_dict"])
    for value in ckpt["state_dict"].values():
        assert torch.isfinite(value).all()
    for name, value in restored.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][name])


# ------------------------------------------------------------------------------------------------
# (h) hyperparameter validation


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (NPO, {"beta": 0.0}, r"beta must be a finite number > 0"),
        (NPO, {"beta": -1.0}, r"beta must be a finite number > 0"),
        (NPO, {"reference": "frozen"}, r"reference must be one of \('cached', 'live'\)"),
        (SimNPO, {"beta": -4.5}, r"beta must be a finite number > 0"),
        (SimNPO, {"delta": float("nan")}, r"delta must be a finite number"),
        (IdkDPO, {"beta": 0}, r"beta must be a finite number > 0"),
        (WGA, {"beta": 0.0}, r"beta must be a finite number > 0"),
        (TNPO, {"beta": -4.0}, r"beta must be a finite number > 0"),
        (TNPO, {"eps": -1e-5}, r"eps must be a finite number >= 0"),
        (WTNPO, {"alpha_w": -1.5}, r"alpha_w must be a finite number >= 0"),
        (SatImp, {"beta1": -5.0}, r"beta1 must be a finite number >= 0"),
        (SatImpInstance, {"beta2": float("inf")}, r"beta2 must be a finite number >= 0"),
        (SatImpGroup, {"group_size": 0}, r"group_size must be an integer >= 1"),
        (SimSat, {"beta": 0.0}, r"beta must be a finite number > 0"),
        (SimImp, {"beta": -1.0}, r"beta must be a finite number > 0"),
        (GA, {"retain_loss": "mse"}, r"retain_loss must be one of \('none', 'nll', 'kl'\)"),
        (GradDiff, {"gamma": -1.0}, r"gamma and alpha must be >= 0"),
        (RMU, {"retain_loss": "mse"}, r"retain_loss must be one of \('rmu', 'none', 'nll', 'kl'\)"),
        (RMU, {"steering_coeff": 0.0}, r"steering_coeff must be a finite number > 0"),
        (RMU, {"layer": -1}, r"layer must be None \(the middle block\) or an integer >= 0"),
    ],
)
def test_invalid_hyperparameters_raise(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_rmu_layer_out_of_range_raises_in_configure_model(finetuned_tiny, builtin_tokenizer_path):
    module = RMU(finetuned_tiny, tokenizer=builtin_tokenizer_path, layer=4)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 3\] \(the model has 4 blocks\), got 4"):
        module.configure_model()


# ------------------------------------------------------------------------------------------------
# configs/objective/*.yaml


def test_every_objective_has_a_config_that_instantiates_it(monkeypatch):
    from lit_unlearn.cli import lightning_cli

    monkeypatch.setattr("sys.argv", ["lit-unlearn"])

    import lit_unlearn.objectives as objectives

    configs = sorted(CONFIG_DIR.glob("*.yaml"))
    classes = set()
    for path in configs:
        cli = lightning_cli(["--model", str(path), "--data", "UnlearningDataModule", "--trainer.logger", "false"],
                           run=False)
        module = cli.model
        classes.add(type(module).__name__)
        fresh = type(module)()  # the yaml holds the class defaults
        for key in ("gamma", "alpha", "retain_loss", "lr", "beta", "beta1", "beta2", "alpha_w", "eps", "delta",
                    "group_size", "steering_coeff", "layer", "reference"):
            assert getattr(module, key, None) == getattr(fresh, key, None), (path.name, key)
    expected = {name for name in objectives.__all__ if name not in ("CausalLMModule", "FinetuneModule",
                                                                    "UnlearningModule")}
    assert classes == expected
    assert len(configs) == len(expected)
