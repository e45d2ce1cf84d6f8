"""Robustness attacks on unlearned models: is the forgotten knowledge really gone?

* :func:`run_attacks` — the quantization and relearning attacks on copies of one model; the robustness section
  of the report (``robustness.json``/``.md``/``.png`` with ``out_dir``). ``lit-unlearn attack`` on the command line.
* :func:`quantization_attack` / :func:`~lit_unlearn.attacks.quantization.quantize_model` — RTN int8/int4 in torch
  (CPU, CI) or bitsandbytes LLM.int8/NF4 (CUDA).
* :func:`relearn_attack` — fine-tune a copy for a schedule of steps on a held-out part of the forget set (or any
  split) and re-evaluate: the recovery curve and its area.
* :func:`robustness_summary` — forget MA/ROUGE after 4-bit quantization and after N relearning steps (cheap).

The membership-inference additions (GradNorm, reference model, Min-K% k sweep) are metrics:
:mod:`lit_unlearn.metrics` (``GradNormMIAAUC``, ``ReferenceMIAAUC``, ``MIAKSweep``) and
:mod:`lit_unlearn.functional.mia`. See docs/robustness.md.
"""
from lit_unlearn.attacks.evaluation import AttackEvalConfig, attack_metrics
from lit_unlearn.attacks.quantization import quantize_model
from lit_unlearn.attacks.relearn import RelearnConfig, curve_area, relearn_attack
from lit_unlearn.attacks.suite import (
    ATTACKS,
    AttackSettings,
    QuantizeConfig,
    quantization_attack,
    robustness_summary,
    run_attacks,
)

__all__ = [
    "ATTACKS",
    "AttackEvalConfig",
    "AttackSettings",
    "QuantizeConfig",
    "RelearnConfig",
    "attack_metrics",
    "curve_area",
    "quantization_attack",
    "quantize_model",
    "relearn_attack",
    "robustness_summary",
    "run_attacks",
]
