"""DeepSpeed ZeRO on 2 CPU processes (gloo, :class:`~lit_unlearn.strategies.CPUDeepSpeedStrategy`).

* ZeRO-3-aware loading: checkpoint (``from_pretrained``) and builtin models are partitioned as they are
  built, and the gathered parameters equal the checkpoint; the live reference model is partitioned too;
  ZeRO-2's ``torch.device`` context does not break loading.
* MRD on partitioned parameters: all three estimators equal the unsharded single-process scores.
* RMU (frozen blocks, hidden-state hooks, live reference) trains under ZeRO-3 like on one process.
* Resume from a sharded ZeRO checkpoint between epochs (optimizer, LR scheduler, sampler, MRD state,
  reference cache) continues exactly like the uninterrupted run; checkpoints hold no reference model;
  ``lit-unlearn export`` turns the sharded folder into a Hugging Face folder with the same logits.
* Clear setup errors for what cannot run on ZeRO-3 partitions.

The 2-process workers live in this file and run through ``tests/test_distributed.py``'s launcher.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_distributed import HERE as DIST_SCRIPT  # noqa: E402
from test_distributed import all_gather_object, launch, make_strategy, recorder, tiny_model_dir  # noqa: E402,F401



pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at 1 thread per test


MRD_SETTINGS = {
    "mean_abs": {"estimator": "mean_abs", "num_samples": 4},
    "abs_mean": {"estimator": "abs_mean", "num_samples": 4},
    "analytic": {"estimator": "analytic"},
}


# ------------------------------------------------------------------------------------------------------
# workers (every process)
# ------------------------------------------------------------------------------------------------------


def _data(model: str, batch_size: int):
    from lit_unlearn.data import UnlearningDataModule

    return UnlearningDataModule(tokenizer=model, forget_split="forget01", retain_split="retain99",
                                batch_size=batch_size, max_length=48)


def _trainer(strategy, out: str, callbacks=(), **kw):
    import lightning as L

    devices = 1 if strategy == "auto" else 2
    return L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, callbacks=list(callbacks),
                     default_root_dir=out, **{"enable_checkpointing": False, **kw})


def mrd_all_estimators(model, dataset, collate, world: int, rank: int) -> dict:
    """MRD scores of the forget set with every estimator (one sample per batch, rank-sharded)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from lit_unlearn.analysis.mrd import mrd_scores

    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    loader = DataLoader(dataset, batch_size=1, sampler=sampler, collate_fn=collate)
    return {name: mrd_scores(model, loader, sigma=1e-5, progress=False, **kw) for name, kw in MRD_SETTINGS.items()}


