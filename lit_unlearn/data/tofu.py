"""LightningDataModules for TOFU-format question/answer data.

* :class:`TOFUDataModule` — one training set (the concatenation of ``splits``), for finetuning the target
  model (all authors) or the retain model (without the forget authors).
* :class:`UnlearningDataModule` — the unlearning setup: a ``CombinedLoader`` yielding
  ``{"forget": batch, "retain": batch}``. Each forget sample also carries a refusal answer under ``"idk"``
  (IdkNLL/IdkDPO) and the forget loader uses a :class:`WeightedDistributedSampler` that curriculum
  callbacks re-weight.

Everything that can be wrong with the data (unknown split or source, missing field, empty forget set,
answers cut away by ``max_length``, no pad token) raises :class:`DataValidationError` in ``setup``.
"""
from __future__ import annotations

from typing import Any, Sequence

import lightning as L
from torch.utils.data import DataLoader, Dataset

from lit_unlearn.data.sources import load_refusals, load_rows, source_version
from lit_unlearn.data.tokenize import DataValidationError, PadCollator, check_tokenizer, encode_qa

QA_FIELDS = ("question", "answer")


class EncodedDataset(Dataset):
    """Pre-tokenised samples; ``__getitem__`` adds the row ``index`` that losses and callbacks key on."""

    def __init__(self, samples: list[dict[str, Any]], rows: list[dict[str, Any]] | None = None, name: str = ""):
        self.samples = samples
        self.rows = rows if rows is not None else [{} for _ in samples]
        self.name = name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.samples[i], "index": i}


def validate_rows(rows: list[dict[str, Any]], split: str, fields: Sequence[str] = QA_FIELDS) -> None:
    """Every row must have non-empty string ``fields``; the message names the split and row."""
    if not rows:
        raise DataValidationError(f"Split {split!r} is empty.")
    for i, row in enumerate(rows):
        for field in fields:
            if row.get(field) is None:  # JSON loaders fill a field missing from some rows with null
                present = sorted(k for k, v in row.items() if v is not None)
                raise DataValidationError(
                    f"Split {split!r} row {i} has no field {field!r} (it has: {', '.join(present)})."
                )
            if not isinstance(row[field], str) or not row[field].strip():
                raise DataValidationError(f"Split {split!r} row {i}: field {field!r} must be a non-empty string.")


def encode_rows(tokenizer, rows: list[dict[str, Any]], split: str, max_length: int) -> list[dict[str, Any]]:
    return [
        encode_qa(tokenizer, r["question"], r["answer"], max_length, where=f"split {split!r} row {i}")
        for i, r in enumerate(rows)
    ]


