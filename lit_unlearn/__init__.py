"""lit_unlearn: machine unlearning for large language models on PyTorch Lightning."""

__version__ = "0.1.0"
