"""builtin:wmdp-mini: deterministic questions and corpora, the local lm-eval task folder, TextDataModule loading."""
from __future__ import annotations

import json

import pytest
import yaml

from lit_unlearn.data import builtin_wmdp
from lit_unlearn.data.builtin_wmdp import CORPORA, TASKS, generate, wmdp_mini_tasks

TASK_CORPUS = {"wmdp_mini_bio": "bio-forget-corpus", "wmdp_mini_cyber": "cyber-forget-corpus",
               "mmlu_mini": "retain-corpus"}


def test_deterministic_and_versioned():
    a, b = generate("wmdp-mini", seed=0), generate("wmdp-mini", seed=0)
    assert a.questions == b.questions and a.corpora == b.corpora
    assert a.version == f"{builtin_wmdp.WMDP_BUILTIN_VERSION}/wmdp-mini/seed0"
    c = generate("wmdp-mini", seed=1)
    assert c.questions["wmdp_mini_bio"] != a.questions["wmdp_mini_bio"]
    assert c.questions["mmlu_mini"] != a.questions["mmlu_mini"]  # same facts, other distractors/order
    with pytest.raises(ValueError, match="valid names"):
        generate("wmdp-huge")
    with pytest.raises(ValueError, match="seed must be an int"):
        generate("wmdp-mini", seed="0")


@pytest.mark.parametrize("seed", [0, 7])
def test_questions_are_answered_by_their_corpus_only(seed):
    """Each gold choice completes its stem into a sentence of the matching corpus; no wrong choice does."""
    data = generate("wmdp-mini", seed=seed)
    assert list(data.questions) == list(TASKS) and [len(data.questions[t]) for t in TASKS] == [64, 64, 73]
    for task, rows in data.questions.items():
        text = " ".join(data.corpus(TASK_CORPUS[task]))
        others = " ".join(d for name in ("bio-forget-corpus", "cyber-forget-corpus", "retain-corpus")
                          if name != TASK_CORPUS[task] for d in data.corpus(name))
        assert len({r["stem"] for r in rows}) == len(rows)
        for row in rows:
            assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4 and 0 <= row["answer"] < 4
            sentences = [f"{row['stem']} {choice}." for choice in row["choices"]]
            assert [s in text for s in sentences] == [k == row["answer"] for k in range(4)], row
            assert row["stem"] not in others
    answers = [r["answer"] for t in TASKS for r in data.questions[t]]
    assert {answers.count(k) for k in range(4)} and min(answers.count(k) for k in range(4)) > 20  # shuffled


def test_corpora_layout():
    data = generate()
    assert set(data.corpora) == set(CORPORA)
    assert data.corpus("forget-corpus") == data.corpus("bio-forget-corpus") + data.corpus("cyber-forget-corpus")
    assert data.corpus("all-corpus") == data.corpus("forget-corpus") + data.corpus("retain-corpus")
    assert not set(data.corpus("forget-corpus")) & set(data.corpus("retain-corpus"))
    assert all(doc.startswith("= ") for doc in data.corpus("retain-corpus"))  # wikitext-style headings
    with pytest.raises(ValueError, match="has no corpus 'bio'"):
        data.corpus("bio")


