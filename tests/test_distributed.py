"""1 process vs 2 CPU processes (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3 give the single-process results.

Every run unlearns forget01 of tofu-mini with the same *global* batch (1 process × 4 samples, or 2 processes
× 2 samples) on a tiny random Llama:

* fit 1: NPO with a **cached** reference (log-probs filled before training, split across ranks) and a
  **KL retain** term (so a **live**, frozen reference model too — partitioned under ZeRO-3), the
  ``MRDCurriculum`` callback rescoring every epoch (MRD on ZeRO-3 partitions), 2 epochs, then the TOFU
  evaluation suite (likelihood metrics, MIA, generation/ROUGE, extraction likelihood on forget) at the end
  of the last epoch, and ``save_pretrained`` (gathers ZeRO-3 partitions);
* fit 2: NPO with a **live** reference (its log-probs every step) and KL retain, 3 steps.

The runs are launched as subprocesses (this file is also the worker: ``torchrun --nproc_per_node 2
tests/test_distributed.py CONFIG_JSON``, which is how users launch multi-process jobs too); rank 0
writes ``result.pt`` and the tests compare losses, sampler draws, cached reference log-probs, MRD scores,
metric values, final weights and run metadata with the single-process run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
STRATEGIES = ("ddp", "zero2", "zero3")
GLOBAL_BATCH = 4


# ------------------------------------------------------------------------------------------------------
# helpers shared with tests/test_zero.py and tests/test_export.py
# ------------------------------------------------------------------------------------------------------


def launch(script: Path | str, config: dict | list[str], nproc: int, timeout: int = 300) -> float:
    """Run ``script CONFIG_JSON`` on ``nproc`` CPU processes (torchrun when > 1); return the wall time.

    ``script`` may be ``-m module`` (then ``config`` is the list of its arguments).
    """
    from conftest import free_port  # here, not at the top: this file is also the workers' script

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore", "DS_ACCELERATOR": "cpu"}
    args = config if isinstance(config, list) else [json.dumps(config)]
    target = str(script).split() if str(script).startswith("-m ") else [str(script)]
    if nproc == 1:
        cmd = [sys.executable, *target, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={free_port()}", *(["--module"] if target[0] == "-m" else []),
               *(target[1:] if target[0] == "-m" else target), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent.parent)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "Error" in line][:20]
        raise AssertionError(f"worker failed ({proc.returncode}):\n" + "\n".join(errors)
                             + f"\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return time.perf_counter() - start


def make_tiny_model(folder: Path, tokenizer_path: str) -> str:
    """A random tiny Llama (~150k parameters) + the builtin tokenizer, saved as a Hugging Face folder."""
    from lit_unlearn.models.loading import load_tokenizer
    from lit_unlearn.models.tiny import tiny_llama

    tok = load_tokenizer(tokenizer_path)
    model = tiny_llama(seed=0, vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, builtin_tokenizer_path) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("dist_model") / "tiny", builtin_tokenizer_path)


# ------------------------------------------------------------------------------------------------------
# the worker (runs in every process)
# ------------------------------------------------------------------------------------------------------


def make_strategy(name: str, **kwargs):
    """Trainer ``strategy`` for a name: single, ddp, zero2, zero3 (DeepSpeed on CPU, for tests)."""
    from lit_unlearn.strategies import CPUDeepSpeedStrategy

    if name == "single":
        return "auto"
    if name == "ddp":
        return "ddp"
    stage = {"zero2": 2, "zero3": 3}[name]
    return CPUDeepSpeedStrategy(stage=stage, exclude_frozen_parameters=True, **kwargs)


def all_gather_object(obj):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def recorder():
    """A callback recording, per step, the synced losses, lr and every rank's forget indices."""
    from lightning.pytorch import Callback

    class Recorder(Callback):
        def __init__(self):
            self.steps = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            metrics = trainer.callback_metrics
            self.steps.append({
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "forget_index": all_gather_object(batch["forget"]["index"].tolist()),
                "loss": float(metrics["train/loss"]),
                "forget_loss": float(metrics["train/forget_loss"]),
                "retain_loss": float(metrics["train/retain_loss"]),
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
            })

    return Recorder()


