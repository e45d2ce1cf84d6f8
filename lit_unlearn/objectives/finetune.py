"""Plain next-token NLL on the labelled tokens: builds the target model (all authors) and the retain model.

Batches are QA samples (answer tokens labelled, ``TOFUDataModule``), plain-text chunks (every token labelled,
``CorpusDataModule``) or the nested ``{"forget": ..., "retain": ...}`` batches of ``TextDataModule``, whose
parts are pooled into one token mean.
"""
from __future__ import annotations

import torch

from lit_unlearn.functional.tokens import nll_mean
from lit_unlearn.objectives.lm import CausalLMModule


class FinetuneModule(CausalLMModule):
    """Minimise NLL_mean (token mean over the labelled tokens, the Hugging Face convention) on one dataset.

    ``NLL_mean = −Σ_b Σ_t m_bt log p(x_b,t+1 | x_b,≤t) / Σ_b Σ_t m_bt`` (m: the label mask: answer tokens of
    QA samples, every token of a plain-text chunk). A nested batch (``{"forget": sub, "retain": sub}`` of
    ``TextDataModule``) pools the tokens of every part into the same mean. Naive equivalent:
    ``F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)``.

    ``lit-unlearn validate`` runs the TOFU evaluation suite inherited from :class:`CausalLMModule`.
    """

    def text_parts(self, batch: dict) -> list[dict[str, torch.Tensor]]:
        """The token batches of ``batch``: itself, or the sub-batches of a nested batch."""
        if "input_ids" in batch:
            return [batch]
        parts = [v for v in batch.values() if isinstance(v, dict) and "input_ids" in v]
        if not parts:
            raise ValueError(f"FinetuneModule: a batch needs input_ids/attention_mask/labels (or sub-batches"
                             f" with them, as TextDataModule's); got keys {sorted(batch)}.")
        return parts

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        parts = self.text_parts(batch)
        if len(parts) == 1:
            logp, mask = self.sample_logprobs(parts[0])
            loss = nll_mean(logp, mask)
        else:  # one token mean over every part (their lengths differ: sum and count separately)
            pairs = [self.sample_logprobs(p) for p in parts]
            total = sum(-(logp * mask).sum() for logp, mask in pairs)
            loss = total / sum(mask.sum() for _, mask in pairs).clamp_min(1)
        batch = parts[0]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Finetuning loss is {loss.item()} at step {self.global_step}; stopping.")
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