def worker_zero3_checks(cfg: dict) -> None:
    """Loading (checkpoint + builtin), partitioning, MRD estimators, RMU and ZeRO-2 loading."""
    import lightning as L
    from lightning.pytorch import Callback

    from lit_unlearn.models.loading import gathered_state_dict
    from lit_unlearn.objectives import NPO, RMU

    out = Path(cfg["out"])
    result: dict = {}

    class Probe(Callback):
        def __init__(self, key: str, mrd: bool = False):
            self.key, self.mrd = key, mrd

        def on_fit_start(self, trainer, pl_module):
            entry = {
                "model": gathered_state_dict(pl_module.model),
                "ref": gathered_state_dict(pl_module.ref_model) if pl_module.ref_model is not None else None,
                "partitioned": all(hasattr(p, "ds_id") for p in pl_module.model.parameters()),
                "ref_partitioned": pl_module.ref_model is not None
                and all(hasattr(p, "ds_id") for p in pl_module.ref_model.parameters()),
                # numbers of elements this rank stores, per parameter: about half of each
                "local_numel": all_gather_object(
                    sum(getattr(p, "ds_tensor", p).numel() for p in pl_module.model.parameters())),
                "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in pl_module.model.parameters()),
            }
            if self.mrd:
                dm = trainer.datamodule
                entry["mrd"] = mrd_all_estimators(pl_module.model, dm.forget_dataset, dm.collate,
                                                  trainer.world_size, trainer.global_rank)
            result[self.key] = entry

    # 1. a checkpoint folder (from_pretrained path) with a live reference (KL retain), + MRD estimators
    L.seed_everything(0, verbose=False)
    module = NPO(cfg["model"], tokenizer=cfg["model"], reference="live", retain_loss="kl", lr=1e-3)
    trainer = _trainer(make_strategy("zero3"), str(out), [Probe("checkpoint", mrd=True)], max_steps=1)
    trainer.fit(module, datamodule=_data(cfg["model"], 2))
    # 2. the builtin model (seeded, built on the CPU and copied into the partitions)
    L.seed_everything(0, verbose=False)
    module = NPO("builtin:tiny-llama", tokenizer=cfg["tokenizer"], reference="cached", lr=1e-3)
    trainer = _trainer(make_strategy("zero3"), str(out), [Probe("builtin")], max_steps=1)
    trainer.fit(module, datamodule=_data(cfg["tokenizer"], 2))
    # 3. RMU: frozen blocks, hooks on a block, live reference
    rec = recorder()
    L.seed_everything(0, verbose=False)
    module = RMU(cfg["model"], tokenizer=cfg["model"], lr=1e-3, steering_coeff=2.0, alpha=10.0,
                 save_dir=str(out / "rmu_model"))
    trainer = _trainer(make_strategy("zero3"), str(out), [rec, Probe("rmu")], max_steps=3)
    trainer.fit(module, datamodule=_data(cfg["model"], 2))
    trainer.save_checkpoint(str(out / "rmu.ckpt"))  # sharded folder; frozen parameters excluded
    result["rmu_steps"] = rec.steps
    result["rmu_trainable"] = sorted(n for n, p in module.model.named_parameters() if p.requires_grad)
    # 4. ZeRO-2: configure_model runs in a torch.device(cpu:rank) context
    module = NPO(cfg["model"], tokenizer=cfg["model"], reference="live", retain_loss="kl", lr=1e-3)
    trainer = _trainer(make_strategy("zero2"), str(out), [Probe("zero2")], max_steps=1)
    trainer.fit(module, datamodule=_data(cfg["model"], 2))
    # 5. ZeRO-3 with parameters and optimizer offloaded to the CPU (DeepSpeed's CPU Adam)
    rec = recorder()
    L.seed_everything(0, verbose=False)
    module = NPO(cfg["model"], tokenizer=cfg["model"], reference="cached", retain_loss="kl", lr=1e-3)
    offload = make_strategy("zero3", offload_optimizer=True, offload_parameters=True)
    trainer = _trainer(offload, str(out), [rec], max_steps=3)
    trainer.fit(module, datamodule=_data(cfg["model"], 2))
    result["offload_steps"] = rec.steps
    result["offload_optimizer"] = type(trainer.strategy.deepspeed_engine.optimizer.optimizer).__name__
    # 6. load_causal_lm outside Lightning: partitioned as it is built (never whole on a rank)
    from lit_unlearn.models.loading import load_causal_lm

    model = load_causal_lm(cfg["model"], zero3_config=trainer.strategy.config)
    result["direct"] = {"placeholders": all(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters()),
                        "weights": gathered_state_dict(model)}
    if trainer.is_global_zero:
        torch.save(result, out / "result.pt")


