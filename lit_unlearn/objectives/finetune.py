"""Plain next-token NLL on answer tokens: builds the target model (all authors) and the retain model."""
from __future__ import annotations

import torch

from lit_unlearn.functional.tokens import nll_mean
from lit_unlearn.objectives.lm import CausalLMModule


class FinetuneModule(CausalLMModule):
    """Minimise NLL_mean (token mean over answer tokens, the Hugging Face convention) on one dataset.

    ``lit-unlearn validate`` runs the TOFU evaluation suite inherited from :class:`CausalLMModule`.
    """

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logp, mask = self.sample_logprobs(batch)
        loss = nll_mean(logp, mask)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Finetuning loss is {loss.item()} at step {self.global_step}; stopping.")
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
