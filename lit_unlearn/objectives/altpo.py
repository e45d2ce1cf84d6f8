"""Alternate Preference Optimization (AltPO; Mekala, Dorna, Dubey, Lalwani, Koleczek, Rungta, Hasan, Lobo,
2024, "Alternate Preference Optimization for Unlearning Factual Knowledge in Large Language Models").

Before training, the model itself answers every forget question once more (batched ``generate`` with the KV
cache): that *alternate* answer ỹ is in-domain but not the memorised one. Training then prefers ỹ over the forget
answer y with DPO and adds the NLL of ỹ (``losses.altpo``), plus the usual retain term.

The alternates are generated once, kept in ``alternates`` (sample index → answer token ids), saved in checkpoints
and restored on resume (no second generation); their reference log-probs are cached next to the forget answers'
(key ``"alt"``) or computed by the live reference.

Choices where the paper leaves room: the paper prompts a large model to invent alternates (several per question);
here the model answers the plain forget question, one alternate per question, by sampling (``decoding=
"sample"``, temperature 1, seeded: greedy decoding of a model that memorised y would mostly return y itself;
``"greedy"`` is available), at most ``max_new_tokens`` tokens.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_unlearn.data.tokenize import PadCollator
from lit_unlearn.functional import losses
from lit_unlearn.functional.generation import check_generation_ids, greedy_generate, left_padded
from lit_unlearn.functional.tokens import IGNORE_INDEX
from lit_unlearn.objectives.base import UnlearningModule, check_hyperparameter

DECODINGS = ("sample", "greedy")


@torch.no_grad()
def sample_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, seed: int,
                    temperature: float = 1.0, eos_token_id: int | None = None,
                    pad_token_id: int | None = None) -> list[list[int]]:
    """Sampled continuations of a batch of token-id prompts (left padded, one ``generate`` call, KV cache).

    Pure ancestral sampling at ``temperature`` (no top-k/top-p), reproducible: the draw runs under a forked RNG
    seeded with ``seed``. Each continuation stops at the first EOS, which is not included.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("sample_generate: every prompt needs at least one token")
    eos_token_id, pad_token_id = check_generation_ids(model, eos_token_id, pad_token_id, "AltPO sample_generate")
    device = next(model.parameters()).device
    input_ids, attention_mask = left_padded(prompts, pad_token_id)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0,
                                top_p=1.0, num_beams=1, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    out = []
    for row in output[:, input_ids.shape[1]:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id)]
        out.append(row)
    return out


def prompt_of(sample: dict[str, Any]) -> list[int]:
    """The prompt ids of an encoded QA sample: every token before the first labelled one."""
    labels = sample["labels"]
    first = next((i for i, v in enumerate(labels) if v != IGNORE_INDEX), None)
    if first is None or first == 0:
        raise ValueError(f"forget sample {sample.get('index')} has no prompt before its answer; AltPO needs QA data.")
    return list(sample["input_ids"][:first])


