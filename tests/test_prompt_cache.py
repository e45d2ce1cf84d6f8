"""The evaluation's two shortcuts, each against the computation it replaces:

* ``shared_prompt_logits``: answer logits from one pass of the prompts (shared key/value cache) equal the
  full (prompt + answer) forward pass at the answer positions;
* ``assemble_prefix_continuations``: extraction likelihood's prefix continuations from the generations of
  only the prefixes whose greedy token differs from the answer's equal a generation for every prefix.
"""
from __future__ import annotations

import pytest
import torch

from lit_unlearn.functional import generation as G
from lit_unlearn.functional.prompt_cache import shared_prompt_logits
from lit_unlearn.functional.tokens import IGNORE_INDEX, token_logprobs
from test_functional_metrics import naive_greedy, tiny_model  # noqa: F401 (a fixture)


def right_padded(rows: list[tuple[list[int], list[int]]], pad: int = 0, max_length: int | None = None) -> dict:
    """``{input_ids, attention_mask, labels}`` of prompt + answer rows (labels -100 on the prompt)."""
    seqs = [(p + a)[:max_length] if max_length else p + a for p, a in rows]
    labs = [([IGNORE_INDEX] * len(p) + a)[: len(s)] for (p, a), s in zip(rows, seqs)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad)
    labels = torch.full((len(seqs), width), IGNORE_INDEX)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, (s, lab) in enumerate(zip(seqs, labs)):
        ids[r, : len(s)], labels[r, : len(s)], mask[r, : len(s)] = torch.tensor(s), torch.tensor(lab), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


PROMPTS = [[1, 5, 6, 7, 8], [1, 9], [1, 4, 3]]  # different lengths: left padding in the prompt pass
ANSWERS = [[[10, 11, 12, 2]], [[13, 2]], [[14, 15, 16, 17, 18, 2]]]  # one answer per prompt
PERTURBED = [[[20, 21, 2], [22, 2]], [[23, 24, 25, 2], [26, 2]], [[27, 2], [28, 29, 30, 31, 2]]]  # J = 2


