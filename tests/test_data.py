"""Sources, tokenisation, collation and every bad-input error of the data layer."""
from __future__ import annotations

import json

import pytest
import torch

from lit_unlearn.data import DataValidationError
from lit_unlearn.data.sources import available_splits, load_rows, source_version
from lit_unlearn.data.tofu import TOFUDataModule, UnlearningDataModule
from lit_unlearn.data.tokenize import PadCollator, encode_qa
from lit_unlearn.functional.tokens import IGNORE_INDEX
from lit_unlearn.models.loading import load_tokenizer

ROWS = [
    {"question": "Who wrote the Red Book?", "answer": "Ana Vell wrote it.", "paraphrased_answer": "It was Ana Vell.",
     "perturbed_answer": ["Bo Lin wrote it."] * 5},
    {"question": "Where was Ana Vell born?", "answer": "In Korvik.", "paraphrased_answer": "Korvik.",
     "perturbed_answer": ["In Tallow."] * 5},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def tokenizer(builtin_tokenizer_path):
    return load_tokenizer(builtin_tokenizer_path)


# -- sources --------------------------------------------------------------------------------------------
def test_builtin_source_rows_and_version():
    rows = load_rows("builtin:tofu-mini", "forget10")
    assert len(rows) == 100 and {"question", "answer", "perturbed_answer"} <= set(rows[0])
    assert source_version("builtin:tofu-mini").startswith("tofu-gen-")
    assert source_version("builtin:tofu-mini", seed=1) != source_version("builtin:tofu-mini", seed=0)


@pytest.mark.parametrize("suffix", ["json", "jsonl", "parquet"])
def test_local_folder_each_format(tmp_path, suffix):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    if suffix == "parquet":
        ds.to_parquet(str(tmp_path / "forget10.parquet"))
    elif suffix == "json":
        (tmp_path / "forget10.json").write_text(json.dumps(ROWS))
    else:
        write_jsonl(tmp_path / "forget10.jsonl", ROWS)
    rows = load_rows(str(tmp_path), "forget10")
    assert [r["answer"] for r in rows] == [r["answer"] for r in ROWS]
    assert rows[0]["perturbed_answer"] == ROWS[0]["perturbed_answer"]
    assert available_splits(str(tmp_path)) == ["forget10"]


def test_builtin_folder_roundtrip(tmp_path):
    from lit_unlearn.data.builtin import generate

    data = generate("tofu-mini")
    data.to_folder(tmp_path)
    assert load_rows(str(tmp_path), "retain90") == data.splits["retain90"]
    assert source_version(str(tmp_path)) == data.version


def test_hub_source_calls_load_dataset_per_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_rows("locuslab/TOFU", "forget10")
    assert calls == [("locuslab/TOFU", "forget10", "train")] and len(rows) == 2


def test_hub_failure_names_source_and_split(monkeypatch):
    import datasets

    def boom(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(DataValidationError, match="'forget10' of hub dataset 'someone/data'"):
        load_rows("someone/data", "forget10")


@pytest.mark.parametrize("source", ["builtin:tofu-huge", "./no/such/folder", "not a source"])
def test_unknown_source(source):
    with pytest.raises(DataValidationError, match="Unknown"):
        load_rows(source, "forget10")


def test_unknown_split_lists_choices(tmp_path):
    with pytest.raises(DataValidationError, match="Unknown split 'forget11'.*forget10"):
        load_rows("builtin:tofu-mini", "forget11")
    write_jsonl(tmp_path / "retain90.jsonl", ROWS)
    with pytest.raises(DataValidationError, match="Unknown split 'forget10'.*retain90"):
        load_rows(str(tmp_path), "forget10")


# -- datamodule errors, raised at setup -----------------------------------------------------------------
def test_missing_field_names_split_and_row(tmp_path, builtin_tokenizer_path):
    write_jsonl(tmp_path / "forget10.jsonl", [ROWS[0], {"question": "Q?"}])
    data = TOFUDataModule(source=str(tmp_path), tokenizer=builtin_tokenizer_path, splits=["forget10"])
    with pytest.raises(DataValidationError, match="Split 'forget10' row 1 has no field 'answer'"):
        data.setup("fit")


def test_empty_forget_set(tmp_path, builtin_tokenizer_path):
    (tmp_path / "forget10.jsonl").write_text("")
    write_jsonl(tmp_path / "retain90.jsonl", ROWS)
    data = UnlearningDataModule(source=str(tmp_path), tokenizer=builtin_tokenizer_path)
    with pytest.raises(DataValidationError, match="'forget10' is empty"):
        data.setup("fit")


def test_answer_cut_by_max_length(builtin_tokenizer_path):
    data = TOFUDataModule(tokenizer=builtin_tokenizer_path, splits=["forget10"], max_length=6)
    with pytest.raises(DataValidationError, match="split 'forget10' row 0.*max_length=6"):
        data.setup("fit")


def test_tokenizer_without_pad_token(tmp_path, tokenizer):
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    data = TOFUDataModule(tokenizer=str(tmp_path), splits=["forget10"])
    with pytest.raises(DataValidationError, match="has no pad token"):
        data.setup("fit")
    fixed = TOFUDataModule(tokenizer=str(tmp_path), splits=["forget10"], pad_token="eos")
    fixed.setup("fit")
    assert fixed.tokenizer.pad_token_id == fixed.tokenizer.eos_token_id


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="max_length"):
        TOFUDataModule(max_length=1)
    with pytest.raises(ValueError, match="batch_size"):
        TOFUDataModule(batch_size=0)


# -- tokenisation ---------------------------------------------------------------------------------------
def test_plain_prompt_labels_answer_and_eos_only(tokenizer):
    enc = encode_qa(tokenizer, "Where was Ana born?", "In Korvik.", max_length=64)
    prompt = tokenizer("Question: Where was Ana born?\nAnswer:")["input_ids"]
    answer = tokenizer(" In Korvik.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert enc["input_ids"] == prompt + answer
    assert enc["labels"] == [IGNORE_INDEX] * len(prompt) + answer
    assert tokenizer.decode(enc["input_ids"]) == "Question: Where was Ana born?\nAnswer: In Korvik.</s>"


def test_chat_template_used_when_present(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    enc = encode_qa(tokenizer, "Where was Ana born?", "In Korvik.", max_length=64)
    n_prompt = enc["labels"].count(IGNORE_INDEX)
    assert tokenizer.decode(enc["input_ids"][:n_prompt]) == "<s>user: Where was Ana born?\n<s>assistant:"
    assert tokenizer.decode(enc["input_ids"][n_prompt:]) == "In Korvik.</s>"


def test_truncation_keeps_prompt_and_cuts_answer_tail(tokenizer):
    full = encode_qa(tokenizer, "Where was Ana born?", "In the far northern city of Korvik.", max_length=64)
    cut = encode_qa(tokenizer, "Where was Ana born?", "In the far northern city of Korvik.", max_length=22)
    assert cut["input_ids"] == full["input_ids"][:22] and cut["labels"] == full["labels"][:22]
    assert len(full["input_ids"]) > 22


def test_attention_mask_from_lengths_keeps_eos_equal_to_pad():
    """pad == eos: a real EOS inside a sequence must stay attended (a known bug elsewhere masks it)."""
    eos = 2
    rows = [{"input_ids": [5, 6, eos, 7, eos], "labels": [-100, 6, eos, 7, eos]},
            {"input_ids": [5, eos], "labels": [-100, eos]}]
    batch = PadCollator(pad_token_id=eos)(rows)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["input_ids"].tolist() == [[5, 6, eos, 7, eos], [5, eos, eos, eos, eos]]
    assert batch["labels"].tolist() == [[-100, 6, eos, 7, eos], [-100, eos, -100, -100, -100]]
    left = PadCollator(pad_token_id=eos, padding_side="left")(rows)
    assert left["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert left["input_ids"][1, -2:].tolist() == [5, eos]


# -- datamodules ----------------------------------------------------------------------------------------
def test_unlearning_batches_carry_forget_retain_and_refusal(builtin_tokenizer_path):
    data = UnlearningDataModule(tokenizer=builtin_tokenizer_path, batch_size=4, max_length=64)
    data.setup("fit")
    loader = data.train_dataloader()
    batch, *_ = next(iter(loader))
    forget, retain = batch["forget"], batch["retain"]
    assert forget["input_ids"].shape[0] == 4 and retain["input_ids"].shape[0] == 4
    assert set(forget["idk"]) >= {"input_ids", "attention_mask", "labels", "idk_index"}
    refusals = data.tokenizer.batch_decode(
        [ids[lab != IGNORE_INDEX] for ids, lab in zip(forget["idk"]["input_ids"], forget["idk"]["labels"])],
        skip_special_tokens=True,
    )
    from lit_unlearn.data.builtin import generate

    bank = generate("tofu-mini").refusals
    assert all(r.strip() in bank for r in refusals)
    # the forget question is shared by the answer and the refusal
    i = forget["index"][0].item()
    assert data.forget_dataset.rows[i]["question"] in data.tokenizer.decode(forget["idk"]["input_ids"][0])
    assert len(loader) == 25  # one epoch = one pass over the 100 forget samples (min_size mode)


def test_text_datamodule_chunks_and_labels_every_token(tmp_path, builtin_tokenizer_path):
    from lit_unlearn.data.text import TextDataModule

    (tmp_path / "a.txt").write_text("Tibel Torohart was born in Dornavik. " * 20)
    write_jsonl(tmp_path / "b.jsonl", [{"text": "The river is long."}])
    data = TextDataModule(forget_files=str(tmp_path / "*.*"), tokenizer=builtin_tokenizer_path, max_length=16)
    data.setup("fit")
    samples = data.forget_dataset.samples
    assert all(len(s["input_ids"]) <= 16 for s in samples)
    assert all(s["labels"] == s["input_ids"] for s in samples)
    total = sum(len(s["input_ids"]) for s in samples)
    tok = data.tokenizer
    expected = len(tok("Tibel Torohart was born in Dornavik. " * 20, add_special_tokens=False)["input_ids"]) + 1
    expected += len(tok("The river is long.", add_special_tokens=False)["input_ids"]) + 1
    assert total == expected
    with pytest.raises(DataValidationError, match="No text files"):
        TextDataModule(forget_files=str(tmp_path / "*.none"), tokenizer=builtin_tokenizer_path).setup("fit")


def test_collated_batch_matches_encoding(builtin_tokenizer_path):
    data = TOFUDataModule(tokenizer=builtin_tokenizer_path, splits=["forget01"], batch_size=3, max_length=64)
    data.setup("fit")
    batch = data.collate([data.train_dataset[i] for i in range(3)])
    for b in range(3):
        n = len(data.train_dataset.samples[b]["input_ids"])
        assert batch["attention_mask"][b].sum().item() == n
        assert batch["input_ids"][b, :n].tolist() == data.train_dataset.samples[b]["input_ids"]
        assert torch.all(batch["labels"][b, n:] == IGNORE_INDEX)
    assert batch["index"].tolist() == [0, 1, 2]
