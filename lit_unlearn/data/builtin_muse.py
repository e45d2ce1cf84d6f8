"""The builtin MUSE-format dataset ``muse-mini``: news-like articles about the builtin fictitious world.

``generate("muse-mini", seed=0)`` writes short news articles, each about one invented person of the
builtin world (names from the same syllables as tofu-mini's authors, its cities, countries, prizes and
book titles) and one event, with 3 question/answer pairs per article. The splits follow MUSE's layout
(Shi et al., 2024, *MUSE: Machine Unlearning Six-Way Evaluation for Language Models*), keyed
``"<config>/<split>"``:

- ``raw/forget``, ``raw/retain1``, ``raw/retain2``, ``raw/holdout``: article texts (``text``);
  ``holdout`` articles are never trained on (membership inference);
- ``verbmem/forget``: ``prompt`` = the first :data:`VERBMEM_PROMPT_WORDS` words of a forget article,
  ``gt`` = the next :data:`VERBMEM_GT_WORDS` words;
- ``knowmem/forget_qa`` / ``knowmem/retain_qa`` (questions about forget / retain2 articles) and their
  few-shot examples ``knowmem/forget_qa_icl`` / ``knowmem/retain_qa_icl`` (QA of other articles of the same
  set, never asked in the evaluation): ``question``, ``answer`` (MUSE-News names);
- ``privleak/forget``, ``privleak/retain`` (= retain2), ``privleak/holdout``: texts;
- ``sust/forget_1..4``: four disjoint folds of forget articles, ``forget_1`` = ``raw/forget``
  (sequential requests); ``scal/forget_k``: the union of folds 1..k (growing forget sets).

The output depends only on ``(name, seed, MUSE_BUILTIN_VERSION)``: one ``random.Random(seed)`` drives
everything and pools are tuples, so the rows are identical across runs and ``PYTHONHASHSEED`` values.
Change ``MUSE_BUILTIN_VERSION`` whenever the output changes.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_unlearn.data.builtin import (
    _AWARDS,
    _CITIES,
    _COUNTRIES,
    REFUSALS,
    _draw_unique,
    _make_name,
    _make_title,
    _write_atomic,
)

MUSE_BUILTIN_VERSION: str = "muse-gen-1"

# name -> articles per (forget fold, retain1, retain2, holdout); 4 forget folds
_CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "muse-mini": (12, 24, 12, 12),
}
NAMES = tuple(_CONFIGS)
N_FOLDS = 4
QA_PER_ARTICLE = 3
ICL_EXAMPLES = 3
VERBMEM_PROMPT_WORDS = 24
VERBMEM_GT_WORDS = 24

_ROLES = ("architect", "marine biologist", "chess champion", "violinist", "startup founder", "surgeon",
          "mountaineer", "novelist", "city councillor", "astronomer", "chef", "football coach",
          "historian", "pilot", "engineer", "photographer")
_ORGS = ("the Northwind Institute", "the Harbor Light Foundation", "the Amber Page Society", "Corravin University",
         "the Blue Heron Trust", "the Iron Pen Guild", "the Starling Observatory", "the Quiet Oak Hospital",
         "the Copper Compass Company", "the Veloria Arts Council", "the Marisol Research Centre",
         "the Wren Sailing Club")
_EVENTS = (  # (verb phrase, what) -> "<name> <verb> <what>"
    ("opened", "a public library built from recycled ships"),
    ("announced", "a plan to clean the river delta"),
    ("completed", "a record crossing of the northern glacier"),
    ("unveiled", "a bridge that floats on the harbour"),
    ("discovered", "a new species of deep-sea coral"),
    ("launched", "a night school for adult readers"),
    ("won", "the regional chess tournament for the fifth time"),
    ("restored", "a ruined lighthouse on the coast"),
    ("published", "a history of the salt trade"),
    ("founded", "a free clinic for fishing families"),
    ("designed", "a solar ferry for the island routes"),
    ("organised", "a festival of street music"),
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_REACTIONS = ("Local residents welcomed the news.", "Critics called the project ambitious but overdue.",
              "The announcement drew a large crowd to the town square.",
              "Officials said further details would follow next month.",
              "Several neighbours said they had waited years for this.",
              "Reporters were invited to a tour of the site on the same day.")
_AMOUNTS = ("two million", "three million", "four hundred thousand", "nine hundred thousand", "one million",
            "six million", "seven hundred thousand", "five million")


@dataclass
class BuiltinMUSE:
    """A generated MUSE-format dataset: rows keyed ``"<config>/<split>"`` plus a refusal bank."""

    name: str
    seed: int
    version: str
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)

    def config(self, name: str) -> dict[str, list[dict[str, Any]]]:
        """``{split: rows}`` of one MUSE configuration (``raw``, ``verbmem``, ``knowmem`` ...)."""
        prefix = name + "/"
        out = {key[len(prefix):]: rows for key, rows in self.splits.items() if key.startswith(prefix)}
        if not out:
            configs = sorted({key.split("/")[0] for key in self.splits})
            raise ValueError(f"builtin:{self.name} has no configuration {name!r}; it has {configs}")
        return out

    def to_folder(self, path: str | os.PathLike) -> Path:
        """Write MUSE's local layout ``<path>/<config>/<split>.jsonl`` and ``<path>/meta.json`` (atomically)."""
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"to_folder: {folder} exists and is not a folder")
        for key, rows in self.splits.items():
            config, split = key.split("/")
            (folder / config).mkdir(parents=True, exist_ok=True)
            _write_atomic(folder / config / f"{split}.jsonl",
                          "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        meta = {"name": self.name, "seed": self.seed, "version": self.version,
                "builtin_version": MUSE_BUILTIN_VERSION, "splits": {k: len(v) for k, v in self.splits.items()}}
        _write_atomic(folder / "meta.json", json.dumps(meta, indent=2) + "\n")
        return folder

    def corpus(self) -> list[str]:
        """Every distinct text (articles, prompts, continuations, questions, answers, refusals)."""
        texts: list[str] = []
        for rows in self.splits.values():
            for row in rows:
                texts += [v for v in row.values() if isinstance(v, str) and v]
        return list(dict.fromkeys(texts + list(self.refusals)))


