"""MUSE scalability / sustainability driver (``lit_unlearn.muse_sequences``) on
builtin:muse-mini with a tiny random Llama and 2 GA steps per request: one row per request with the sizes
of the data, scal requests all start from the target, sust request k starts from request k − 1's saved
weights (checked on the weights the objective holds when ``fit`` starts), the caller's model (folder or
object) is untouched, the rows equal an independent MUSE evaluation of each saved model, and bad input."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from lit_unlearn.data.muse import muse_texts
from lit_unlearn.muse_sequences import main, run_scalability, run_sustainability
from lit_unlearn.models.loading import load_causal_lm, load_tokenizer

torch.set_num_threads(1)
SRC = "builtin:muse-mini"
EVAL = {"verbmem_max_new_tokens": 3, "knowmem_max_new_tokens": 3, "privleak_max_length": 32}
KW = dict(source=SRC, objective_kwargs={"lr": 5e-3}, batch_size=4, max_length=32, max_steps=2,
          eval_config=EVAL, eval_max_samples=2, eval_batch_size=2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, builtin_tokenizer_path) -> str:
    from test_distributed import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("seq_model") / "tiny", builtin_tokenizer_path)


class StartWeights:
    """Records the objective's weights when each ``fit`` starts (the model a request starts from)."""

    def __new__(cls):
        from lightning.pytorch import Callback

        class _Start(Callback):
            def __init__(self):
                self.states: list[dict[str, torch.Tensor]] = []

            def on_fit_start(self, trainer, pl_module):
                self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

        return _Start()


def _weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_causal_lm(str(folder)).state_dict()


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _digest(folder: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def test_scalability_rows_sizes_and_independent_starts(tiny_dir, tmp_path):
    before = _digest(tiny_dir)
    start = StartWeights()
    result = run_scalability(tiny_dir, "GA", out_dir=tmp_path, trainer_kwargs={"accelerator": "cpu",
                                                                                "callbacks": [start]}, **KW)
    rows = result["rows"]
    assert [r["k"] for r in rows] == [0, 1, 2, 3, 4] and result["mode"] == "scal"
    tok = load_tokenizer(tiny_dir)
    for r in rows[1:]:
        texts = muse_texts(SRC, "scal", f"forget_{r['k']}")
        assert r["split"] == f"scal/forget_{r['k']}" and r["num_documents"] == len(texts) == 12 * r["k"]
        assert r["num_tokens"] == sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
        assert r["start_from"] == tiny_dir and r["steps"] == 2
        info = json.loads((Path(r["model_dir"]) / "lit_unlearn.json").read_text())
        assert info["data_version"].endswith(f"|scal/forget_{r['k']}")  # the request's forget corpus is recorded
    target = _weights(tiny_dir)
    assert len(start.states) == 4 and all(_same(s, target) for s in start.states)  # every request from the target
    assert not _same(_weights(rows[1]["model_dir"]), target)  # the 2 steps moved the weights
    assert _digest(tiny_dir) == before  # the caller's folder is untouched
    # every row is the MUSE evaluation of its saved model (an independent run of MUSEEvaluation)
    from lit_unlearn.evaluation.benchmarks.muse import MUSEEvaluation

    want = MUSEEvaluation(rows[3]["model_dir"], tiny_dir, max_samples=2, batch_size=2, progress=False,
                          config=EVAL).run()
    assert rows[3]["utility"] == want["knowmem_retain"]["value"]
    assert rows[3]["knowmem_forget"] == want["knowmem_forget"]["value"] and rows[3]["verbmem"] == want["verbmem"]["value"]
    assert rows[3]["mia_auc"] == pytest.approx(want["mia"]["min_k"]["auc"], abs=1e-6)
    # utility preservation against the target's row, MUSE's relative change in percent
    ref = rows[0]["utility"]
    for r in rows[1:]:
        assert r["utility_preservation"] == (None if not ref else pytest.approx(100 * (r["utility"] - ref) / ref))
    saved = json.loads((tmp_path / "scal" / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["format"] == "lit_unlearn.muse_sequence/1"
    assert (tmp_path / "scal" / "results.md").read_text().count("\n| ") == 6  # header + 5 rows


def test_sustainability_each_request_starts_from_the_previous(tiny_dir, tmp_path):
    model = load_causal_lm(tiny_dir)
    tok = load_tokenizer(tiny_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start = StartWeights()
    result = run_sustainability(model, "GA", tokenizer=tok, out_dir=tmp_path, ks=[1, 2, 3],
                                trainer_kwargs={"accelerator": "cpu", "callbacks": [start]}, **KW)
    rows = result["rows"]
    assert [r["k"] for r in rows] == [0, 1, 2, 3]
    assert [r["num_documents"] for r in rows[1:]] == [len(muse_texts(SRC, "sust", f"forget_{k}")) for k in (1, 2, 3)]
    assert all(r["num_documents"] == 12 for r in rows[1:])
    assert _same(start.states[0], before)  # request 1 from the target (the saved copy of the object)
    for k in (2, 3):  # request k starts from request k − 1's saved model, by weights
        assert rows[k]["start_from"] == rows[k - 1]["model_dir"]
        assert _same(start.states[k - 1], _weights(rows[k - 1]["model_dir"]))
        assert not _same(start.states[k - 1], before)
    assert _same(model.state_dict(), before)  # the caller's object is untouched
    assert rows[0]["model_dir"] == str(tmp_path / "sust" / "target")


def test_cli_entry(tiny_dir, tmp_path, capsys):
    result = main(["scal", "--model", tiny_dir, "--out", str(tmp_path), "--ks", "2", "--max-steps", "1",
                   "--batch-size", "4", "--max-length", "32", "--accelerator", "cpu", "--eval-max-samples", "1",
                   "--eval-batch-size", "1", "--eval-config", json.dumps(EVAL), "--objective-kwargs",
                   '{"lr": 1e-3}'])
    assert [r["k"] for r in result["rows"]] == [0, 2] and result["rows"][1]["num_documents"] == 24
    assert "| 2 | scal/forget_2 | 24 |" in capsys.readouterr().out


def test_bad_input(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="sust.*successive.*1, 2"):
        run_sustainability(tiny_dir, out_dir=tmp_path, ks=[2, 3])
    with pytest.raises(ValueError, match="increasing request numbers"):
        run_scalability(tiny_dir, out_dir=tmp_path, ks=[2, 1])
    with pytest.raises(ValueError, match="Unknown objective 'Nope'"):
        run_scalability(tiny_dir, "Nope", out_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown MUSE evaluation settings"):
        run_scalability(tiny_dir, out_dir=tmp_path, eval_config={"max_new_tokens": 3})
    with pytest.raises(Exception, match="forget_5"):
        run_scalability(tiny_dir, out_dir=tmp_path, ks=[5])
    with pytest.raises(ValueError, match="forget_split"):
        from lit_unlearn.evaluation.benchmarks.muse import MUSEDataModule

        MUSEDataModule(forget_split="raw/retain1")
    assert not any(tmp_path.iterdir())  # every error before any work