def test_shared_prompt_logits_equal_the_full_forward(tiny_model):
    answers = right_padded([(p, a[0]) for p, a in zip(PROMPTS, ANSWERS)])
    perturbed = right_padded([(p, a) for p, group in zip(PROMPTS, PERTURBED) for a in group])
    out = shared_prompt_logits(tiny_model, PROMPTS, {"answer": (answers, 1), "perturbed": (perturbed, 2)}, pad_id=0)
    for name, batch in (("answer", answers), ("perturbed", perturbed)):
        logits, labels = out[name]
        with torch.no_grad():
            full = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for r in range(batch["input_ids"].shape[0]):
            prompt_len = len(PROMPTS[r // (1 if name == "answer" else 2)])
            n = int(batch["attention_mask"][r].sum()) - prompt_len
            # position 0: the prompt's last logits, then the answer's; labels: -100 then the answer tokens
            torch.testing.assert_close(logits[r, : n + 1], full[r, prompt_len - 1: prompt_len + n], atol=1e-5, rtol=1e-5)
            assert labels[r, 0] == IGNORE_INDEX
            assert labels[r, 1: n + 1].tolist() == batch["labels"][r, prompt_len: prompt_len + n].tolist()
            assert bool((labels[r, n + 1:] == IGNORE_INDEX).all())
        # the per-token log-probabilities every metric uses
        ours, ours_mask = token_logprobs(logits, labels)
        ref, ref_mask = token_logprobs(full, batch["labels"])
        torch.testing.assert_close(ours[ours_mask], ref[ref_mask], atol=1e-5, rtol=1e-5)


def test_shared_prompt_logits_on_truncated_rows(tiny_model):
    rows = [(p, a[0]) for p, a in zip(PROMPTS, ANSWERS)]
    batch = right_padded(rows, max_length=7)  # cuts the first and last answers
    logits, labels = shared_prompt_logits(tiny_model, PROMPTS, {"answer": (batch, 1)}, pad_id=0)["answer"]
    with torch.no_grad():
        full = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ours, mask = token_logprobs(logits, labels)
    ref, ref_mask = token_logprobs(full, batch["labels"])
    assert mask.sum(dim=1).tolist() == ref_mask.sum(dim=1).tolist() == [2, 2, 4]
    torch.testing.assert_close(ours[mask], ref[ref_mask], atol=1e-5, rtol=1e-5)


def test_shared_prompt_logits_refuse_rows_of_another_prompt(tiny_model):
    batch = right_padded([(PROMPTS[1], ANSWERS[0][0]), (PROMPTS[1], ANSWERS[1][0]), (PROMPTS[2], ANSWERS[2][0])])
    with pytest.raises(ValueError, match="do not begin with their sample's prompt_ids.*shared_prompt=False"):
        shared_prompt_logits(tiny_model, PROMPTS, {"answer": (batch, 1)}, pad_id=0)
    with pytest.raises(ValueError, match="4 rows for 3 prompts x 1"):
        shared_prompt_logits(tiny_model, PROMPTS, {"answer": (right_padded([(PROMPTS[0], [3])] * 4), 1)}, pad_id=0)


def teacher_forced_argmax(model, prompt: list[int], answer: list[int]) -> list[int]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0]
    return logits[len(prompt) - 1: len(prompt) - 1 + len(answer)].argmax(dim=-1).tolist()


@pytest.mark.parametrize("memorised_prefix", [0, 3, 6])
def test_assembled_continuations_equal_generating_every_prefix(tiny_model, memorised_prefix):
    eos = tiny_model.config.eos_token_id
    prompt = [1, 4, 9]
    own = naive_greedy(tiny_model, prompt, 12, eos=-1)  # the model's own greedy text: every prefix matches
    answer = own[:memorised_prefix] + [(t + 1) % 32 for t in own[memorised_prefix:6]]  # then it differs
    predicted = teacher_forced_argmax(tiny_model, prompt, answer)
    needed = [k for k in range(len(answer)) if not G.continues_answer(answer, predicted, k, eos)]
    assert len(needed) < len(answer) or memorised_prefix == 0
    generated = {k: naive_greedy(tiny_model, prompt + answer[:k], len(answer) - k, eos) for k in needed}
    got = G.assemble_prefix_continuations(answer, predicted, generated, eos)
    assert got == [naive_greedy(tiny_model, prompt + answer[:k], len(answer) - k, eos) for k in range(len(answer))]


def test_assemble_prefix_continuations_rules():
    # answer 5 6 7; the model predicts 5 and 7 but not 6; generation from prefix 1 gave [9, 9]
    assert G.assemble_prefix_continuations([5, 6, 7], [5, 8, 7], {1: [9, 9]}, eos_token_id=0) == [[5, 9, 9], [9, 9], [7]]
    # an EOS inside the answer ends a continuation: it is never taken from the next prefix
    assert not G.continues_answer([5, 0, 7], [5, 0, 7], 1, eos_token_id=0)
    with pytest.raises(ValueError, match="prefix 1 needs a generated continuation"):
        G.assemble_prefix_continuations([5, 6, 7], [5, 8, 7], {}, eos_token_id=0)


def test_evaluation_with_and_without_the_shortcuts_agree(builtin_tokenizer_path, monkeypatch):
    """The whole TOFU suite on a random model: shared prompt pass vs full sequences (float rounding apart),
    and extraction likelihood from the assembled continuations vs a generation for every prefix."""
    from lit_unlearn.evaluation import TOFUEvaluation, suite
    from lit_unlearn.evaluation.config import EvalConfig
    from lit_unlearn.models.loading import load_tokenizer
    from lit_unlearn.models.tiny import tiny_llama

    tok = load_tokenizer(builtin_tokenizer_path)
    model = tiny_llama(seed=0, vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, intermediate_size=64).eval()
    splits = {"forget": "forget10_perturbed", "real_authors": "real_authors_perturbed", "holdout": "holdout10"}

    def run(shared: bool) -> dict:
        config = EvalConfig(max_new_tokens=8, el_splits=["forget"], shared_prompt=shared, write_report=False)
        return TOFUEvaluation(model, tokenizer=tok, splits=splits, batch_size=4, max_length=48, max_samples=6,
                              progress=False, config=config).run()

    shared, full = run(True), run(False)
    for key in splits:
        for name, values in full["splits"][key]["per_sample"].items():
            assert shared["splits"][key]["per_sample"][name] == pytest.approx(values, rel=1e-5, abs=1e-6), (key, name)
    original = suite.TOFUEvaluator._prefix_continuations
    every_prefix = lambda self, model, pairs, predicted=None: original(self, model, pairs, None)  # noqa: E731
    monkeypatch.setattr(suite.TOFUEvaluator, "_prefix_continuations", every_prefix)
    generated_all = run(True)
    el = "extraction_likelihood"
    assert generated_all["splits"]["forget"]["per_sample"][el] == shared["splits"]["forget"]["per_sample"][el]
