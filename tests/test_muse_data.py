"""MUSE data layer: the builtin muse-mini generator, MUSE's local folder layout, the hub call, clear errors."""
from __future__ import annotations

import json

import pytest

from lit_unlearn.data import builtin_muse
from lit_unlearn.data.muse import (
    MUSE_LAYOUT,
    check_muse_source,
    export_muse,
    knowmem_qa,
    load_muse,
    muse_texts,
    retain_qa_split,
    verbmem_pairs,
)
from lit_unlearn.data.sources import available_splits, load_rows, source_version
from lit_unlearn.data.tokenize import DataValidationError

MINI = "builtin:muse-mini"


def test_builtin_is_deterministic_versioned_and_complete():
    a, b = builtin_muse.generate("muse-mini", 0), builtin_muse.generate("muse-mini", 0)
    assert a.splits == b.splits and a.version == "muse-gen-1/muse-mini/seed0"
    assert builtin_muse.generate("muse-mini", 1).splits != a.splits
    assert source_version(MINI) == a.version
    check_muse_source(MINI)  # every config/split of MUSE's layout is there
    expected = {f"{c}/{s}" for c, splits in MUSE_LAYOUT.items() for s in splits}
    assert set(available_splits(MINI)) == expected
    assert load_rows(MINI, "raw/forget") == a.splits["raw/forget"]
    with pytest.raises(ValueError, match="valid names"):
        builtin_muse.generate("muse-huge")


def test_builtin_splits_are_consistent():
    forget = muse_texts(MINI, "raw", "forget")
    holdout, retain1, retain2 = (muse_texts(MINI, "raw", s) for s in ("holdout", "retain1", "retain2"))
    assert not set(forget) & (set(holdout) | set(retain1) | set(retain2))
    assert not set(retain1) & set(retain2) and not set(holdout) & (set(retain1) | set(retain2))
    for prompt, gt in verbmem_pairs(MINI):  # prompt + continuation are a forget article's opening words
        assert any(doc.startswith(prompt + " " + gt) for doc in forget)
    for which, docs in (("forget", forget), ("retain", retain2)):
        qa, icl = knowmem_qa(MINI, which)
        assert len(icl) == builtin_muse.ICL_EXAMPLES and qa
        assert not {q for q, _ in icl} & {q for q, _ in qa}  # few-shot examples are never asked
        by_person = {d.split(" - ", 1)[1].split(",")[0]: d for d in docs}  # "CITY, YEAR - Name, a ..."
        assert len(by_person) == len(docs)
        for question, answer in qa + icl:  # every answer is stated in the article about that person
            [doc] = [d for person, d in by_person.items() if person in question]
            assert answer.lower().removeprefix("the ") in doc.lower()
    assert muse_texts(MINI, "privleak", "forget") == forget
    assert muse_texts(MINI, "privleak", "retain") == retain2
    assert muse_texts(MINI, "privleak", "holdout") == holdout
    folds = [muse_texts(MINI, "sust", f"forget_{k}") for k in range(1, 5)]
    assert folds[0] == forget and len({d for f in folds for d in f}) == sum(len(f) for f in folds)
    for k in range(1, 5):  # scalability: growing unions of the folds
        assert muse_texts(MINI, "scal", f"forget_{k}") == [d for f in folds[:k] for d in f]


def _write_layout(folder, books: bool = False) -> dict:
    """MUSE's layout written by hand: JSON arrays (as MUSE's own files) and JSON Lines, one .txt."""
    retain = "retain2_qa" if books else "retain_qa"
    content = {
        ("raw", "forget"): [{"text": "Forget article one."}, {"text": "Forget article two."}],
        ("raw", "retain1"): [{"text": "Retain one."}], ("raw", "retain2"): [{"text": "Retain two."}],
        ("verbmem", "forget"): [{"prompt": "Once upon", "gt": "a time"}],
        ("knowmem", "forget_qa"): [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}],
        ("knowmem", "forget_qa_icl"): [{"question": "Qi?", "answer": "Ai"}],
        ("knowmem", retain): [{"question": "R1?", "answer": "B1"}],
        ("knowmem", f"{retain}_icl"): [{"question": "Ri?", "answer": "Bi"}],
        ("privleak", "forget"): [{"text": "p f"}], ("privleak", "retain"): [{"text": "p r"}],
        ("privleak", "holdout"): [{"text": "p h"}],
    }
    content.update({(c, f"forget_{k}"): [{"text": f"{c} fold {k}"}] for c in ("scal", "sust") for k in range(1, 5)})
    for (config, split), rows in content.items():
        (folder / config).mkdir(parents=True, exist_ok=True)
        if config == "knowmem":
            (folder / config / f"{split}.json").write_text(json.dumps(rows))
        else:
            (folder / config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "raw" / "holdout.txt").write_text("A holdout document\nover two lines.")
    content[("raw", "holdout")] = [{"text": "A holdout document\nover two lines."}]
    return content