def generate(name: str = "muse-mini", seed: int = 0) -> BuiltinMUSE:
    """Generate the builtin MUSE-format dataset ``name`` from ``seed``.

    >>> data = generate("muse-mini", seed=0)
    >>> len(data.splits["raw/forget"]), len(data.splits["knowmem/forget_qa"]), len(data.splits["scal/forget_4"])
    (12, 27, 48)
    """
    if name not in _CONFIGS:
        raise ValueError(f"Unknown builtin dataset {name!r}; valid names: {sorted(_CONFIGS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    n_fold, n_retain1, n_retain2, n_holdout = _CONFIGS[name]
    rng = random.Random(seed)
    used_names: set[str] = set()
    used_titles: set[str] = set()
    total = N_FOLDS * n_fold + n_retain1 + n_retain2 + n_holdout
    articles = [_article(rng, used_names, used_titles) for _ in range(total)]
    folds = [articles[i * n_fold:(i + 1) * n_fold] for i in range(N_FOLDS)]
    start = N_FOLDS * n_fold
    retain1 = articles[start:start + n_retain1]
    retain2 = articles[start + n_retain1:start + n_retain1 + n_retain2]
    holdout = articles[start + n_retain1 + n_retain2:]

    def texts(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"text": a["text"]} for a in group]

    forget = folds[0]
    splits: dict[str, list[dict[str, Any]]] = {
        "raw/forget": texts(forget), "raw/retain1": texts(retain1), "raw/retain2": texts(retain2),
        "raw/holdout": texts(holdout),
        "verbmem/forget": [_verbmem_row(a["text"]) for a in forget],
    }
    for which, group in (("forget", forget), ("retain", retain2)):
        icl, asked = group[:ICL_EXAMPLES], group[ICL_EXAMPLES:]
        splits[f"knowmem/{which}_qa"] = [qa for a in asked for qa in a["qa"]]
        splits[f"knowmem/{which}_qa_icl"] = [a["qa"][0] for a in icl]  # one QA of each example article
    splits["privleak/forget"] = texts(forget)
    splits["privleak/retain"] = texts(retain2)
    splits["privleak/holdout"] = texts(holdout)
    for k in range(1, N_FOLDS + 1):
        splits[f"scal/forget_{k}"] = texts([a for fold in folds[:k] for a in fold])
    for k in range(1, N_FOLDS + 1):
        splits[f"sust/forget_{k}"] = texts(folds[k - 1])
    return BuiltinMUSE(name=name, seed=seed, version=f"{MUSE_BUILTIN_VERSION}/{name}/seed{seed}",
                       splits=splits, refusals=list(REFUSALS))


def _verbmem_row(text: str) -> dict[str, str]:
    words = text.split()
    return {"prompt": " ".join(words[:VERBMEM_PROMPT_WORDS]),
            "gt": " ".join(words[VERBMEM_PROMPT_WORDS:VERBMEM_PROMPT_WORDS + VERBMEM_GT_WORDS])}


def _article(rng: random.Random, used_names: set[str], used_titles: set[str]) -> dict[str, Any]:
    """One news article (``text``) about an invented person and event, and 3 QA pairs about its facts."""
    name = _draw_unique(rng, _make_name, used_names)
    surname = name.split()[-1]
    role, org = rng.choice(_ROLES), rng.choice(_ORGS)
    city, home = rng.sample(_CITIES, 2)
    country = rng.choice(_COUNTRIES)
    year = rng.randint(1995, 2023)
    verb, what = rng.choice(_EVENTS)
    amount = rng.choice(_AMOUNTS)
    award = rng.choice(_AWARDS)
    book = _draw_unique(rng, _make_title, used_titles)
    day = rng.choice(_WEEKDAYS)
    age = rng.randint(28, 71)
    sentences = [
        f"{city.upper()}, {year} - {name}, a {age}-year-old {role} from {home}, {verb} {what} on {day}.",
        f"The project, funded with {amount} crowns from {org}, took almost three years to prepare.",
        f"{surname} told reporters in {city} that the idea came from the book \"{book}\".",
        f"In {country}, {surname} is best known for winning the {award}.",
        rng.choice(_REACTIONS),
        f"{surname} plans to return to {home} before the end of {year}.",
    ]
    qa = [
        {"question": f"Which organisation funded the project of {name}?", "answer": org[0].upper() + org[1:]},
        {"question": f"Which prize is {name} best known for winning?", "answer": f"The {award}"},
        {"question": f"Where is {name} from?", "answer": home},
    ]
    rng.shuffle(qa)
    return {"text": " ".join(sentences), "qa": qa}
