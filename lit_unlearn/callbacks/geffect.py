"""``GEffectMonitor``: measure the G-effect of the training objective during unlearning.

The math lives in ``lit_unlearn.analysis.geffect`` (Wang et al., 2025, *Rethinking LLM Unlearning Objectives:
A Gradient Perspective and Go Beyond*, ICLR 2025). This
callback only picks the moment, the batches and the gradients, keeps the rows and writes the files.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_unlearn.analysis.geffect import GEffect, g_effect, layer_groups, per_instance_g_effect, trainable_parameters


class GEffectMonitor(Callback):
    """Every ``every_n_steps`` optimizer steps, measure e_u = ⟨∇R(forget), ∇L⟩ and e_r = ⟨∇R(retain), ∇L⟩
    per layer group, on the current weights, with the objective gradient of that very training step.

    Protocol (works with ANY LightningModule that follows it):
      * the module exposes the causal LM as ``self.model`` (an ``nn.Module`` whose
        ``model(input_ids=, attention_mask=)`` returns an object with ``.logits`` (or a logits tensor));
      * the training batch is a dict ``{"forget": batch, "retain": batch}`` whose sub-batches hold
        ``input_ids``, ``attention_mask``, ``labels`` (-100 where no loss is taken), or the module defines
        ``geffect_batches(batch) -> (forget_batch, retain_batch)`` to say where they are;
      * ``per_instance=True`` also needs ``module.forget_loss(sub_batch) -> scalar``: the forget part of
        the objective, evaluated for one forget sample at a time (its ``index`` entry is kept).

    When: ``on_train_batch_start`` remembers the batch of a step to be measured;
    ``on_before_optimizer_step`` (backward done, ``.grad`` holds the objective gradient, gradients not
    yet clipped, weights not yet changed) measures. With gradient accumulation ``.grad`` is the
    accumulated gradient and the risks use the last micro-batch. The measurement changes nothing: the
    parameters after training are bit-identical with and without the monitor (tested).
    Under DDP (``world_size > 1``) the risk gradients are averaged over ranks, so every rank has the
    same numbers. Strategies that do not keep full gradients in ``.grad`` (DeepSpeed ZeRO) are
    skipped with a warning.

    EMA (``ema=β``): the totals are also reported smoothed over the measured steps,
    s_1 = x_1, s_k = β·s_{k-1} + (1−β)·x_k, as the paper's reference code smooths its G-effect curves
    (raw values are always kept).

    Output, written on rank 0 at ``on_train_end`` into ``output_dir`` (default:
    ``trainer.log_dir/geffect``, which is ``default_root_dir/geffect`` without a logger), each file
    atomically (temp file + ``os.replace``):
      * ``geffect.csv``: ``step, group, e_u, e_r`` for every layer group, a ``total`` row, and a
        ``total_ema`` row when ``ema`` is set;
      * ``geffect.json``: the same as series, plus per-instance results when ``per_instance``;
      * ``geffect_instances.csv`` (``per_instance`` only): ``step, index, group, e_u, e_r``;
      * ``geffect_totals.png`` (e_u and e_r over steps) and ``geffect_layers_unlearning.png`` /
        ``geffect_layers_retaining.png`` (layer × step heat maps).
    The totals are also logged as ``geffect/e_u`` and ``geffect/e_r``.

    Args:
        every_n_steps: measure at global steps 0, n, 2n, ...
        per_instance: also measure each forget sample's own objective gradient (costly: 2·(B+1)
            backward passes per measured step).
        ema: smoothing factor β in [0, 1) for the totals, or ``None``.
        output_dir: where the files go (see above).
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        per_instance: bool = False,
        ema: float | None = None,
        output_dir: str | None = None,
    ) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        if ema is not None and not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) or None, got {ema!r}")
        self.every_n_steps = every_n_steps
        self.per_instance = per_instance
        self.ema = ema
        self.output_dir = output_dir
        self.rows: list[dict[str, Any]] = []  # {"step", "unlearning": {g: v}, "retaining": {g: v}}
        self.instance_rows: list[dict[str, Any]] = []  # the same plus "index"
        self._batch: Any = None
        self._last_step = -1
        self._warned = False

    # ------------------------------------------------------------------------------------------
    # Lightning hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from lit_unlearn.strategies import is_zero3

        if stage == "fit" and is_zero3(trainer):
            raise NotImplementedError(
                "GEffectMonitor does not support DeepSpeed ZeRO-3: it needs every parameter's full objective "
                "gradient in `.grad` and full risk gradients, but ZeRO-3 partitions parameters and gradients "
                "across ranks. Measure G-effects with DDP (configs/trainer/ddp.yaml) or on one device."
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # checked here, not in ``setup``: modules that build their model in ``configure_model`` (every
        # UnlearningModule) have no ``model`` yet when callbacks' ``setup`` runs
        if not isinstance(getattr(pl_module, "model", None), nn.Module):
            raise ValueError(
                f"GEffectMonitor needs the causal LM at `{type(pl_module).__name__}.model` (an nn.Module); "
                "see the GEffectMonitor docstring for the protocol"
            )
        if self.per_instance and not callable(getattr(pl_module, "forget_loss", None)):
            raise ValueError(
                f"GEffectMonitor(per_instance=True) needs `{type(pl_module).__name__}.forget_loss(batch)` "
                "returning the scalar forget loss of a sub-batch"
            )

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        due = trainer.global_step % self.every_n_steps == 0 and trainer.global_step != self._last_step
        self._batch = batch if due else None

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        step = trainer.global_step
        if self._batch is None or step == self._last_step:
            return
        batch, self._batch, self._last_step = self._batch, None, step
        model = pl_module.model
        grads = [p.grad for p in trainable_parameters(model)]
        if all(g is None for g in grads):
            if not self._warned:
                rank_zero_warn("GEffectMonitor: no parameter has a .grad at this hook (e.g. DeepSpeed ZeRO); skipped")
                self._warned = True
            return
        forget, retain = self._split(pl_module, batch)
        all_reduce = trainer.world_size > 1
        groups = layer_groups(model)
        with trainer.precision_plugin.forward_context():
            effect = g_effect(model, grads, forget, retain, groups=groups, all_reduce=all_reduce)
            self.rows.append(_row(step, effect))
            if self.per_instance:
                effects = per_instance_g_effect(model, pl_module.forget_loss, forget, retain, groups, all_reduce)
                indices = _indices(forget, len(effects))
                self.instance_rows.extend({**_row(step, e), "index": i} for i, e in zip(indices, effects))
        metrics = {"geffect/e_u": effect.total_unlearning, "geffect/e_r": effect.total_retaining}
        if self.ema is not None:
            metrics["geffect/e_u_ema"] = _ema([r["total_unlearning"] for r in self.rows], self.ema)[-1]
            metrics["geffect/e_r_ema"] = _ema([r["total_retaining"] for r in self.rows], self.ema)[-1]
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # log_dir broadcasts: every rank must ask for it
        out_dir = self.output_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "geffect")
        instance_rows = self.instance_rows
        if self.per_instance and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, instance_rows)  # each rank measured its own forget samples
            instance_rows = [row for rows in gathered for row in rows]
        if trainer.is_global_zero:
            self.write(out_dir, instance_rows)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "instance_rows": self.instance_rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
        self.instance_rows = list(state_dict.get("instance_rows", []))

    # ------------------------------------------------------------------------------------------
    # Batches

    @staticmethod
    def _split(pl_module: LightningModule, batch: Any) -> tuple[Mapping, Mapping]:
        """(forget, retain) sub-batches: ``pl_module.geffect_batches(batch)`` or ``batch["forget"/"retain"]``."""
        if callable(getattr(pl_module, "geffect_batches", None)):
            return pl_module.geffect_batches(batch)
        if not isinstance(batch, Mapping) or "forget" not in batch or "retain" not in batch:
            keys = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(
                f"GEffectMonitor expects a training batch {{'forget': ..., 'retain': ...}}, got {keys}; "
                "or define `geffect_batches(batch) -> (forget_batch, retain_batch)` on the module"
            )
        return batch["forget"], batch["retain"]

    # ------------------------------------------------------------------------------------------
    # Output

    def write(self, out_dir: str, instance_rows: list[dict[str, Any]] | None = None) -> None:
        """Write the CSV/JSON files and the PNG plots into ``out_dir`` (see the class docstring)."""
        instance_rows = self.instance_rows if instance_rows is None else instance_rows
        os.makedirs(out_dir, exist_ok=True)
        rows = sorted(self.rows, key=lambda r: r["step"])
        steps = [r["step"] for r in rows]
        groups = list(rows[0]["unlearning"]) if rows else []
        total_u = [r["total_unlearning"] for r in rows]
        total_r = [r["total_retaining"] for r in rows]

        table = [["step", "group", "e_u", "e_r"]]
        for k, r in enumerate(rows):
            table += [[r["step"], g, r["unlearning"][g], r["retaining"][g]] for g in groups]
            table.append([r["step"], "total", total_u[k], total_r[k]])
            if self.ema is not None:
                table.append([r["step"], "total_ema", _ema(total_u, self.ema)[k], _ema(total_r, self.ema)[k]])
        _atomic_write(os.path.join(out_dir, "geffect.csv"), _csv_text(table))

        report: dict[str, Any] = {
            "every_n_steps": self.every_n_steps,
            "ema": self.ema,
            "groups": groups,
            "steps": steps,
            "unlearning": {g: [r["unlearning"][g] for r in rows] for g in groups},
            "retaining": {g: [r["retaining"][g] for r in rows] for g in groups},
            "total_unlearning": total_u,
            "total_retaining": total_r,
        }
        if self.ema is not None:
            report["total_unlearning_ema"] = _ema(total_u, self.ema)
            report["total_retaining_ema"] = _ema(total_r, self.ema)
        if self.per_instance:
            report["instances"] = instance_rows
            table = [["step", "index", "group", "e_u", "e_r"]]
            for r in instance_rows:
                table += [[r["step"], r["index"], g, r["unlearning"][g], r["retaining"][g]] for g in r["unlearning"]]
                table.append([r["step"], r["index"], "total", r["total_unlearning"], r["total_retaining"]])
            _atomic_write(os.path.join(out_dir, "geffect_instances.csv"), _csv_text(table))
        _atomic_write(os.path.join(out_dir, "geffect.json"), json.dumps(report, indent=2))

        if rows:
            _plot_totals(os.path.join(out_dir, "geffect_totals.png"), steps, total_u, total_r, self.ema)
            for key, label in (("unlearning", "e_u"), ("retaining", "e_r")):
                matrix = [[r[key][g] for r in rows] for g in groups]  # (groups, steps)
                path = os.path.join(out_dir, f"geffect_layers_{key}.png")
                _plot_heatmap(path, steps, groups, matrix, f"{key} G-effect {label} per layer group")


