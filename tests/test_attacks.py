"""The robustness attacks (lit_unlearn.attacks): relearning plan and overlap errors, recovery-curve area,
determinism, the user's model untouched, adapter models, the report files and `lit-unlearn attack`."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from lit_unlearn.attacks import (
    AttackEvalConfig,
    QuantizeConfig,
    RelearnConfig,
    curve_area,
    quantization_attack,
    relearn_attack,
    robustness_summary,
    run_attacks,
)
from lit_unlearn.attacks.quantization import rtn_quantize, unwrap_adapters
from lit_unlearn.attacks.relearn import plan_relearning
from lit_unlearn.functional.quantize import QuantScheme, fake_quantize

# tiny settings: 4 forget rows, forget split only, 4 generated tokens
EVAL = dict(max_samples=4, max_new_tokens=4, utility=False, mia=False, batch_size=4, max_length=64)


@pytest.fixture(scope="module")
def tokenizer(builtin_tokenizer_path):
    from lit_unlearn.models.loading import load_tokenizer

    return load_tokenizer(builtin_tokenizer_path)


@pytest.fixture
def model(tokenizer):
    from lit_unlearn.models.loading import load_causal_lm

    return load_causal_lm("builtin:tiny-llama", tokenizer, seed=0)


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def assert_same(model, before):
    after = model.state_dict()
    assert set(after) == set(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def test_plan_holds_out_the_other_rows_and_refuses_overlap():
    ev = AttackEvalConfig(**{**EVAL, "max_samples": 6})
    plan = plan_relearning(RelearnConfig(fraction=0.5, seed=1), ev)
    assert len(plan.train_indices) == 3 and len(plan.eval_forget_rows) == 3
    assert sorted(plan.train_indices + plan.eval_forget_rows) == list(range(6))
    assert plan_relearning(RelearnConfig(fraction=0.5, seed=1), ev).train_indices == plan.train_indices
    forget = ev.rows("forget")
    assert plan.train_rows == [forget[i] for i in plan.train_indices]
    with pytest.raises(ValueError, match=r"rows of the relearning data 'forget10' .* are evaluated forget rows"):
        plan_relearning(RelearnConfig(data_split="forget10"), ev)
    benign = plan_relearning(RelearnConfig(data_split="retain90"), ev)  # no overlap: evaluated on every row
    assert benign.eval_forget_rows is None and benign.train_indices is None
    assert plan_relearning(RelearnConfig(data_split="forget10", held_out=False), ev).eval_forget_rows is None
    with pytest.raises(ValueError, match="leaves none held out"):
        plan_relearning(RelearnConfig(fraction=1.0), ev)


@pytest.mark.parametrize("steps", ["5,0", "0,0,1", "-1,2", "a", ""])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="relearn.steps"):
        RelearnConfig(steps=steps)


def test_curve_area_is_the_normalised_trapezoid():
    steps, values = [0, 5, 10, 25, 50], [0.1, 0.3, 0.4, 0.6, 0.65]
    naive = sum((steps[i + 1] - steps[i]) * (values[i] + values[i + 1]) / 2 for i in range(4)) / 50
    assert curve_area(steps, values) == pytest.approx(naive)
    import numpy as np

    assert curve_area(steps, values) == pytest.approx(np.trapezoid(values, steps) / 50)
    assert curve_area([0, 10], [0.2, 0.2]) == pytest.approx(0.2)  # a flat curve: its value
    assert curve_area([3], [0.7]) == 0.7 and curve_area([0, 1], [None, 0.1]) is None


def test_relearn_is_deterministic_and_leaves_the_model_alone(model, tokenizer):
    before = weights(model)
    config = RelearnConfig(steps=(0, 1, 3), lr=1e-3, batch_size=2, seed=3, progress=False, accelerator="cpu")
    first = relearn_attack(model, tokenizer, config, EVAL)
    assert_same(model, before)
    second = relearn_attack(model, tokenizer, config, EVAL)
    assert first["curve"] == second["curve"] and first["train_rows"] == second["train_rows"]
    assert first["steps"] == [0, 1, 3] and len(first["curve"]["forget/probability"]) == 3
    assert first["evaluated_forget_rows"] == sorted(set(range(4)) - set(first["train_rows"]))
    # relearning on the forget rows raises their (held-out half's) probability at lr 1e-3
    assert first["curve"]["forget/probability"][-1] > first["curve"]["forget/probability"][0]
    assert first["area"]["forget/probability"] == pytest.approx(
        curve_area([0, 1, 3], first["curve"]["forget/probability"]))


def test_quantization_attack_evaluates_copies(model, tokenizer):
    before = weights(model)
    out = quantization_attack(model, tokenizer, QuantizeConfig(schemes=["int8", "int4"], group_size="auto"), EVAL)
    assert_same(model, before)
    assert out["group_size"] is None  # the tiny model's MLP input (344) is not a multiple of 128: per channel
    assert list(out["results"]) == ["full", "int8", "int4"]
    full, int8 = out["results"]["full"], out["results"]["int8"]
    assert int8["forget/probability"] == pytest.approx(full["forget/probability"], rel=0.05)
    with pytest.raises(ValueError, match=r"in_features 344 is not divisible by group_size 128.*8, 43, 86, 172, 344"):
        quantization_attack(model, tokenizer, QuantizeConfig(schemes=["int4"], group_size=128), EVAL)


def lora_model(model):
    from lit_unlearn.models.adapters import wrap_with_adapters

    wrapped = wrap_with_adapters(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "down_proj"]}, seed=0)
    with torch.no_grad():  # LoRA's B starts at 0: give the adapters an effect
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return wrapped


def test_adapter_models_are_merged_into_the_attacked_copy(model, tokenizer):
    wrapped = lora_model(model)
    before = weights(wrapped)
    scheme = QuantScheme(4, 8)
    quantized = rtn_quantize(wrapped, scheme)
    assert_same(wrapped, before)  # adapters and base untouched
    assert not hasattr(quantized, "peft_config")  # a plain model
    merged = copy.deepcopy(wrapped).merge_and_unload()
    layer = merged.model.layers[0]
    torch.testing.assert_close(quantized.model.layers[0].self_attn.q_proj.weight,
                               fake_quantize(layer.self_attn.q_proj.weight, scheme))
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():  # the merged copy computes what the adapter model computes
        torch.testing.assert_close(unwrap_adapters(wrapped)(input_ids=ids).logits, wrapped(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-5)
    out = relearn_attack(wrapped, tokenizer, RelearnConfig(steps=(0, 1), lr=1e-3, batch_size=2, progress=False,
                                                          accelerator="cpu"), EVAL)
    assert_same(wrapped, before)
    assert len(out["curve"]["forget/probability"]) == 2


def test_run_attacks_writes_the_robustness_files(model, tokenizer, tmp_path):
    before = weights(model)
    section = run_attacks(model, tokenizer, "quantize,relearn", eval=EVAL,
                          quantize={"schemes": ["int8"], "group_size": "auto"},
                          relearn={"steps": (0, 1), "lr": 1e-3, "batch_size": 2, "progress": False,
                                   "accelerator": "cpu"}, out_dir=tmp_path, model_label="tiny")
    assert_same(model, before)
    data = json.loads((tmp_path / "robustness.json").read_text())
    assert data["format"] == "lit_unlearn.robustness/1" and set(data["quantize"]["results"]) == {"full", "int8"}
    md = (tmp_path / "robustness.md").read_text()
    assert "## Quantization" in md and "| int8 |" in md and "## Relearning" in md and "area (normalised)" in md
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown or no attacks"):
        run_attacks(model, tokenizer, "prune", eval=EVAL)
    with pytest.raises(ValueError, match="not divisible by group_size 128"):  # before any evaluation
        run_attacks(model, tokenizer, "quantize,relearn", eval=EVAL, quantize={"schemes": ["int4"]})


def test_cli_attack_on_a_saved_folder(model, tokenizer, tmp_path):
    from lit_unlearn.cli import main

    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = tmp_path / "attack.yaml"
    config.write_text("eval: {max_samples: 4, max_new_tokens: 4, utility: false, mia: false, batch_size: 4}\n"
                      "quantize: {schemes: [int8], group_size: auto}\n")
    main(["attack", "--model", str(folder), "--config", str(config), "--attacks", "quantize,relearn",
          "--relearn.steps", "0,1", "--relearn.lr", "1e-3", "--relearn.accelerator", "cpu", "--no_progress",
          "--out", str(tmp_path / "out")])
    data = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert data["relearn"]["steps"] == [0, 1] and data["eval"]["max_samples"] == 4
    assert data["model"] == str(folder)


@pytest.mark.parametrize("argv, message", [
    (["--attacks", "prune"], "unknown or no attacks"),
    (["--relearn.steps", "3,1"], "relearn.steps"),
    (["--quantize.backend", "gptq"], "quantize.backend"),
    (["--relearn.fraction", "2"], "relearn.fraction"),
])
def test_cli_bad_options_fail_before_loading(tmp_path, capsys, argv, message):
    from lit_unlearn.attacks.cli import attack_main

    with pytest.raises(SystemExit) as err:
        attack_main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *argv])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_robustness_summary(model, tokenizer):
    out = robustness_summary(model, tokenizer, relearn_steps=1, max_samples=4, max_new_tokens=4)
    assert out["int4_group_size"] is None and out["relearn_steps"] == 1
    assert set(out) >= {"forget_ma", "forget_rouge", "int4_forget_ma", "int4_forget_rouge", "relearn_forget_ma",
                        "relearn_forget_rouge", "relearn_forget_ma_before"}
    assert all(0.0 <= out[k] <= 1.0 for k in ("forget_ma", "int4_forget_ma", "relearn_forget_ma"))
