"""Unlearning through ``peft`` adapters (``model.peft``): every objective trains only adapter weights, the
reference is the base model with adapters disabled (no second copy), checkpoints hold adapters only and
resume, export writes the adapter folder or a merged model, and bad configurations fail at setup."""
from __future__ import annotations

import copy
import json
import math
import sys

import lightning as L
import pytest
import torch

pytest.importorskip("peft")

from lit_unlearn import objectives  # noqa: E402
from lit_unlearn.functional import losses  # noqa: E402
from lit_unlearn.functional.tokens import token_logprobs  # noqa: E402
from lit_unlearn.models.adapters import AdapterDisabledReference, adapter_parameter_names  # noqa: E402
from lit_unlearn.objectives import NPO, RMU, GradDiff  # noqa: E402
from lit_unlearn.objectives.base import UnlearningModule  # noqa: E402

BASE = "builtin:tiny-llama"
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}
#: B ≠ 0 from the start (peft's init_lora_weights=False), so adapter model ≠ base model at step 0
LORA_NONZERO = {**LORA, "init_lora_weights": False}
OBJECTIVES = sorted((getattr(objectives, name) for name in objectives.__all__
                     if isinstance(getattr(objectives, name), type)
                     and issubclass(getattr(objectives, name), UnlearningModule)
                     and getattr(objectives, name) is not UnlearningModule), key=lambda c: c.__name__)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread per test


def make_data(tokenizer: str, batch_size: int = 4):
    from lit_unlearn.data import UnlearningDataModule

    return UnlearningDataModule(tokenizer=tokenizer, forget_split="forget01", retain_split="retain99",
                                batch_size=batch_size, max_length=48)


@pytest.fixture(scope="module")
def data(builtin_tokenizer_path):
    dm = make_data(builtin_tokenizer_path)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def forget_batch(data):
    return data.collate([data.forget_dataset[i] for i in range(min(4, len(data.forget_dataset)))])


@pytest.fixture(scope="module")
def retain_batch(data):
    return data.collate([data.retain_dataset[i] for i in (5, 17, 30, 2)])


