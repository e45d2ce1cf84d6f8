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
from lit_unlearn.functional.generation import batch_prefix_continuations, check_generation_ids
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
    extraction: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-sample MA and EL_n of ``dataloader.dataset``: two ``(len(dataset),)`` float64 tensors, by ``index``.

    MA: teacher-forced argmax accuracy on the answer tokens (final EOS excluded). EL_n: greedy continuations
    from every answer prefix (:func:`batch_prefix_continuations`, KV cache, left padding), n clamped per
    sample (:func:`sample_extraction_likelihood`). Batches need ``input_ids``, ``attention_mask``, ``labels``
    and ``index``. The model runs in eval mode (its training flags are restored). Under
    ``torch.distributed`` each rank passes its shard and every rank returns the full gathered vectors.
    ``extraction=False`` skips the generations: EL is then NaN for every sample (MA alone is one forward).
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
            if extraction:
                continuations, targets = batch_prefix_continuations(model, batch, batch_size=generation_batch_size)
                els.append(torch.tensor([sample_extraction_likelihood(c, t, el_n)
                                         for c, t in zip(continuations, targets)], dtype=torch.float64))
            else:
                els.append(torch.full((len(batch["index"]),), float("nan"), dtype=torch.float64))
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
    covered = torch.zeros(size, dtype=torch.bool)
    covered[index[first]] = True
    missing = torch.nonzero(~covered).flatten()
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

    **Matched forgetting** (``criterion="mean_ma"``): stop once the forget set's *mean* MA has fallen to
    ``ma_threshold`` (MA only, no generation). With the retain model's mean forget-set MA as the threshold
    this runs an objective until it has forgotten as much as a model that never saw the data, the point at
    which methods are compared (``lit-unlearn demo``'s second protocol). ``ma_threshold`` / ``el_threshold``
    given explicitly replace the initial model's means (for either criterion), and
    ``check_every_n_steps`` checks after every k optimizer steps instead of at epoch ends.

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
        criterion: str = "samples",
        ma_threshold: float | None = None,
        el_threshold: float | None = None,
        check_every_n_steps: int | None = None,
    ) -> None:
        if criterion not in ("samples", "mean_ma"):
            raise ValueError(f"criterion must be 'samples' (App. E.4: a fraction of samples below both "
                             f"thresholds) or 'mean_ma' (the mean MA below ma_threshold), got {criterion!r}")
        if criterion == "mean_ma" and ma_threshold is None:
            raise ValueError("criterion='mean_ma' needs ma_threshold (e.g. the retain model's mean forget-set MA)")
        if criterion == "samples" and (ma_threshold is None) != (el_threshold is None):
            raise ValueError("criterion='samples' needs both ma_threshold and el_threshold, or neither "
                             "(then the initial model's means are used)")
        if check_every_n_steps is not None and (not isinstance(check_every_n_steps, int)
                                                or isinstance(check_every_n_steps, bool) or check_every_n_steps < 1):
            raise ValueError(f"check_every_n_steps must be a positive integer or None, got {check_every_n_steps!r}")
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
        self.criterion = criterion
        self.check_every_n_steps = check_every_n_steps
        # state (saved in checkpoints)
        self.ma_threshold: float | None = None if ma_threshold is None else float(ma_threshold)
        self.el_threshold: float | None = None if el_threshold is None else float(el_threshold)
        self._given_thresholds = ma_threshold is not None
        self.initial_ma: Tensor | None = None
        self.initial_el: Tensor | None = None
        self.initial_fraction: float | None = None
        self.history: list[dict[str, Any]] = []
        self.stopped_epoch: int | None = None
        self.stopped_step: int | None = None

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
        if self.criterion == "samples":  # EL generates: out-of-vocabulary eos/pad ids fail here, not in generate
            check_generation_ids(pl_module.model, who="ForgettingEarlyStopping")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if any(hasattr(p, "ds_id") for p in pl_module.model.parameters()):
            raise NotImplementedError("ForgettingEarlyStopping does not support DeepSpeed ZeRO-3 partitioned "
                                      "parameters (per-shard generation); use DDP or ZeRO-1/2")
        if self.initial_ma is not None:  # resumed: keep the original initial model's thresholds
            return
        ma, el = self.measure(trainer, pl_module)
        self.initial_ma, self.initial_el = ma, el
        if not self._given_thresholds:
            self.ma_threshold, self.el_threshold = ma.mean().item(), el.mean().item()
        self.initial_fraction = self.forgotten(ma, el).double().mean().item()
        if self.verbose:
            rank_zero_info(f"ForgettingEarlyStopping: thresholds MA < {self.ma_threshold:.4f}, EL < "
                           f"{self.el_threshold:.4f}; forgotten on the initial model: {self.initial_fraction:.3f}")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.check_every_n_steps is not None or (trainer.current_epoch + 1) % self.check_every_n_epochs:
            return
        self.check(trainer, pl_module, on_step=False)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.check_every_n_steps is None or step == 0 or step % self.check_every_n_steps or trainer.should_stop:
            return
        if self.history and self.history[-1]["step"] == step:  # gradient accumulation: one check per step
            return
        self.check(trainer, pl_module, on_step=True)

    def check(self, trainer: Trainer, pl_module: LightningModule, on_step: bool) -> bool:
        """Measure the forget set now, log it, and set ``trainer.should_stop`` when the criterion holds."""
        if self.ma_threshold is None:
            return False
        epoch = trainer.current_epoch
        ma, el = self.measure(trainer, pl_module)
        forgotten_fraction = self.forgotten(ma, el).double().mean().item()
        ma_mean = ma.mean().item()
        el_mean = el.mean().item() if self.criterion == "samples" else None
        self.history.append({"epoch": epoch, "step": trainer.global_step, "forgotten_fraction": forgotten_fraction,
                             "ma_mean": ma_mean, "el_mean": el_mean})
        logged = {"forget/forgotten_fraction": forgotten_fraction, "forget/ma_mean": ma_mean}
        if el_mean is not None:
            logged["forget/el_mean"] = el_mean
        pl_module.log_dict(logged, on_step=on_step, on_epoch=not on_step, batch_size=1, sync_dist=False)
        done = ma_mean <= self.ma_threshold if self.criterion == "mean_ma" else forgotten_fraction >= self.fraction
        should_stop = trainer.strategy.reduce_boolean_decision(bool(done), all=False)
        if self.verbose:
            what = (f"mean MA {ma_mean:.3f} (stop at <= {self.ma_threshold:.3f})" if self.criterion == "mean_ma"
                    else f"forgotten fraction {forgotten_fraction:.3f} (stop at {self.fraction:.3f})")
            rank_zero_info(f"ForgettingEarlyStopping: epoch {epoch}, step {trainer.global_step}: {what}")
        if should_stop:
            trainer.should_stop = True
            self.stopped_epoch = epoch
            self.stopped_step = trainer.global_step
        return should_stop

    def state_dict(self) -> dict[str, Any]:
        return {
            "ma_threshold": self.ma_threshold,
            "el_threshold": self.el_threshold,
            "initial_ma": self.initial_ma,
            "initial_el": self.initial_el,
            "initial_fraction": self.initial_fraction,
            "history": self.history,
            "stopped_epoch": self.stopped_epoch,
            "stopped_step": self.stopped_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.ma_threshold = state_dict.get("ma_threshold")
        self.el_threshold = state_dict.get("el_threshold")
        self.initial_ma = state_dict.get("initial_ma")
        self.initial_el = state_dict.get("initial_el")
        self.initial_fraction = state_dict.get("initial_fraction")
        self.history = list(state_dict.get("history", []))
        self.stopped_epoch = state_dict.get("stopped_epoch")
        self.stopped_step = state_dict.get("stopped_step")

    # ------------------------------------------------------------------------------------------

    def forgotten(self, ma: Tensor, el: Tensor) -> Tensor:
        """Boolean ``(N,)``: MA_i < τ_MA and EL_i < τ_EL (MA_i < τ_MA alone for ``criterion='mean_ma'``)."""
        if self.criterion == "mean_ma":
            return ma < self.ma_threshold
        return (ma < self.ma_threshold) & (el < self.el_threshold)

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> tuple[Tensor, Tensor]:
        """Per-sample (MA, EL) of the forget set on the current weights (every rank gets all of them)."""
        loader = forget_scoring_dataloader(trainer, pl_module, self.batch_size, who="ForgettingEarlyStopping")
        with trainer.precision_plugin.forward_context():
            return memorization_and_extraction(pl_module.model, loader, self.el_n, self.generation_batch_size,
                                               extraction=self.criterion == "samples")
