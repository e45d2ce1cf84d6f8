"""Distributed helpers: a CPU DeepSpeed strategy (tests, debugging) and ZeRO-aware utilities.

* :class:`CPUDeepSpeedStrategy` — Lightning's ``DeepSpeedStrategy`` refuses non-CUDA accelerators, but
  DeepSpeed itself runs ZeRO stages 1–3 on CPU processes talking over gloo. This subclass lifts the three
  CUDA-only checks so the real ZeRO code paths (partitioned parameters, sharded checkpoints, ZeRO-aware
  loading, MRD on shards) run in CI and on laptops. It is for tests and debugging: it is slow, and on GPUs
  use the plain ``DeepSpeedStrategy`` (``configs/trainer/deepspeed_zero*.yaml``).
* :func:`zero_stage` / :func:`is_zero3` — which ZeRO stage a trainer (or strategy) runs.
* :func:`run_metadata` — world size, strategy, precision, effective batch size of a run (saved with models).
* :func:`release_process_groups` — destroy the process groups at the end of a multi-process script.
* :func:`check_zero3_support` — clear setup-time errors for objectives/callbacks that cannot run on
  partitioned parameters.

DeepSpeed picks its CPU accelerator by itself when no GPU is visible; set ``DS_ACCELERATOR=cpu`` to force it
on a machine that has one. Its first use compiles a shared-memory communication op (~1 min, cached in
``~/.cache/torch_extensions``). Without offload the modules' torch AdamW is used; with
``offload_optimizer`` they switch to DeepSpeed's CPU Adam (another compiled op), see
:meth:`~lit_unlearn.objectives.lm.CausalLMModule.configure_optimizers`.
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from lightning.fabric.utilities.seed import reset_seed


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` on CPU processes (gloo), for tests and CPU debugging of ZeRO 1–3.

    Three overrides of Lightning's CUDA-only assumptions:

    (a) ``setup_environment`` skips the "only CUDA" check (calls ``DDPStrategy.setup_environment``);
    (b) ``root_device`` is ``torch.device("cpu", local_rank)`` (DeepSpeed reads the index as the device
        rank; CPU tensors ignore it);
    (c) ``setup_distributed`` skips the GPU device-index validation.

    Use with ``Trainer(accelerator="cpu", devices=N, strategy=CPUDeepSpeedStrategy(stage=3))`` or
    ``configs/trainer/deepspeed_zero3_cpu.yaml``. The process group backend is gloo (the default for a CPU
    root device).
    Launch several processes with ``torchrun`` (or Lightning's own launcher from a script).
    """

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _auto_select_batch_size(self) -> int:
        # Lightning reads ``train_dataloader.batch_sampler.batch_size`` (only for DeepSpeed's throughput
        # logs); a CombinedLoader's ``batch_sampler`` is a dict of them. Or set ``logging_batch_size_per_gpu``.
        return _loader_batch_size(self.lightning_module.trainer)


def _loader_batch_size(trainer: Any) -> int:
    source = trainer.fit_loop._data_source
    if not source.is_defined():
        return 1
    sampler = getattr(source.dataloader(), "batch_sampler", None)
    if isinstance(sampler, dict):
        sampler = next(iter(sampler.values()), None)
    return int(getattr(sampler, "batch_size", None) or 1)


def zero_stage(obj: Any) -> int | None:
    """The DeepSpeed ZeRO stage of a Trainer or strategy (0–3), or ``None`` when it is not DeepSpeed."""
    strategy = getattr(obj, "strategy", obj)
    if not isinstance(strategy, DeepSpeedStrategy):
        return None
    config = strategy.config or {}
    return int((config.get("zero_optimization") or {}).get("stage", 0))


def release_process_groups() -> bool:
    """Destroy every ``torch.distributed`` process group this process holds; ``True`` if there was one.

    Call it at the end of a multi-process script (``lit-unlearn`` does after every command). Lightning
    destroys its process group at exit only for NCCL; gloo groups (CPU DDP, ``CPUDeepSpeedStrategy``) and the
    groups DeepSpeed creates stay alive until interpreter shutdown with their communication threads running,
    and a process can then, rarely, die with ``terminate called without an active exception`` (SIGABRT) after
    its work is done. When DeepSpeed set up the communication, its ``deepspeed.comm.destroy_process_group``
    is used, which also drops DeepSpeed's own references to its groups. Naive equivalent:
    ``if dist.is_initialized(): dist.destroy_process_group()``.

    Call it on the success path only: after an exception another rank may still wait in a collective. A group
    that live objects still reference (a DDP reducer, a DeepSpeed engine's parameters) keeps its threads until
    those objects go.
    """
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    deepspeed_comm = sys.modules.get("deepspeed.comm")
    if deepspeed_comm is not None and deepspeed_comm.is_initialized():
        deepspeed_comm.destroy_process_group()
    else:
        dist.destroy_process_group()
    return True


def is_zero3(obj: Any) -> bool:
    """True when ``obj`` (a Trainer or strategy) runs DeepSpeed ZeRO stage 3 (partitioned parameters)."""
    return zero_stage(obj) == 3


def is_partitioned(module: torch.nn.Module) -> bool:
    """True when ``module`` holds DeepSpeed ZeRO-3 partitioned parameters."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def run_metadata(trainer: Any, batch_size: int | None = None) -> dict[str, Any]:
    """World size, nodes, strategy (+ ZeRO stage), precision and effective batch size of a run.

    effective batch size = per-process batch size × world size × gradient accumulation steps.
    """
    if trainer is None:
        return {}
    accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
    world = int(getattr(trainer, "world_size", 1) or 1)
    return {
        "world_size": world,
        "num_nodes": int(getattr(trainer, "num_nodes", 1) or 1),
        "strategy": type(trainer.strategy).__name__,
        "zero_stage": zero_stage(trainer),
        "precision": str(getattr(trainer, "precision", None)),
        "accumulate_grad_batches": accumulate,
        "batch_size": batch_size,
        "effective_batch_size": None if batch_size is None else batch_size * world * accumulate,
    }


def check_zero3_support(trainer: Any, module: Any) -> None:
    """Raise at setup when the module or a callback cannot run on ZeRO-3 partitioned parameters."""
    if not is_zero3(trainer):
        return
    for callback in getattr(trainer, "callbacks", []) or []:
        name = type(callback).__name__
        if name == "ForgettingEarlyStopping":
            raise NotImplementedError(
                "ForgettingEarlyStopping does not support DeepSpeed ZeRO-3: its per-shard greedy generation "
                "runs a different number of forward passes on each rank, and every ZeRO-3 forward is a "
                "collective. Use DDP or ZeRO-2 (configs/trainer/ddp.yaml, deepspeed_zero2.yaml)."
            )
