"""``ForgettingEarlyStopping``: stop unlearning once the forget samples are forgotten (MRD paper, App. E.4).

"A sample is considered successfully forgotten when its Extraction Likelihood (EL) value and Memorization
Accuracy (MA) value on the current model decrease below the average EL and MA values of all samples on the
initial model." The math is :func:`lit_unlearn.functional.metrics.memorization_accuracy`,
:func:`~lit_unlearn.functional.metrics.extraction_likelihood` and
:func:`lit_unlearn.functional.generation.batch_prefix_continuations`; this module only organises it.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lit_unlearn.callbacks.mrd_curriculum import forget_scoring_dataloader
from lit_unlearn.functional.generation import batch_prefix_continuations
from lit_unlearn.functional.metrics import extraction_likelihood, memorization_accuracy, ngram_overlap
from lit_unlearn.utils.modes import eval_mode


def sample_extraction_likelihood(continuations: Sequence[Sequence[int]], target: Sequence[int], n: int) -> float:
    """EL_n of one sample, with n clamped to the answer: n_i = min(n, N_i − 1) for N_i answer tokens.

    :func:`extraction_likelihood` needs N > n (at least one prefix with an n-gram left to extract). The
    builtin answers are short (6–17 tokens with the builtin tokenizer, final EOS excluded), so a fixed
    n = 10 would reject most of them; with the clamp every answer of ≥ 2 tokens gets an EL. A one-token
    answer gets OVERLAP_1 of the greedy continuation from the prompt (1 if it is the answer token, else 0).
    """
    num = len(target)
    if num == 1:
        return ngram_overlap(list(continuations[0][:1]), list(target), 1)
    return extraction_likelihood(continuations, target, min(n, num - 1))




def _gather(indices: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """Concatenate every rank's (index, values...) rows (no-op without an initialised process group)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return (indices, *values)
    rows = [indices.tolist(), *[v.tolist() for v in values]]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, rows)
    return tuple(
        torch.tensor([x for g in gathered for x in g[i]], dtype=torch.long if i == 0 else torch.float64)
        for i in range(len(rows))
    )


