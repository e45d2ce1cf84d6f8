"""Tiny default model, tokenizer folders, loading any HF causal LM, finetuning and its cache."""
from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from lit_unlearn.data.tofu import TOFUDataModule
from lit_unlearn.functional.tokens import nll_mean
from lit_unlearn.models.loading import BUILTIN_MODEL, load_causal_lm, load_tokenizer
from lit_unlearn.objectives import FinetuneModule
from lit_unlearn.utils.io import atomic_directory, atomic_write_text


def quick_trainer(steps: int) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


def test_builtin_model_is_tiny_llama_sized_to_tokenizer(builtin_tokenizer_path):
    tokenizer = load_tokenizer(builtin_tokenizer_path)
    model = load_causal_lm(BUILTIN_MODEL, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert 1_000_000 < n_params < 10_000_000
    assert model.config.pad_token_id == tokenizer.pad_token_id and model.config.eos_token_id == tokenizer.eos_token_id


def test_builtin_tokenizer_is_a_normal_hf_folder(builtin_tokenizer_path):
    tokenizer = AutoTokenizer.from_pretrained(builtin_tokenizer_path)
    text = "Tibel Torohart was born in Dornavik, India."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<pad>", "</s>")


def test_finetune_learns_and_saves_reloadable_folder(tmp_path, builtin_tokenizer_path):
    L.seed_everything(0)
    data = TOFUDataModule(tokenizer=builtin_tokenizer_path, splits=["forget01"], batch_size=10, max_length=64)
    module = FinetuneModule(tokenizer=builtin_tokenizer_path, lr=3e-3, save_dir=str(tmp_path / "model"))
    data.setup("fit")
    batch = data.collate([data.train_dataset[i] for i in range(10)])
    module.configure_model()
    with torch.no_grad():
        before = nll_mean(*module.sample_logprobs(batch)).item()
    quick_trainer(40).fit(module, datamodule=data)
    module.model.eval()
    with torch.no_grad():
        after = nll_mean(*module.sample_logprobs(batch)).item()
        logits = module(batch["input_ids"], batch["attention_mask"])
    assert after < before - 1.0, (before, after)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                              logits, atol=1e-5)
    meta = json.loads((tmp_path / "model" / "lit_unlearn.json").read_text())
    assert meta["data_version"].startswith("tofu-gen-") and meta["global_step"] == 40
    assert AutoTokenizer.from_pretrained(tmp_path / "model").pad_token == "<pad>"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_any_hf_causal_lm_path_works(tmp_path, builtin_tokenizer_path):
    tokenizer = load_tokenizer(builtin_tokenizer_path)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=128,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    data = TOFUDataModule(tokenizer=str(tmp_path / "gpt2"), splits=["forget01"], batch_size=4, max_length=64)
    module = FinetuneModule(model_name_or_path=str(tmp_path / "gpt2"), tokenizer=str(tmp_path / "gpt2"), lr=1e-3)
    quick_trainer(2).fit(module, datamodule=data)
    assert module.model.config.model_type == "gpt2"


def test_non_causal_model_is_refused(tmp_path):
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                         vocab_size=99)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' model.*not a causal language model"):
        load_causal_lm(str(tmp_path / "bert"))
    module = FinetuneModule(model_name_or_path=str(tmp_path / "bert"), tokenizer="builtin:tofu-mini")
    with pytest.raises(ValueError, match="not a causal language model"):
        module.configure_model()


def test_unknown_builtin_model_and_bad_args():
    with pytest.raises(ValueError, match="builtin:tiny-llama"):
        load_causal_lm("builtin:huge-llama")
    with pytest.raises(ValueError, match="lr must be positive"):
        FinetuneModule(lr=0.0)


def test_atomic_directory_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("half-written")
            raise RuntimeError("crash while writing")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    atomic_write_text(tmp_path / "f.txt", "x")
    assert (tmp_path / "f.txt").read_text() == "x"


def test_finetuned_models_are_cached_by_data_version_and_config(monkeypatch, builtin_tokenizer_path):
    from lit_unlearn import pipeline

    calls = []
    real = pipeline.finetune

    def counting(config, tokenizer, save_dir, progress=True):
        calls.append(config)
        return real(config, tokenizer, save_dir, progress=False)

    monkeypatch.setattr(pipeline, "finetune", counting)
    config = pipeline.FinetuneConfig(splits=("forget01",), epochs=1, batch_size=10)
    first, cached_first = pipeline.cached_finetune("target", config, builtin_tokenizer_path, progress=False)
    second, cached_second = pipeline.cached_finetune("target", config, builtin_tokenizer_path, progress=False)
    other, _ = pipeline.cached_finetune("target", pipeline.FinetuneConfig(splits=("forget01",), epochs=1, batch_size=10,
                                                                           seed=1), builtin_tokenizer_path, False)
    assert (cached_first, cached_second) == (False, True) and first == second and other != first
    assert len(calls) == 2
    assert pipeline.retain_config("forget05").splits[0] == "retain95"