class TOFUDataModule(L.LightningDataModule):
    """Finetuning data: the rows of ``splits`` from ``source``, tokenised in the QA format.

    Args:
        source: ``builtin:tofu-mini``, ``builtin:tofu-full``, a local folder of ``<split>.json[l]|.parquet``
            files, or a hub dataset name (``locuslab/TOFU``).
        tokenizer: tokenizer name or path; ``builtin:tofu-mini`` trains (once) a BPE on the builtin corpus.
        splits: the splits concatenated into the training set.
        max_length: tokens per sample; answers are truncated at the end, never dropped silently.
        batch_size: samples per step (per process).
        pad_token: set a missing pad token (``eos`` or a token string); otherwise a tokenizer without one is
            an error.
        seed: the builtin generator's seed (ignored for other sources).
        eval_splits: the TOFU evaluation suite served by ``val_dataloader``/``test_dataloader`` as
            ``{key: split}`` with keys ``forget``, ``retain``, ``real_authors``, ``world_facts``, ``holdout``;
            default: ``forget10_perturbed``, ``retain_perturbed``, ``real_authors_perturbed``,
            ``world_facts_perturbed``, ``holdout10`` (forget/holdout follow ``forget_split`` when unlearning).
        eval_source: where the evaluation splits come from (default: ``source``).
        eval_max_samples: evaluate only the first N rows of every split (quick checks).
        eval_batch_size: evaluation samples per batch and process (default: ``batch_size``).
        eval_max_length: tokens per evaluated (question, answer variant) (default: ``max_length``).
        eval_during_fit: also evaluate at the end of training epochs (the suite is slow: off by default; it
            always runs in ``validate`` and ``test``).
    """

    def __init__(
        self,
        source: str = "builtin:tofu-mini",
        tokenizer: str = "builtin:tofu-mini",
        splits: list[str] | None = None,
        max_length: int = 128,
        batch_size: int = 16,
        num_workers: int = 0,
        pad_token: str | None = None,
        seed: int = 0,
        eval_splits: dict[str, str] | None = None,
        eval_source: str | None = None,
        eval_max_samples: int | None = None,
        eval_batch_size: int | None = None,
        eval_max_length: int | None = None,
        eval_during_fit: bool = False,
    ):
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.source = source
        self.tokenizer_name = tokenizer
        self.splits = list(splits) if splits is not None else ["full", "real_authors", "world_facts"]
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pad_token = pad_token
        self.seed = seed
        self.tokenizer = None
        self.train_dataset: EncodedDataset | None = None
        if eval_max_samples is not None and eval_max_samples < 1:
            raise ValueError(f"eval_max_samples must be >= 1, got {eval_max_samples}.")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be positive, got {eval_batch_size}.")
        self.eval_splits = None if eval_splits is None else dict(eval_splits)
        self.eval_source = eval_source
        self.eval_max_samples = eval_max_samples
        self.eval_batch_size = eval_batch_size
        self.eval_max_length = eval_max_length
        self.eval_during_fit = eval_during_fit
        self._eval_datasets = None

    # -- shared helpers -------------------------------------------------------------------------------
    @property
    def data_version(self) -> str:
        return source_version(self.source, self.seed)

    def load_tokenizer(self):
        if self.tokenizer is None:
            from lit_unlearn.models.loading import load_tokenizer

            tokenizer = load_tokenizer(self.tokenizer_name, pad_token=self.pad_token)
            check_tokenizer(tokenizer)
            self.tokenizer = tokenizer
        return self.tokenizer

    def rows(self, split: str, fields: Sequence[str] = QA_FIELDS) -> list[dict[str, Any]]:
        rows = load_rows(self.source, split, self.seed)
        validate_rows(rows, split, fields)
        return rows

    def encoded_split(self, split: str) -> EncodedDataset:
        rows = self.rows(split)
        return EncodedDataset(encode_rows(self.load_tokenizer(), rows, split, self.max_length), rows, split)

    @property
    def collate(self) -> PadCollator:
        return PadCollator(self.load_tokenizer().pad_token_id)

    # -- Lightning hooks ------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            samples, rows = [], []
            for split in self.splits:
                part = self.encoded_split(split)
                samples += part.samples
                rows += part.rows
            self.train_dataset = EncodedDataset(samples, rows, "+".join(self.splits))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_dataset, batch_size=self.batch_size, shuffle=True, collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    # -- evaluation (the TOFU suite of data.tofu_eval, scored by lit_unlearn.evaluation) -------------------
    def eval_datasets(self) -> list:
        """One ``EvalDataset`` per evaluation split (built once)."""
        if self._eval_datasets is None:
            from lit_unlearn.data.eval_splits import resolve_split_map
            from lit_unlearn.data.tofu_eval import build_eval_datasets

            splits = resolve_split_map(self.eval_splits, getattr(self, "forget_split", None))
            self._eval_datasets = build_eval_datasets(
                self.load_tokenizer(), self.eval_source or self.source, splits,
                self.eval_max_length or self.max_length, self.eval_max_samples, self.seed,
            )
        return self._eval_datasets

    def eval_dataloaders(self) -> list[DataLoader]:
        """One loader per evaluation split, in order (Lightning adds a ``DistributedSampler`` under DDP)."""
        from lit_unlearn.data.tofu_eval import EvalCollator

        collate = EvalCollator(self.load_tokenizer().pad_token_id)
        return [DataLoader(ds, batch_size=self.eval_batch_size or self.batch_size, shuffle=False,
                           collate_fn=collate, num_workers=self.num_workers) for ds in self.eval_datasets()]

    def val_dataloader(self) -> list[DataLoader]:
        trainer = getattr(self, "trainer", None)
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        fitting = fn is not None and getattr(fn, "value", fn) == "fit"
        if fitting and not self.eval_during_fit:
            import warnings

            # no evaluation while training: Lightning would warn that the (empty) loader list has length zero
            warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")
            return []
        return self.eval_dataloaders()

    def test_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders()


