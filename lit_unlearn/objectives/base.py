"""``UnlearningModule``: the shared base of every unlearning objective.

A training batch is ``{"forget": batch, "retain": batch}`` (see :class:`UnlearningDataModule`). The loss is

    loss = gamma · forget_loss(batch["forget"]) + alpha · retain_term(batch["retain"])

with ``retain_loss`` one of ``none`` (no retain term), ``nll`` (token-mean NLL on retain answers) or ``kl``
(KL(p_ref ‖ p_θ) averaged over non-padding retain positions, live reference). A subclass implements only
:meth:`forget_loss`; it sets ``reference_use`` to say what it needs from the reference model:

* ``None`` — nothing (GA, SimNPO, WGA, SatImp ...);
* ``"logprobs"`` — reference log-probs of the forget answers (and refusal answers): cached in one pass
  before training (``reference="cached"``, default) or computed by a live frozen copy (``"live"``);
* ``"model"`` — the live frozen model itself (RMU hidden states).

Callbacks talk to the module through public members only: ``model``, ``forget_dataset``,
``set_forget_weights(weights)``, ``sample_logprobs(batch)``, ``forget_loss(batch)``.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor

from lit_unlearn.evaluation.config import EvalConfig
from lit_unlearn.functional import tokens
from lit_unlearn.objectives.lm import CausalLMModule
from lit_unlearn.objectives.reference import ReferenceLogprobCache

RETAIN_LOSSES = ("none", "nll", "kl")
REFERENCE_MODES = ("cached", "live")


def check_hyperparameter(name: str, value: float, minimum: float = 0.0, inclusive: bool = False) -> float:
    """Raise ``ValueError`` naming the allowed range unless ``value`` is a finite number > (>=) ``minimum``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value < minimum if inclusive else value <= minimum):
        allowed = f">= {minimum}" if inclusive else f"> {minimum}"
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}.")
    return float(value)