@pytest.mark.parametrize("books", [False, True])
def test_local_folder_in_muse_layout(tmp_path, books):
    content = _write_layout(tmp_path, books)
    check_muse_source(str(tmp_path))
    for (config, split), rows in content.items():
        assert load_muse(str(tmp_path), config, split) == rows
    assert retain_qa_split(str(tmp_path)) == ("retain2_qa" if books else "retain_qa")
    assert knowmem_qa(str(tmp_path), "retain") == ([("R1?", "B1")], [("Ri?", "Bi")])
    assert verbmem_pairs(str(tmp_path)) == [("Once upon", "a time")]


def test_export_roundtrip_and_text_datamodule(tmp_path, builtin_tokenizer_path):
    out = export_muse(MINI, tmp_path / "mini")
    check_muse_source(str(out))
    for config, splits in MUSE_LAYOUT.items():
        for split in splits:
            assert load_muse(str(out), config, split) == load_muse(MINI, config, split)
    from lit_unlearn.data.text import TextDataModule

    dm = TextDataModule(forget_files=str(out / "raw" / "forget.jsonl"), retain_files=str(out / "raw" / "retain1.jsonl"),
                        tokenizer=builtin_tokenizer_path, max_length=32, batch_size=4)
    dm.setup("fit")
    assert len(dm.forget_dataset) >= len(muse_texts(MINI, "raw", "forget"))
    assert len(dm.retain_dataset) >= len(muse_texts(MINI, "raw", "retain1"))


def test_hub_branch_calls_load_dataset_with_config_and_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config, split):  # never the network: records the call MUSE's hub layout needs
        calls.append((name, config, split))
        return [{"question": "Q?", "answer": "A"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_muse("muse-bench/MUSE-News", "knowmem", "forget_qa") == [{"question": "Q?", "answer": "A"}]
    assert calls == [("muse-bench/MUSE-News", "knowmem", "forget_qa")]
    assert retain_qa_split("muse-bench/MUSE-Books") == "retain2_qa"
    assert retain_qa_split("muse-bench/MUSE-News") == "retain_qa"


def test_clear_errors(tmp_path):
    _write_layout(tmp_path)
    (tmp_path / "verbmem" / "forget.jsonl").unlink()
    with pytest.raises(DataValidationError, match=r"configuration 'verbmem' has no split 'forget'"):
        load_muse(str(tmp_path), "verbmem", "forget")
    with pytest.raises(DataValidationError, match=r"lacks 1 split\(s\): verbmem/forget"):
        check_muse_source(str(tmp_path))
    for file in (tmp_path / "privleak").iterdir():
        file.unlink()
    (tmp_path / "privleak").rmdir()
    with pytest.raises(DataValidationError, match=r"has no configuration folder 'privleak'.*export_muse"):
        load_muse(str(tmp_path), "privleak", "holdout")
    (tmp_path / "knowmem" / "forget_qa.json").write_text(json.dumps([{"question": "Q1?", "answer": "A1"},
                                                                     {"question": "Q2?"}]))
    with pytest.raises(DataValidationError, match=r"forget_qa.json: row 1 of MUSE knowmem/forget_qa has no 'answer'"
                                                  r".*fill in its 'answer' or drop the row"):
        knowmem_qa(str(tmp_path), "forget")
    (tmp_path / "knowmem" / "forget_qa.json").write_text(json.dumps([{"question": "Q1?", "answer": ""}]))
    with pytest.raises(DataValidationError, match=r"row 0 of MUSE knowmem/forget_qa has an empty"):
        load_muse(str(tmp_path), "knowmem", "forget_qa")
    with pytest.raises(DataValidationError, match="Unknown MUSE configuration 'train'"):
        load_muse(str(tmp_path), "train", "forget")
    with pytest.raises(DataValidationError, match="Unknown split 'retain3' of MUSE configuration 'raw'"):
        load_muse(str(tmp_path), "raw", "retain3")
    with pytest.raises(DataValidationError, match="not builtin:muse-mini, not an existing folder"):
        load_muse("no/such/folder/here", "raw", "forget")
    with pytest.raises(DataValidationError, match="not in MUSE's layout"):
        load_muse("builtin:tofu-mini", "raw", "forget")