def build_run(cfg: dict, reference: str, callbacks: list, save_dir: str | None = None, eval_during_fit=False,
              **trainer_kw):
    import lightning as L

    from lit_unlearn.data import UnlearningDataModule
    from lit_unlearn.objectives import NPO

    world = 1 if cfg["strategy"] == "single" else 2
    batch = GLOBAL_BATCH // world
    L.seed_everything(0, verbose=False)
    data = UnlearningDataModule(
        tokenizer=cfg["model"], forget_split="forget01", retain_split="retain99", batch_size=batch,
        max_length=48, eval_max_samples=4, eval_batch_size=2, eval_during_fit=eval_during_fit,
    )
    module = NPO(
        cfg["model"], tokenizer=cfg["model"], reference=reference, retain_loss="kl", lr=cfg.get("lr", 2e-3),
        warmup_steps=cfg.get("warmup_steps", 0), reference_batch_size=4, save_dir=save_dir,
        eval_config={"max_new_tokens": 4, "el_splits": ["forget"], "el_n": 3, "plots": False, "write_report": False},
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy=make_strategy(cfg["strategy"]), logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
        default_root_dir=cfg["out"], **{"enable_checkpointing": False, **trainer_kw},
    )
    return trainer, module, data


def worker_compare(cfg: dict) -> None:
    """fit 1 (cached reference + KL + MRD curriculum + evaluation + save) and fit 2 (live reference)."""
    from lit_unlearn.callbacks import MRDCurriculum
    from lit_unlearn.models.loading import gathered_state_dict

    out = Path(cfg["out"])
    rec = recorder()
    # sigma 1e-3: at 1e-5 the score of this random model sits at the fp32 rounding floor of P_t, so the
    # 1e-7 weight differences that training leaves between strategies move it by ~1%
    mrd = MRDCurriculum(every_n_epochs=1, num_samples=4, batch_size=1, sigma=1e-3, log_histogram=False)
    trainer, module, data = build_run(cfg, "cached", [rec, mrd], save_dir=str(out / "model"), eval_during_fit=True,
                                      max_epochs=2, check_val_every_n_epoch=2)
    trainer.fit(module, datamodule=data)
    report = module.last_report
    ref_partitioned = module.ref_model is not None and any(hasattr(p, "ds_id") for p in module.ref_model.parameters())
    result = {
        "steps": rec.steps,
        "mrd": [h["scores"] for h in mrd.history],
        "cache": module.ref_cache.state_dict(),
        "metrics": {k: s["metrics"] for k, s in report["splits"].items()},
        "model_utility": report["model_utility"]["value"],
        "report_metadata": report["metadata"],
        "ref_partitioned": ref_partitioned,
        "model_partitioned": any(hasattr(p, "ds_id") for p in module.model.parameters()),
        "weights": gathered_state_dict(module.model),
    }
    rec2 = recorder()
    trainer2, module2, data2 = build_run(cfg, "live", [rec2], max_steps=3)
    trainer2.fit(module2, datamodule=data2)
    result["live_steps"] = rec2.steps
    if trainer.is_global_zero:
        torch.save(result, out / "result.pt")


WORKERS = {"compare": worker_compare}


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore")
    cfg = json.loads(argv[0])
    module, name = cfg.get("worker", "test_distributed:compare").split(":")
    if module == "test_distributed":
        WORKERS[name](cfg)
    else:  # workers of the sibling test files
        sys.path.insert(0, str(HERE.parent))
        __import__(module).WORKERS[name](cfg)
    finish_worker()


def finish_worker() -> None:
    """End a worker process that has written its result: destroy the process groups, flush, and exit
    without interpreter shutdown (as ``multiprocessing`` ends its workers). At shutdown, communication
    threads of groups that DeepSpeed engines or DDP reducers still reference can abort the process
    (``terminate called without an active exception``) after the work is done: seen about once in 60
    2-process ZeRO-2 runs."""
    from lit_unlearn.strategies import release_process_groups

    release_process_groups()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ------------------------------------------------------------------------------------------------------
