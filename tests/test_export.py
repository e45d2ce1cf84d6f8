"""``lit-unlearn export``: a Hugging Face folder from a plain Lightning checkpoint (DeepSpeed ZeRO checkpoint
folders: tests/test_zero.py), reloadable with ``from_pretrained`` and giving the trained model's logits."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_distributed import tiny_model_dir  # noqa: E402,F401


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread per test


def _train(model: str, tokenizer: str, out: Path, **module_kw) -> tuple[Path, Path]:
    """3 steps of NPO (cached reference, KL retain: a live reference model too); returns (ckpt, saved model)."""
    import lightning as L

    from lit_unlearn.data import UnlearningDataModule
    from lit_unlearn.objectives import NPO

    L.seed_everything(0, verbose=False)
    data = UnlearningDataModule(tokenizer=tokenizer, forget_split="forget01", retain_split="retain99",
                                batch_size=4, max_length=48)
    module = NPO(model, tokenizer=tokenizer, retain_loss="kl", lr=2e-3, save_dir=str(out / "model"), **module_kw)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out))
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(out / "last.ckpt")
    return out / "last.ckpt", out / "model"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    return _train(tiny_model_dir, tiny_model_dir, tmp_path_factory.mktemp("export_run"))


def _logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(["Question: Where was the author born?\nAnswer: in a small town"], return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits.float()


def test_export_lightning_checkpoint_via_cli(trained, tmp_path, capsys):
    from lit_unlearn.cli import main

    ckpt, saved = trained
    main(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "hf")])
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "hf" / "tokenizer.json").is_file() and (tmp_path / "hf" / "config.json").is_file()
    torch.testing.assert_close(_logits(tmp_path / "hf"), _logits(saved), rtol=0, atol=0)
    info = json.loads((tmp_path / "hf" / "lit_unlearn.json").read_text())
    assert info["checkpoint_format"] == "lightning" and info["global_step"] == 3
    assert info["world_size"] == 1 and info["strategy"] == "SingleDeviceStrategy"
    assert info["effective_batch_size"] == 4 and info["precision"] == "32-true"
    assert info["filled_from_base"] == []


def test_checkpoint_holds_no_reference_model(trained):
    checkpoint = torch.load(trained[0], map_location="cpu", weights_only=False)
    assert not any(k.startswith("ref_model.") for k in checkpoint["state_dict"])
    assert "reference_cache" in checkpoint and checkpoint["lit_unlearn_run"]["world_size"] == 1


def test_export_casts_dtype(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from lit_unlearn.export import export_checkpoint

    export_checkpoint(trained[0], tmp_path / "bf16", dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_export_builtin_model(tmp_path, builtin_tokenizer_path):
    """A run on the builtin tiny Llama: export rebuilds it from the checkpoint's hyper-parameters."""
    ckpt, saved = _train("builtin:tiny-llama", builtin_tokenizer_path, tmp_path / "run")
    from lit_unlearn.export import export_checkpoint

    export_checkpoint(ckpt, tmp_path / "hf")
    torch.testing.assert_close(_logits(tmp_path / "hf"), _logits(saved), rtol=0, atol=0)


def test_export_errors(tmp_path, trained, capsys):
    from lit_unlearn.export import export_checkpoint, export_main

    with pytest.raises(SystemExit) as err:
        export_main(["--ckpt_path", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")])
    assert err.value.code == 2 and "No checkpoint" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a DeepSpeed checkpoint"):
        export_checkpoint(tmp_path / "folder", tmp_path / "x")
    torch.save({"state_dict": {"layer.weight": torch.zeros(1)}, "hyper_parameters": {"model_name_or_path": "m"}},
               tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="no weights under 'model.'"):
        export_checkpoint(tmp_path / "other.ckpt", tmp_path / "x", model_name_or_path=str(trained[1]))
    assert not (tmp_path / "x").exists()
