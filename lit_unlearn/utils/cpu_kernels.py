"""Pin torch's and MKL's CPU code paths to AVX2, so that x86 processors of different generations compute alike.

torch chooses its vectorised CPU kernels by the processor's instruction set (ATen's dispatch: AVX-512 on many
Xeons, AVX2 on most AMD EPYC and desktop processors) and MKL chooses its matrix-multiply code path the same
way. The paths round differently, so the same seed and thread count train bit-different models on two CPU
generations, and the demo's few hundred optimizer steps turn those bits into visibly different metrics (see
docs/reproducibility.md). ``lit-unlearn`` therefore starts with

* ``ATEN_CPU_CAPABILITY=avx2``: ATen's AVX2 kernels even where AVX-512 ones exist;
* ``MKL_CBWR=AVX2``: MKL's conditional numerical reproducibility mode on its AVX2 branch;

on x86 processors that have AVX2 and FMA, unless the user set either variable or ``LIT_UNLEARN_PORTABLE_KERNELS=0``.
Both are read once, when torch (and its MKL) load, so this must run before ``import torch``: the stdlib-only CLI
front door calls :func:`pin_portable_cpu_kernels` first; scripts that import lit_unlearn directly export the two
variables themselves. On processors with AVX2 as their best path the setting changes no bit (checked on an AMD
EPYC); on AVX-512 processors it costs some speed and is what makes their results comparable with AVX2 ones.
"""
from __future__ import annotations

import os
import platform
import sys

#: the variables set, and their values
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
#: set to ``0`` to keep the processor's fastest kernels
SWITCH_ENV = "LIT_UNLEARN_PORTABLE_KERNELS"


def cpu_flags() -> set[str]:
    """The instruction-set flags of the first processor in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def pin_portable_cpu_kernels() -> dict[str, str]:
    """Set :data:`PORTABLE_KERNELS` in ``os.environ`` where they apply; returns the variables it set.

    Nothing is set when ``$LIT_UNLEARN_PORTABLE_KERNELS`` is ``0``, on non-x86 machines, on processors without
    AVX2/FMA, for a variable the user already set, or once torch is imported (too late to take effect).
    """
    if os.environ.get(SWITCH_ENV, "1").strip() == "0" or "torch" in sys.modules:
        return {}
    if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma"} <= cpu_flags():
        return {}
    chosen = {name: value for name, value in PORTABLE_KERNELS.items() if name not in os.environ}
    os.environ.update(chosen)
    return chosen
