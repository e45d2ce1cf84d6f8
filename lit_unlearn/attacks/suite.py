"""The attack suite: validate every attack's settings first, then run the quantization and relearning attacks on
copies of one model and collect the robustness section of the report."""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from lit_unlearn.attacks.evaluation import AttackEvalConfig, measure
from lit_unlearn.attacks.quantization import BACKENDS, check_schemes, quantize_model
from lit_unlearn.attacks.relearn import RelearnConfig, plan_relearning, relearn_attack
from lit_unlearn.utils.hparams import coerce_settings

ATTACKS = ("quantize", "relearn")
ROBUSTNESS_FORMAT = "lit_unlearn.robustness/1"


@dataclass
class QuantizeConfig:
    """Settings of the quantization attack.

    Args:
        schemes: ``rtn``: ``int8`` (per channel), ``int4`` (groups of ``group_size``, symmetric),
            ``int4-asym``; ``bitsandbytes``: ``llm.int8``, ``nf4``.
        backend: ``rtn`` (torch, any device) or ``bitsandbytes`` (CUDA).
        group_size: the int4 group size (default 128; ``None`` = one group per output channel; ``"auto"`` =
            128 where it divides every quantized layer's input size, else per channel).
    """

    schemes: Sequence[str] = ("int8", "int4")
    backend: str = "rtn"
    group_size: int | None | str = 128

    def __post_init__(self) -> None:
        if isinstance(self.schemes, str):
            self.schemes = [s.strip() for s in self.schemes.split(",") if s.strip()]
        self.schemes = list(self.schemes)
        if self.backend not in BACKENDS:
            raise ValueError(f"quantize.backend must be one of {list(BACKENDS)}, got {self.backend!r}.")
        if isinstance(self.group_size, str) and self.group_size not in ("auto", "default"):
            try:
                self.group_size = None if self.group_size.lower() in ("none", "null", "channel") else int(self.group_size)
            except ValueError:
                raise ValueError(f"quantize.group_size must be an integer, None or 'auto'; got {self.group_size!r}.") from None

    @classmethod
    def coerce(cls, value: "QuantizeConfig | dict[str, Any] | None") -> "QuantizeConfig":
        return coerce_settings(cls, value, "quantize",
                               "quantize: unknown options {unknown}; choose from {known}.", mapping=dict)

    def resolved_group_size(self, model: nn.Module) -> int | None:
        """``group_size`` with ``"auto"`` resolved for ``model``."""
        if self.group_size != "auto":
            return self.group_size
        from lit_unlearn.attacks.quantization import quantizable_linears

        ok = all(m.in_features % 128 == 0 for _, m in quantizable_linears(model))
        return 128 if ok else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce_attacks(attacks: Sequence[str] | str) -> list[str]:
    if isinstance(attacks, str):
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    attacks = list(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"attacks: unknown or no attacks {unknown or attacks}; choose from {list(ATTACKS)}"
                         " (e.g. --attacks relearn,quantize).")
    return attacks


