"""Datamodules, the builtin TOFU-format generator, tokenisation and samplers.

The datamodules import Lightning, which is slow to import; they load on first use so that
``lit_unlearn.data.builtin`` and the tokenisation helpers stay quick to import on their own.
"""
from lit_unlearn.data.tokenize import DataValidationError

__all__ = ["DataValidationError", "TOFUDataModule", "UnlearningDataModule", "TextDataModule"]


def __getattr__(name: str):
    if name in ("TOFUDataModule", "UnlearningDataModule"):
        from lit_unlearn.data import tofu

        return getattr(tofu, name)
    if name == "TextDataModule":
        from lit_unlearn.data.text import TextDataModule

        return TextDataModule
    raise AttributeError(f"module 'lit_unlearn.data' has no attribute {name!r}")
