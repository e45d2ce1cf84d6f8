"""The WMDP unlearning corpora from the hub, written as ``.jsonl`` files that ``TextDataModule`` reads.

WMDP (Li et al., 2024, *The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning*) unlearns
with plain-text corpora:

- ``cyber-forget-corpus``, ``cyber-retain-corpus``, ``bio-retain-corpus``: hub dataset ``cais/wmdp-corpora``,
  one configuration each, split ``train``, field ``text``;
- ``bio-forget-corpus``: the gated hub dataset ``cais/wmdp-bio-forget-corpus`` (request access on its hub
  page, then log in with ``huggingface-cli login``), field ``text``;
- ``wikitext``: the retain corpus of the WMDP code's RMU runs, ``Salesforce/wikitext``
  ``wikitext-2-raw-v1``, split ``test``.

The WMDP code keeps the documents longer than 50 characters (``min_chars``); the files keep that filter.
Naive equivalent: ``[r["text"] for r in load_dataset(hub, config, split=split) if len(r["text"]) > 50]``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

#: corpus name -> (hub dataset, configuration, split)
HUB_CORPORA: dict[str, tuple[str, str | None, str]] = {
    "bio-forget-corpus": ("cais/wmdp-bio-forget-corpus", None, "train"),
    "cyber-forget-corpus": ("cais/wmdp-corpora", "cyber-forget-corpus", "train"),
    "bio-retain-corpus": ("cais/wmdp-corpora", "bio-retain-corpus", "train"),
    "cyber-retain-corpus": ("cais/wmdp-corpora", "cyber-retain-corpus", "train"),
    "wikitext": ("Salesforce/wikitext", "wikitext-2-raw-v1", "test"),
}


def export_wmdp_corpora(dest: str | os.PathLike, corpora: tuple[str, ...] = (
        "bio-forget-corpus", "cyber-forget-corpus", "wikitext"), min_chars: int = 50) -> dict[str, Path]:
    """Download ``corpora`` (names of :data:`HUB_CORPORA`) and write ``<dest>/<corpus>.jsonl`` (``{"text"}``
    per line); return ``{corpus: file}``. Needs the network (and hub access for the bio forget corpus)."""
    import datasets

    from lit_unlearn.data.builtin import _write_atomic
    from lit_unlearn.data.tokenize import DataValidationError

    unknown = [c for c in corpora if c not in HUB_CORPORA]
    if unknown:
        raise DataValidationError(f"Unknown WMDP corpus {unknown}; valid names: {sorted(HUB_CORPORA)}")
    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for corpus in corpora:
        hub, config, split = HUB_CORPORA[corpus]
        try:
            rows = datasets.load_dataset(hub, config, split=split)
        except Exception as err:  # gated / offline / renamed: say which and what to do
            hint = (" Request access at https://huggingface.co/datasets/cais/wmdp-bio-forget-corpus and log in"
                    " (`huggingface-cli login`)." if corpus == "bio-forget-corpus" else "")
            raise DataValidationError(f"Could not load {corpus} ({hub} {config or ''} split {split}): {err}.{hint}"
                                      ) from err
        texts = [r["text"] for r in rows if isinstance(r.get("text"), str) and len(r["text"]) > min_chars]
        written[corpus] = folder / f"{corpus}.jsonl"
        _write_atomic(written[corpus], "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    return written
