"""``MRDCurriculum``: sample forget data by Memory Removal Difficulty (CGA and "+MRD").

Paper: Feng et al., 2025, *A Neuro-Inspired Interpretation of Unlearning in Large Language Models through
Sample-Level Unlearning Difficulty* ("the MRD paper" below).

MRD paper, Algorithm 2 (Curriculum Gradient Ascent): score every forget sample with MRD before training,
draw forget samples with probability p_i ∝ MRD_i, recompute the scores every m epochs (paper: m = 2).
The math lives in :func:`lit_unlearn.analysis.mrd.mrd_scores`; the weighted, distributed-aware draw in
:class:`lit_unlearn.data.samplers.WeightedDistributedSampler`. This callback picks the moments, turns
scores into weights, and keeps the history, logs and plots.
"""
from __future__ import annotations

import io
import os
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from lit_unlearn.analysis.mrd import ESTIMATORS, MRD_PARAMS, mrd_scores
from lit_unlearn.utils.io import atomic_write_bytes, atomic_write_json

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def curriculum_weights(scores: Tensor, power: float = 1.0, eps: float = 1e-8) -> Tensor:
    """Sampling probabilities p_i = (MRD_i + ε)^τ / Σ_j (MRD_j + ε)^τ, float64, ``(N,) -> (N,)``.

    ``ε = eps · mean_j MRD_j`` is *relative* to the mean score, so the weights do not depend on the scale
    of MRD (which spans orders of magnitude across estimators and σ: ~1e-3 for ``mean_abs`` at σ = 1e-5,
    ~1e-7 for ``abs_mean``). ``power`` τ = 1 is the paper's easy-first curriculum (higher MRD = easier =
    drawn more often); τ = −1 is the appendix's hard-first variant; τ = 0 is uniform. With every score
    zero the weights are uniform.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise ValueError("curriculum_weights: no scores")
    bad = torch.nonzero(~torch.isfinite(s) | (s < 0)).flatten()
    if bad.numel():
        raise ValueError(f"curriculum_weights: MRD scores must be finite and >= 0; bad sample indices "
                         f"{bad[:10].tolist()} (values {s[bad[:10]].tolist()})")
    mean = s.mean()
    if mean == 0:
        return torch.full_like(s, 1.0 / s.numel())
    w = (s + eps * mean).pow(power)
    if not bool(torch.isfinite(w).all()) or w.sum() <= 0:
        raise ValueError(f"curriculum_weights: (MRD + eps)^power overflowed (power={power}, eps={eps}); "
                         "raise eps or lower |power|")
    return w / w.sum()


def score_summary(scores: Tensor, probabilities: Tensor | None = None) -> dict[str, float]:
    """mean/std/min/max/quantiles of the scores, and of the draw: max p_i and effective size 1/Σp_i²."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    stats = {
        "mean": s.mean().item(),
        "std": s.std(unbiased=False).item(),
        "min": s.min().item(),
        "max": s.max().item(),
    }
    for q, v in zip(QUANTILES, torch.quantile(s, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()):
        stats[f"q{round(q * 100):02d}"] = v
    if probabilities is not None:
        p = torch.as_tensor(probabilities, dtype=torch.float64)
        stats["prob_max"] = p.max().item()
        stats["effective_samples"] = (1.0 / p.pow(2).sum()).item()
    return stats


class MRDCurriculum(Callback):
    """Draw forget samples with probability p_i ∝ (MRD_i + ε)^power, MRD recomputed every m epochs/steps.

    MRD paper (Feng et al., 2025), Algorithm 2; App. E: m = 2: CGA = GA + this callback; "NPO + MRD",
    "GradDiff + MRD", "IdkDPO + MRD" = those objectives + this callback. It works with every objective because it only
    changes *which* forget samples are drawn, never the loss.

    Protocol (works with ANY LightningModule that follows it; :class:`UnlearningModule` +
    :class:`UnlearningDataModule` do):
      * the causal LM is ``pl_module.model`` (an ``nn.Module``; the unwrapped Hugging Face model, whose
        ``model(input_ids=, attention_mask=)`` returns ``.logits``);
      * the forget dataset is ``pl_module.forget_dataset`` or else ``trainer.datamodule.forget_dataset``;
        each item becomes, after collation, a batch with ``input_ids``, ``attention_mask``, ``labels``
        (−100 where no loss is taken) and ``index`` (the item's row in the dataset);
      * weights are installed by ``pl_module.set_forget_weights(w)`` or else
        ``trainer.datamodule.forget_sampler.set_weights(w)``, where ``forget_sampler`` is the
        :class:`~lit_unlearn.data.samplers.WeightedDistributedSampler` of the forget training loader
        (``w``: one float64 probability per dataset row, summing to 1);
      * the scoring loader (in order, sharded across ranks) is
        ``trainer.datamodule.forget_scoring_dataloader(batch_size)``, or else one built here from the
        dataset with a non-shuffling ``DistributedSampler`` and ``trainer.datamodule.collate``.

    When:
      * scores are computed in ``on_train_epoch_start`` of the first epoch (before any forget sample of
        the run is drawn: with ``num_workers=0`` Lightning draws an epoch's indices lazily, at its first
        batch) and, with ``every_n_epochs=m``, at the start of every epoch e with e − e_last ≥ m (epochs
        0, m, 2m, ... in an uninterrupted run). Weights computed at an epoch start govern that epoch's draw.
      * with ``every_n_steps=n`` (takes precedence over ``every_n_epochs``) scores are also recomputed in
        ``on_train_batch_start`` once n optimizer steps have passed since the last scoring (steps 0, n,
        2n, ...). An epoch's indices are drawn when its loader iterator starts, so weights computed
        mid-epoch take effect at the **next** epoch's draw (make epochs shorter for finer control).
      * at every epoch start the current weights are (re)installed, so a sampler that was rebuilt (e.g.
        ``reload_dataloaders_every_n_epochs``, or a resumed run) draws with them.
      * with ``num_workers > 0`` Lightning creates the first epoch's iterator (and the workers prefetch
        indices) before ``on_train_epoch_start``: that first epoch is then drawn uniformly.

    Distributed: every rank scores its shard and :func:`mrd_scores` all-gathers, so every rank holds the
    same scores and weights; the sampler makes every rank draw the same weighted sample (seed + epoch)
    and keep its slice. Under DeepSpeed ZeRO-3 each rank perturbs the gathered weights with the same noise
    as an unsharded run (see the ZeRO-3 note in :mod:`lit_unlearn.analysis.mrd`).

    Logged at each recomputation (``pl_module.log``, not synced: identical on all ranks): ``mrd/mean``,
    ``mrd/std``, ``mrd/min``, ``mrd/max``, ``mrd/q10`` … ``mrd/q90``, ``mrd/prob_max``,
    ``mrd/effective_samples`` (1/Σp_i²), ``mrd/seconds`` (scoring wall time on this rank) and
    ``mrd/recomputations``; also a TensorBoard histogram
    ``mrd/scores`` when the logger has ``add_histogram``.

    Files (rank 0, atomic) in ``output_dir`` (default ``trainer.log_dir/mrd``, i.e.
    ``default_root_dir/mrd`` without a logger): ``mrd_history.json`` (every recomputation: epoch, step,
    stats, scoring seconds, scores, probabilities) and, with ``log_histogram``, ``mrd_epoch{E}_step{S}.png``
    (histograms of the scores and of the sampling probabilities): by default one, of the last recomputation,
    written when fit ends; with ``png_every_scoring=True`` one per recomputation, as it happens. A PNG costs
    ~0.5 s of CPU, more than an analytic scoring of a small model on a GPU; any recomputation can be plotted
    later from the JSON with :func:`plot_histogram`.

    Checkpoints: scores, weights, history and the epoch/step of the last scoring are saved
    (``state_dict``), so a run resumed from an end-of-epoch checkpoint recomputes at the same epochs and
    draws the same indices as an uninterrupted one (the sampler's own draw depends only on its seed and
    the epoch, which Lightning restores).

    Args:
        every_n_epochs: recompute every m epochs (paper: 2); ``None`` with ``every_n_steps=None``
            scores only once, before training.
        every_n_steps: recompute every n optimizer steps instead (see "When").
        power: τ in p_i ∝ (MRD_i + ε)^τ: 1 = easy first (paper), −1 = hard first (appendix), 0 = uniform.
        eps: ε relative to the mean score, ε = eps · mean(MRD) (see :func:`curriculum_weights`).
        sigma, num_samples, estimator, control_variate, seed, normalization, upcast: passed to
            :func:`mrd_scores` (σ, K, ``"mean_abs"`` | ``"abs_mean"`` | ``"analytic"``, the first-order control
            variate of ``mean_abs`` (same mean, far less noise at small σ), CRN seed, ``"token"`` |
            ``"sequence"``, score an fp32 copy of a bf16/fp16 model).
        mrd_params: ``"all"`` perturbs the weights of the model as it predicts (with LoRA adapters: the merged
            weights W + (α/r)·B·A, by perturbing the base weights); ``"trainable"`` only the trainable (adapter)
            weights. See :func:`lit_unlearn.analysis.mrd.perturbed_parameters`.
        batch_size: scoring batch size (default: the datamodule's).
        output_dir: where the files go (see above).
        log_histogram: write the PNG histograms (and TensorBoard histograms).
        png_every_scoring: a PNG at every recomputation instead of one at the end of fit.
        progress: show the scoring progress bar.
    """

    def __init__(
        self,
        every_n_epochs: int | None = 2,
        every_n_steps: int | None = None,
        power: float = 1.0,
        eps: float = 1e-8,
        sigma: float = 1e-5,
        num_samples: int = 100,
        estimator: str = "mean_abs",
        control_variate: bool = False,
        batch_size: int | None = None,
        seed: int = 0,
        normalization: str = "token",
        upcast: bool = False,
        mrd_params: str = "all",
        output_dir: str | None = None,
        log_histogram: bool = True,
        png_every_scoring: bool = False,
        progress: bool = False,
    ) -> None:
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps),
                            ("batch_size", batch_size)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if control_variate and estimator != "mean_abs":
            raise ValueError(f"control_variate=True needs estimator='mean_abs', got {estimator!r}")
        if mrd_params not in MRD_PARAMS:
            raise ValueError(f"MRDCurriculum: mrd_params must be one of {MRD_PARAMS}, got {mrd_params!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.power = float(power)
        self.eps = float(eps)
        self.sigma = sigma
        self.num_samples = num_samples
        self.estimator = estimator
        self.control_variate = bool(control_variate)
        self.batch_size = batch_size
        self.seed = seed
        self.normalization = normalization
        self.upcast = upcast
        self.mrd_params = mrd_params
        self.output_dir = output_dir
        self.log_histogram = log_histogram
        self.png_every_scoring = png_every_scoring
        self.progress = progress
        self._out_dir: str | None = None  # where the last recomputation wrote (for the PNG at fit end)
        # state (saved in checkpoints)
        self.scores: Tensor | None = None  # (N,) float32, the latest MRD scores
        self.weights: Tensor | None = None  # (N,) float64 probabilities installed on the sampler
        self.history: list[dict[str, Any]] = []
        self.last_epoch: int | None = None
        self.last_step: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_epochs=self.every_n_epochs, every_n_steps=self.every_n_steps,
                                        power=self.power, estimator=self.estimator)

    # ------------------------------------------------------------------------------------------
    # Lightning hooks

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # not in setup(): Lightning calls configure_model (which builds the model) after the setup hooks
        if not isinstance(getattr(pl_module, "model", None), nn.Module):
            raise ValueError(
                f"MRDCurriculum needs the causal LM at `{type(pl_module).__name__}.model` (an nn.Module), "
                "created by configure_model at the latest; see the MRDCurriculum docstring for the protocol"
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.scores is None:
            due = True
        elif self.every_n_steps is not None:
            due = False  # step mode: only in on_train_batch_start
        else:
            due = self.every_n_epochs is not None and trainer.current_epoch - self.last_epoch >= self.every_n_epochs
        if due:
            self.recompute(trainer, pl_module, on_step=False)
        else:
            self._install(trainer, pl_module, self.weights)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.log_histogram and not self.png_every_scoring and self._out_dir and trainer.is_global_zero:
            self.plot_last(self._out_dir)  # the history JSON is already current

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps is None or self.scores is None:
            return
        if trainer.global_step - self.last_step >= self.every_n_steps:
            self.recompute(trainer, pl_module, on_step=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "scores": None if self.scores is None else self.scores.clone(),
            "weights": None if self.weights is None else self.weights.clone(),
            "history": self.history,
            "last_epoch": self.last_epoch,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        scores, weights = state_dict.get("scores"), state_dict.get("weights")
        self.scores = None if scores is None else torch.as_tensor(scores, dtype=torch.float32).clone()
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64).clone()
        self.history = list(state_dict.get("history", []))
        self.last_epoch = state_dict.get("last_epoch")
        self.last_step = state_dict.get("last_step")

    # ------------------------------------------------------------------------------------------
    # Scoring

    def recompute(self, trainer: Trainer, pl_module: LightningModule, on_step: bool = False) -> Tensor:
        """Score the forget set on the current weights, install new sampling weights, log and plot."""
        epoch, step = trainer.current_epoch, trainer.global_step
        loader = self.scoring_dataloader(trainer, pl_module)
        start = time.perf_counter()
        scores = mrd_scores(
            pl_module.model, loader, sigma=self.sigma, num_samples=self.num_samples, estimator=self.estimator,
            control_variate=self.control_variate, seed=self.seed, normalization=self.normalization,
            upcast=self.upcast, progress=self.progress, mrd_params=self.mrd_params,
        )  # (N,) float32, identical on every rank
        seconds = time.perf_counter() - start
        weights = curriculum_weights(scores, self.power, self.eps)
        self.scores, self.weights, self.last_epoch, self.last_step = scores, weights, epoch, step
        self._install(trainer, pl_module, weights)
        stats = score_summary(scores, weights)
        self.history.append({"epoch": epoch, "step": step, "stats": stats, "seconds": seconds,
                             "scores": scores.tolist(), "probabilities": weights.tolist()})
        self._log(trainer, pl_module, {**stats, "seconds": seconds}, on_step)
        out_dir = self.output_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "mrd")  # broadcasts
        self._out_dir = out_dir
        if trainer.is_global_zero:
            self.write(out_dir, plot_last=self.log_histogram and self.png_every_scoring)
        return scores

    def scoring_dataloader(self, trainer: Trainer, pl_module: LightningModule) -> DataLoader:
        """The in-order, rank-sharded forget loader the scores are computed on (see the protocol)."""
        return forget_scoring_dataloader(trainer, pl_module, self.batch_size, who="MRDCurriculum")

    # ------------------------------------------------------------------------------------------
    # Helpers

    @staticmethod
    def _install(trainer: Trainer, pl_module: LightningModule, weights: Tensor | None) -> None:
        if weights is None:
            return
        if callable(getattr(pl_module, "set_forget_weights", None)):
            pl_module.set_forget_weights(weights)
            return
        sampler = getattr(getattr(trainer, "datamodule", None), "forget_sampler", None)
        if not callable(getattr(sampler, "set_weights", None)):
            raise ValueError(
                f"MRDCurriculum cannot install sampling weights: `{type(pl_module).__name__}` has no "
                "`set_forget_weights(weights)` and `trainer.datamodule.forget_sampler` is not a "
                f"WeightedDistributedSampler (got {type(sampler).__name__}); create it in train_dataloader"
            )
        sampler.set_weights(weights)

    def _log(self, trainer: Trainer, pl_module: LightningModule, stats: dict[str, float], on_step: bool) -> None:
        metrics = {f"mrd/{k}": float(v) for k, v in stats.items()}
        metrics["mrd/recomputations"] = float(len(self.history))
        pl_module.log_dict(metrics, on_step=on_step, on_epoch=not on_step, batch_size=1, sync_dist=False)
        if self.log_histogram and trainer.is_global_zero:
            for logger in trainer.loggers:
                add_histogram = getattr(getattr(logger, "experiment", None), "add_histogram", None)
                if callable(add_histogram):
                    add_histogram("mrd/scores", self.scores, trainer.global_step)

    def write(self, out_dir: str, plot_last: bool = True) -> None:
        """Write ``mrd_history.json`` and (``plot_last``) the PNG of the latest recomputation."""
        os.makedirs(out_dir, exist_ok=True)
        config = {"every_n_epochs": self.every_n_epochs, "every_n_steps": self.every_n_steps, "power": self.power,
                  "eps": self.eps, "sigma": self.sigma, "num_samples": self.num_samples,
                  "estimator": self.estimator, "control_variate": self.control_variate, "seed": self.seed,
                  "normalization": self.normalization, "mrd_params": self.mrd_params}
        atomic_write_json(os.path.join(out_dir, "mrd_history.json"), {"config": config, "history": self.history})
        if plot_last:
            self.plot_last(out_dir)

    def plot_last(self, out_dir: str) -> None:
        """The PNG of the latest recomputation, ``mrd_epoch{E}_step{S}.png`` in ``out_dir`` (none before one)."""
        if self.history:
            entry = self.history[-1]
            name = f"mrd_epoch{entry['epoch']:04d}_step{entry['step']:07d}.png"
            plot_histogram(os.path.join(out_dir, name), entry, self.estimator, self.power)


