"""The part every module shares: build a causal LM in ``configure_model``, optimise it, save it.

The model is created in ``configure_model`` (not ``__init__``) so strategies such as DeepSpeed ZeRO-3 can
shard it while it is built.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lit_unlearn.evaluation.config import EvalConfig
from lit_unlearn.functional.tokens import token_logprobs
from lit_unlearn.utils.io import atomic_directory


def save_hf_state_dict(config: Any, state_dict: dict[str, torch.Tensor], directory: str | Path) -> None:
    """``save_pretrained`` of a model built from ``config`` on the CPU and holding ``state_dict``."""
    from transformers import AutoModelForCausalLM

    from lit_unlearn.models.loading import outside_zero3

    with outside_zero3(), torch.device("cpu"):
        dtype = next((v.dtype for v in state_dict.values() if v.is_floating_point()), torch.float32)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys:
        raise RuntimeError(f"save_pretrained: the gathered state dict lacks {result.missing_keys[:10]}")
    model.save_pretrained(directory)


class CausalLMModule(L.LightningModule):
    """Owns ``self.model`` (a Hugging Face causal LM) and its optimiser.

    Args:
        model_name_or_path: a local folder, a hub name, or ``builtin:tiny-llama`` (fresh tiny Llama).
        tokenizer: the tokenizer name or path (the CLI links it to ``data.tokenizer``); needed to size the
            builtin model and saved next to the weights.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps, then constant.
        dtype: weights dtype (``float32``, ``bfloat16``, ``float16``); ``None`` keeps the checkpoint's.
        save_dir: when set, a Hugging Face ``save_pretrained`` folder (with tokenizer) is written there at the
            end of ``fit``, atomically.
        eval_config: how ``validate``/``test`` evaluate on the TOFU suite (generation length, retain report
            for forget quality, report folder ...; see :class:`~lit_unlearn.evaluation.EvalConfig`). The
            splits come from the datamodule's ``val_dataloader``; the report goes to
            ``eval_config.report_dir`` (default ``trainer.default_root_dir/report``), written on rank 0.
    """

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        tokenizer: str | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        dtype: str | None = None,
        save_dir: str | None = None,
        seed: int = 0,
        eval_config: EvalConfig | None = None,
    ):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
        self.model_name_or_path = model_name_or_path
        self.tokenizer_name = tokenizer or model_name_or_path
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.dtype_name = dtype
        self.save_dir = save_dir
        self.seed = seed
        self.model: torch.nn.Module | None = None
        self.tokenizer = None
        self.extra_metadata: dict[str, Any] = {}
        self.eval_config = EvalConfig.coerce(eval_config)
        self._eval_runner = None
        # the init arguments of the whole subclass chain, so `load_from_checkpoint` can rebuild the module
        self.save_hyperparameters()

    # -- model ----------------------------------------------------------------------------------------
    def load_tokenizer(self):
        if self.tokenizer is None:
            datamodule = getattr(getattr(self, "_trainer", None), "datamodule", None)
            if datamodule is not None and getattr(datamodule, "tokenizer", None) is not None:
                self.tokenizer = datamodule.tokenizer
            else:
                from lit_unlearn.models.loading import load_tokenizer

                self.tokenizer = load_tokenizer(self.tokenizer_name)
        return self.tokenizer

    def build_model(self) -> torch.nn.Module:
        """The causal LM: partitioned as it is created under DeepSpeed ZeRO-3, else on the CPU (see
        :func:`~lit_unlearn.models.loading.load_causal_lm`)."""
        from lit_unlearn.models.loading import load_causal_lm

        return load_causal_lm(self.model_name_or_path, self.load_tokenizer(), dtype=self.dtype_name, seed=self.seed,
                              zero3_config=self.zero3_config)

    @property
    def offloads_optimizer(self) -> bool:
        """True when the attached trainer runs DeepSpeed with the optimizer offloaded (ZeRO-Offload)."""
        from lit_unlearn.strategies import zero_stage

        trainer = getattr(self, "_trainer", None)
        if trainer is None or zero_stage(trainer) is None:
            return False
        offload = (trainer.strategy.config.get("zero_optimization") or {}).get("offload_optimizer") or {}
        return offload.get("device", "none") not in (None, "none")

    @property
    def zero3_config(self) -> dict | None:
        """The DeepSpeed config when the attached trainer runs ZeRO stage 3, else None."""
        from lit_unlearn.strategies import is_zero3

        trainer = getattr(self, "_trainer", None)
        if trainer is None or not is_zero3(trainer):
            return None
        return trainer.strategy.config

    def configure_model(self) -> None:
        if self.model is None:
            # from_pretrained returns the model in eval mode; follow the LightningModule's mode instead, so
            # dropout is active while training
            self.model = self.build_model().train(self.training)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def sample_logprobs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs ``(B, T-1)`` and mask of the labelled tokens of ``batch`` under ``self.model``."""
        return token_logprobs(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    # -- optimisation ---------------------------------------------------------------------------------
    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def configure_optimizers(self):
        if self.offloads_optimizer:
            # DeepSpeed refuses a torch optimizer with ZeRO-Offload (zero_force_ds_cpu_optimizer); its CPU Adam
            # in AdamW mode computes the same update (a compiled extension, built on first use)
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(self.trainable_parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                         adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.warmup_steps == 0:
            return optimizer
        warmup = self.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- saving ---------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write model + tokenizer + ``lit_unlearn.json`` (metadata) as one atomic folder.

        With a ZeRO-3 partitioned model this is collective: call it on every rank (rank 0 writes).
        """
        from lit_unlearn.models.loading import gathered_state_dict

        partitioned = any(hasattr(p, "ds_id") for p in self.model.parameters())
        state = gathered_state_dict(self.model) if partitioned else None  # collective under ZeRO-3
        if partitioned and not state:
            return Path(directory)  # not rank 0
        with atomic_directory(directory) as tmp:
            if partitioned:
                save_hf_state_dict(self.model.config, state, tmp)
            else:
                self.model.save_pretrained(tmp)
            self.load_tokenizer().save_pretrained(tmp)
            info = {"model_name_or_path": self.model_name_or_path, **self.extra_metadata, **(metadata or {})}
            (Path(tmp) / "lit_unlearn.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        return Path(directory)

    def run_metadata(self) -> dict[str, Any]:
        """Data version, step, and the run's world size / strategy / precision / effective batch size."""
        from lit_unlearn.strategies import run_metadata

        trainer = getattr(self, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None)
        meta = {"data_version": getattr(datamodule, "data_version", None), "global_step": self.global_step}
        meta.update(run_metadata(trainer, getattr(datamodule, "batch_size", None)))
        return meta

    def on_fit_end(self) -> None:
        if not self.save_dir:
            return
        partitioned = any(hasattr(p, "ds_id") for p in self.model.parameters())
        if partitioned or self.trainer.is_global_zero:  # gathering ZeRO-3 partitions needs every rank
            self.save_pretrained(self.save_dir, self.run_metadata())
        if partitioned:
            self.trainer.strategy.barrier("save_pretrained")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lit_unlearn_run"] = self.run_metadata()

    # -- evaluation (validate/test): the TOFU suite, see lit_unlearn.evaluation.lightning -------------------
    @property
    def last_report(self) -> dict[str, Any] | None:
        """The report of the last ``validate``/``test`` epoch (every rank), or None."""
        return None if self._eval_runner is None else self._eval_runner.last_report

    def _evaluation(self):
        """The runner, or None when a ``TOFUReport`` callback does the evaluation instead."""
        from lit_unlearn.evaluation.lightning import LightningEvalRunner, find_report_callback

        if find_report_callback(self.trainer) is not None:
            return None
        if self._eval_runner is None:
            self._eval_runner = LightningEvalRunner(self.eval_config)
        return self._eval_runner

    def on_validation_epoch_start(self) -> None:
        if (runner := self._evaluation()) is not None:
            runner.start(self.trainer, self, "validate")

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if (runner := self._evaluation()) is not None:
            runner.step(self, batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        if (runner := self._evaluation()) is not None:
            runner.end(self.trainer, self, "validate")

    def on_test_epoch_start(self) -> None:
        if (runner := self._evaluation()) is not None:
            runner.start(self.trainer, self, "test")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if (runner := self._evaluation()) is not None:
            runner.step(self, batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        if (runner := self._evaluation()) is not None:
            runner.end(self.trainer, self, "test")
