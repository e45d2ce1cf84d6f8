"""Representation Misdirection for Unlearning (Li et al., 2024, "The WMDP Benchmark").

Forget: push the hidden states of block L on forget inputs towards c·u, u a fixed random unit vector
(``losses.rmu_control_vector``, seeded, kept in the ``control_vector`` buffer so it is saved).
Retain (``retain_loss="rmu"``, default): keep block L's hidden states on retain inputs equal to those of
the frozen initial model. Only the MLP down-projections of blocks L−2..L are trained.

Blocks are found from the module tree (the ``nn.ModuleList`` of same-class children holding the most
parameters), the down-projection as the block MLP's ``down_proj`` or else its last 2-D weight module.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lit_unlearn.functional import losses
from lit_unlearn.objectives.base import RETAIN_LOSSES, UnlearningModule, check_hyperparameter


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, blocks)``: the ``nn.ModuleList`` of same-class children with the most parameters."""
    best, best_size = None, -1
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, module), size
    if best is None:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of transformer blocks.")
    return best


def mlp_down_projection(block: nn.Module) -> nn.Module:
    """The block MLP's output projection: ``mlp.down_proj`` (Llama, Mistral, Qwen ...) or the MLP's last
    submodule with a 2-D weight (``c_proj`` in GPT-2, ``dense_4h_to_h`` in GPT-NeoX ...)."""
    mlp = next((getattr(block, n) for n in ("mlp", "feed_forward", "ffn") if hasattr(block, n)), None)
    if mlp is None:
        raise ValueError(f"Cannot find the MLP of block {type(block).__name__} (no mlp/feed_forward/ffn).")
    if isinstance(getattr(mlp, "down_proj", None), nn.Module):
        return mlp.down_proj
    candidates = [m for m in mlp.modules() if isinstance(getattr(m, "weight", None), Tensor) and m.weight.dim() == 2]
    if not candidates:
        raise ValueError(f"The MLP {type(mlp).__name__} has no projection with a 2-D weight.")
    return candidates[-1]


class RMU(UnlearningModule):
    """RMU on block ``layer`` (default: the middle block, ``num_blocks // 2``).

    Args:
        layer: the block whose output is steered; must lie in ``[0, num_blocks - 1]`` (checked once the
            model is built). The references use block 7 of 32.
        steering_coeff: c > 0, the norm of the target c·u (default 20 as in the WMDP paper's code;
            open-unlearning's WMDP config uses 2).
        gamma: forget weight (default 1).
        alpha: retain weight (default 100 as in the WMDP code; open-unlearning uses 1).
        retain_loss: ``rmu`` (default: hidden-state MSE to the frozen model), ``none``, ``nll`` or ``kl``.
        answer_tokens_only: average both hidden-state MSE terms over the answer positions only
            (``labels != -100``, as open-unlearning's RMU does) instead of every non-padding position,
            prompt included (default ``False``, the WMDP code's behaviour on plain text).
        **kwargs: passed to :class:`UnlearningModule`; ``seed`` also seeds the control vector.
    """

    reference_use = "model"
    retain_losses = ("rmu",) + RETAIN_LOSSES

    def __init__(self, model_name_or_path: str = "builtin:tiny-llama", *, layer: int | None = None,
                 steering_coeff: float = 20.0, gamma: float = 1.0, alpha: float = 100.0, retain_loss: str = "rmu",
                 answer_tokens_only: bool = False, **kwargs: Any):
        super().__init__(model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, **kwargs)
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
            raise ValueError(f"layer must be None (the middle block) or an integer >= 0, got {layer!r}.")
        self.layer = layer
        self.steering_coeff = check_hyperparameter("steering_coeff", steering_coeff)
        if not isinstance(answer_tokens_only, bool):
            raise ValueError(f"answer_tokens_only must be True or False, got {answer_tokens_only!r}.")
        self.answer_tokens_only = answer_tokens_only
        self._blocks_name: str | None = None

    def configure_model(self) -> None:
        super().configure_model()
        self._blocks_name, blocks = find_blocks(self.model)
        n = len(blocks)
        if self.layer is None:
            self.layer = n // 2
        if not 0 <= self.layer < n:
            raise ValueError(f"layer must be in [0, {n - 1}] (the model has {n} blocks), got {self.layer}.")
        self.model.requires_grad_(False)
        for i in self.trainable_blocks:
            self.set_trainable(mlp_down_projection(blocks[i]))  # with model.peft: its adapter weights only
        if getattr(self, "control_vector", None) is None:
            config = getattr(self.model, "config", None)
            hidden = getattr(config, "hidden_size", None) or self.model.get_input_embeddings().embedding_dim
            vector = losses.rmu_control_vector(int(hidden), self.steering_coeff, self.seed)
            self.register_buffer("control_vector", vector)  # (D,), persistent: saved in checkpoints

    @property
    def trainable_blocks(self) -> range:
        """Blocks L−2..L (clipped at 0) whose MLP down-projections are trained."""
        return range(max(0, self.layer - 2), self.layer + 1)

    def hidden_states(self, model: nn.Module, batch: dict[str, Any]) -> Tensor:
        """Output ``(B, T, D)`` of block ``layer`` of ``model`` (the trained model or the frozen reference)."""
        captured: list[Tensor] = []

        def hook(module, args, output):
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)

        handle = model.get_submodule(self._blocks_name)[self.layer].register_forward_hook(hook)
        try:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        finally:
            handle.remove()
        return captured[0]

    def loss_mask(self, batch: dict[str, Any]) -> Tensor:
        """``(B, T)`` positions the RMU terms average over: non-padding, or answer tokens only
        (``labels != -100`` and not padding) with ``answer_tokens_only``."""
        mask = batch["attention_mask"].bool()
        if not self.answer_tokens_only:
            return mask
        if "labels" not in batch:
            raise ValueError("RMU(answer_tokens_only=True) needs `labels` in the batch (-100 on prompt and"
                             " padding); this batch has only " + ", ".join(sorted(batch)) + ".")
        return mask & (batch["labels"] != -100)

    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        hidden = self.hidden_states(self.model, batch)
        return losses.rmu(hidden, self.control_vector.to(hidden.device), self.loss_mask(batch))

    def retain_term(self, batch: dict[str, Any]) -> Tensor:
        if self.retain_loss != "rmu":
            return super().retain_term(batch)
        hidden = self.hidden_states(self.model, batch)
        with torch.no_grad():
            ref_hidden = self.hidden_states(self.ref_model, batch)
        return losses.rmu(hidden, ref_hidden, self.loss_mask(batch))
