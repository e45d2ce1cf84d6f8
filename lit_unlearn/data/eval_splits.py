"""The TOFU evaluation splits: their keys, default split names and the ``{key: split}`` map to evaluate.

Part of the data layer (the TOFU datamodules serve these splits); :mod:`lit_unlearn.evaluation.config`
re-exports every name. No heavy imports.
"""
from __future__ import annotations

#: the evaluation splits of the TOFU suite: key -> default split name (TOFU's, Maini et al., 2024)
DEFAULT_EVAL_SPLITS: dict[str, str] = {
    "forget": "forget10_perturbed",
    "retain": "retain_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
    "holdout": "holdout10",
}
EVAL_KEYS = tuple(DEFAULT_EVAL_SPLITS)


def resolve_split_map(
    splits: dict[str, str] | None = None, forget_split: str | None = None
) -> dict[str, str]:
    """The ``{key: split}`` map to evaluate, defaults filled in.

    ``splits=None`` gives the full TOFU suite; when the datamodule unlearns ``forget_split`` (``forgetXX``),
    the default forget/holdout splits follow it (``forgetXX_perturbed``, ``holdoutXX``). A given map is
    taken as is (keys must be known; an empty map is an error).
    """
    if splits is None:
        out = dict(DEFAULT_EVAL_SPLITS)
        if forget_split and forget_split.startswith("forget") and not forget_split.endswith("_perturbed"):
            out["forget"] = f"{forget_split}_perturbed"
            out["holdout"] = "holdout" + forget_split[len("forget"):]
        return out
    splits = dict(splits)
    if not splits:
        raise ValueError("No evaluation splits given: pass at least one of " + ", ".join(EVAL_KEYS) + ".")
    unknown = sorted(set(splits) - set(EVAL_KEYS))
    if unknown:
        raise ValueError(f"Unknown evaluation split keys {unknown}; choose from {list(EVAL_KEYS)}"
                         f" (e.g. {{'forget': 'forget10_perturbed'}}).")
    return splits
