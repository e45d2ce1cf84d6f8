"""Pure tensor functions, no Lightning: the single source of every formula (DESIGN.md §5–6)."""
from lit_unlearn.functional import generation, losses, metrics, tokens  # noqa: F401
