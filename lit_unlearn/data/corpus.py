"""Finetuning data from plain text: documents chunked to ``max_length``, every token labelled, in ONE flat
training set (the target/retain models of the MUSE and WMDP demos are trained on it).

``TextDataModule`` pairs a forget corpus with a retain corpus for unlearning (its batches are
``{"forget": ..., "retain": ...}`` and stop at the shorter corpus); this module serves the union of its
documents as ordinary ``{"input_ids", "attention_mask", "labels"}`` batches, so ``FinetuneModule`` (plain
next-token NLL) trains a causal LM on every chunk of every document once per epoch.
Naive equivalent: ``[c for doc in documents for c in encode_text(tokenizer, doc, max_length)]`` shuffled
into batches.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

from lit_unlearn.data.tofu import EncodedDataset, TOFUDataModule
from lit_unlearn.data.tokenize import DataValidationError, encode_text


class CorpusDataModule(TOFUDataModule):
    """Plain-text finetuning: every document of ``files`` and ``documents`` chunked, every token labelled.

    Args:
        files: globs or files (``.txt``: one document each; ``.jsonl``: a ``text`` field per line) or builtin
            corpora such as ``builtin:wmdp-mini/all-corpus`` (as ``TextDataModule``'s ``forget_files``).
        documents: documents given directly (e.g. MUSE splits read with ``lit_unlearn.data.muse``).
        tokenizer, max_length, batch_size, num_workers, pad_token, seed: as ``TOFUDataModule``.
    """

    def __init__(
        self,
        files: Sequence[str] | None = None,
        documents: Sequence[str] | None = None,
        tokenizer: str = "builtin:tofu-mini",
        max_length: int = 128,
        batch_size: int = 16,
        num_workers: int = 0,
        pad_token: str | None = None,
        seed: int = 0,
    ):
        super().__init__(tokenizer=tokenizer, splits=[], max_length=max_length, batch_size=batch_size,
                         num_workers=num_workers, pad_token=pad_token, seed=seed)
        if isinstance(files, str):
            files = [files]
        self.files = list(files or [])
        self.documents = list(documents or [])
        if not self.files and not self.documents:
            raise DataValidationError("CorpusDataModule needs text: pass files (globs of .txt/.jsonl or"
                                      " builtin:wmdp-mini/<corpus>) or documents.")
        bad = [i for i, d in enumerate(self.documents) if not isinstance(d, str) or not d.strip()]
        if bad:
            raise DataValidationError(f"CorpusDataModule: documents {bad[:5]} are empty or not strings.")

    def all_documents(self) -> list[str]:
        """The documents of ``files`` (in order) followed by ``documents``."""
        from lit_unlearn.data.text import read_documents

        return [d for pattern in self.files for d in read_documents(pattern)] + self.documents

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            tokenizer = self.load_tokenizer()
            samples = [c for doc in self.all_documents() for c in encode_text(tokenizer, doc, self.max_length)]
            if not samples:
                raise DataValidationError(f"CorpusDataModule: {self.files or 'the documents'} give no chunk of at"
                                          " least 2 tokens.")
            self.train_dataset = EncodedDataset(samples, None, "corpus")

    @property
    def data_version(self) -> str:
        digest = hashlib.sha256("\x00".join(self.all_documents()).encode()).hexdigest()[:16]
        return f"corpus:{digest}"
