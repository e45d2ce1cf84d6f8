"""TOFU evaluation datasets and their collation (data layer; ``lit_unlearn.evaluation.data`` re-exports them).

Each sample of an evaluation split carries every answer variant the TOFU metrics score, tokenised once:

* ``answer``: question + answer (probability, memorization accuracy, extraction, MIA scores, truth ratio's
  correct answer on real-authors/world-facts);
* ``correct``: question + paraphrased answer (truth ratio's correct answer on forget/retain);
* ``perturbed``: question + each of the J perturbed answers (truth ratio, normalised probability);
* ``prompt_ids`` and ``answer_text`` for greedy generation (ROUGE-L) and the ZLib attack.

:class:`EvalCollator` pads each variant into its own right-padded batch (the J perturbed answers of the
B samples become one ``(B·J, T)`` batch), so a batch needs one forward pass per variant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from lit_unlearn.data.sources import load_rows
from lit_unlearn.data.tokenize import DataValidationError, PadCollator, check_tokenizer, encode_qa, prompt_ids
from lit_unlearn.data.eval_splits import EVAL_KEYS

#: what each evaluation split is for
ROLES = {"forget": "forget", "retain": "retain", "real_authors": "general", "world_facts": "general",
         "holdout": "holdout"}


@dataclass(frozen=True)
class EvalSplit:
    """One evaluation split: its key in the report (``forget``, ``retain``, ``real_authors``,
    ``world_facts``, ``holdout``) and the dataset split it is read from."""

    key: str
    split: str

    def __post_init__(self) -> None:
        if self.key not in EVAL_KEYS:
            raise ValueError(f"Unknown evaluation split key {self.key!r}; choose from {list(EVAL_KEYS)}.")

    @property
    def role(self) -> str:
        return ROLES[self.key]

    @property
    def truth_ratio_split(self) -> str | None:
        """The TruthRatio aggregation: ``forget`` (mean min(TR, 1/TR)), ``other`` or None (holdout)."""
        return {"forget": "forget", "retain": "other", "general": "other"}.get(self.role)

    @property
    def correct_field(self) -> str | None:
        """The truth ratio's correct answer: paraphrased on forget/retain, the answer itself elsewhere."""
        return {"forget": "paraphrased_answer", "retain": "paraphrased_answer", "general": "answer"}.get(self.role)

    @property
    def fields(self) -> tuple[str, ...]:
        if self.role == "holdout":
            return ("question", "answer")
        if self.correct_field == "answer":
            return ("question", "answer", "perturbed_answer")
        return ("question", "answer", "paraphrased_answer", "perturbed_answer")


def _check_rows(rows: list[dict[str, Any]], spec: EvalSplit) -> int:
    """Validate the rows of an evaluation split; return the number J of perturbed answers (0 for holdout)."""
    where = f"Evaluation split {spec.key!r} ({spec.split!r})"
    if not rows:
        raise DataValidationError(f"{where} is empty: nothing to evaluate.")
    n_perturbed = None
    for i, row in enumerate(rows):
        for name in spec.fields:
            if name not in row:
                raise DataValidationError(f"{where} row {i} has no field {name!r} (it has: {', '.join(sorted(row))}).")
            value = row[name]
            if name == "perturbed_answer":
                if isinstance(value, str):
                    value = [value]
                if not value or not all(isinstance(v, str) and v.strip() for v in value):
                    raise DataValidationError(f"{where} row {i}: 'perturbed_answer' must be a non-empty list of strings.")
                if n_perturbed is None:
                    n_perturbed = len(value)
                elif len(value) != n_perturbed:
                    raise DataValidationError(
                        f"{where} row {i} has {len(value)} perturbed answers, earlier rows {n_perturbed}: the truth"
                        " ratio needs the same number per question within a split."
                    )
            elif not isinstance(value, str) or not value.strip():
                raise DataValidationError(f"{where} row {i}: field {name!r} must be a non-empty string.")
    return n_perturbed or 0


