"""Everything that generates checks the eos/pad ids against the model's vocabulary at setup: a GPT-2 config
keeps its default eos/bos id 50256 when built with a small custom vocabulary, and that must be a clear error,
not an ``IndexError`` inside ``model.generate``."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lit_unlearn.functional.generation import check_generation_ids, greedy_generate, vocabulary_size

VOCAB = 64


@pytest.fixture(scope="module")
def small_gpt2():
    """A GPT-2 with 64 token ids whose config still says eos = bos = 50256 (GPT-2's default)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    assert config.eos_token_id == 50256  # the premise: the default survives a small vocab_size
    return GPT2LMHeadModel(config).eval()


def with_ids(model, eos: int, pad: int | None):
    model.config.eos_token_id = model.generation_config.eos_token_id = eos
    model.config.pad_token_id = model.generation_config.pad_token_id = pad
    return model


def test_vocabulary_size_is_the_embedding_rows(small_gpt2):
    assert vocabulary_size(small_gpt2) == small_gpt2.get_input_embeddings().weight.shape[0] == VOCAB


def test_out_of_vocabulary_default_eos_is_a_clear_error(small_gpt2):
    with_ids(small_gpt2, 50256, None)
    with pytest.raises(ValueError) as error:
        check_generation_ids(small_gpt2, who="my callback")
    text = str(error.value)
    assert text.startswith("my callback: eos_token_id=50256") and f"vocabulary of {VOCAB} token ids" in text
    assert "generation_config" in text  # says where the id came from and how to fix it


def test_greedy_generate_raises_the_clear_error_not_index_error(small_gpt2):
    with_ids(small_gpt2, 50256, None)
    with pytest.raises(ValueError, match="eos_token_id=50256"):
        greedy_generate(small_gpt2, [[1, 2, 3], [4]], max_new_tokens=2)
    # the premise: without the check, the left padding with id 50256 breaks inside generate
    with pytest.raises(IndexError):
        small_gpt2.generate(input_ids=torch.tensor([[50256, 1]]), attention_mask=torch.tensor([[0, 1]]),
                            max_new_tokens=1, do_sample=False, eos_token_id=50256, pad_token_id=50256)


def test_out_of_vocabulary_pad_given_by_a_tokenizer(small_gpt2):
    with_ids(small_gpt2, 5, 5)
    with pytest.raises(ValueError, match=r"pad_token_id=70 \(the tokenizer's\)"):
        check_generation_ids(small_gpt2, eos_token_id=5, pad_token_id=70)


def test_in_vocabulary_ids_pass_and_generate(small_gpt2):
    with_ids(small_gpt2, 5, 0)
    assert check_generation_ids(small_gpt2) == (5, 0)
    assert check_generation_ids(small_gpt2, eos_token_id=VOCAB - 1, pad_token_id=1) == (VOCAB - 1, 1)
    out = greedy_generate(small_gpt2, [[1, 2, 3], [4]], max_new_tokens=2)
    assert len(out) == 2 and all(len(row) <= 2 and all(0 <= t < VOCAB for t in row) for row in out)


def test_forgetting_early_stopping_checks_at_fit_start(small_gpt2):
    from lit_unlearn.callbacks import ForgettingEarlyStopping

    module = SimpleNamespace(model=with_ids(small_gpt2, 50256, None))
    with pytest.raises(ValueError, match="^ForgettingEarlyStopping: eos_token_id=50256"):
        ForgettingEarlyStopping().on_fit_start(None, module)
    ForgettingEarlyStopping().on_fit_start(None, SimpleNamespace(model=with_ids(small_gpt2, 5, 0)))  # passes


def test_tofu_evaluator_checks_the_tokenizer_ids(small_gpt2):
    from lit_unlearn.evaluation import EvalConfig
    from lit_unlearn.evaluation.data import EvalSplit
    from lit_unlearn.evaluation.suite import TOFUEvaluator

    with_ids(small_gpt2, 5, 0)
    specs = [EvalSplit("forget", "forget01_perturbed")]
    bad_tokenizer = SimpleNamespace(eos_token_id=2, pad_token_id=VOCAB + 6)
    with pytest.raises(ValueError, match=rf"^TOFU evaluation: pad_token_id={VOCAB + 6}"):
        TOFUEvaluator(EvalConfig(), specs, bad_tokenizer).check_model(small_gpt2)
    TOFUEvaluator(EvalConfig(), specs, SimpleNamespace(eos_token_id=2, pad_token_id=0)).check_model(small_gpt2)
    # no generating metric (no ROUGE-L, no EL): nothing generates, nothing to check
    TOFUEvaluator(EvalConfig(generation=False, el_splits=[]), specs, bad_tokenizer).check_model(small_gpt2)
