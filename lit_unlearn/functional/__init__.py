"""Pure tensor functions, no Lightning: the single source of every formula."""
from lit_unlearn.functional import generation, losses, metrics, tokens  # noqa: F401