# ----------------------------------------------------------------------------------------------
# Helpers


def _row(step: int, effect: GEffect) -> dict[str, Any]:
    return {
        "step": step,
        "unlearning": dict(effect.unlearning),
        "retaining": dict(effect.retaining),
        "total_unlearning": effect.total_unlearning,
        "total_retaining": effect.total_retaining,
    }


def _indices(batch: Mapping, n: int) -> list[int]:
    """Dataset row indices of the batch (``batch["index"]``), or positions 0..n-1 without one."""
    index = batch.get("index") if isinstance(batch, Mapping) else None
    return [int(i) for i in index.reshape(-1).tolist()] if isinstance(index, torch.Tensor) else list(range(n))


def _ema(values: list[float], beta: float) -> list[float]:
    """s_1 = x_1, s_k = β·s_{k-1} + (1−β)·x_k."""
    out: list[float] = []
    for x in values:
        out.append(x if not out else beta * out[-1] + (1.0 - beta) * x)
    return out


def _csv_text(table: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(table)
    return buffer.getvalue()


def _atomic_write(path: str, content: str | Callable[[str], None]) -> None:
    """Write text (or call ``content(tmp_path)``) to a temp file next to ``path``, then ``os.replace``."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        if callable(content):
            content(tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(content)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_figure(figure: Any, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # Agg canvas, without touching pyplot's global backend
    _atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def _plot_totals(path: str, steps: list[int], e_u: list[float], e_r: list[float], ema: float | None) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    for ax, values, label in zip(figure.subplots(1, 2), (e_u, e_r), ("unlearning e_u", "retaining e_r")):
        ax.plot(steps, values, marker="o", markersize=3, label="raw")
        if ema is not None:
            ax.plot(steps, _ema(values, ema), label=f"EMA β={ema}")
            ax.legend()
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(title=f"{label} (total)", xlabel="step", ylabel="G-effect")
    _save_figure(figure, path)


def _plot_heatmap(path: str, steps: list[int], groups: list[str], matrix: list[list[float]], title: str) -> None:
    from matplotlib.figure import Figure

    values = torch.tensor(matrix, dtype=torch.float64)
    limit = float(values.abs().max()) or 1.0
    figure = Figure(figsize=(max(6, 0.25 * len(steps) + 3), max(3, 0.3 * len(groups) + 1.5)), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(values.numpy(), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_yticks(range(len(groups)), groups)
    ticks = list(range(0, len(steps), max(1, len(steps) // 10)))
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    ax.set(title=title, xlabel="step", ylabel="layer group")
    figure.colorbar(image, ax=ax)
    _save_figure(figure, path)
