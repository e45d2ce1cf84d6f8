"""LoRA (``model.peft``) on 2 CPU processes (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3 (issue 20, item 4).

Every run unlearns forget01 of tofu-mini with NPO through rank-4 LoRA adapters, a live reference (the base
model with adapters disabled, every step) and the KL retain term (the same adapter-disabled base), with the
same *global* batch (1 process × 4 samples or 2 processes × 2 samples), and an ``MRDCurriculum`` scoring
the forget set through the adapters (``mrd_params="trainable"``):

* run A: 2 epochs, a checkpoint per epoch; losses, sampler draws and MRD scores equal the 1-process run;
* run B: resumed from A's epoch-0 checkpoint (adapter weights and their optimizer state only), it continues
  exactly like A;
* with gradient checkpointing under DDP ("ddp-ckpt"), the same losses as the 1-process run without it;
* the checkpoints hold the adapter weights only, and the adapters start at peft's own initialisation
  (B = 0) under ZeRO-3 too (partitioned adapter layers would otherwise keep ``nn.Linear``'s random init).

The 2-process workers live in this file and run through ``tests/test_distributed.py``'s launcher.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest.importorskip("peft")
from test_distributed import HERE as DIST_SCRIPT  # noqa: E402
from test_distributed import all_gather_object, launch, make_strategy, recorder, tiny_model_dir  # noqa: E402,F401

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}
GLOBAL_BATCH = 4
#: "ddp-ckpt": DDP with gradient checkpointing (model.gradient_checkpointing), against the 1-process run without
STRATEGIES = ("ddp", "ddp-ckpt", "zero2", "zero3")


# ------------------------------------------------------------------------------------------------------
# the worker (every process)
# ------------------------------------------------------------------------------------------------------


def worker_lora(cfg: dict) -> None:
    """Run A (2 epochs, checkpoint per epoch) and run B (resume A's epoch-0 checkpoint)."""
    import lightning as L
    from lightning.pytorch import Callback
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_unlearn.callbacks import MRDCurriculum
    from lit_unlearn.data import UnlearningDataModule
    from lit_unlearn.models.adapters import adapter_parameter_names
    from lit_unlearn.models.loading import gathered_state_dict
    from lit_unlearn.objectives import NPO

    out = Path(cfg["out"])
    world = 1 if cfg["strategy"] == "single" else 2
    runs: dict = {}

    class Probe(Callback):
        """The adapter weights as training starts (gathered under ZeRO-3) and which weights train."""

        def on_fit_start(self, trainer, pl_module):
            state = gathered_state_dict(pl_module.model)
            names = adapter_parameter_names(pl_module.model)
            self.start = {k: v for k, v in state.items() if k in names}
            self.trainable = sorted(n for n, p in pl_module.model.named_parameters() if p.requires_grad)

    for run in ("A", "B"):
        L.seed_everything(0, verbose=False)
        rec, probe = recorder(), Probe()
        mrd = MRDCurriculum(every_n_epochs=2, num_samples=2, batch_size=1, sigma=1e-3, log_histogram=False,
                            mrd_params="trainable")
        ckpt = ModelCheckpoint(dirpath=str(out / f"ckpt_{run}"), save_top_k=-1, every_n_epochs=1)
        module = NPO(cfg["model"], tokenizer=cfg["model"], reference="live", retain_loss="kl", lr=5e-3,
                     warmup_steps=4, peft=LORA, gradient_checkpointing=cfg["strategy"].endswith("-ckpt"))
        data = UnlearningDataModule(tokenizer=cfg["model"], forget_split="forget01", retain_split="retain99",
                                    batch_size=GLOBAL_BATCH // world, max_length=48)
        strategy = make_strategy(cfg["strategy"].removesuffix("-ckpt"))
        trainer = L.Trainer(accelerator="cpu", devices=world, strategy=strategy, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            callbacks=[rec, probe, mrd, ckpt], default_root_dir=str(out), max_epochs=2)
        ckpt_path = str(out / "ckpt_A" / "epoch=0-step=5.ckpt") if run == "B" else None
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        state = gathered_state_dict(module.model)
        runs[run] = {"steps": rec.steps, "mrd": mrd.history, "start": probe.start, "trainable": probe.trainable,
                     "adapters": {k: v for k, v in state.items() if k in adapter_parameter_names(module.model)},
                     "sampler": module.trainer.datamodule.forget_sampler.state_dict()}
        if cfg["strategy"] == "single":
            break  # the single-process resume is tests/test_peft.py's
    if trainer.is_global_zero:
        torch.save(runs, out / "result.pt")


WORKERS = {"lora": worker_lora}


# ------------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread per test


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict:
    results = {}
    for name in ("single", *STRATEGIES):
        out = tmp_path_factory.mktemp(f"lora_{name}")
        launch(DIST_SCRIPT, {"worker": "test_peft_distributed:lora", "strategy": name, "model": tiny_model_dir,
                             "out": str(out)}, nproc=1 if name == "single" else 2, timeout=900)
        results[name] = torch.load(out / "result.pt", weights_only=False)
        results[name]["out"] = out
    return results


def _assert_steps_close(got: list[dict], expected: list[dict], what: str) -> None:
    assert len(got) == len(expected), what
    for x, y in zip(expected, got):
        assert y["step"] == x["step"], what
        assert sorted(sum(y["forget_index"], [])) == sorted(sum(x["forget_index"], [])), (what, y["step"])
        assert y["lr"] == pytest.approx(x["lr"], rel=1e-12), (what, y["step"])
        for key in ("loss", "forget_loss", "retain_loss"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (what, y["step"], key)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lora_losses_match_single_process(runs, strategy):
    single, got = runs["single"]["A"], runs[strategy]["A"]
    assert len(single["steps"]) == 10  # 20 forget samples / global batch 4, 2 epochs
    assert single["steps"][0]["forget_loss"] == pytest.approx(2 * torch.log(torch.tensor(2.0)).item() / 0.1,
                                                              rel=1e-5)  # B = 0: policy = reference at step 0
    _assert_steps_close(got["steps"], single["steps"], strategy)
    assert got["trainable"] == single["trainable"] and all("lora_" in n for n in got["trainable"])
    for name, value in single["start"].items():  # peft's initialisation, also on ZeRO-3 partitions
        assert torch.equal(got["start"][name], value), name
    assert all(float(v.abs().max()) == 0 for n, v in single["start"].items() if "lora_B" in n)
    for name, value in single["adapters"].items():
        torch.testing.assert_close(got["adapters"][name], value, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(torch.tensor(got["mrd"][0]["scores"]), torch.tensor(single["mrd"][0]["scores"]),
                               rtol=1e-4, atol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lora_resume_continues_exactly(runs, strategy):
    a, b = runs[strategy]["A"], runs[strategy]["B"]
    assert len(b["steps"]) == 5  # B starts after epoch 0 (5 steps)
    _assert_steps_close(b["steps"], a["steps"][5:], f"{strategy} resume")
    for x, y in zip(a["steps"][5:], b["steps"]):
        assert y["forget_index"] == x["forget_index"]  # the same draws on the same ranks
    assert [h["epoch"] for h in b["mrd"]] == [0]  # restored from the checkpoint, not recomputed
    for name, value in a["adapters"].items():
        torch.testing.assert_close(b["adapters"][name], value, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lora_checkpoints_hold_adapters_only(runs, strategy):
    path = runs[strategy]["out"] / "ckpt_A" / "epoch=0-step=5.ckpt"
    if strategy.startswith("ddp"):
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        assert path.is_dir()
        state = get_fp32_state_dict_from_zero_checkpoint(str(path))
    assert state and all(k.startswith("model.") and ".lora_" in k for k in state), sorted(state)[:5]
    assert set(state) == {f"model.{n}" for n in runs[strategy]["A"]["adapters"]}
