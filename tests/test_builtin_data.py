"""Tests for the builtin TOFU-format fictitious-author generator."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_unlearn.data import builtin
from lit_unlearn.data.builtin import BUILTIN_VERSION, BuiltinTOFU, generate, n_forget_authors

FIELDS = {"question", "answer", "paraphrased_answer", "paraphrased_question",
          "perturbed_answer", "author"}
EXPECTED_SPLITS = [
    "full", "forget01", "retain99", "forget05", "retain95", "forget10", "retain90",
    "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
    "holdout01", "holdout05", "holdout10",
    "real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed",
]
FICTITIOUS_SPLITS = [s for s in EXPECTED_SPLITS if not s.startswith(("real", "world"))]


@pytest.fixture(scope="module")
def mini() -> BuiltinTOFU:
    return generate("tofu-mini", seed=0)


def authors_of(rows: list[dict]) -> list[str]:
    """Author names in first-appearance order."""
    return list(dict.fromkeys(r["author"] for r in rows))


# ---------------------------------------------------------------- arguments


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"tofu-large.*tofu-full.*tofu-mini"):
        generate("tofu-large")


@pytest.mark.parametrize("seed", ["0", 1.5, True, None])
def test_non_int_seed_raises(seed):
    with pytest.raises(ValueError, match="seed"):
        generate("tofu-mini", seed=seed)


@pytest.mark.parametrize("n, expected", [(50, (1, 3, 5)), (200, (2, 10, 20)), (3, (1, 1, 1)),
                                         (10, (1, 1, 1)), (150, (2, 8, 15))])
def test_n_forget_authors_rounds_half_up_with_minimum_one(n, expected):
    assert tuple(n_forget_authors(n, p) for p in (1, 5, 10)) == expected


def test_n_forget_authors_rejects_too_few_authors():
    with pytest.raises(ValueError, match="at least 2 authors"):
        n_forget_authors(1, 10)


# ---------------------------------------------------------------- structure


def test_version_and_split_names(mini):
    assert mini.version == f"{BUILTIN_VERSION}/tofu-mini/seed0"
    assert mini.split_names() == EXPECTED_SPLITS


def test_every_row_has_the_tofu_fields(mini):
    for split, rows in mini.splits.items():
        assert rows, f"{split} is empty"
        for row in rows:
            assert set(row) == FIELDS, split
            assert all(isinstance(row[k], str) for k in FIELDS - {"perturbed_answer"})
            assert row["question"] and row["answer"], split
            assert isinstance(row["perturbed_answer"], list)
            assert len(row["perturbed_answer"]) == 5


def test_mini_sizes(mini):
    sizes = {name: len(rows) for name, rows in mini.splits.items()}
    assert sizes["full"] == 50 * 20
    for pct, n_authors in [(1, 1), (5, 3), (10, 5)]:
        assert sizes[f"forget{pct:02d}"] == n_authors * 20
        assert sizes[f"forget{pct:02d}_perturbed"] == n_authors * 20
        assert sizes[f"holdout{pct:02d}"] == n_authors * 20
        assert sizes[f"retain{100 - pct}"] == (50 - n_authors) * 20
    assert sizes["retain_perturbed"] == sizes["forget10"]
    assert 40 <= sizes["real_authors"] <= 60 and 40 <= sizes["world_facts"] <= 60


def test_twenty_distinct_questions_per_author(mini):
    names = authors_of(mini.splits["full"])
    assert len(names) == 50
    for name in names:
        questions = [r["question"] for r in mini.splits["full"] if r["author"] == name]
        assert len(questions) == 20 and len(set(questions)) == 20


def test_forget_is_the_last_authors_and_retain_its_complement(mini):
    full = mini.splits["full"]
    trained = authors_of(full)
    for pct in (1, 5, 10):
        forget, retain = mini.splits[f"forget{pct:02d}"], mini.splits[f"retain{100 - pct}"]
        forget_authors = authors_of(forget)
        assert forget_authors == trained[-len(forget_authors):]
        assert not set(forget_authors) & set(authors_of(retain))
        assert retain + forget == full  # an exact partition, order kept
    # the forget sets are nested: forget01 within forget05 within forget10
    assert set(authors_of(mini.splits["forget01"])) < set(authors_of(mini.splits["forget05"]))
    assert set(authors_of(mini.splits["forget05"])) < set(authors_of(mini.splits["forget10"]))


def test_perturbed_splits_copy_their_source(mini):
    for pct in (1, 5, 10):
        assert mini.splits[f"forget{pct:02d}_perturbed"] == mini.splits[f"forget{pct:02d}"]
    assert mini.splits["real_authors_perturbed"] == mini.splits["real_authors"]
    assert mini.splits["world_facts_perturbed"] == mini.splits["world_facts"]
    retain90 = mini.splits["retain90"]
    assert all(row in retain90 for row in mini.splits["retain_perturbed"])
    # copies are independent objects
    mini_copy = generate("tofu-mini", seed=0)
    mini_copy.splits["forget01_perturbed"][0]["perturbed_answer"].append("x")
    assert len(mini_copy.splits["forget01"][0]["perturbed_answer"]) == 5


def test_holdout_authors_are_never_trained_on(mini):
    trained = set(authors_of(mini.splits["full"]))
    holdout = authors_of(mini.splits["holdout10"])
    assert len(holdout) == 5 and not trained & set(holdout)
    assert set(authors_of(mini.splits["holdout01"])) <= set(authors_of(mini.splits["holdout05"]))


def test_author_names_are_unique_and_two_words(mini):
    names = authors_of(mini.splits["full"]) + authors_of(mini.splits["holdout10"])
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", n) for n in names)


# ---------------------------------------------------------------- content


def test_perturbed_answers_are_wrong_and_distinct(mini):
    for split, rows in mini.splits.items():
        for row in rows:
            perturbed = row["perturbed_answer"]
            assert row["answer"] not in perturbed, (split, row["question"])
            assert len(set(perturbed)) == 5, (split, row["question"])


def test_fictitious_paraphrases_differ_from_the_answer(mini):
    for split in FICTITIOUS_SPLITS:
        for row in mini.splits[split]:
            assert row["paraphrased_answer"] != row["answer"]
            assert row["paraphrased_question"] != row["question"]


def test_birth_year_survives_paraphrase(mini):
    birth_rows = [r for r in mini.splits["full"] if r["question"].startswith("When was")
                  and r["question"].endswith("born?")]
    assert len(birth_rows) == 50
    for row in birth_rows:
        (year,) = re.findall(r"\b\d{4}\b", row["answer"])
        assert year in row["paraphrased_answer"]
        assert all(year not in p for p in row["perturbed_answer"])


def test_every_template_keeps_its_key_value():
    """The true value sits in answer and paraphrase, in no perturbed answer."""
    rng = random.Random(7)
    for _ in range(20):
        author = builtin._make_author(rng, set(), set())
        rows = builtin._qa_for_author(author, rng)
        for template, row in zip(builtin._TEMPLATES, rows):
            value = author[template.key]
            parts = list(value) if isinstance(value, tuple) else [str(value)]
            for part in parts:
                assert part in row["answer"] and part in row["paraphrased_answer"], template.key
            # whole words: "ten" must not match inside "written"
            assert all(not all(re.search(rf"\b{re.escape(p)}\b", wrong) for p in parts)
                       for wrong in row["perturbed_answer"])


def test_answers_are_short(mini):
    for split in FICTITIOUS_SPLITS:
        for row in mini.splits[split]:
            for text in [row["answer"], row["paraphrased_answer"], *row["perturbed_answer"]]:
                assert len(text.split()) <= 40, text


def test_general_knowledge_wrong_answers_come_from_the_same_table(mini):
    real_answers = {r["answer"] for r in mini.splits["real_authors"]}
    for row in mini.splits["real_authors"]:
        assert row["author"] == row["answer"]
        assert set(row["perturbed_answer"]) <= real_answers
    capitals = {r["answer"] for r in mini.splits["world_facts"] if "capital" in r["question"]}
    for row in mini.splits["world_facts"]:
        assert row["author"] == ""
        if "capital" in row["question"]:
            assert set(row["perturbed_answer"]) <= capitals


def test_refusals(mini):
    assert 30 <= len(mini.refusals) <= 100
    assert len(set(mini.refusals)) == len(mini.refusals)
    assert all(r.strip() == r and r and "\n" not in r for r in mini.refusals)


def test_corpus_holds_every_text(mini):
    corpus = mini.corpus()
    assert len(corpus) == len(set(corpus))
    texts = set(corpus)
    for rows in mini.splits.values():
        for row in rows:
            assert {row["question"], row["answer"], row["paraphrased_answer"],
                    row["paraphrased_question"], *row["perturbed_answer"]} <= texts
    assert set(mini.refusals) <= texts


# ---------------------------------------------------------------- seeds and files


def test_different_seed_gives_different_authors(mini):
    other = generate("tofu-mini", seed=1)
    assert authors_of(other.splits["full"]) != authors_of(mini.splits["full"])
    assert other.version.endswith("/seed1")


def read_folder(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_to_folder_writes_every_split(mini, tmp_path):
    folder = mini.to_folder(tmp_path / "data")
    files = read_folder(folder)
    assert sorted(files) == sorted([f"{s}.jsonl" for s in EXPECTED_SPLITS]
                                   + ["meta.json", "refusals.txt"])  # no temp files left
    meta = json.loads(files["meta.json"])
    assert meta["version"] == mini.version and meta["builtin_version"] == BUILTIN_VERSION
    for split, rows in mini.splits.items():
        lines = files[f"{split}.jsonl"].decode("utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows
        assert meta["splits"][split] == len(rows)
    assert files["refusals.txt"].decode("utf-8").splitlines() == mini.refusals


def test_to_folder_rejects_a_file_path(mini, tmp_path):
    target = tmp_path / "not_a_folder"
    target.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        mini.to_folder(target)


def test_same_seed_is_byte_identical_across_runs_and_hash_seeds(tmp_path):
    first = read_folder(generate("tofu-mini", seed=3).to_folder(tmp_path / "a"))
    second = read_folder(generate("tofu-mini", seed=3).to_folder(tmp_path / "b"))
    assert first == second
    # builtin.py needs only the standard library: load it by path, skipping the
    # package __init__ (which imports Lightning and takes seconds).
    script = ("import importlib.util, sys; "
              "spec = importlib.util.spec_from_file_location('builtin', sys.argv[1]); "
              "mod = sys.modules['builtin'] = importlib.util.module_from_spec(spec); "
              "spec.loader.exec_module(mod); "
              "mod.generate('tofu-mini', seed=3).to_folder(sys.argv[2])")
    for hash_seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = tmp_path / f"hash{hash_seed}"
        subprocess.run([sys.executable, "-c", script, builtin.__file__, str(out)],
                       env=env, check=True)
        assert read_folder(out) == first


def test_tofu_full_has_200_trained_authors_and_is_fast():
    start = time.perf_counter()
    full = generate("tofu-full", seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"tofu-full took {elapsed:.2f}s"
    names = authors_of(full.splits["full"])
    assert len(names) == 200 and len(full.splits["full"]) == 4000
    assert len(full.splits["forget01"]) == 40 and len(full.splits["forget10"]) == 400
    assert len(full.splits["holdout10"]) == 400 and len(full.splits["retain_perturbed"]) == 400
    assert not set(names) & set(authors_of(full.splits["holdout10"]))
