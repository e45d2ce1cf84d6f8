"""What a result depends on besides the code: package versions, the processor, and the torch thread count.

Torch's CPU kernels split reductions across threads, so the same seed gives bit-different weights with a
different number of threads; after a few hundred optimizer steps those bits become visibly different
metrics. Every report, ``summary.json`` and saved model therefore records :func:`environment_info`, and runs
started through the CLI or the demo fix the thread count with :func:`set_num_threads` (default
:data:`DEFAULT_NUM_THREADS`, overridden by ``$LIT_UNLEARN_NUM_THREADS`` or ``--num_threads``).
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch

#: the torch intra-op thread count of CLI and demo runs unless the user chooses another one
DEFAULT_NUM_THREADS = 2
NUM_THREADS_ENV = "LIT_UNLEARN_NUM_THREADS"

#: recorded whenever installed (the first eight are always installed)
RECORDED_PACKAGES = ("torch", "transformers", "tokenizers", "lightning", "torchmetrics", "datasets", "numpy",
                     "scipy", "deepspeed", "peft", "lm_eval", "bitsandbytes")


def default_num_threads() -> int:
    """``$LIT_UNLEARN_NUM_THREADS`` when set, else :data:`DEFAULT_NUM_THREADS`."""
    value = os.environ.get(NUM_THREADS_ENV)
    if value is None or value == "":
        return DEFAULT_NUM_THREADS
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"${NUM_THREADS_ENV}={value!r} is not an integer; set it to a thread count such as 2") from None
    if threads < 1:
        raise ValueError(f"${NUM_THREADS_ENV}={value!r}: the thread count must be at least 1")
    return threads


def set_num_threads(num_threads: int | None = None) -> int:
    """Fix torch's intra-op thread count (``None``: :func:`default_num_threads`); returns the count set."""
    threads = default_num_threads() if num_threads is None else int(num_threads)
    if threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def use_deterministic_algorithms() -> None:
    """Deterministic kernels where torch has them; a warning (not an error) for ops that have none.

    On CUDA, cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first use to be deterministic.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.benchmark = False


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") or line.startswith("Model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_names() -> list[str]:
    """The names of the visible CUDA devices (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def environment_info() -> dict[str, Any]:
    """Python and package versions, CPU model, GPU names, CPU count and the current torch thread count."""
    import lit_unlearn

    packages = {name: version for name in RECORDED_PACKAGES if (version := _package_version(name)) is not None}
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "lit_unlearn": lit_unlearn.__version__,
        "packages": packages,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpu_names(),
        "torch_num_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # ATen's kernel path (see utils.cpu_kernels)
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
    }