# the tests (run by pytest in the parent process)
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict:
    """``{strategy: result}`` for single, ddp, zero2, zero3 (plus wall times)."""
    results, times = {}, {}
    for name in ("single", *STRATEGIES):
        out = tmp_path_factory.mktemp(f"run_{name}")
        times[name] = launch(HERE, {"strategy": name, "model": tiny_model_dir, "out": str(out)},
                             nproc=1 if name == "single" else 2)
        results[name] = torch.load(out / "result.pt", weights_only=False)
        results[name]["model_dir"] = out / "model"
    results["times"] = times
    return results


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_losses_match_single_process(runs, strategy):
    ref, got = runs["single"], runs[strategy]
    assert len(got["steps"]) == len(ref["steps"]) == 10  # 20 forget samples / global batch 4, 2 epochs
    for key in ("loss", "forget_loss", "retain_loss"):
        a = torch.tensor([s[key] for s in ref["steps"]], dtype=torch.float64)
        b = torch.tensor([s[key] for s in got["steps"]], dtype=torch.float64)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=f"{strategy} {key}")
    # the live-reference run: NPO reference log-probs from the frozen model every step
    for key in ("loss", "forget_loss", "retain_loss"):
        a = torch.tensor([s[key] for s in ref["live_steps"]], dtype=torch.float64)
        b = torch.tensor([s[key] for s in got["live_steps"]], dtype=torch.float64)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=f"{strategy} live {key}")
    assert ref["live_steps"][0]["forget_loss"] == pytest.approx(got["live_steps"][0]["forget_loss"], rel=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sampler_draws_match_single_process(runs, strategy):
    """Every step's global forget batch (union over ranks) is the single-process batch, MRD-weighted epochs
    included."""
    for ref, got in zip(runs["single"]["steps"], runs[strategy]["steps"]):
        assert len(got["forget_index"]) == 2
        assert sorted(sum(got["forget_index"], [])) == sorted(ref["forget_index"][0])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cached_reference_is_identical(runs, strategy):
    ref, got = runs["single"]["cache"], runs[strategy]["cache"]
    assert set(got) == set(ref) and len(ref) == 20
    for key in ref:
        assert torch.equal(got[key], ref[key]), key


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mrd_scores_match_single_process(runs, strategy):
    ref, got = runs["single"]["mrd"], runs[strategy]["mrd"]
    assert len(ref) == len(got) == 2  # epochs 0 and 1
    torch.testing.assert_close(torch.tensor(got[0]), torch.tensor(ref[0]), rtol=1e-5, atol=0)  # same weights
    torch.testing.assert_close(torch.tensor(got[1]), torch.tensor(ref[1]), rtol=1e-3, atol=0)  # after training


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_metrics_match_single_process(runs, strategy):
    ref, got = runs["single"], runs[strategy]
    assert set(got["metrics"]) == set(ref["metrics"])
    assert {"extraction_likelihood", "rouge_l_recall", "truth_ratio"} <= set(got["metrics"]["forget"])
    for split, values in ref["metrics"].items():
        for name, value in values.items():
            assert got["metrics"][split][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (split, name)
    assert got["model_utility"] == pytest.approx(ref["model_utility"], rel=1e-4)
    meta = got["report_metadata"]
    assert meta["world_size"] == 2 and meta["effective_batch_size"] == 2 * 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_final_weights_and_saved_model(runs, strategy):
    from transformers import AutoModelForCausalLM

    ref, got = runs["single"], runs[strategy]
    assert set(got["weights"]) == set(ref["weights"])
    # Adam turns ~1e-9 gradient noise on rarely-seen embedding rows into ~1e-5 steps (lr 2e-3); training
    # moved the weights by ~1e-2, a wrong reduction by >1e-3
    for key, value in ref["weights"].items():
        torch.testing.assert_close(got["weights"][key], value, rtol=1e-4, atol=5e-5, msg=key)
    saved = AutoModelForCausalLM.from_pretrained(got["model_dir"]).state_dict()
    for key, value in got["weights"].items():
        assert torch.equal(saved[key], value), key  # save_pretrained wrote the gathered weights
    info = json.loads((got["model_dir"] / "lit_unlearn.json").read_text())
    expected_strategy = {"ddp": "DDPStrategy", "zero2": "CPUDeepSpeedStrategy", "zero3": "CPUDeepSpeedStrategy"}
    assert info["world_size"] == 2 and info["strategy"] == expected_strategy[strategy]
    assert info["effective_batch_size"] == GLOBAL_BATCH and info["precision"] == "32-true"
    assert info["zero_stage"] == {"ddp": None, "zero2": 2, "zero3": 3}[strategy]
    single = json.loads((ref["model_dir"] / "lit_unlearn.json").read_text())
    assert single["world_size"] == 1 and single["effective_batch_size"] == GLOBAL_BATCH


TRAINER_CONFIGS = ("cpu", "ddp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload", "deepspeed_zero3_cpu")


@pytest.mark.parametrize("name", TRAINER_CONFIGS)
def test_trainer_configs_parse(name):
    """Every ``configs/trainer/X.yaml`` works as ``--trainer configs/trainer/X.yaml`` (GPU configs checked with
    ``--trainer.accelerator cpu``: the strategy objects are built, not launched)."""
    from lit_unlearn.cli import lightning_cli
    from lit_unlearn.strategies import zero_stage

    root = HERE.parent.parent
    cli = lightning_cli(["--config", str(root / "configs/tofu_mini/unlearn.yaml"),
                         "--trainer", str(root / f"configs/trainer/{name}.yaml"),
                         "--trainer.accelerator", "cpu", "--trainer.devices", "1"], run=False)
    expected = {"cpu": None, "ddp": None, "deepspeed_zero2": 2, "deepspeed_zero3": 3, "deepspeed_zero3_offload": 3,
                "deepspeed_zero3_cpu": 3}[name]
    assert zero_stage(cli.trainer) == expected
    if expected is not None:
        assert cli.trainer.strategy.exclude_frozen_parameters
    if name == "deepspeed_zero3_offload":
        zero = cli.trainer.strategy.config["zero_optimization"]
        assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"


def test_cli_torchrun_deepspeed_zero3_cpu(tmp_path, tiny_model_dir):
    """The user's launch: ``torchrun --nproc_per_node 2 -m lit_unlearn fit ... --trainer <yaml>``."""
    out = tmp_path / "cli"
    launch("-m lit_unlearn", [
        "fit", "--config", "configs/tofu_mini/unlearn.yaml", "--model", "configs/objective/npo.yaml",
        "--trainer", "configs/trainer/deepspeed_zero3_cpu.yaml", "--trainer.max_steps", "2",
        "--trainer.default_root_dir", str(out), "--model.init_args.model_name_or_path", tiny_model_dir,
        "--model.init_args.save_dir", str(out / "model"), "--data.init_args.tokenizer", tiny_model_dir,
        "--data.init_args.forget_split", "forget01", "--data.init_args.retain_split", "retain99",
        "--data.init_args.batch_size", "2", "--data.init_args.max_length", "48",
    ], nproc=2)
    info = json.loads((out / "model" / "lit_unlearn.json").read_text())
    assert info["world_size"] == 2 and info["zero_stage"] == 3 and info["global_step"] == 2
    assert info["strategy"] == "CPUDeepSpeedStrategy" and info["effective_batch_size"] == 4


def test_zero3_partitions_model_and_reference(runs):
    assert runs["zero3"]["model_partitioned"] and runs["zero3"]["ref_partitioned"]
    assert not runs["zero2"]["model_partitioned"] and not runs["ddp"]["ref_partitioned"]


if __name__ == "__main__":
    main(sys.argv[1:])