def forget_dataset(trainer: Trainer, pl_module: LightningModule, who: str = "This callback"):
    """``pl_module.forget_dataset``, or else ``trainer.datamodule.forget_dataset``."""
    dataset = getattr(pl_module, "forget_dataset", None)
    if dataset is None:
        dataset = getattr(getattr(trainer, "datamodule", None), "forget_dataset", None)
    if dataset is None:
        raise ValueError(
            f"{who} found no forget dataset: define `{type(pl_module).__name__}.forget_dataset` or "
            f"`trainer.datamodule.forget_dataset`; see the {who} docstring for the protocol"
        )
    return dataset


def forget_scoring_dataloader(trainer: Trainer, pl_module: LightningModule, batch_size: int | None = None,
                              who: str = "This callback") -> DataLoader:
    """``trainer.datamodule.forget_scoring_dataloader(batch_size)``, or else an in-order loader over the forget
    dataset sharded across ranks (a non-shuffling ``DistributedSampler``), batched by ``datamodule.collate``."""
    datamodule = getattr(trainer, "datamodule", None)
    if callable(getattr(datamodule, "forget_scoring_dataloader", None)):
        return datamodule.forget_scoring_dataloader(batch_size)
    dataset = forget_dataset(trainer, pl_module, who)
    collate = getattr(datamodule, "collate", None)
    if collate is None:
        raise ValueError(
            f"{who} needs `trainer.datamodule.forget_scoring_dataloader(batch_size)` or a "
            f"`trainer.datamodule.collate` to batch the forget dataset; see the {who} docstring"
        )
    batch_size = batch_size or getattr(datamodule, "batch_size", None) or 8
    sampler = DistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)


def plot_histogram(path: str, entry: dict[str, Any], estimator: str = "", power: float = 1.0) -> None:
    """Histograms of one recomputation's MRD scores and sampling probabilities, written atomically (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores, probs, stats = entry["scores"], entry["probabilities"], entry["stats"]
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)  # Agg canvas, without touching pyplot's global backend
    ax_s, ax_p = figure.subplots(1, 2)
    bins = max(5, min(50, len(scores) // 2))
    ax_s.hist(scores, bins=bins, color="tab:blue")
    ax_s.axvline(stats["mean"], color="black", linestyle="--", label=f"mean {stats['mean']:.3g}")
    ax_s.legend()
    ax_s.set(title=f"MRD ({estimator}), epoch {entry['epoch']}, step {entry['step']}",
             xlabel="MRD (smaller = harder to unlearn)", ylabel="samples")
    ax_p.hist(probs, bins=bins, color="tab:orange")
    ax_p.axvline(1.0 / len(probs), color="black", linestyle="--", label="uniform")
    ax_p.legend()
    ax_p.set(title=f"sampling probability ∝ (MRD + ε)^{power:g}", xlabel="p_i", ylabel="samples")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    atomic_write_bytes(path, buffer.getvalue())