class UnlearningDataModule(TOFUDataModule):
    """Forget and retain batches together: ``{"forget": ..., "retain": ...}`` per step.

    An epoch is one pass over the forget set (``CombinedLoader`` mode ``min_size``); the retain loader is
    reshuffled every epoch. Each forget sample carries a refusal answer (``batch["forget"]["idk"]``) chosen
    deterministically from its index, so cached reference log-probs stay keyed by (index, refusal).

    Args:
        forget_split: the split to unlearn (``forget01|05|10`` for TOFU).
        retain_split: the split to keep (``retain99|95|90``); ``None`` for no retain batches.
        retain_batch_size: defaults to ``batch_size``.
        refusals: a text file of refusal answers, one per line; default: the source's ``refusals.txt``
            or the builtin bank.
        eval_*: the evaluation suite (see :class:`TOFUDataModule`); the default forget/holdout evaluation
            splits follow ``forget_split`` (``forget05`` -> ``forget05_perturbed``, ``holdout05``).
        shuffle_seed: seeds the order of the forget and retain batches (default: ``seed``, which also picks
            the builtin data and the refusal answers); vary it alone to repeat a run over data orders.
    """

    def __init__(
        self,
        source: str = "builtin:tofu-mini",
        tokenizer: str = "builtin:tofu-mini",
        forget_split: str = "forget10",
        retain_split: str | None = "retain90",
        max_length: int = 128,
        batch_size: int = 8,
        retain_batch_size: int | None = None,
        num_workers: int = 0,
        pad_token: str | None = None,
        refusals: str | None = None,
        seed: int = 0,
        eval_splits: dict[str, str] | None = None,
        eval_source: str | None = None,
        eval_max_samples: int | None = None,
        eval_batch_size: int | None = None,
        eval_max_length: int | None = None,
        eval_during_fit: bool = False,
        shuffle_seed: int | None = None,
    ):
        super().__init__(source, tokenizer, [], max_length, batch_size, num_workers, pad_token, seed,
                         eval_splits=eval_splits, eval_source=eval_source, eval_max_samples=eval_max_samples,
                         eval_batch_size=eval_batch_size, eval_max_length=eval_max_length,
                         eval_during_fit=eval_during_fit)
        self.forget_split = forget_split
        self.retain_split = retain_split
        self.retain_batch_size = retain_batch_size or batch_size
        self.refusals_path = refusals
        self.shuffle_seed = seed if shuffle_seed is None else shuffle_seed
        self.forget_dataset: EncodedDataset | None = None
        self.retain_dataset: EncodedDataset | None = None
        self.forget_sampler = None

    def build_forget_dataset(self) -> EncodedDataset:
        forget = self.encoded_split(self.forget_split)
        tokenizer = self.load_tokenizer()
        refusals = load_refusals(self.source, self.seed, self.refusals_path)
        for i, (sample, row) in enumerate(zip(forget.samples, forget.rows)):
            idk_index = (i * 7919 + self.seed) % len(refusals)
            idk = encode_qa(tokenizer, row["question"], refusals[idk_index], self.max_length,
                            where=f"refusal {idk_index} for split {self.forget_split!r} row {i}")
            sample["idk"] = {**idk, "idk_index": idk_index}
        return forget

    def setup(self, stage: str | None = None) -> None:
        if self.forget_dataset is None:
            self.forget_dataset = self.build_forget_dataset()
            if len(self.forget_dataset) == 0:
                raise DataValidationError(f"The forget split {self.forget_split!r} is empty: nothing to unlearn.")
        if self.retain_split is not None and self.retain_dataset is None:
            self.retain_dataset = self.encoded_split(self.retain_split)

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_dataloader(self):
        from lightning.pytorch.utilities import CombinedLoader
        from torch.utils.data import DistributedSampler

        from lit_unlearn.data.samplers import WeightedDistributedSampler

        world_size, rank = self._world()
        if self.forget_sampler is None:
            self.forget_sampler = WeightedDistributedSampler(
                self.forget_dataset, num_replicas=world_size, rank=rank, seed=self.shuffle_seed
            )
        loaders = {
            "forget": DataLoader(self.forget_dataset, batch_size=self.batch_size, sampler=self.forget_sampler,
                                 collate_fn=self.collate, num_workers=self.num_workers)
        }
        if self.retain_dataset is not None:
            retain_sampler = DistributedSampler(
                self.retain_dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=self.shuffle_seed
            )
            loaders["retain"] = DataLoader(self.retain_dataset, batch_size=self.retain_batch_size,
                                           sampler=retain_sampler, collate_fn=self.collate,
                                           num_workers=self.num_workers)
        return CombinedLoader(loaders, mode="min_size")

    def forget_scoring_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """The forget set in order (sharded across ranks when distributed), for MRD and evaluation."""
        from torch.utils.data import DistributedSampler

        world_size, rank = self._world()
        sampler = DistributedSampler(self.forget_dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(self.forget_dataset, batch_size=batch_size or self.batch_size, sampler=sampler,
                          collate_fn=self.collate)
