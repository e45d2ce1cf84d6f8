"""Unlearning objectives, each a LightningModule on :class:`UnlearningModule`."""
from lit_unlearn.objectives.altpo import AltPO
from lit_unlearn.objectives.base import UnlearningModule
from lit_unlearn.objectives.ceu import CEU
from lit_unlearn.objectives.finetune import FinetuneModule
from lit_unlearn.objectives.ga import GA, GradDiff
from lit_unlearn.objectives.lm import CausalLMModule
from lit_unlearn.objectives.npo import NPO, SimNPO
from lit_unlearn.objectives.pdu import PDU
from lit_unlearn.objectives.preference import IdkDPO, IdkNLL
from lit_unlearn.objectives.rectification import GRU
from lit_unlearn.objectives.reweighting import TNPO, WGA, WTNPO, SatImp, SatImpGroup, SatImpInstance, SimImp, SimSat
from lit_unlearn.objectives.rmu import RMU
from lit_unlearn.objectives.undial import UNDIAL

__all__ = [
    "CausalLMModule",
    "FinetuneModule",
    "UnlearningModule",
    "GA",
    "GradDiff",
    "NPO",
    "SimNPO",
    "IdkNLL",
    "IdkDPO",
    "WGA",
    "TNPO",
    "WTNPO",
    "SatImp",
    "SimSat",
    "SimImp",
    "SatImpInstance",
    "SatImpGroup",
    "RMU",
    "UNDIAL",
    "CEU",
    "PDU",
    "AltPO",
    "GRU",
]
