"""Lightning callbacks that drop into any project following the small protocol in their docstrings."""
from lit_unlearn.callbacks.early_stopping import ForgettingEarlyStopping
from lit_unlearn.callbacks.geffect import GEffectMonitor
from lit_unlearn.callbacks.mrd_curriculum import MRDCurriculum
from lit_unlearn.callbacks.report import TOFUReport

__all__ = ["ForgettingEarlyStopping", "GEffectMonitor", "MRDCurriculum", "TOFUReport"]
