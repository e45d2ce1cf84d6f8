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
        peft: train ``peft`` adapters instead of every weight: a mapping of ``peft`` config fields (LoRA:
            ``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules`` ...; ``peft_type`` selects another tuner
            type) or the path of a YAML/JSON file holding one. ``None`` (default): full fine-tuning. Only
            adapter weights are trainable and saved in checkpoints; the reference is the base model with
            adapters disabled (see :mod:`lit_unlearn.models.adapters` and docs/peft.md).
    """

    #: a retain report of other data than the evaluated run is an error instead of an "unavailable" forget
    #: quality with a warning (set by ``lit-unlearn validate|test|fit --strict``)
    strict_evaluation: bool = False

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
        peft: dict[str, Any] | str | None = None,
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
        self.peft_config: dict[str, Any] | None = None
        # the init arguments of the whole subclass chain, so `load_from_checkpoint` can rebuild the module
        self.save_hyperparameters()
        if peft is not None:
            from lit_unlearn.models.adapters import load_peft_spec

            # a file path is read now and the mapping itself recorded, so checkpoints rebuild without the file
            self.peft_config = self.hparams["peft"] = load_peft_spec(peft)

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
            model = self.build_model()
            if self.peft_config is not None:
                from lit_unlearn.models.adapters import wrap_with_adapters

                model = wrap_with_adapters(model, self.peft_config, seed=self.seed, base_name=self.model_name_or_path)
            # from_pretrained returns the model in eval mode; follow the LightningModule's mode instead, so
            # dropout is active while training
            self.model = model.train(self.training)

    # -- adapters (model.peft) ------------------------------------------------------------------------
    @property
    def uses_adapters(self) -> bool:
        """True when ``self.model`` is a ``peft`` adapter model (``peft`` set)."""
        from lit_unlearn.models.adapters import is_adapter_model

        return self.peft_config is not None and is_adapter_model(self.model)

    def set_trainable(self, module: torch.nn.Module) -> None:
        """Make ``module`` (a part of ``self.model``) trainable: every weight in full fine-tuning, only the
        adapter weights inside it with adapters (``ValueError`` when it holds none)."""
        if not self.uses_adapters:
            module.requires_grad_(True)
            return
        from lit_unlearn.models.adapters import adapter_parameter_names

        adapter_ids = {id(p) for n, p in self.model.named_parameters() if n in adapter_parameter_names(self.model)}
        params = [p for p in module.parameters() if id(p) in adapter_ids]
        if not params:
            name = next((n for n, m in self.model.named_modules() if m is module), type(module).__name__)
            raise ValueError(f"{type(self).__name__} trains {name!r}, which holds no adapter: add its module name"
                             f" ({name.rsplit('.', 1)[-1]!r}) to model.peft.target_modules.")
        for p in params:
            p.requires_grad_(True)

    def state_dict(self, *args, **kwargs):
        # with adapters, checkpoints hold the adapter weights only (the base weights come from the base model)
        state = super().state_dict(*args, **kwargs)
        if not self.uses_adapters:
            return state
        from lit_unlearn.models.adapters import adapter_parameter_names

        keep = {f"model.{n}" for n in adapter_parameter_names(self.model)}
        return type(state)((k, v) for k, v in state.items() if not k.startswith("model.") or k in keep)

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        if not self.uses_adapters:
            if self.peft_config is None and any(".lora_" in k or "base_layer." in k for k in state_dict):
                raise RuntimeError("These weights come from a run with adapters (model.peft): build the module with"
                                   " the same model.peft config to load them.")
            return super().load_state_dict(state_dict, strict=strict, **kwargs)
        from torch.nn.modules.module import _IncompatibleKeys

        expected = set(self.state_dict())
        result = super().load_state_dict(state_dict, strict=False, **kwargs)
        missing = [k for k in result.missing_keys if k in expected]  # base weights are not in checkpoints
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"Missing keys {missing}, unexpected keys {result.unexpected_keys}.")
        return _IncompatibleKeys(missing, result.unexpected_keys)

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

    # -- finiteness of the weights (no checkpoint or saved model with NaN/inf) ---------------------------
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """The optimizer step, then :meth:`check_parameters_finite`.

        A finite loss can still give an update that overflows the weights; checking here (before Lightning
        calls the callbacks' ``on_train_batch_end``, where ``ModelCheckpoint`` saves) stops training before
        any checkpoint holds the broken weights, so the last checkpoint is the last finite state.
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.check_parameters_finite("after the optimizer step")

    def check_parameters_finite(self, when: str) -> None:
        """Raise :class:`~lit_unlearn.utils.finite.NonFiniteWeightsError` (a ``FloatingPointError``) on every
        rank when a trainable parameter holds NaN/±inf.

        Cost: one fused ``‖·‖_∞`` reduction over this rank's values (its ZeRO-3 shard when partitioned, see
        :func:`~lit_unlearn.utils.finite.local_values`), plus one all-reduce of a 0/1 flag when several
        processes run, so every rank raises together (no rank is left waiting in a collective).
        """
        from lit_unlearn.utils.finite import NonFiniteWeightsError, all_finite, first_nonfinite, local_values

        params = [(name, param) for name, param in self.model.named_parameters() if param.requires_grad]
        bad = 0.0 if all_finite(local_values(p) for _, p in params) else 1.0
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and int(getattr(trainer, "world_size", 1) or 1) > 1:
            flag = torch.tensor([bad], dtype=torch.float32, device=self.device)
            bad = float(trainer.strategy.reduce(flag, reduce_op="sum").reshape(-1)[0])
        if bad == 0.0:
            return
        found = first_nonfinite((f"model.{n}", local_values(p)) for n, p in params)
        where = f"{found[0]!r} holds {found[1]}" if found else "a parameter held by another rank is not finite"
        raise NonFiniteWeightsError(
            f"{type(self).__name__}: the weights became non-finite {when} at step {self.global_step} ({where})."
            " Training stops here, before anything of this step is saved: checkpoints written so far (last.ckpt"
            " included) hold the last finite weights. Lower lr, raise warmup_steps or set"
            " trainer.gradient_clip_val."
        )

    # -- saving ---------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, metadata: dict[str, Any] | None = None,
                        allow_nonfinite: bool = False) -> Path:
        """Write model + tokenizer + ``lit_unlearn.json`` (metadata) as one atomic folder.

        With a ZeRO-3 partitioned model this is collective: call it on every rank (rank 0 writes). Weights
        holding NaN/±inf are refused (``NonFiniteWeightsError`` naming the first bad tensor; nothing is
        written) unless ``allow_nonfinite``.
        """
        from lit_unlearn.models.loading import gathered_state_dict
        from lit_unlearn.utils.finite import check_state_dict_finite
        from lit_unlearn.utils.environment import environment_info

        partitioned = any(hasattr(p, "ds_id") for p in self.model.parameters())
        state = gathered_state_dict(self.model) if partitioned else None  # collective under ZeRO-3
        if partitioned and not state:
            return Path(directory)  # not rank 0
        if not allow_nonfinite:
            check_state_dict_finite(state if partitioned else dict(self.model.named_parameters()),
                                    f"The model to save to {str(directory)!r}",
                                    "Nothing was written (pass allow_nonfinite=True to save it anyway).")
        with atomic_directory(directory) as tmp:
            if partitioned:
                save_hf_state_dict(self.model.config, state, tmp)
            else:
                self.model.save_pretrained(tmp)
            self.load_tokenizer().save_pretrained(tmp)
            from lit_unlearn.utils.hparams import objective_record  # {"class_path", "init_args": hparams}

            info = {"model_name_or_path": self.model_name_or_path, "environment": environment_info(),
                    "objective": objective_record(self), **self.extra_metadata, **(metadata or {})}
            (Path(tmp) / "lit_unlearn.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        return Path(directory)

    def run_metadata(self) -> dict[str, Any]:
        """Data version, step, and the run's world size / strategy / precision / effective batch size."""
        from lit_unlearn.strategies import run_metadata
        from lit_unlearn.utils.environment import environment_info

        trainer = getattr(self, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None)
        meta = {"data_version": getattr(datamodule, "data_version", None), "global_step": self.global_step}
        meta.update(run_metadata(trainer, getattr(datamodule, "batch_size", None)))
        meta["environment"] = environment_info()
        return meta

    def on_fit_end(self) -> None:
        if not self.save_dir:
            return
        partitioned = any(hasattr(p, "ds_id") for p in self.model.parameters())
        self.check_parameters_finite("at the end of fit (save_dir is not written)")  # every rank together
        if partitioned or self.trainer.is_global_zero:  # gathering ZeRO-3 partitions needs every rank
            self.save_pretrained(self.save_dir, self.run_metadata())
        if partitioned:
            self.trainer.strategy.barrier("save_pretrained")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # second line of defence behind optimizer_step: never write a checkpoint with non-finite weights
        # (ZeRO-3 partitions are size-0 here and skipped; DDP/ZeRO-2 ranks hold the same values)
        from lit_unlearn.utils.finite import check_state_dict_finite

        check_state_dict_finite(checkpoint.get("state_dict") or {},
                                f"{type(self).__name__} (checkpoint at step {self.global_step})",
                                "The checkpoint is not written.")
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
