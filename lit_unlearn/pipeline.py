"""The embedded-default pipeline behind ``make demo`` / ``lit-unlearn demo``.

Stages: builtin data → BPE tokenizer → target model (trained on every author) and retain model (trained
without the forget authors) → evaluation. Trained models are cached under
``$LIT_UNLEARN_HOME/models/<kind>-<key>``, where the key hashes the data version and the training config, so
a rerun skips training. Each stage's wall time is printed at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from lit_unlearn.utils.io import atomic_write_json, cache_dir

MIN_TARGET_MEMORIZATION = 0.8


@dataclass(frozen=True)
class FinetuneConfig:
    """How the target/retain models are trained (everything that goes into the cache key)."""

    source: str = "builtin:tofu-mini"
    splits: tuple[str, ...] = ("full", "real_authors", "world_facts")
    epochs: int = 10
    lr: float = 3e-3
    warmup_steps: int = 50
    batch_size: int = 32
    max_length: int = 64
    seed: int = 0
    model: str = "builtin:tiny-llama"


def target_config(source: str = "builtin:tofu-mini", **kw) -> FinetuneConfig:
    return FinetuneConfig(source=source, splits=("full", "real_authors", "world_facts"), **kw)


def retain_config(forget_split: str = "forget10", source: str = "builtin:tofu-mini", **kw) -> FinetuneConfig:
    retain = "retain" + str(100 - int(forget_split.removeprefix("forget")))
    return FinetuneConfig(source=source, splits=(retain, "real_authors", "world_facts"), **kw)


class StageTimer:
    """Collects the wall time of each named stage."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"[lit-unlearn] {name} ...", flush=True)
        start = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - start
        print(f"[lit-unlearn] {name}: {self.times[name]:.1f}s", flush=True)

    def summary(self) -> str:
        width = max(len(k) for k in self.times)
        rows = [f"  {k:<{width}}  {v:7.1f}s" for k, v in self.times.items()]
        return "\n".join(["Wall time per stage:", *rows, f"  {'total':<{width}}  {sum(self.times.values()):7.1f}s"])


def model_key(config: FinetuneConfig, tokenizer: str) -> str:
    from lit_unlearn import __version__
    from lit_unlearn.data.sources import source_version

    payload = {"config": asdict(config), "data_version": source_version(config.source, config.seed),
               "tokenizer": Path(tokenizer).name, "lit_unlearn": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def finetune(config: FinetuneConfig, tokenizer: str, save_dir: str | Path, progress: bool = True) -> Path:
    """Train a model with :class:`FinetuneModule` per ``config`` and save it as a HF folder (atomically)."""
    import lightning as L

    from lit_unlearn.data.tofu import TOFUDataModule
    from lit_unlearn.objectives.finetune import FinetuneModule

    L.seed_everything(config.seed, verbose=False)
    data = TOFUDataModule(source=config.source, tokenizer=tokenizer, splits=list(config.splits),
                          batch_size=config.batch_size, max_length=config.max_length, seed=config.seed)
    module = FinetuneModule(model_name_or_path=config.model, tokenizer=tokenizer, lr=config.lr,
                            warmup_steps=config.warmup_steps, save_dir=str(save_dir), seed=config.seed)
    module.extra_metadata = {"finetune_config": asdict(config)}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=config.epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return Path(save_dir)


def cached_finetune(kind: str, config: FinetuneConfig, tokenizer: str, progress: bool = True) -> tuple[Path, bool]:
    """The trained model folder for ``config``, training it only when the cache has none. Returns (path, cached)."""
    folder = cache_dir() / "models" / f"{kind}-{model_key(config, tokenizer)}"
    if (folder / "lit_unlearn.json").is_file():
        return folder, True
    return finetune(config, tokenizer, folder, progress), False


@torch.no_grad()
def memorization_accuracy_on(model_dir: str | Path, split: str, source: str = "builtin:tofu-mini",
                             max_length: int = 64) -> float:
    """Mean per-sample memorisation accuracy (argmax next-token accuracy on answer tokens) on ``split``."""
    from lit_unlearn.data.tofu import TOFUDataModule
    from lit_unlearn.metrics import MemorizationAccuracy
    from lit_unlearn.models.loading import load_causal_lm

    data = TOFUDataModule(source=source, tokenizer=str(model_dir), splits=[split], max_length=max_length)
    data.setup("validate")
    model = load_causal_lm(str(model_dir)).eval()
    metric = MemorizationAccuracy()
    loader = torch.utils.data.DataLoader(data.train_dataset, batch_size=64, collate_fn=data.collate)
    for batch in loader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        metric.update(logits, batch["labels"], index=batch["index"])
    return float(metric.compute())


@dataclass
class DemoResult:
    out_dir: Path
    target: Path
    retain: Path
    memorization: dict[str, float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)


def run_demo(out_dir: str | Path = "outputs/demo", source: str = "builtin:tofu-mini", forget_split: str = "forget10",
             epochs: int = 10, progress: bool = True) -> DemoResult:
    """Build data, tokenizer, target and retain models (cached), and evaluate them on the forget split."""
    from lit_unlearn.data.sources import is_builtin, source_version
    from lit_unlearn.models.loading import builtin_tokenizer_dir

    out = Path(out_dir)
    timer = StageTimer()
    with timer.stage("data"):
        version = source_version(source)
        if is_builtin(source):
            from lit_unlearn.data.builtin import generate

            generate(source.removeprefix("builtin:")).to_folder(out / "data")
    with timer.stage("tokenizer"):
        tokenizer = str(builtin_tokenizer_dir(source))
    cached = {}
    with timer.stage("target model"):
        target, cached["target"] = cached_finetune("target", target_config(source, epochs=epochs), tokenizer, progress)
    with timer.stage("retain model"):
        retain, cached["retain"] = cached_finetune(
            "retain", retain_config(forget_split, source, epochs=epochs), tokenizer, progress)
    with timer.stage("evaluation"):
        ma = {
            "target/forget": memorization_accuracy_on(target, forget_split, source),
            "target/retain": memorization_accuracy_on(target, "retain_perturbed", source),
            "retain/forget": memorization_accuracy_on(retain, forget_split, source),
            "retain/retain": memorization_accuracy_on(retain, "retain_perturbed", source),
        }
    summary = {"data_version": version, "target": str(target), "retain": str(retain), "cached": cached,
               "memorization_accuracy": ma, "stage_seconds": timer.times}
    atomic_write_json(out / "summary.json", summary)
    print("\nMemorisation accuracy (argmax next-token accuracy on answer tokens):")
    for k, v in ma.items():
        print(f"  {k:<14} {v:.3f}")
    print(timer.summary())
    if ma["target/forget"] < MIN_TARGET_MEMORIZATION:
        raise SystemExit(
            f"FAILED: the target model memorised only {ma['target/forget']:.3f} of the forget answers' tokens"
            f" (need >= {MIN_TARGET_MEMORIZATION}). Unlearning results would be meaningless; train longer"
            f" (--epochs) or check the data. Model: {target}"
        )
    return DemoResult(out, target, retain, ma, timer.times)


def demo_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lit-unlearn demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--source", default="builtin:tofu-mini", help="builtin:tofu-mini or builtin:tofu-full")
    parser.add_argument("--forget-split", default="forget10")
    parser.add_argument("--epochs", type=int, default=10, help="finetuning epochs of the target/retain models")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    run_demo(args.out, args.source, args.forget_split, args.epochs, progress=not args.no_progress)
