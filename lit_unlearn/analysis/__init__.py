"""The papers' analysis tools, usable without Lightning: MRD (difficulty) and the G-effect."""
from lit_unlearn.analysis.geffect import GEffect, g_effect, layer_groups, objective_gradient, per_instance_g_effect
from lit_unlearn.analysis.mrd import mrd_scores

__all__ = ["GEffect", "g_effect", "layer_groups", "mrd_scores", "objective_gradient", "per_instance_g_effect"]
