"""lm-evaluation-harness adapter: accuracy of an in-memory model on a local multiple-choice task.

The task is written by the test in lm-eval's own YAML task format in ``tmp_path`` (never the hub); its
``acc`` / ``acc_norm`` are checked against a plain forward pass per (context, choice): the sum of the
choice tokens' log-probabilities (``torch.log_softmax``), argmax against the gold index, and the same
divided by the choice's length in characters (lm-eval's ``acc_norm``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port, spawn_and_wait

DOCS = [  # (question, 4 choices of different lengths, gold index)
    ("Which city is the capital of Norway?", ["Oslo", "Bergen town", "Lima", "Stavanger harbour"], 0),
    ("Which planet is known as the Red Planet?", ["Jupiter", "Mars", "the planet Venus", "Earth"], 1),
    ("How many legs does a spider have?", ["six", "ten legs", "eight", "four in all"], 2),
    ("Who wrote Hamlet?", ["Jane Austen", "Leo Tolstoy", "Homer", "William Shakespeare"], 3),
    ("What is the chemical symbol of gold?", ["Ag", "Au", "the symbol Fe", "Cu"], 1),
    ("Which prize did Kara Vorvik win?", ["the Morrow Medal", "Starling Prize", "Caldwell", "Iron Pen Award"], 0),
    ("Where was Mino Belard born?", ["Mirebay", "Talmouth", "Oskaveld", "Quillsby"], 2),
]
CONTEXT = "Question: {q}\nAnswer:"


def write_task(folder: Path, name: str = "toy_mc", docs=DOCS) -> Path:
    """A local lm-eval multiple-choice task: ``<folder>/<name>.yaml`` + ``<folder>/<name>.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in docs))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return folder


def naive_loglikelihoods(model, tokenizer, docs=DOCS) -> list[list[float]]:
    """For each doc and choice: sum_t log p(choice token t | context, earlier choice tokens), one forward each."""
    out = []
    with torch.no_grad():
        for question, choices, _ in docs:
            context = CONTEXT.format(q=question)
            n_context = len(tokenizer(context)["input_ids"])
            row = []
            for choice in choices:
                ids = tokenizer(context + " " + choice)["input_ids"]
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
                row.append(sum(logp[t - 1, ids[t]].item() for t in range(n_context, len(ids))))
            out.append(row)
    return out


def naive_accuracy(lls: list[list[float]], docs=DOCS) -> tuple[float, float]:
    acc = [max(range(4), key=lambda k: row[k]) == gold for row, (_, _, gold) in zip(lls, docs)]
    norm = [max(range(4), key=lambda k: row[k] / len(choices[k])) == gold
            for row, (_, choices, gold) in zip(lls, docs)]
    return sum(acc) / len(acc), sum(norm) / len(norm)


@pytest.fixture(scope="module")
def tokenizer(builtin_tokenizer_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_tokenizer_path)


@pytest.fixture(scope="module")
def model(tokenizer):
    from lit_unlearn.models.tiny import tiny_llama

    return tiny_llama(seed=3, vocab_size=len(tokenizer))


def test_accuracy_matches_a_plain_forward_pass(model, tokenizer, tmp_path):
    """Per-choice log-likelihoods, acc, acc_norm and n equal the naive loop; model mode and tokenizer untouched."""
    pytest.importorskip("lm_eval")
    from lit_unlearn.evaluation.lm_eval_adapter import _evaluate

    folder = write_task(tmp_path / "tasks")
    model.train()
    pad_before = tokenizer.pad_token
    run = _evaluate(model, tokenizer, ["toy_mc"], include_path=str(folder), batch_size=3, log_samples=True)
    assert model.training and tokenizer.pad_token == pad_before

    expected = naive_loglikelihoods(model, tokenizer)
    samples = sorted(run.raw["samples"]["toy_mc"], key=lambda s: s["doc_id"])
    got = [[resp[0][0] for resp in s["resps"]] for s in samples]
    assert [[a[1] for a in s["arguments"]] for s in samples] == [[" " + c for c in d[1]] for d in DOCS]
    assert got == [pytest.approx(row, abs=1e-4) for row in expected]

    acc, acc_norm = naive_accuracy(expected)
    result = run.summary["toy_mc"]
    assert result["acc"] == pytest.approx(acc) and result["acc_norm"] == pytest.approx(acc_norm)
    assert result["n"] == len(DOCS)
    assert result["acc_stderr"] == pytest.approx((acc * (1 - acc) / (len(DOCS) - 1)) ** 0.5)
    assert acc != acc_norm or 0 < acc < 1  # the task separates the two (lengths differ) or is not trivial