class UnlearningModule(CausalLMModule):
    """Base class of every objective.

    Args:
        gamma: weight of the forget loss.
        alpha: weight of the retain term.
        retain_loss: ``none``, ``nll`` or ``kl``.
        reference: ``cached`` (reference log-probs computed once before training) or ``live`` (a frozen copy
            of the initial model evaluated every step). Only used by objectives that need a reference.
        reference_batch_size: batch size of the one-off reference pass that fills the cache (default: the
            datamodule's ``batch_size``). The pass is split across ranks in fixed chunks of this size, so the
            cached values are bit-identical for every world size with the same value.
        gradient_rectification: GRU (see :mod:`lit_unlearn.objectives.rectification`): before every optimizer
            step, project the objective's gradient so that it does not increase the retain NLL to first order
            (needs retain batches; refused under DeepSpeed ZeRO-2/3).
        rectification_ema: EMA factor of GRU's retain gradient (0: the step's retain batch only).
        peft: train ``peft`` adapters (LoRA ...) instead of every weight (see :class:`CausalLMModule`). The
            reference (cached log-probs, ``live``, the ``kl`` retain term, RMU's frozen hidden states) is then
            the same model under ``peft``'s ``disable_adapter()``: no second model is built.
        gradient_checkpointing: recompute each decoder layer's activations in the backward pass instead of
            keeping them (transformers' non-reentrant activation checkpointing, see
            :mod:`lit_unlearn.models.checkpointing`): saved activations drop from every layer's to one layer's
            plus each layer's input hidden state, for one more forward pass of the layers. Same losses and
            gradients; full fine-tuning and adapters; the frozen reference is not touched. ``use_cache`` is
            off while training either way.
        (other arguments: see :class:`CausalLMModule`)

    Distributed: under DDP/DeepSpeed every rank computes its loss on its own micro-batch and gradients are
    averaged over ranks. The token-mean retain terms (``nll``, ``kl``) are normalised by the token count of
    the *global* batch (all ranks), so the update equals the single-process one with the same global batch.
    Under DeepSpeed ZeRO-3 the live reference is built partitioned like the model (not a deep copy), and it
    is never part of checkpoints (``state_dict`` drops it; DeepSpeed configs set
    ``exclude_frozen_parameters``).
    """

    #: what the objective needs from the reference model: None, "logprobs" or "model"
    reference_use: str | None = None
    #: the sub-batches whose reference log-probs are cached ("forget" and/or "idk")
    reference_keys: tuple[str, ...] = ("forget",)
    #: the accepted values of ``retain_loss`` (RMU adds its own "rmu" term)
    retain_losses: tuple[str, ...] = RETAIN_LOSSES

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        tokenizer: str | None = None,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: str = "none",
        reference: str = "cached",
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        dtype: str | None = None,
        save_dir: str | None = None,
        seed: int = 0,
        eval_config: EvalConfig | None = None,
        reference_batch_size: int | None = None,
        gradient_rectification: bool = False,
        rectification_ema: float = 0.0,
        peft: dict[str, Any] | str | None = None,
        gradient_checkpointing: bool = False,
    ):
        super().__init__(model_name_or_path, tokenizer, lr, weight_decay, warmup_steps, dtype, save_dir, seed,
                         eval_config=eval_config, peft=peft)
        from lit_unlearn.objectives.rectification import RetainGradient

        # GRU (objectives/rectification.py): project the objective's gradient against the retain NLL's
        self.gradient_rectification = bool(gradient_rectification)
        self.rectifier = RetainGradient(rectification_ema) if self.gradient_rectification else None
        if reference_batch_size is not None and reference_batch_size < 1:
            raise ValueError(f"reference_batch_size must be >= 1, got {reference_batch_size}.")
        self.reference_batch_size = reference_batch_size
        if not isinstance(gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be true or false, got {gradient_checkpointing!r}.")
        self.gradient_checkpointing = gradient_checkpointing
        self._saved_use_cache: bool | None = None
        self._saved_fill_uninitialized = False
        if retain_loss not in self.retain_losses:
            raise ValueError(f"retain_loss must be one of {self.retain_losses}, got {retain_loss!r}.")
        if reference not in REFERENCE_MODES:
            raise ValueError(f"reference must be one of {REFERENCE_MODES}, got {reference!r}.")
        if gamma < 0 or alpha < 0:
            raise ValueError(f"gamma and alpha must be >= 0, got gamma={gamma}, alpha={alpha}.")
        self.gamma = gamma
        self.alpha = alpha
        self.retain_loss = retain_loss
        self.reference = reference
        self.ref_model: torch.nn.Module | None = None
        self.ref_cache = ReferenceLogprobCache()

    # -- what subclasses implement --------------------------------------------------------------------
    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        """The objective on a forget batch (scalar, to be minimised)."""
        raise NotImplementedError

    # -- reference model ------------------------------------------------------------------------------
    @property
    def needs_live_reference(self) -> bool:
        return (
            self.retain_loss == "kl"
            or self.reference_use == "model"
            or (self.reference_use == "logprobs" and self.reference == "live")
        )

    @property
    def needs_cached_reference(self) -> bool:
        return self.reference_use == "logprobs" and self.reference == "cached"

    def configure_model(self) -> None:
        super().configure_model()
        if self.needs_live_reference and self.ref_model is None:
            if self.uses_adapters:
                from lit_unlearn.models.adapters import AdapterDisabledReference

                # the same model under peft's disable_adapter(): no second copy of the base weights
                self.ref_model = AdapterDisabledReference(self.model)
            elif self.zero3_config is not None:
                # a partitioned model cannot be deep-copied: build the initial model again, partitioned too
                self.ref_model = self.build_model().eval()
            else:
                self.ref_model = copy.deepcopy(self.model).eval()
            self.ref_model.requires_grad_(False)
        if self.gradient_checkpointing:  # after the reference copy: only the trained model is checkpointed
            from lit_unlearn.models.checkpointing import enable_gradient_checkpointing, is_gradient_checkpointing

            if not is_gradient_checkpointing(self.model):
                enable_gradient_checkpointing(self.model)

    def on_train_start(self) -> None:
        # no key/value cache while training: a training forward never reuses the cache transformers would build
        # and fill otherwise (restored at on_train_end, so saved configs keep the model's setting)
        config = getattr(self.model, "config", None)
        if config is not None and getattr(config, "use_cache", None) is not None:
            self._saved_use_cache, config.use_cache = config.use_cache, False
        # deterministic mode (`lit-unlearn fit` sets trainer.deterministic="warn") also fills every
        # uninitialised tensor torch allocates with NaN, a debugging aid (torch.utils.deterministic): one extra
        # write pass over most intermediate tensors of every step. Kernels overwrite that memory anyway, so no
        # value changes; the deterministic kernel choice stays on. Restored at on_train_end.
        import torch.utils.deterministic as deterministic

        if torch.are_deterministic_algorithms_enabled() and deterministic.fill_uninitialized_memory:
            self._saved_fill_uninitialized = True
            deterministic.fill_uninitialized_memory = False

    def on_train_end(self) -> None:
        config = getattr(self.model, "config", None)
        if config is not None and self._saved_use_cache is not None:
            config.use_cache, self._saved_use_cache = self._saved_use_cache, None
        if self._saved_fill_uninitialized:
            import torch.utils.deterministic as deterministic

            deterministic.fill_uninitialized_memory, self._saved_fill_uninitialized = True, False

    def setup(self, stage: str) -> None:
        from lit_unlearn.strategies import check_zero3_support

        check_zero3_support(self.trainer, self)
        if self.gradient_rectification:
            from lit_unlearn.objectives.rectification import check_rectification_support

            check_rectification_support(self.trainer)

    def on_fit_start(self) -> None:
        if self.needs_cached_reference and len(self.ref_cache) == 0:
            from lit_unlearn.models.adapters import adapters_disabled

            with adapters_disabled(self.model):  # with adapters, the reference is the base model
                self.fill_reference_cache()

    def fill_reference_cache(self) -> None:
        """One ``no_grad`` pass of the (initial) model over the whole forget set.

        The forget set is cut, in index order, into chunks of ``reference_batch_size``; rank r scores chunks
        r, r + W, ... and the results are all-gathered, so every rank ends with the whole cache and the values
        do not depend on the world size. Ranks with one chunk fewer run a throw-away forward pass, so that
        every rank runs the same number of forward passes (each is a collective under ZeRO-3).
        """
        import torch.distributed as dist

        datamodule = self.trainer.datamodule
        dataset = self.forget_dataset
        size = self.reference_batch_size or datamodule.batch_size
        chunks = [list(range(i, min(i + size, len(dataset)))) for i in range(0, len(dataset), size)]
        world, rank = self.trainer.world_size, self.trainer.global_rank
        was_training = self.model.training
        self.model.eval()
        for first in range(0, len(chunks), world):
            mine = first + rank < len(chunks)
            chunk = chunks[first + rank] if mine else chunks[0]
            batch = self.transfer_batch_to_device(datamodule.collate([dataset[i] for i in chunk]), self.device, 0)
            target = self.ref_cache if mine else ReferenceLogprobCache()  # the padding pass is discarded
            target.fill(self.sample_logprobs, [batch], self.reference_keys)
        self.model.train(was_training)
        if world > 1 and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * world
            dist.all_gather_object(states, self.ref_cache.state_dict())
            self.ref_cache.load_state_dict({k: v for state in states for k, v in state.items()})

    @torch.no_grad()
    def reference_logprobs(self, batch: dict[str, Any], mask: Tensor, key: str = "forget") -> Tensor:
        """Reference log-probs ``(B, T-1)`` of ``batch`` (the forget batch, or its ``"idk"`` sub-batch)."""
        if self.needs_cached_reference:
            return self.ref_cache.lookup(batch["index"], mask, key)
        if self.ref_model is None:
            raise RuntimeError(f"{type(self).__name__} has no reference model; was configure_model called?")
        logits = self.ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return tokens.token_logprobs(logits, batch["labels"])[0]

    def state_dict(self, *args, **kwargs):
        # the frozen reference is rebuilt from the initial weights, never saved with the trained model
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith("ref_model.")}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        missing_ok = {k for k in super().state_dict() if k.startswith("ref_model.")}
        result = super().load_state_dict(state_dict, strict=False, **kwargs)
        if strict:
            missing = [k for k in result.missing_keys if k not in missing_ok]
            if missing or result.unexpected_keys:
                raise RuntimeError(f"Missing keys {missing}, unexpected keys {result.unexpected_keys}.")
        return result

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if len(self.ref_cache):
            checkpoint["reference_cache"] = self.ref_cache.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "reference_cache" in checkpoint:
            self.ref_cache.load_state_dict(checkpoint["reference_cache"])

    # -- the protocol callbacks use -------------------------------------------------------------------
    @property
    def forget_dataset(self):
        return self.trainer.datamodule.forget_dataset

    def set_forget_weights(self, weights: Tensor) -> None:
        """Sampling weights of the forget samples (curriculum); applied from the next epoch."""
        self.trainer.datamodule.forget_sampler.set_weights(weights)

    # -- training -------------------------------------------------------------------------------------
    def retain_term(self, batch: dict[str, Any]) -> Tensor:
        from lit_unlearn.functional import losses

        if self.retain_loss == "nll":
            logp, mask = self.sample_logprobs(batch)
            return losses.nll(logp, mask) * self.global_token_scale(mask.sum())
        logits = self(batch["input_ids"], batch["attention_mask"])
        with torch.no_grad():
            ref_logits = self.ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        kl = losses.kl_retain(logits, ref_logits, batch["attention_mask"])
        return kl * self.global_token_scale(batch["attention_mask"].sum())

    def global_token_scale(self, count: Tensor) -> Tensor | float:
        """``W · n_rank / Σ_ranks n``: turns this rank's token mean into its share of the global token mean.

        Data-parallel training averages the ranks' losses, so ``mean_r(scale_r · mean_rank_r)`` is then
        ``Σ_all tokens / N_global``, the token mean a single process computes on the global batch (a plain
        per-rank token mean would weight every rank equally, whatever its token count). 1 on one process.
        """
        trainer = getattr(self, "_trainer", None)
        world = getattr(trainer, "world_size", 1) if trainer is not None else 1
        if world == 1:
            return 1.0
        local = count.detach().to(torch.float32).reshape(1)
        total = trainer.strategy.reduce(local.clone(), reduce_op="sum")
        return (world * local / total).squeeze(0)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        forget = batch["forget"]
        size = forget["input_ids"].shape[0]
        forget_loss = self.forget_loss(forget)
        loss = self.gamma * forget_loss
        self.log("train/forget_loss", forget_loss, prog_bar=True, batch_size=size, sync_dist=True)
        if self.retain_loss != "none" and self.alpha > 0:
            if "retain" not in batch:
                raise ValueError(f"retain_loss={self.retain_loss!r} needs retain batches; set data.retain_split.")
            retain_loss = self.retain_term(batch["retain"])
            loss = loss + self.alpha * retain_loss
            self.log("train/retain_loss", retain_loss, batch_size=size, sync_dist=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{type(self).__name__}: the loss became {loss.item()} at step {self.global_step}. Training stops"
                " here; checkpoints written before this step are kept. Lower lr or check beta/gamma."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        if self.rectifier is not None:
            self.rectifier.record(self, batch)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.rectifier is not None:  # GRU: rectify the (accumulated, all-reduced) gradient in place
            self.rectifier.apply(self.trainable_parameters())