def quantization_attack(model: nn.Module, tokenizer, config: QuantizeConfig | dict | None = None,
                        eval_config: AttackEvalConfig | dict | None = None,
                        baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` at full precision (or take ``baseline``, an :func:`attack_metrics` dict) and a
    quantized copy per scheme: ``{"backend", "group_size", "results": {"full": metrics, "<scheme>": metrics},
    "runtime_s"}``. Every scheme is checked against the model before the first evaluation."""
    config = QuantizeConfig.coerce(config)
    eval_config = AttackEvalConfig.coerce(eval_config)
    group_size = config.resolved_group_size(model)
    schemes = check_schemes(model, config.schemes, config.backend, group_size)
    start = time.perf_counter()
    results = {"full": baseline if baseline is not None else measure(model, tokenizer, eval_config)}
    for scheme in schemes:
        quantized = quantize_model(model, scheme, config.backend)
        name = scheme if isinstance(scheme, str) else scheme.name
        results[name] = measure(quantized, tokenizer, eval_config)
        del quantized
    return {"backend": config.backend, "group_size": group_size, "results": results,
            "runtime_s": round(time.perf_counter() - start, 3)}


@dataclass
class AttackSettings:
    """Everything :func:`run_attacks` needs besides the model (what a ``--config`` file holds)."""

    attacks: Sequence[str] = ATTACKS
    eval: AttackEvalConfig = field(default_factory=AttackEvalConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    relearn: RelearnConfig = field(default_factory=RelearnConfig)


def run_attacks(model: nn.Module, tokenizer, attacks: Sequence[str] | str = ATTACKS,
                eval: AttackEvalConfig | dict | None = None, quantize: QuantizeConfig | dict | None = None,
                relearn: RelearnConfig | dict | None = None, out_dir: str | None = None,
                model_label: str | None = None, report: str | None = None) -> dict[str, Any]:
    """Run ``attacks`` (``quantize``, ``relearn``) against copies of ``model``; return the robustness section
    ``{"format", "model", "eval", "quantize": {...}, "relearn": {...}}`` and, with ``out_dir``, write
    ``robustness.json``, ``robustness.md`` and ``robustness.png`` there. ``report``: the model's evaluation
    ``report.json`` (or its folder), which then also gets the section (:func:`~lit_unlearn.attacks.report.attach_to_report`:
    ``report.json["robustness"]`` and the tables and figure in ``report.md``; needs ``out_dir``). Every setting
    is validated (schemes against the model's layers, relearning data against the evaluated rows, the report)
    before any evaluation. ``model`` is never modified."""
    attacks = _coerce_attacks(attacks)
    eval_config = AttackEvalConfig.coerce(eval)
    quant_config = QuantizeConfig.coerce(quantize)
    relearn_config = RelearnConfig.coerce(relearn)
    plan = None
    if report is not None:
        from lit_unlearn.attacks.report import resolve_report

        if out_dir is None:
            raise ValueError("run_attacks: report= needs out_dir (the robustness files the report links to).")
        report = resolve_report(report)
    if "quantize" in attacks:
        check_schemes(model, quant_config.schemes, quant_config.backend, quant_config.resolved_group_size(model))
    if "relearn" in attacks:
        plan = plan_relearning(relearn_config, eval_config)
    start = time.perf_counter()
    section: dict[str, Any] = {"format": ROBUSTNESS_FORMAT, "model": model_label or type(model).__name__,
                               "eval": eval_config.to_dict(), "attacks": attacks}
    if "quantize" in attacks:
        section["quantize"] = quantization_attack(model, tokenizer, quant_config, eval_config)
    if "relearn" in attacks:
        section["relearn"] = relearn_attack(model, tokenizer, relearn_config, eval_config, plan=plan)
    section["runtime_s"] = round(time.perf_counter() - start, 3)
    if out_dir is not None:
        from lit_unlearn.attacks.report import write_robustness

        section["files"] = {k: str(v) for k, v in write_robustness(section, out_dir).items()}
    if report is not None:
        from lit_unlearn.attacks.report import attach_to_report

        section["files"].update({f"report_{k}": str(v) for k, v in attach_to_report(section, report).items()})
    return section


#: the keys of :func:`robustness_summary` (the demo's robustness columns)
SUMMARY_KEYS = ("forget_ma", "forget_rouge", "int4_forget_ma", "int4_forget_rouge", "relearn_forget_ma_before",
                "relearn_forget_rouge_before", "relearn_forget_ma", "relearn_forget_rouge")


def robustness_summary(model: nn.Module, tokenizer, source: str = "builtin:tofu-mini", forget_split: str = "forget10",
                       relearn_steps: int = 25, lr: float = 5e-4, batch_size: int = 4, max_new_tokens: int = 32,
                       seed: int = 0, max_samples: int | None = None, progress: bool = False,
                       eval_batch_size: int = 32, max_length: int = 128,
                       accelerator: str = "cpu", data_seed: int = 0,
                       forget_per_sample: Mapping[str, Mapping[int, float]] | None = None) -> dict[str, float | int | None]:
    """Forget memorization accuracy and ROUGE-L recall of ``model``: at full precision, after 4-bit RTN
    quantization (groups of 128 where the layers allow, else per channel: ``group_size="auto"``), and after
    ``relearn_steps`` relearning steps on a seeded half of the forget split (evaluated on the other half,
    before and after). Only the forget MA and ROUGE-L are computed (:func:`~lit_unlearn.attacks.probe.forget_probe`:
    no truth ratio, utility or MIA).

    The full-precision model is probed once, per row: its mean is the full-precision column and its mean
    over the held-out half is the "before relearning" column. ``forget_per_sample``: those per-row values
    when they are already known, e.g. the model's TOFU report ``splits.forget.per_sample`` on the same
    forget rows (keys ``memorization_accuracy`` and ``rouge_l_recall``, by row), which saves that probe too.
    Then the work is one probe of the quantized model, ``relearn_steps`` training steps and one probe of half
    the rows.

    Returns ``{"forget_ma", "forget_rouge", "int4_forget_ma", "int4_forget_rouge", "relearn_forget_ma_before",
    "relearn_forget_rouge_before", "relearn_forget_ma", "relearn_forget_rouge", "relearn_steps", "int4_group_size"}``.
    Naive equivalent: ``quantization_attack(model, tok, QuantizeConfig(["int4"], group_size="auto"), ev)`` and
    ``relearn_attack(model, tok, RelearnConfig(steps=(0, relearn_steps), ...), ev)`` with
    ``ev = AttackEvalConfig(..., metrics="forget_ma_rouge")`` (equal up to float rounding in padded batches,
    ``tests/test_robustness.py``). ``seed`` seeds the relearning (row choice and training); ``data_seed`` is
    the builtin data's generator seed (keep 0: another seed is other data).
    """
    from lit_unlearn.attacks.probe import PROBE_METRICS, forget_probe_per_sample, probe_means

    eval_config = AttackEvalConfig(source=source, forget_split=forget_split, utility=False, mia=False,
                                   max_new_tokens=max_new_tokens, max_samples=max_samples, seed=data_seed,
                                   batch_size=eval_batch_size, max_length=max_length, metrics="forget_ma_rouge")
    relearn_config = RelearnConfig(steps=(relearn_steps,) if relearn_steps > 0 else (0,), lr=lr,
                                   batch_size=batch_size, seed=seed, progress=progress, accelerator=accelerator,
                                   max_length=max_length)
    plan = plan_relearning(relearn_config, eval_config)
    rows = eval_config.rows("forget")
    if forget_per_sample is None:
        full_rows = forget_probe_per_sample(model, tokenizer, rows, max_new_tokens, eval_batch_size, max_length,
                                            where=f"split {forget_split!r}")
    else:
        full_rows = {f"forget/{name}": dict(forget_per_sample[name])
                     for name in ("memorization_accuracy", "rouge_l_recall")}
        if any(sorted(values) != list(range(len(rows))) for values in full_rows.values()):
            raise ValueError(f"robustness_summary: forget_per_sample must hold a value for each of the {len(rows)}"
                             f" rows of {forget_split!r} (0..{len(rows) - 1}); it has rows"
                             f" {sorted(full_rows['forget/memorization_accuracy'])[:5]}...")
    full = probe_means(full_rows)
    before = probe_means(full_rows, plan.eval_forget_rows)
    quant = quantization_attack(model, tokenizer, QuantizeConfig(schemes=["int4"], group_size="auto"), eval_config,
                                baseline=full)
    int4 = quant["results"][next(k for k in quant["results"] if k != "full")]
    after = before
    if relearn_steps > 0:
        curve = relearn_attack(model, tokenizer, relearn_config, eval_config, plan=plan)["curve"]
        after = {name: curve[name][-1] for name in PROBE_METRICS}
    return {
        "forget_ma": full["forget/memorization_accuracy"],
        "forget_rouge": full["forget/rouge_l_recall"],
        "int4_forget_ma": int4["forget/memorization_accuracy"],
        "int4_forget_rouge": int4["forget/rouge_l_recall"],
        "int4_group_size": quant["group_size"],
        "relearn_forget_ma_before": before["forget/memorization_accuracy"],
        "relearn_forget_rouge_before": before["forget/rouge_l_recall"],
        "relearn_forget_ma": after["forget/memorization_accuracy"],
        "relearn_forget_rouge": after["forget/rouge_l_recall"],
        "relearn_steps": relearn_steps,
    }