@torch.no_grad()
def memorization_and_extraction(
    model: nn.Module,
    dataloader: torch.utils.data.DataLoader,
    el_n: int = 3,
    generation_batch_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Per-sample MA and EL_n of ``dataloader.dataset``: two ``(len(dataset),)`` float64 tensors, by ``index``.

    MA: teacher-forced argmax accuracy on the answer tokens (final EOS excluded). EL_n: greedy continuations
    from every answer prefix (:func:`batch_prefix_continuations`, KV cache, left padding), n clamped per
    sample (:func:`sample_extraction_likelihood`). Batches need ``input_ids``, ``attention_mask``, ``labels``
    and ``index``. The model runs in eval mode (its training flags are restored). Under
    ``torch.distributed`` each rank passes its shard and every rank returns the full gathered vectors.
    """
    device = next(model.parameters()).device
    indices, mas, els = [], [], []
    with eval_mode(model):
        for batch in dataloader:
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            if "index" not in batch:
                raise ValueError(f"each batch needs an 'index' field (dataset rows); got keys {sorted(batch)}")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            mas.append(memorization_accuracy(logits.float(), batch["labels"]).double().cpu())  # (B,)
            continuations, targets = batch_prefix_continuations(model, batch, batch_size=generation_batch_size)
            els.append(torch.tensor([sample_extraction_likelihood(c, t, el_n) for c, t in zip(continuations, targets)],
                                    dtype=torch.float64))
            indices.append(batch["index"].long().cpu())
    if not indices:
        indices, mas, els = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.float64)], \
            [torch.zeros(0, dtype=torch.float64)]
    index, ma, el = _gather(torch.cat(indices), torch.cat(mas), torch.cat(els))
    size = len(dataloader.dataset)
    if index.numel() and (index.min() < 0 or index.max() >= size):
        raise ValueError(f"batch 'index' values must lie in [0, {size})")
    # keep the first listed value of a repeated index (a DistributedSampler pads with repeats)
    order = torch.argsort(index, stable=True)
    index, ma, el = index[order], ma[order], el[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    out_ma = torch.full((size,), float("nan"), dtype=torch.float64)
    out_el = torch.full((size,), float("nan"), dtype=torch.float64)
    out_ma[index[first]], out_el[index[first]] = ma[first], el[first]
    missing = torch.nonzero(torch.isnan(out_ma)).flatten()
    if missing.numel():
        raise ValueError(f"the dataloader covered {size - missing.numel()} of {size} samples (missing "
                         f"{missing[:10].tolist()}...); use an in-order sampler that visits every sample")
    return out_ma, out_el


class ForgettingEarlyStopping(Callback):
    """Stop training once a fraction of the forget samples is forgotten (MRD paper, App. E.4).

    At fit start (``on_train_start``, initial weights) the per-sample memorization accuracy MA_i and
    extraction likelihood EL_i of the forget set are computed; their means are the thresholds
    τ_MA = mean_i MA_i(θ_0) and τ_EL = mean_i EL_i(θ_0). Every ``check_every_n_epochs`` epochs
    (``on_train_epoch_end``) both are recomputed on the current weights: sample i is *forgotten* when
    MA_i(θ) < τ_MA **and** EL_i(θ) < τ_EL (strict), and training stops (``trainer.should_stop = True``;
    ``min_epochs`` is respected by Lightning) once the forgotten fraction reaches ``fraction``. Note that by
    this definition some samples (those below both means) already count as forgotten on the initial model;
    ``initial_fraction`` records how many.

    Protocol (works with ANY LightningModule that follows it), as for :class:`MRDCurriculum`: the causal LM
    is ``pl_module.model``; the forget set is scored through
    ``trainer.datamodule.forget_scoring_dataloader(batch_size)``, or else a loader built from
    ``pl_module.forget_dataset`` / ``trainer.datamodule.forget_dataset`` and ``trainer.datamodule.collate``;
    batches hold ``input_ids``, ``attention_mask``, ``labels`` (−100 off the answer) and ``index``.

    EL's n: ``el_n=3`` by default, clamped per sample to N_i − 1 (see :func:`sample_extraction_likelihood`):
    the builtin answers have 6–17 tokens, too short for the n = 10 often used with EL on long documents.

    Distributed: each rank scores its shard of the forget set (in order, sharded like MRD scoring) and the
    per-sample values are all-gathered, so every rank takes the same decision. Generation under DeepSpeed
    ZeRO-3 needs every rank to run the same forward passes, which per-shard generation does not: not supported.

    Logged at each check: ``forget/forgotten_fraction``, ``forget/ma_mean``, ``forget/el_mean``.
    Checkpoints hold the thresholds, the initial per-sample values and the check history, so a resumed run
    keeps the thresholds of the *original* initial model.

    Args:
        fraction: stop when at least this fraction of forget samples is forgotten, in (0, 1].
        check_every_n_epochs: check at the end of epochs k−1, 2k−1, ... (every k epochs).
        el_n: n of EL_n (clamped per sample, see above).
        batch_size: scoring batch size (default: the datamodule's).
        generation_batch_size: answer prefixes generated together per sample.
        verbose: print a line at each check (rank 0).
    """

    def __init__(
        self,
        fraction: float = 1.0,
        check_every_n_epochs: int = 1,
        el_n: int = 3,
        batch_size: int | None = None,
        generation_batch_size: int = 64,
        verbose: bool = False,
    ) -> None:
        if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        for name, value in (("check_every_n_epochs", check_every_n_epochs), ("el_n", el_n),
                            ("generation_batch_size", generation_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self.fraction = float(fraction)
        self.check_every_n_epochs = check_every_n_epochs
        self.el_n = el_n
        self.batch_size = batch_size
        self.generation_batch_size = generation_batch_size
        self.verbose = verbose
        # state (saved in checkpoints)
        self.ma_threshold: float | None = None
        self.el_threshold: float | None = None
        self.initial_ma: Tensor | None = None
        self.initial_el: Tensor | None = None
        self.initial_fraction: float | None = None
        self.history: list[dict[str, Any]] = []
        self.stopped_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(fraction=self.fraction, el_n=self.el_n)

    # ------------------------------------------------------------------------------------------
    # Lightning hooks

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # not in setup(): Lightning calls configure_model (which builds the model) after the setup hooks
        if not isinstance(getattr(pl_module, "model", None), nn.Module):
            raise ValueError(
                f"ForgettingEarlyStopping needs the causal LM at `{type(pl_module).__name__}.model` (an "
                "nn.Module); see the ForgettingEarlyStopping docstring for the protocol"
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if any(hasattr(p, "ds_id") for p in pl_module.model.parameters()):
            raise NotImplementedError("ForgettingEarlyStopping does not support DeepSpeed ZeRO-3 partitioned "
                                      "parameters (per-shard generation); use DDP or ZeRO-1/2")
        if self.ma_threshold is not None:  # resumed: keep the original initial model's thresholds
            return
        ma, el = self.measure(trainer, pl_module)
        self.initial_ma, self.initial_el = ma, el
        self.ma_threshold, self.el_threshold = ma.mean().item(), el.mean().item()
        self.initial_fraction = self.forgotten(ma, el).double().mean().item()
        if self.verbose:
            rank_zero_info(f"ForgettingEarlyStopping: thresholds MA < {self.ma_threshold:.4f}, EL < "
                           f"{self.el_threshold:.4f}; forgotten on the initial model: {self.initial_fraction:.3f}")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.check_every_n_epochs or self.ma_threshold is None:
            return
        ma, el = self.measure(trainer, pl_module)
        forgotten_fraction = self.forgotten(ma, el).double().mean().item()
        self.history.append({"epoch": epoch, "step": trainer.global_step, "forgotten_fraction": forgotten_fraction,
                             "ma_mean": ma.mean().item(), "el_mean": el.mean().item()})
        pl_module.log_dict(
            {"forget/forgotten_fraction": forgotten_fraction, "forget/ma_mean": ma.mean().item(),
             "forget/el_mean": el.mean().item()},
            on_step=False, on_epoch=True, batch_size=1, sync_dist=False,
        )
        should_stop = trainer.strategy.reduce_boolean_decision(forgotten_fraction >= self.fraction, all=False)
        if self.verbose:
            rank_zero_info(f"ForgettingEarlyStopping: epoch {epoch}: forgotten fraction {forgotten_fraction:.3f} "
                           f"(stop at {self.fraction:.3f})")
        if should_stop:
            trainer.should_stop = True
            self.stopped_epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return {
            "ma_threshold": self.ma_threshold,
            "el_threshold": self.el_threshold,
            "initial_ma": self.initial_ma,
            "initial_el": self.initial_el,
            "initial_fraction": self.initial_fraction,
            "history": self.history,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.ma_threshold = state_dict.get("ma_threshold")
        self.el_threshold = state_dict.get("el_threshold")
        self.initial_ma = state_dict.get("initial_ma")
        self.initial_el = state_dict.get("initial_el")
        self.initial_fraction = state_dict.get("initial_fraction")
        self.history = list(state_dict.get("history", []))
        self.stopped_epoch = state_dict.get("stopped_epoch")

    # ------------------------------------------------------------------------------------------

    def forgotten(self, ma: Tensor, el: Tensor) -> Tensor:
        """Boolean ``(N,)``: MA_i < τ_MA and EL_i < τ_EL."""
        return (ma < self.ma_threshold) & (el < self.el_threshold)

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> tuple[Tensor, Tensor]:
        """Per-sample (MA, EL) of the forget set on the current weights (every rank gets all of them)."""
        loader = forget_scoring_dataloader(trainer, pl_module, self.batch_size, who="ForgettingEarlyStopping")
        with trainer.precision_plugin.forward_context():
            return memorization_and_extraction(pl_module.model, loader, self.el_n, self.generation_batch_size)
