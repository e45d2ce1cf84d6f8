"""Plain-text forget corpora (WHP/WMDP/MUSE style): documents chunked to ``max_length``, every token labelled."""
from __future__ import annotations

import glob
from pathlib import Path

from lit_unlearn.data.builtin_wmdp import WMDP_BUILTIN_VERSION, builtin_documents
from lit_unlearn.data.sources import read_jsonl, read_text_file
from lit_unlearn.data.tofu import EncodedDataset, UnlearningDataModule
from lit_unlearn.data.tokenize import DataValidationError, encode_text


def read_documents(pattern: str) -> list[str]:
    """Documents from ``.txt`` files (one document per file), ``.jsonl`` files (a ``text`` field per line) or a
    builtin corpus ``builtin:wmdp-mini/<corpus>`` (``data/builtin_wmdp.py``)."""
    builtin = builtin_documents(pattern)
    if builtin is not None:
        return builtin
    files = sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).is_file() else [])
    if not files:
        raise DataValidationError(f"No text files match {pattern!r}.")
    docs: list[str] = []
    for file in files:
        path = Path(file)
        if path.suffix == ".jsonl":
            for n, row in enumerate(read_jsonl(path)):
                if not isinstance(row.get("text"), str):
                    raise DataValidationError(f"{path}: object {n + 1}: no string 'text' field (it has:"
                                              f" {sorted(row)}).")
                docs.append(row["text"])
        else:
            docs.append(read_text_file(path))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataValidationError(f"The files matching {pattern!r} contain no text.")
    return docs


class TextDataModule(UnlearningDataModule):
    """Unlearn plain text: ``forget_files`` (and optionally ``retain_files``) chunked into labelled pieces.

    Without ``retain_files``, retain batches come from the TOFU-format ``retain_split`` of ``source`` (set it
    to ``None`` for none). Every token of a chunk is labelled; there is no prompt and no refusal answer, so
    IdkNLL/IdkDPO do not apply.

    Args:
        forget_files: a glob or a file: ``.txt`` (one document each) or ``.jsonl`` (``text`` field), or a
            builtin corpus such as ``builtin:wmdp-mini/forget-corpus`` (see ``data/builtin_wmdp.py``).
        retain_files: the same for the retain corpus.
    """

    def __init__(
        self,
        forget_files: str,
        retain_files: str | None = None,
        source: str = "builtin:tofu-mini",
        tokenizer: str = "builtin:tofu-mini",
        retain_split: str | None = None,
        max_length: int = 128,
        batch_size: int = 8,
        retain_batch_size: int | None = None,
        num_workers: int = 0,
        pad_token: str | None = None,
        seed: int = 0,
    ):
        super().__init__(source, tokenizer, "forget_files", retain_split, max_length, batch_size,
                         retain_batch_size, num_workers, pad_token, None, seed)
        self.forget_files = forget_files
        self.retain_files = retain_files

    def _chunks(self, pattern: str, name: str) -> EncodedDataset:
        tokenizer = self.load_tokenizer()
        samples = [c for doc in read_documents(pattern) for c in encode_text(tokenizer, doc, self.max_length)]
        if not samples:
            raise DataValidationError(f"{name} files {pattern!r} give no chunk of at least 2 tokens.")
        return EncodedDataset(samples, None, name)

    def build_forget_dataset(self) -> EncodedDataset:
        return self._chunks(self.forget_files, "forget")

    def setup(self, stage: str | None = None) -> None:
        if self.retain_files is not None and self.retain_dataset is None:
            self.retain_dataset = self._chunks(self.retain_files, "retain")
        super().setup(stage)

    @property
    def data_version(self) -> str:
        version = f"|{WMDP_BUILTIN_VERSION}" if "builtin:" in f"{self.forget_files}{self.retain_files}" else ""
        return f"text:{self.forget_files}|{self.retain_files or self.retain_split}{version}"
