"""Small shared helpers (atomic file output, cache locations)."""