def worker_resume(cfg: dict) -> None:
    """Run A: 3 epochs with a checkpoint per epoch. Run B: resume A's epoch-0 checkpoint, 3 epochs."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_unlearn.callbacks import MRDCurriculum
    from lit_unlearn.objectives import NPO

    out = Path(cfg["out"])
    runs = {}
    for run in ("A", "B"):
        L.seed_everything(0, verbose=False)
        rec = recorder()
        mrd = MRDCurriculum(every_n_epochs=2, num_samples=2, batch_size=1, sigma=1e-3, log_histogram=False)
        ckpt = ModelCheckpoint(dirpath=str(out / f"ckpt_{run}"), save_top_k=-1, every_n_epochs=1)
        module = NPO(cfg["model"], tokenizer=cfg["model"], reference="cached", retain_loss="kl", lr=2e-3,
                     warmup_steps=8, reference_batch_size=4, save_dir=str(out / f"model_{run}"))
        trainer = _trainer(make_strategy(cfg["strategy"]), str(out), [rec, mrd, ckpt], max_epochs=3,
                           enable_checkpointing=True)
        ckpt_path = str(out / "ckpt_A" / "epoch=0-step=5.ckpt") if run == "B" else None
        trainer.fit(module, datamodule=_data(cfg["model"], 2), ckpt_path=ckpt_path)
        runs[run] = {"steps": rec.steps, "mrd": mrd.history, "cache": module.ref_cache.state_dict(),
                     "sampler": module.trainer.datamodule.forget_sampler.state_dict()}
    if trainer.is_global_zero:
        torch.save(runs, out / "result.pt")


WORKERS = {"zero3_checks": worker_zero3_checks, "resume": worker_resume}


# ------------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checks(tmp_path_factory, tiny_model_dir, builtin_tokenizer_path) -> dict:
    out = tmp_path_factory.mktemp("zero3_checks")
    launch(DIST_SCRIPT, {"worker": "test_zero:zero3_checks", "model": tiny_model_dir,
                         "tokenizer": builtin_tokenizer_path, "out": str(out)}, nproc=2)
    result = torch.load(out / "result.pt", weights_only=False)
    result["out"] = out
    return result


def _assert_state_equal(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_zero3_loads_checkpoint_into_partitions(checks, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    expected = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    entry = checks["checkpoint"]
    assert entry["partitioned"] and entry["ref_partitioned"]
    _assert_state_equal(entry["model"], expected)
    _assert_state_equal(entry["ref"], expected)  # the live reference: built partitioned, same weights
    # each rank stores about half of the parameters (ZeRO-3 pads every parameter to a multiple of world)
    assert all(n <= entry["full_numel"] / 2 + 200 for n in entry["local_numel"])


def test_load_causal_lm_zero3_partitions_while_building(checks, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    assert checks["direct"]["placeholders"]
    _assert_state_equal(checks["direct"]["weights"], AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict())


def test_zero3_builtin_model_matches_single_process(checks, builtin_tokenizer_path):
    from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

    expected = load_causal_lm("builtin:tiny-llama", load_tokenizer(builtin_tokenizer_path), seed=0).state_dict()
    assert checks["builtin"]["partitioned"]
    _assert_state_equal(checks["builtin"]["model"], expected)


def test_zero2_loads_checkpoint(checks, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    expected = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert not checks["zero2"]["partitioned"]
    _assert_state_equal(checks["zero2"]["model"], expected)
    _assert_state_equal(checks["zero2"]["ref"], expected)


@pytest.mark.parametrize("estimator", list(MRD_SETTINGS))
def test_mrd_on_zero3_partitions_equals_unsharded(checks, tiny_model_dir, estimator):
    from transformers import AutoModelForCausalLM

    from lit_unlearn.data import UnlearningDataModule

    data = UnlearningDataModule(tokenizer=tiny_model_dir, forget_split="forget01", retain_split=None,
                                batch_size=2, max_length=48)
    data.setup("fit")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    expected = mrd_all_estimators_single(model, data, estimator)
    got = checks["checkpoint"]["mrd"][estimator]
    assert got.shape == expected.shape == (20,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)


def mrd_all_estimators_single(model, data, estimator: str) -> torch.Tensor:
    from torch.utils.data import DataLoader

    from lit_unlearn.analysis.mrd import mrd_scores

    loader = DataLoader(data.forget_dataset, batch_size=1, shuffle=False, collate_fn=data.collate)
    return mrd_scores(model, loader, sigma=1e-5, progress=False, **MRD_SETTINGS[estimator])


def test_rmu_trains_under_zero3(checks, tiny_model_dir):
    """RMU (frozen blocks, a hook on block L, hidden states of the live reference) under ZeRO-3 gives the
    single-process losses (2 processes × 2 samples vs 1 × 4)."""
    from lit_unlearn.objectives import RMU

    rec = _single_process_recorder()
    import lightning as L

    L.seed_everything(0, verbose=False)
    module = RMU(tiny_model_dir, tokenizer=tiny_model_dir, lr=1e-3, steering_coeff=2.0, alpha=10.0)
    trainer = _trainer("auto", None, [rec], max_steps=3)
    trainer.fit(module, datamodule=_data(tiny_model_dir, 4))
    assert checks["rmu_trainable"] == sorted(n for n, p in module.model.named_parameters() if p.requires_grad)
    assert checks["rmu"]["ref_partitioned"]
    for a, b in zip(rec.steps, checks["rmu_steps"]):
        for key in ("loss", "forget_loss", "retain_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def _single_process_recorder():
    return recorder()


def test_zero3_offload_matches_single_process(checks, tiny_model_dir):
    """ZeRO-3 + parameter/optimizer offload (configs/trainer/deepspeed_zero3_offload.yaml) trains like one
    process with torch's AdamW (the module switches to DeepSpeed's CPU Adam, AdamW mode)."""
    import lightning as L

    from lit_unlearn.objectives import NPO

    rec = recorder()
    L.seed_everything(0, verbose=False)
    module = NPO(tiny_model_dir, tokenizer=tiny_model_dir, reference="cached", retain_loss="kl", lr=1e-3)
    _trainer("auto", None, [rec], max_steps=3).fit(module, datamodule=_data(tiny_model_dir, 4))
    assert checks["offload_optimizer"] == "DeepSpeedCPUAdam"
    assert len(checks["offload_steps"]) == 3
    for a, b in zip(rec.steps, checks["offload_steps"]):
        for key in ("loss", "forget_loss", "retain_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_export_zero3_checkpoint_with_excluded_frozen_parameters(checks, tmp_path):
    """RMU trains 3 down-projections; with ``exclude_frozen_parameters`` the sharded checkpoint holds only
    those, and export fills the frozen rest from the base model (they never changed)."""
    from transformers import AutoModelForCausalLM

    from lit_unlearn.export import export_checkpoint

    out = checks["out"]
    export_checkpoint(out / "rmu.ckpt", tmp_path / "hf")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    trained = AutoModelForCausalLM.from_pretrained(out / "rmu_model").state_dict()  # save_pretrained (gathered)
    _assert_state_equal(exported, trained)
    info = json.loads((tmp_path / "hf" / "lit_unlearn.json").read_text())
    trainable = set(checks["rmu_trainable"])
    assert info["filled_from_base"] and not trainable & set(info["filled_from_base"])
    assert set(info["filled_from_base"]) | trainable == set(trained)


# -- resume + export ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["zero3", "zero2"])
def resumed(request, tmp_path_factory, tiny_model_dir) -> dict:
    out = tmp_path_factory.mktemp(f"resume_{request.param}")
    launch(DIST_SCRIPT, {"worker": "test_zero:resume", "strategy": request.param, "model": tiny_model_dir,
                         "out": str(out)}, nproc=2)
    result = torch.load(out / "result.pt", weights_only=False)
    result["out"], result["strategy"] = out, request.param
    return result


def test_resume_from_zero_checkpoint_continues_exactly(resumed):
    a, b = resumed["A"], resumed["B"]
    assert len(a["steps"]) == 15 and len(b["steps"]) == 10  # B starts after epoch 0 (5 steps)
    for x, y in zip(a["steps"][5:], b["steps"]):
        assert y["step"] == x["step"] and y["forget_index"] == x["forget_index"]  # sampler draws (MRD-weighted)
        assert y["lr"] == pytest.approx(x["lr"], rel=1e-12)  # the LR scheduler (8 warm-up steps) resumed
        for key in ("loss", "forget_loss", "retain_loss"):  # optimizer state resumed (Adam moments)
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), (y["step"], key)
    # MRD: the restored history plus the recomputation at epoch 2 (every 2 epochs, like the uninterrupted run)
    assert [h["epoch"] for h in a["mrd"]] == [h["epoch"] for h in b["mrd"]] == [0, 2]
    torch.testing.assert_close(torch.tensor(b["mrd"][1]["scores"]), torch.tensor(a["mrd"][1]["scores"]),
                               rtol=1e-4, atol=0)
    assert b["sampler"]["epoch"] == a["sampler"]["epoch"] == 2
    torch.testing.assert_close(b["sampler"]["weights"], a["sampler"]["weights"], rtol=1e-4, atol=0)
    assert set(b["cache"]) == set(a["cache"])  # the reference cache came back from the checkpoint
    for key in a["cache"]:
        assert torch.equal(b["cache"][key], a["cache"][key])
    # the saved models of the two runs agree
    from transformers import AutoModelForCausalLM

    wa = AutoModelForCausalLM.from_pretrained(resumed["out"] / "model_A").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(resumed["out"] / "model_B").state_dict()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-6)


def test_zero_checkpoint_excludes_reference_model(resumed):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = resumed["out"] / "ckpt_A" / "epoch=2-step=15.ckpt"
    assert folder.is_dir()
    state = get_fp32_state_dict_from_zero_checkpoint(str(folder))
    assert state and all(k.startswith("model.") for k in state), sorted(state)[:5]
    from lit_unlearn.export import deepspeed_client_state

    client = deepspeed_client_state(folder)
    assert not any(k.startswith("ref_model.") for k in client["module"])
    assert "reference_cache" in client and client["lit_unlearn_run"]["world_size"] == 2


def test_export_zero_checkpoint_folder(resumed, tmp_path):
    """``lit-unlearn export`` on the sharded folder: a Hugging Face folder with the trained model's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_unlearn.cli import main

    folder = resumed["out"] / "ckpt_A" / "epoch=2-step=15.ckpt"
    main(["export", "--ckpt_path", str(folder), "--out", str(tmp_path / "hf")])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    trained = AutoModelForCausalLM.from_pretrained(resumed["out"] / "model_A").eval()  # save_pretrained at fit end
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tok(["Question: Who wrote it?\nAnswer: nobody"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(exported(**ids).logits, trained(**ids).logits, rtol=1e-5, atol=1e-6)
    info = json.loads((tmp_path / "hf" / "lit_unlearn.json").read_text())
    assert info["checkpoint_format"] == "deepspeed" and info["world_size"] == 2 and info["global_step"] == 15
    assert info["zero_stage"] == {"zero3": 3, "zero2": 2}[resumed["strategy"]] and info["filled_from_base"] == []


# -- setup-time errors (no processes needed: a stub trainer with a ZeRO-3 strategy) --------------------------


def _stub_trainer(stage: int, callbacks=()):
    from lit_unlearn.strategies import CPUDeepSpeedStrategy

    return SimpleNamespace(strategy=CPUDeepSpeedStrategy(stage=stage), callbacks=list(callbacks))


def test_zero_stage_detection():
    from lit_unlearn.strategies import is_zero3, zero_stage

    assert zero_stage(_stub_trainer(3)) == 3 and is_zero3(_stub_trainer(3))
    assert zero_stage(_stub_trainer(2)) == 2 and not is_zero3(_stub_trainer(2))
    assert zero_stage(SimpleNamespace(strategy="ddp")) is None


def test_geffect_monitor_refuses_zero3_at_setup():
    from lit_unlearn.callbacks import GEffectMonitor
    from lit_unlearn.objectives import GA

    module = GA()
    module.model = torch.nn.Linear(2, 2)
    with pytest.raises(NotImplementedError, match="ZeRO-3"):
        GEffectMonitor().setup(_stub_trainer(3), module, "fit")
    GEffectMonitor().setup(_stub_trainer(2), module, "fit")  # ZeRO-2: warns and skips at measure time


def test_forgetting_early_stopping_refuses_zero3_at_setup():
    from lit_unlearn.callbacks import ForgettingEarlyStopping
    from lit_unlearn.strategies import check_zero3_support

    with pytest.raises(NotImplementedError, match="ForgettingEarlyStopping does not support DeepSpeed ZeRO-3"):
        check_zero3_support(_stub_trainer(3, [ForgettingEarlyStopping()]), None)
    check_zero3_support(_stub_trainer(2, [ForgettingEarlyStopping()]), None)


def test_mrd_bf16_partitioned_model_explains_precision():
    from lit_unlearn.analysis.mrd import _check_precision

    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    model.weight.ds_id = 0  # what a ZeRO-3 partitioned parameter carries
    for upcast in (False, True):
        with pytest.raises(ValueError, match="ZeRO-3 partitioned model holds.*bfloat16.*32-true"):
            _check_precision(model, allow_low_precision=False, upcast=upcast)
    assert _check_precision(model, allow_low_precision=True, upcast=False) is model


def _gloo_threads() -> int:
    """How many of this process's threads are gloo's TCP event loops (Linux ``/proc``)."""
    return sum((task / "comm").read_text().strip() == "gloo_tcp_loop" for task in Path("/proc/self/task").iterdir())


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux /proc")
def test_release_process_groups_stops_the_gloo_threads(tmp_path):
    """A 1-process gloo group: destroyed, its event-loop thread gone, and a second call finds nothing."""
    import torch.distributed as dist

    from lit_unlearn.strategies import release_process_groups

    before = _gloo_threads()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert _gloo_threads() > before
    finally:
        assert release_process_groups() is True
    assert not dist.is_initialized() and _gloo_threads() == before
    assert release_process_groups() is False


def test_release_process_groups_drops_deepspeeds_references(tmp_path):
    """When DeepSpeed set up the communication, its own teardown runs: no DeepSpeed module keeps a group."""
    import os
    import subprocess

    script = f"""
import torch.distributed as dist
import deepspeed.comm as dscomm
from deepspeed.utils import groups
from lit_unlearn.strategies import release_process_groups
dscomm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, init_method="file://{tmp_path / 'store'}",
                        rank=0, world_size=1, verbose=False)
assert groups._get_data_parallel_group() is not None and dscomm.is_initialized()
assert release_process_groups() is True
assert not dist.is_initialized() and not dscomm.is_initialized()
assert groups._WORLD_GROUP is None and groups._DATA_PARALLEL_GROUP is None
print("released")
"""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "released" in proc.stdout, proc.stderr[-3000:]


def test_cli_releases_the_process_groups_after_a_command(tmp_path, monkeypatch):
    """``lit-unlearn COMMAND`` destroys the process groups the command left (as under torchrun)."""
    import torch.distributed as dist

    from lit_unlearn import cli

    def command_that_initializes(target, argv):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)

    monkeypatch.setattr(cli, "_call", command_that_initializes)
    try:
        cli.main(["demo"])
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
