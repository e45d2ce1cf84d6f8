"""Shared fixtures: an isolated cache, the builtin tokenizer, and a tiny finetuned model built once per session."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory) -> Path:
    """Tokenizers and models built by tests go to a per-session folder, not the user's cache."""
    root = tmp_path_factory.mktemp("lit_unlearn_home")
    old = os.environ.get("LIT_UNLEARN_HOME")
    os.environ["LIT_UNLEARN_HOME"] = str(root)
    yield root
    if old is None:
        os.environ.pop("LIT_UNLEARN_HOME", None)
    else:
        os.environ["LIT_UNLEARN_HOME"] = old


@pytest.fixture(scope="session")
def builtin_tokenizer_path(isolated_cache) -> str:
    from lit_unlearn.models.loading import builtin_tokenizer_dir

    return str(builtin_tokenizer_dir("builtin:tofu-mini"))


def finetune_tiny(save_dir: Path, tokenizer: str, splits: list[str], max_steps: int, seed: int = 0, **model_kw) -> Path:
    """Finetune a small tiny-Llama on ``splits`` of tofu-mini for ``max_steps`` and save it as an HF folder."""
    import lightning as L

    from lit_unlearn.data import TOFUDataModule
    from lit_unlearn.objectives import FinetuneModule

    L.seed_everything(seed, verbose=False)
    data = TOFUDataModule(tokenizer=tokenizer, splits=splits, batch_size=16, max_length=64)
    module = FinetuneModule(tokenizer=tokenizer, lr=3e-3, warmup_steps=10, save_dir=str(save_dir), **model_kw)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    return save_dir


@pytest.fixture(scope="session")
def finetuned_tiny(tmp_path_factory, builtin_tokenizer_path) -> str:
    """A tiny Llama that has partly memorised forget10 and a slice of the retain data (a few seconds)."""
    path = tmp_path_factory.mktemp("models") / "finetuned_tiny"
    finetune_tiny(path, builtin_tokenizer_path, ["forget10", "real_authors"], max_steps=120)
    return str(path)


def free_port() -> int:
    """A free TCP port on localhost for a gloo rendezvous (MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_and_wait(fn: Callable, args: tuple, nprocs: int, timeout: float, what: str) -> None:
    """``torch.multiprocessing.spawn`` ``fn(rank, *args)`` on ``nprocs`` processes; kill them and fail the test
    if they have not finished within ``timeout`` seconds (a hung collective must not hang the suite)."""
    import torch.multiprocessing as mp

    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{what} did not finish in {timeout:g} s")


@pytest.fixture
def one_thread():
    """torch at one intra-op thread for the test, restored after: tiny models are faster single-threaded and a
    shared 2-core box is not oversubscribed (the 2-process runs use one thread per worker). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