def test_to_folder(tmp_path):
    data = generate()
    folder = data.to_folder(tmp_path / "wmdp")
    rows = [json.loads(line) for line in (folder / "bio-forget-corpus.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == data.corpus("bio-forget-corpus")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["version"] == data.version and meta["questions"]["mmlu_mini"] == 73


def test_task_folder_in_lm_eval_format(tmp_path):
    folder, names = wmdp_mini_tasks(tmp_path / "tasks")
    assert names == list(TASKS)
    data = generate()
    for task in names:
        cfg = yaml.safe_load((folder / f"{task}.yaml").read_text())
        assert cfg["task"] == task and cfg["output_type"] == "multiple_choice" and cfg["doc_to_text"] == "{{stem}}"
        file = cfg["dataset_kwargs"]["data_files"]["test"]
        assert file == str(folder / f"{task}.jsonl")
        assert [json.loads(line) for line in open(file)] == data.questions[task]
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert wmdp_mini_tasks(tmp_path / "tasks") == (folder, names)  # unchanged files are not rewritten
    assert stamps == {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_builtin_tasks_run_in_lm_eval(builtin_tokenizer_path, tmp_path):
    """lm-eval finds the three tasks; the first docs' acc equals the naive stem-continuation comparison."""
    pytest.importorskip("lm_eval")
    import torch
    from transformers import AutoTokenizer

    from lit_unlearn.evaluation.lm_eval_adapter import check_tasks, evaluate_tasks
    from lit_unlearn.models.tiny import tiny_llama

    folder, names = wmdp_mini_tasks(tmp_path / "tasks")
    assert check_tasks(names, include_path=str(folder)) == names
    tok = AutoTokenizer.from_pretrained(builtin_tokenizer_path)
    model = tiny_llama(seed=1, vocab_size=len(tok))
    result = evaluate_tasks(model, tok, ["wmdp_mini_cyber"], include_path=str(folder), limit=6)["wmdp_mini_cyber"]
    rows = generate().questions["wmdp_mini_cyber"][:6]
    hits = []
    with torch.no_grad():
        for row in rows:
            n_context = len(tok(row["stem"])["input_ids"])
            scores = []
            for choice in row["choices"]:
                ids = tok(row["stem"] + " " + choice)["input_ids"]
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
                scores.append(sum(logp[t - 1, ids[t]].item() for t in range(n_context, len(ids))))
            hits.append(max(range(4), key=scores.__getitem__) == row["answer"])
    assert result["n"] == 6 and result["acc"] == pytest.approx(sum(hits) / 6)


def test_text_datamodule_reads_builtin_corpora(builtin_tokenizer_path):
    from lit_unlearn.data import DataValidationError, TextDataModule

    dm = TextDataModule(forget_files="builtin:wmdp-mini/bio-forget-corpus",
                        retain_files="builtin:wmdp-mini/retain-corpus", tokenizer=builtin_tokenizer_path,
                        max_length=32, batch_size=4)
    dm.setup("fit")
    forget_text = " ".join(generate().corpus("bio-forget-corpus"))
    chunks = [dm.forget_dataset[i] for i in range(len(dm.forget_dataset))]
    assert len(chunks) >= 16 and len(dm.retain_dataset) >= 73
    tok = dm.load_tokenizer()
    decoded = [tok.decode(c["input_ids"], skip_special_tokens=True).strip() for c in chunks]
    assert all(piece[:20] in forget_text for piece in decoded)
    assert builtin_wmdp.WMDP_BUILTIN_VERSION in dm.data_version
    with pytest.raises(DataValidationError, match="Unknown corpus 'bio' .*builtin:wmdp-mini/bio-forget-corpus"):
        TextDataModule(forget_files="builtin:wmdp-mini/bio", tokenizer=builtin_tokenizer_path).setup("fit")


def test_export_wmdp_corpora_writes_jsonl(tmp_path, monkeypatch):
    """Hub rows (stood in by a fake load_dataset) become {"text"} lines; short documents are dropped."""
    import datasets

    from lit_unlearn.data import DataValidationError
    from lit_unlearn.data.wmdp import HUB_CORPORA, export_wmdp_corpora

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "cais/wmdp-bio-forget-corpus":
            raise ConnectionError("gated")
        return [{"text": "x" * 60}, {"text": "too short"}, {"text": f"{config} " + "y" * 60}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    files = export_wmdp_corpora(tmp_path, corpora=("cyber-forget-corpus", "wikitext"))
    assert calls == [HUB_CORPORA["cyber-forget-corpus"], HUB_CORPORA["wikitext"]]
    texts = [json.loads(line)["text"] for line in files["wikitext"].read_text().splitlines()]
    assert texts == ["x" * 60, "wikitext-2-raw-v1 " + "y" * 60]
    with pytest.raises(DataValidationError, match="Request access at .*wmdp-bio-forget-corpus"):
        export_wmdp_corpora(tmp_path, corpora=("bio-forget-corpus",))
    with pytest.raises(DataValidationError, match="valid names"):
        export_wmdp_corpora(tmp_path, corpora=("bio",))


def test_zephyr_rmu_recipe_composes_with_fit(builtin_tokenizer_path, tmp_path):
    """The WMDP RMU recipe as shipped (published settings), with only model, corpora and hardware swapped for
    the tiny CPU setup, runs one step of `fit`."""
    from pathlib import Path

    from lit_unlearn.cli import main

    recipe = Path(__file__).resolve().parents[1] / "configs" / "wmdp" / "recipes" / "zephyr-7b-beta" / "rmu.yaml"
    shipped = yaml.safe_load(recipe.read_text())["model"]["init_args"]
    assert (shipped["layer"], shipped["steering_coeff"], shipped["alpha"], shipped["lr"]) == (7, 6.5, 1200.0, 5e-5)
    main(["fit", "--config", str(recipe), "--model.init_args.model_name_or_path=builtin:tiny-llama",
          "--model.init_args.layer=null", f"--data.init_args.tokenizer={builtin_tokenizer_path}",
          "--data.init_args.forget_files=builtin:wmdp-mini/forget-corpus",
          "--data.init_args.retain_files=builtin:wmdp-mini/retain-corpus", "--data.init_args.max_length=32",
          "--data.init_args.pad_token=null", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
          "--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
          f"--model.init_args.save_dir={tmp_path / 'model'}"])
    assert (tmp_path / "model" / "config.json").is_file()
