"""Gradient checkpointing (``model.gradient_checkpointing``, issue 20 item 9): the same losses and gradients as
without it (dropout 0) for GradDiff and NPO with a live reference, full fine-tuning and LoRA; fewer
activations saved for backward (measured through autograd's saved-tensor hooks, the independent count); the
reference untouched; ``use_cache`` off while training; a clear error for models that cannot do it."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_unlearn.models.checkpointing import is_gradient_checkpointing
from lit_unlearn.objectives import NPO, GradDiff

BASE = "builtin:tiny-llama"
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"],
        "init_lora_weights": False}  # B ≠ 0: the adapters change the loss from step 0


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread per test


@pytest.fixture(scope="module")
def data(builtin_tokenizer_path):
    from lit_unlearn.data import UnlearningDataModule

    dm = UnlearningDataModule(tokenizer=builtin_tokenizer_path, forget_split="forget01", retain_split="retain99",
                              batch_size=4, max_length=48)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def batches(data):
    forget = data.collate([data.forget_dataset[i] for i in range(4)])
    retain = data.collate([data.retain_dataset[i] for i in (5, 17, 30, 2)])
    return forget, retain


def build(cls, tokenizer: str, checkpointing: bool, peft: dict | None, **kwargs):
    module = cls(BASE, tokenizer=tokenizer, gradient_checkpointing=checkpointing, peft=peft, **kwargs)
    module.configure_model()
    module.train()
    return module


def loss_and_grads(module, forget, retain) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """The objective's loss (forget + alpha · retain), the gradients of the trainable weights, and the bytes
    autograd saved for backward outside checkpointed regions (what the forward pass keeps alive)."""
    saved = [0]

    def pack(t: torch.Tensor):
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = module.gamma * module.forget_loss(forget) + module.alpha * module.retain_term(retain)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, saved[0]


CASES = [(GradDiff, {"retain_loss": "nll"}), (NPO, {"reference": "live", "retain_loss": "kl"})]


@pytest.mark.parametrize("peft", [None, LORA], ids=["full", "lora"])
@pytest.mark.parametrize("cls,kwargs", CASES, ids=["graddiff", "npo-live"])
def test_same_loss_and_gradients_with_fewer_saved_activations(cls, kwargs, peft, builtin_tokenizer_path, batches):
    forget, retain = batches
    plain = build(cls, builtin_tokenizer_path, False, peft, **kwargs)
    ckpt = build(cls, builtin_tokenizer_path, True, peft, **kwargs)
    assert is_gradient_checkpointing(ckpt.model) and not is_gradient_checkpointing(plain.model)
    loss0, grads0, saved0 = loss_and_grads(plain, forget, retain)
    loss1, grads1, saved1 = loss_and_grads(ckpt, forget, retain)
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=1e-7)
    assert grads1.keys() == grads0.keys() and grads0
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-5, atol=1e-7, msg=name)
    assert saved1 < 0.6 * saved0, (saved1, saved0)  # only layer inputs (+ head and loss) kept
    if peft is None and cls is NPO:  # the live reference is an untouched eval() copy
        assert ckpt.ref_model is not None and not is_gradient_checkpointing(ckpt.ref_model)
        assert not any(p.requires_grad for p in ckpt.ref_model.parameters())


def test_fit_losses_equal_and_use_cache_is_restored(builtin_tokenizer_path, data):
    """Three Lightning steps of LoRA NPO (live reference) under ``deterministic="warn"`` (what ``lit-unlearn
    fit`` sets): with and without checkpointing the same losses; ``use_cache`` is off during training and back
    on afterwards; deterministic mode's NaN fill of uninitialised memory is off while training (a cost, no
    value depends on it: the losses equal those of a run that keeps the fill on) and restored afterwards."""
    import torch.utils.deterministic as deterministic
    from lightning.pytorch import Callback

    class Record(Callback):
        def __init__(self):
            self.losses, self.use_cache, self.fill = [], [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))
            self.use_cache.append(pl_module.model.config.use_cache)
            self.fill.append(deterministic.fill_uninitialized_memory)

    class KeepsFill(NPO):  # the behaviour before: deterministic mode's NaN fill stays on while training
        def on_train_start(self):
            super().on_train_start()
            deterministic.fill_uninitialized_memory = True

    results = {}
    try:
        for name, cls, checkpointing in (("plain", NPO, False), ("ckpt", NPO, True), ("fill", KeepsFill, False)):
            L.seed_everything(0, verbose=False)
            record = Record()
            module = cls(BASE, tokenizer=builtin_tokenizer_path, reference="live", lr=1e-3, peft=LORA,
                         gradient_checkpointing=checkpointing)
            trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, max_steps=3,
                                num_sanity_val_steps=0, limit_val_batches=0, callbacks=[record],
                                deterministic="warn")
            trainer.fit(module, datamodule=data)
            assert record.use_cache == [False] * 3
            assert module.model.config.use_cache is True
            assert record.fill == [name == "fill"] * 3
            assert deterministic.fill_uninitialized_memory is True
            results[name] = record.losses
    finally:
        torch.use_deterministic_algorithms(False)
        deterministic.fill_uninitialized_memory = True
    assert len(results["plain"]) == 3
    assert results["fill"] == results["plain"]  # bit-identical
    assert results["ckpt"] == pytest.approx(results["plain"], rel=1e-6, abs=1e-7)


def test_unsupported_model_is_a_clear_error(builtin_tokenizer_path):
    class NoCheckpointing(GradDiff):
        def build_model(self):
            model = super().build_model()
            model.supports_gradient_checkpointing = False
            return model

    module = NoCheckpointing(BASE, tokenizer=builtin_tokenizer_path, gradient_checkpointing=True)
    with pytest.raises(ValueError, match="does not support gradient checkpointing.*gradient_checkpointing false"):
        module.configure_model()


def test_bad_value_is_refused():
    with pytest.raises(ValueError, match="gradient_checkpointing must be true or false"):
        GradDiff(BASE, gradient_checkpointing="yes")