def test_evaluate_tasks_on_a_peft_model_with_limit(model, tokenizer, tmp_path):
    """A LoRA-wrapped model object works; `limit` scores the first docs only; the numbers match the naive loop."""
    pytest.importorskip("lm_eval")
    peft = pytest.importorskip("peft")
    from lit_unlearn.evaluation.lm_eval_adapter import evaluate_tasks

    wrapped = peft.get_peft_model(
        __import__("copy").deepcopy(model),
        peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    result = evaluate_tasks(wrapped, tokenizer, ["toy_mc"], include_path=str(write_task(tmp_path)), limit=4)
    acc, acc_norm = naive_accuracy(naive_loglikelihoods(wrapped, tokenizer, DOCS[:4]), DOCS[:4])
    assert result["toy_mc"]["n"] == 4
    assert result["toy_mc"]["acc"] == pytest.approx(acc) and result["toy_mc"]["acc_norm"] == pytest.approx(acc_norm)


def test_unknown_task_names_close_matches(tmp_path):
    pytest.importorskip("lm_eval")
    from lit_unlearn.evaluation.lm_eval_adapter import LmEvalTaskError, check_tasks

    folder = write_task(tmp_path)
    assert check_tasks("toy_mc", include_path=str(folder)) == ["toy_mc"]
    with pytest.raises(LmEvalTaskError, match=r"Unknown lm-eval task 'toy_mcq' \(close matches: toy_mc"):
        check_tasks(["toy_mc", "toy_mcq"], include_path=str(folder))
    with pytest.raises(LmEvalTaskError, match=r"'wmdp_bioo' \(close matches: wmdp_bio"):
        check_tasks(["wmdp_bioo"])
    with pytest.raises(LmEvalTaskError, match="does not exist"):
        check_tasks(["toy_mc"], include_path=str(tmp_path / "missing"))
    with pytest.raises(LmEvalTaskError, match="No lm-eval task"):
        check_tasks([])


def test_lm_eval_not_installed_names_the_extra(monkeypatch):
    from lit_unlearn.evaluation import lm_eval_adapter

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "lit_unlearn\[lmeval\]"'):
        lm_eval_adapter.check_tasks(["wmdp_bio"])
    with pytest.raises(ImportError, match="lmeval"):
        lm_eval_adapter.evaluate_tasks(None, None, ["wmdp_bio"])


def test_malformed_task_folder(model, tokenizer, tmp_path):
    """A YAML lm-eval cannot parse names its file; a task whose data file is missing fails with the hint."""
    pytest.importorskip("lm_eval")
    from lit_unlearn.evaluation.lm_eval_adapter import LmEvalTaskError, check_tasks, evaluate_tasks

    broken = write_task(tmp_path / "broken")
    (broken / "bad.yaml").write_text("task: bad\ndoc_to_text: [unclosed\n")
    with pytest.raises(LmEvalTaskError, match=r"bad\.yaml: lm-eval cannot read this task file"):
        check_tasks(["toy_mc"], include_path=str(broken))

    missing = write_task(tmp_path / "missing_data", name="toy_missing")
    (missing / "toy_missing.jsonl").unlink()
    with pytest.raises(LmEvalTaskError, match=r"data_files \(relative paths are resolved from the current"):
        evaluate_tasks(model, tokenizer, ["toy_missing"], include_path=str(missing))


def _sharded_worker(rank: int, world_size: int, port: int, tokenizer_path: str, folder: str, out: str) -> None:
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from lit_unlearn.evaluation.lm_eval_adapter import evaluate_tasks
    from lit_unlearn.models.tiny import tiny_llama

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_path)
        result = evaluate_tasks(tiny_llama(seed=3, vocab_size=len(tok)), tok, ["toy_mc"], include_path=folder,
                                batch_size=2)
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_the_documents_and_agree(model, tokenizer, builtin_tokenizer_path, tmp_path):
    """Under a 2-process gloo group each rank scores half the docs; every rank returns the 1-process result."""
    pytest.importorskip("lm_eval")
    from lit_unlearn.evaluation.lm_eval_adapter import evaluate_tasks

    folder = str(write_task(tmp_path / "tasks"))
    single = evaluate_tasks(model, tokenizer, ["toy_mc"], include_path=folder, batch_size=2)
    spawn_and_wait(_sharded_worker, (2, free_port(), builtin_tokenizer_path, folder, str(tmp_path)), nprocs=2,
                   timeout=300, what="the 2-process lm-eval evaluation")
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["toy_mc"]["n"] == len(DOCS)
        assert got["toy_mc"] == pytest.approx(single["toy_mc"])