class AltPO(UnlearningModule):
    """AltPO: ``losses.altpo`` with self-generated alternate answers.

    Args:
        beta: DPO inverse temperature β > 0 (default 0.1).
        alt_weight: weight w >= 0 of the alternate answers' NLL (default 1).
        decoding: ``sample`` (default) or ``greedy``.
        temperature: sampling temperature > 0 (default 1).
        max_new_tokens: length limit of an alternate answer (default 32).
        generation_batch_size: prompts per ``generate`` call (default: the datamodule's ``batch_size``).
        gamma, alpha, retain_loss: forget weight, retain weight, retain term (default ``nll``).
        reference: ``cached`` (default; forget and alternate answers scored once before training) or ``live``.
        **kwargs: passed to :class:`UnlearningModule`; ``seed`` also seeds the sampling.
    """

    reference_use = "logprobs"

    def __init__(
        self,
        model_name_or_path: str = "builtin:tiny-llama",
        *,
        beta: float = 0.1,
        alt_weight: float = 1.0,
        decoding: str = "sample",
        temperature: float = 1.0,
        max_new_tokens: int = 32,
        generation_batch_size: int | None = None,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: str = "nll",
        reference: str = "cached",
        **kwargs: Any,
    ):
        super().__init__(
            model_name_or_path, gamma=gamma, alpha=alpha, retain_loss=retain_loss, reference=reference, **kwargs
        )
        self.beta = check_hyperparameter("beta", beta)
        self.alt_weight = check_hyperparameter("alt_weight", alt_weight, inclusive=True)
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}.")
        self.decoding = decoding
        self.temperature = check_hyperparameter("temperature", temperature)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}.")
        self.max_new_tokens = max_new_tokens
        if generation_batch_size is not None and generation_batch_size < 1:
            raise ValueError(f"generation_batch_size must be >= 1, got {generation_batch_size}.")
        self.generation_batch_size = generation_batch_size
        self.alternates: dict[int, list[int]] = {}  # forget sample index -> alternate answer ids (no EOS)

    # -- alternates -----------------------------------------------------------------------------------
    def generate_alternates(self) -> None:
        """Generate one alternate answer per forget question (every rank the same chunks; rank 0's are kept)."""
        import torch.distributed as dist

        dataset = self.forget_dataset
        tokenizer = self.load_tokenizer()
        size = self.generation_batch_size or self.trainer.datamodule.batch_size
        was_training = self.model.training
        self.model.eval()
        alternates: dict[int, list[int]] = {}
        for chunk, start in enumerate(range(0, len(dataset), size)):
            indices = list(range(start, min(start + size, len(dataset))))
            prompts = [prompt_of(dataset[i]) for i in indices]
            if self.decoding == "greedy":
                outs = greedy_generate(self.model, prompts, self.max_new_tokens, tokenizer.eos_token_id,
                                       tokenizer.pad_token_id)
            else:
                outs = sample_generate(self.model, prompts, self.max_new_tokens, seed=self.seed * 100003 + chunk,
                                       temperature=self.temperature, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id)
            alternates.update({int(dataset[i]["index"]): out for i, out in zip(indices, outs)})
        self.model.train(was_training)
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            box = [alternates]
            dist.broadcast_object_list(box, src=0)
            alternates = box[0]
        self.alternates = alternates

    def alternate_batch(self, indices: Sequence[int], device: torch.device) -> dict[str, Any]:
        """The (question, alternate answer) batch of forget samples ``indices`` on ``device``, with ``index``."""
        tokenizer = self.load_tokenizer()
        max_length = getattr(self.trainer.datamodule, "max_length", None)
        rows = []
        for i in indices:
            if i not in self.alternates:
                raise KeyError(f"AltPO has no alternate answer for forget sample {i}; were they generated?")
            answer = self.alternates[i] + [tokenizer.eos_token_id]
            prompt = prompt_of(self.forget_dataset[i])
            ids, labels = prompt + answer, [IGNORE_INDEX] * len(prompt) + answer
            if max_length:
                ids, labels = ids[:max_length], labels[:max_length]
            rows.append({"input_ids": ids, "labels": labels, "index": i})
        return {k: v.to(device) for k, v in PadCollator(tokenizer.pad_token_id)(rows).items()}

    # -- reference ------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if not self.alternates:  # restored from the checkpoint on resume
            self.generate_alternates()
        super().on_fit_start()

    def fill_reference_cache(self) -> None:
        super().fill_reference_cache()  # the forget answers, split across ranks
        # the alternates: every rank scores all of them (same values on every rank and world size)
        size = self.reference_batch_size or self.trainer.datamodule.batch_size
        indices = sorted(self.alternates)
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(indices), size):
            alt = self.alternate_batch(indices[start:start + size], self.device)
            self.ref_cache.fill(self.sample_logprobs, [{"index": alt["index"], "alt": alt}], ("alt",))
        self.model.train(was_training)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["altpo_alternates"] = {str(i): torch.tensor(ids, dtype=torch.long)
                                          for i, ids in self.alternates.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "altpo_alternates" in checkpoint:
            self.alternates = {int(i): ids.tolist() for i, ids in checkpoint["altpo_alternates"].items()}

    # -- loss -----------------------------------------------------------------------------------------
    def forget_loss(self, batch: dict[str, Any]) -> Tensor:
        alt = self.alternate_batch(batch["index"].tolist(), batch["input_ids"].device)
        logp_alt, mask_alt = self.sample_logprobs(alt)  # (B, T_alt-1)
        logp, mask = self.sample_logprobs(batch)  # (B, T-1)
        ref_alt = self.reference_logprobs(alt, mask_alt, "alt")
        ref = self.reference_logprobs(batch, mask, "forget")
        return losses.altpo(logp_alt, ref_alt, mask_alt, logp, ref, mask, beta=self.beta, alt_weight=self.alt_weight)
