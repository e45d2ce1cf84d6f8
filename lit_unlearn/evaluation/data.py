"""TOFU evaluation datasets and their collation: moved to :mod:`lit_unlearn.data.tofu_eval` (the data layer
does not import the evaluation layer); every name stays importable from here."""
from lit_unlearn.data.tofu_eval import (  # noqa: F401 (re-exported)
    ROLES,
    EvalCollator,
    EvalDataset,
    EvalSplit,
    build_eval_datasets,
)

__all__ = ["ROLES", "EvalCollator", "EvalDataset", "EvalSplit", "build_eval_datasets"]