def trainer(root=None, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    return L.Trainer(**{**defaults, **kwargs})


def frozen_base(tokenizer: str) -> torch.nn.Module:
    """An explicit, independent copy of the base model (the builtin model is seeded: the same weights)."""
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    model = load_causal_lm(BASE, load_tokenizer(tokenizer), seed=0).eval()
    return model.requires_grad_(False)


def split_state(module) -> tuple[dict, dict]:
    """(base weights, adapter weights) of ``module.model``, cloned."""
    names = adapter_parameter_names(module.model)
    params = dict(module.model.named_parameters())
    return ({n: p.detach().clone() for n, p in params.items() if n not in names},
            {n: p.detach().clone() for n, p in params.items() if n in names})


# ------------------------------------------------------------------------------------------------
# every objective trains through adapters


def objective_kwargs(cls) -> dict:
    kwargs: dict = {"lr": 1e-2}
    if cls is RMU:
        kwargs.update(layer=2, alpha=1.0)
    if cls.__name__ == "AltPO":
        kwargs.update(max_new_tokens=4)
    if cls.__name__ == "SatImpInstance":  # on the random base P_b^β1 underflows to 0: no gradient at all
        kwargs.update(beta1=0.0)
    return kwargs


@pytest.mark.parametrize("cls", OBJECTIVES, ids=lambda c: c.__name__)
def test_every_objective_trains_only_adapter_weights(cls, builtin_tokenizer_path):
    L.seed_everything(0, verbose=False)
    module = cls(BASE, tokenizer=builtin_tokenizer_path, peft=LORA, **objective_kwargs(cls))
    module.configure_model()
    base0, adapters0 = split_state(module)
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(outputs["loss"].item())

    trainer(max_steps=2, callbacks=[Record()]).fit(module, datamodule=make_data(builtin_tokenizer_path))
    assert len(seen) == 2 and all(math.isfinite(v) for v in seen), seen
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and trainable <= adapter_parameter_names(module.model)
    if cls is RMU:  # RMU's selection: the adapters of the down-projections of blocks L-2..L only
        assert trainable == {f"base_model.model.model.layers.{i}.mlp.down_proj.lora_{ab}.default.weight"
                             for i in (0, 1, 2) for ab in "AB"}
    base1, adapters1 = split_state(module)
    for name, value in base0.items():
        assert torch.equal(value, base1[name]), f"{cls.__name__}: base weight {name} changed"
    changed = [n for n in trainable if not torch.equal(adapters0[n], adapters1[n])]
    assert changed, f"{cls.__name__}: no adapter weight was updated"
    assert module.ref_model is None or isinstance(module.ref_model, AdapterDisabledReference)


# ------------------------------------------------------------------------------------------------
# the reference is the base model with adapters disabled, and costs no second copy


def test_npo_live_reference_equals_an_explicit_frozen_base(builtin_tokenizer_path, forget_batch):
    module = NPO(BASE, tokenizer=builtin_tokenizer_path, reference="live", peft=LORA_NONZERO)
    module.configure_model()
    module.train()  # the reference runs in eval mode whatever the module's mode; the mode is restored
    base = frozen_base(builtin_tokenizer_path)
    batch = forget_batch
    with torch.no_grad():
        loss = module.forget_loss(batch)
        logp, mask = token_logprobs(module.model(input_ids=batch["input_ids"],
                                                 attention_mask=batch["attention_mask"]).logits, batch["labels"])
        ref = token_logprobs(base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["labels"])[0]
    assert not torch.equal(logp, ref)  # the adapters matter
    torch.testing.assert_close(loss, losses.npo(logp, ref, mask, beta=module.beta), rtol=1e-6, atol=1e-6)
    assert all(m.training for m in module.model.modules())


def test_graddiff_kl_retain_equals_an_explicit_frozen_base(builtin_tokenizer_path, retain_batch):
    module = GradDiff(BASE, tokenizer=builtin_tokenizer_path, retain_loss="kl", peft=LORA_NONZERO)
    module.configure_model()
    base = frozen_base(builtin_tokenizer_path)
    batch = retain_batch
    kl = module.retain_term(batch)
    logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.no_grad():
        ref_logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = losses.kl_retain(logits, ref_logits, batch["attention_mask"])
    assert expected.item() > 0
    torch.testing.assert_close(kl, expected, rtol=1e-6, atol=1e-7)
    kl.backward()  # the gradient reaches the adapters only
    grads = {n for n, p in module.model.named_parameters() if p.grad is not None}
    assert grads and grads <= adapter_parameter_names(module.model)


def test_rmu_reference_hidden_states_are_the_base_models(builtin_tokenizer_path, retain_batch):
    module = RMU(BASE, tokenizer=builtin_tokenizer_path, layer=2, peft=LORA_NONZERO)
    module.configure_model()
    base = frozen_base(builtin_tokenizer_path)
    with torch.no_grad():
        ref = module.hidden_states(module.ref_model, retain_batch)
        out = base(input_ids=retain_batch["input_ids"], attention_mask=retain_batch["attention_mask"],
                   output_hidden_states=True)
    torch.testing.assert_close(ref, out.hidden_states[3], rtol=1e-6, atol=1e-6)  # block 2's output


def test_only_one_copy_of_the_base_weights(builtin_tokenizer_path):
    full = NPO(BASE, tokenizer=builtin_tokenizer_path, reference="live")
    full.configure_model()
    lora = NPO(BASE, tokenizer=builtin_tokenizer_path, reference="live", peft=LORA)
    lora.configure_model()
    base_numel = sum(p.numel() for p in frozen_base(builtin_tokenizer_path).parameters())
    adapter_numel = sum(p.numel() for n, p in lora.model.named_parameters() if n in adapter_parameter_names(lora.model))
    assert 0 < adapter_numel < base_numel / 20
    # full fine-tuning holds two models (the live reference is a copy), adapters one base + the adapters
    assert sum(p.numel() for p in full.parameters()) == 2 * base_numel
    assert sum(p.numel() for p in lora.parameters()) == base_numel + adapter_numel
    storages = {p.untyped_storage().data_ptr() for p in lora.parameters()}
    assert len(storages) == len(list(lora.parameters()))  # no parameter shares (hides) a second copy
    assert not isinstance(lora.ref_model, torch.nn.Module) and lora.ref_model.model is lora.model
    assert not any(k.startswith("ref_model.") for k in lora.state_dict())


def test_cached_reference_is_filled_with_adapters_disabled(builtin_tokenizer_path, data):
    L.seed_everything(0, verbose=False)
    module = NPO(BASE, tokenizer=builtin_tokenizer_path, reference="cached", peft=LORA_NONZERO, lr=1e-2)
    trainer(max_steps=1).fit(module, datamodule=make_data(builtin_tokenizer_path))
    base = frozen_base(builtin_tokenizer_path)
    batch = data.collate([data.forget_dataset[i] for i in range(len(data.forget_dataset))])
    with torch.no_grad():
        ref, mask = token_logprobs(base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                   batch["labels"])
    torch.testing.assert_close(module.ref_cache.lookup(batch["index"], mask), ref, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# analysis on adapter models


def test_geffect_groups_report_adapter_weights_per_layer(builtin_tokenizer_path, forget_batch, retain_batch):
    from lit_unlearn.analysis.geffect import g_effect, layer_groups, objective_gradient, risk

    module = GradDiff(BASE, tokenizer=builtin_tokenizer_path, peft=LORA_NONZERO)
    module.configure_model()
    model = module.model
    groups = layer_groups(model)
    names = adapter_parameter_names(model)
    named = {id(p): n for n, p in model.named_parameters()}
    assert list(groups) == ["block.0", "block.1", "block.2", "block.3"]
    for i, (group, params) in enumerate(groups.items()):
        assert {named[id(p)] for p in params} == {n for n in names if f".layers.{i}." in n}, group
    grads = objective_gradient(model, module.forget_loss, forget_batch)
    effect = g_effect(model, grads, forget_batch, retain_batch)
    # naive: one flat inner product over the adapter weights
    params = [p for n, p in model.named_parameters() if n in names]
    model.eval()
    g_f = torch.autograd.grad(risk(model, forget_batch), params)
    naive = sum(float((a.double() * b.double()).sum()) for a, b in zip(g_f, grads))
    assert effect.total_unlearning == pytest.approx(naive, rel=1e-4, abs=1e-9)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# checkpoints: adapters only, much smaller, and resume restores them


def _fit(tmp, tokenizer, epochs, peft=LORA, ckpt_path=None, **kw):
    L.seed_everything(0, verbose=False)
    module = NPO(BASE, tokenizer=tokenizer, retain_loss="kl", lr=1e-2, peft=peft, **kw)
    t = trainer(str(tmp), max_epochs=epochs)
    t.fit(module, datamodule=make_data(tokenizer, batch_size=2), ckpt_path=ckpt_path)
    return module, t


def test_checkpoint_holds_adapters_only_and_resume_restores_them(builtin_tokenizer_path, tmp_path):
    module, t = _fit(tmp_path / "a", builtin_tokenizer_path, 1)
    t.save_checkpoint(tmp_path / "lora.ckpt")
    ckpt = torch.load(tmp_path / "lora.ckpt", map_location="cpu", weights_only=False)
    names = {f"model.{n}" for n in adapter_parameter_names(module.model)}
    assert {k for k in ckpt["state_dict"] if k.startswith("model.")} == names
    assert ckpt["hyper_parameters"]["peft"] == LORA
    exp_avg = ckpt["optimizer_states"][0]["state"]
    assert sum(s["exp_avg"].numel() for s in exp_avg.values()) == sum(ckpt["state_dict"][k].numel() for k in names)
    full, tf = _fit(tmp_path / "b", builtin_tokenizer_path, 1, peft=None)
    tf.save_checkpoint(tmp_path / "full.ckpt")
    assert (tmp_path / "lora.ckpt").stat().st_size * 10 < (tmp_path / "full.ckpt").stat().st_size

    # resume for one more epoch == two epochs without interruption
    resumed, _ = _fit(tmp_path / "c", builtin_tokenizer_path, 2, ckpt_path=str(tmp_path / "lora.ckpt"))
    straight, _ = _fit(tmp_path / "d", builtin_tokenizer_path, 2)
    for (n, a), (_, b) in zip(split_state(resumed)[1].items(), split_state(straight)[1].items()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=n)

    # load_from_checkpoint rebuilds base + adapters from the hyper-parameters
    loaded = NPO.load_from_checkpoint(tmp_path / "lora.ckpt")
    for (n, a), (_, b) in zip(split_state(loaded)[1].items(), split_state(module)[1].items()):
        assert torch.equal(a, b), n


def test_adapter_weights_refused_by_a_full_model(builtin_tokenizer_path, tmp_path):
    module, t = _fit(tmp_path, builtin_tokenizer_path, 1)
    state = module.state_dict()
    full = NPO(BASE, tokenizer=builtin_tokenizer_path)
    full.configure_model()
    with pytest.raises(RuntimeError, match="model.peft"):
        full.load_state_dict(state)


# ------------------------------------------------------------------------------------------------
# export and validate


def _logits(model, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok(["Question: Where was the author born?\nAnswer: in a small town"], return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**ids).logits.float()


def test_export_adapter_folder_and_merged_model(builtin_tokenizer_path, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lit_unlearn.cli import main

    module, t = _fit(tmp_path / "run", builtin_tokenizer_path, 1, peft=LORA_NONZERO, save_dir=str(tmp_path / "saved"))
    t.save_checkpoint(tmp_path / "lora.ckpt")
    expected = _logits(module.model, builtin_tokenizer_path)
    saved = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())  # save_dir: the adapter folder
    assert saved["base_model_name_or_path"] == BASE and saved["r"] == LORA["r"]
    assert not (tmp_path / "saved" / "model.safetensors").exists()

    main(["export", "--ckpt_path", str(tmp_path / "lora.ckpt"), "--out", str(tmp_path / "adapter")])
    assert "wrote" in capsys.readouterr().out
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "lit_unlearn.json"} <= files
    assert "model.safetensors" not in files
    info = json.loads((tmp_path / "adapter" / "lit_unlearn.json").read_text())
    assert info["peft"] == {"config": LORA_NONZERO, "merged": False} and info["filled_from_base"] == []
    reloaded = PeftModel.from_pretrained(frozen_base(builtin_tokenizer_path), tmp_path / "adapter")
    torch.testing.assert_close(_logits(reloaded, tmp_path / "adapter"), expected, rtol=1e-5, atol=1e-5)

    main(["export", "--ckpt_path", str(tmp_path / "lora.ckpt"), "--out", str(tmp_path / "merged"), "--merge"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, tmp_path / "merged"), expected, rtol=1e-4, atol=1e-4)
    base_logits = _logits(frozen_base(builtin_tokenizer_path), tmp_path / "merged")
    assert (base_logits - expected).abs().max() > 1e-2  # the adapters changed the model


def test_merge_of_a_full_checkpoint_is_refused(builtin_tokenizer_path, tmp_path, capsys):
    from lit_unlearn.export import export_main

    _, t = _fit(tmp_path / "run", builtin_tokenizer_path, 1, peft=None)
    t.save_checkpoint(tmp_path / "full.ckpt")
    with pytest.raises(SystemExit):
        export_main(["--ckpt_path", str(tmp_path / "full.ckpt"), "--out", str(tmp_path / "x"), "--merge"])
    assert "full fine-tuning checkpoint" in capsys.readouterr().err


def test_validate_runs_on_an_adapter_checkpoint(builtin_tokenizer_path, tmp_path):
    from lit_unlearn.evaluation import EvalConfig

    module, t = _fit(tmp_path / "run", builtin_tokenizer_path, 1, peft=LORA_NONZERO)
    t.save_checkpoint(tmp_path / "lora.ckpt")
    fresh = NPO(BASE, tokenizer=builtin_tokenizer_path, peft=LORA_NONZERO,
                eval_config=EvalConfig(max_new_tokens=4, report_dir=str(tmp_path / "report")))
    trainer(str(tmp_path / "val"), limit_val_batches=1).validate(fresh, datamodule=make_data(builtin_tokenizer_path),
                                                                ckpt_path=str(tmp_path / "lora.ckpt"))
    for (n, a), (_, b) in zip(split_state(fresh)[1].items(), split_state(module)[1].items()):
        assert torch.equal(a, b), n
    assert fresh.last_report is not None


# ------------------------------------------------------------------------------------------------
# configuration and errors


def test_peft_config_from_yaml_and_json_files(builtin_tokenizer_path, tmp_path):
    import yaml

    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(LORA))
    (tmp_path / "lora.json").write_text(json.dumps(LORA))
    for path in ("lora.yaml", "lora.json"):
        module = GradDiff(BASE, tokenizer=builtin_tokenizer_path, peft=str(tmp_path / path))
        assert module.peft_config == LORA and module.hparams["peft"] == LORA  # the mapping, not the path
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "configs" / "peft" / "lora.yaml"
    module = GradDiff(BASE, tokenizer=builtin_tokenizer_path, peft=str(shipped))
    module.configure_model()
    assert module.uses_adapters


def test_other_tuner_types_work(builtin_tokenizer_path, forget_batch):
    module = NPO(BASE, tokenizer=builtin_tokenizer_path, reference="live",
                 peft={"peft_type": "IA3", "target_modules": ["k_proj", "down_proj"],
                       "feedforward_modules": ["down_proj"]})
    module.configure_model()
    assert {n for n, p in module.model.named_parameters() if p.requires_grad}
    loss = module.forget_loss(forget_batch)
    assert loss.item() == pytest.approx(2 * math.log(2) / module.beta, rel=1e-5)  # IA3 starts at the identity


@pytest.mark.parametrize("peft,error,match", [
    ({"r": 4, "target_modules": ["q_proj", "qkv"]}, ValueError, r"\['qkv'\].*'down_proj'.*'q_proj'"),
    ({"r": 4, "rank": 3}, ValueError, r"no field\(s\) \['rank'\]"),
    ({"peft_type": "NOPE"}, ValueError, "unknown peft_type 'NOPE'"),
    ({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}, ValueError, "virtual tokens"),
    ("does/not/exist.yaml", FileNotFoundError, "does/not/exist.yaml"),
    (["q_proj"], ValueError, "must be a mapping"),
])
def test_bad_peft_configs_fail_early(peft, error, match, builtin_tokenizer_path):
    with pytest.raises(error, match=match):
        module = GradDiff(BASE, tokenizer=builtin_tokenizer_path, peft=peft)
        module.configure_model()


def test_missing_peft_package_is_named(builtin_tokenizer_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match="pip install peft"):
        GradDiff(BASE, tokenizer=builtin_tokenizer_path, peft=LORA)


def test_rmu_needs_adapters_on_its_down_projections(builtin_tokenizer_path):
    module = RMU(BASE, tokenizer=builtin_tokenizer_path, layer=2, peft={"r": 4, "target_modules": ["q_proj"]})
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.down_proj.*'down_proj'.*target_modules"):
        module.configure_model()


def test_full_fine_tuning_is_unchanged(builtin_tokenizer_path):
    module = NPO(BASE, tokenizer=builtin_tokenizer_path, reference="live")
    module.configure_model()
    assert not module.uses_adapters and module.peft_config is None and module.hparams["peft"] is None
    assert isinstance(module.ref_model, torch.nn.Module) and module.ref_model is not module.model
    assert {k for k in module.state_dict()} == {f"model.{k}" for k in module.model.state_dict()}
    copy.deepcopy(module)  # still an ordinary module