class EvalDataset(Dataset):
    """Pre-tokenised samples of one evaluation split; ``__getitem__`` adds the row ``index``.

    Args:
        spec: which split this is (``EvalSplit(key, split)``).
        rows: the split's rows (TOFU fields).
        tokenizer: the tokenizer (also used later to decode generations).
        max_length: tokens per (question, answer variant); answers are cut at the end.
        max_samples: keep only the first ``max_samples`` rows (quick evaluations); indices stay row numbers.
    """

    def __init__(self, spec: EvalSplit, rows: list[dict[str, Any]], tokenizer, max_length: int = 128,
                 max_samples: int | None = None, source: str | None = None):
        if max_samples is not None:
            if max_samples < 1:
                raise ValueError(f"max_samples must be >= 1, got {max_samples}.")
            rows = rows[:max_samples]
        check_tokenizer(tokenizer)
        self.spec = spec
        self.source = source
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_perturbed = _check_rows(rows, spec)
        self.rows = rows
        self.samples = [self._encode(i, row) for i, row in enumerate(rows)]

    def _encode(self, i: int, row: dict[str, Any]) -> dict[str, Any]:
        where = f"evaluation split {self.spec.key!r} ({self.spec.split!r}) row {i}"

        def qa(answer: str, what: str) -> dict[str, list[int]]:
            return encode_qa(self.tokenizer, row["question"], answer, self.max_length, where=f"{where} ({what})")

        sample: dict[str, Any] = {
            "answer": qa(row["answer"], "answer"),
            "prompt_ids": prompt_ids(self.tokenizer, row["question"]),
            "answer_text": row["answer"],
        }
        if self.spec.correct_field == "paraphrased_answer":
            sample["correct"] = qa(row["paraphrased_answer"], "paraphrased answer")
        if self.num_perturbed:
            perturbed = row["perturbed_answer"]
            perturbed = [perturbed] if isinstance(perturbed, str) else list(perturbed)
            sample["perturbed"] = [qa(p, f"perturbed answer {j}") for j, p in enumerate(perturbed)]
        return sample

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.samples[i], "index": i}


@dataclass
class EvalCollator:
    """Collate evaluation samples: each answer variant right-padded into its own batch.

    Output: ``index`` (B,), ``answer`` and ``correct`` (when present) as ``{input_ids, attention_mask,
    labels}`` of B rows, ``perturbed`` of B·J rows (sample-major: rows ``b·J .. b·J+J−1`` belong to sample
    b), ``num_perturbed`` (J), ``prompt_ids`` (list of B id lists) and ``answer_text`` (list of B strings).
    """

    pad_token_id: int

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        pad = PadCollator(self.pad_token_id, padding_side="right")
        batch: dict[str, Any] = {
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
            "answer": pad([r["answer"] for r in rows]),
            "prompt_ids": [list(r["prompt_ids"]) for r in rows],
            "answer_text": [r["answer_text"] for r in rows],
        }
        if "correct" in rows[0]:
            batch["correct"] = pad([r["correct"] for r in rows])
        if "perturbed" in rows[0]:
            batch["num_perturbed"] = len(rows[0]["perturbed"])
            batch["perturbed"] = pad([p for r in rows for p in r["perturbed"]])
        return batch


def build_eval_datasets(
    tokenizer,
    source: str,
    splits: dict[str, str],
    max_length: int = 128,
    max_samples: int | dict[str, int] | None = None,
    seed: int = 0,
) -> list[EvalDataset]:
    """One :class:`EvalDataset` per ``{key: split}`` entry, in the canonical key order."""
    out = []
    for key in sorted(splits, key=EVAL_KEYS.index):
        spec = EvalSplit(key, splits[key])
        limit = max_samples.get(key) if isinstance(max_samples, dict) else max_samples
        rows = load_rows(source, spec.split, seed)
        out.append(EvalDataset(spec, rows, tokenizer, max_length, limit, source))
    return out
