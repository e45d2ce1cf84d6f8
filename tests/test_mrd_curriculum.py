"""MRDCurriculum (callbacks/mrd_curriculum.py): weights from MRD scores, recompute schedule, files, resume, drop-in."""
from __future__ import annotations

import copy
import json
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

import lit_unlearn.callbacks.mrd_curriculum as mrd_curriculum_module
from lit_unlearn.analysis.mrd import mrd_scores
from lit_unlearn.callbacks.mrd_curriculum import MRDCurriculum, curriculum_weights, score_summary
from lit_unlearn.data.samplers import WeightedDistributedSampler
from lit_unlearn.functional.tokens import token_logprobs
from lit_unlearn.models.tiny import tiny_llama

torch.set_num_threads(1)

K = 4  # perturbations per MRD scoring: small, the math is tested in test_mrd.py
BATCH = 4


def expected_draws(probabilities, epoch: int, size: int, seed: int = 0) -> list[int]:
    """What WeightedDistributedSampler (1 replica) must draw in ``epoch`` with these weights."""
    gen = torch.Generator().manual_seed(seed + epoch)
    weights = torch.as_tensor(probabilities, dtype=torch.float64)
    return torch.multinomial(weights, size, replacement=True, generator=gen).tolist()


def naive_weights(scores, power: float, eps: float) -> torch.Tensor:
    s = torch.as_tensor(scores, dtype=torch.float64)
    w = (s + eps * s.mean()) ** power
    return w / w.sum()


def make_trainer(root, callbacks, max_epochs: int, checkpointing: bool = False) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=checkpointing,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root), callbacks=callbacks,
        num_sanity_val_steps=0,
    )


# ----------------------------------------------------------------------------------------------
# pure helpers


def test_curriculum_weights_formula_and_edge_cases():
    scores = torch.tensor([0.0, 1e-3, 2e-3, 5e-3])
    for power in (1.0, -1.0, 2.0, 0.0):
        torch.testing.assert_close(curriculum_weights(scores, power, 1e-2), naive_weights(scores, power, 1e-2))
    # relative eps: the weights do not depend on the scale of MRD
    torch.testing.assert_close(curriculum_weights(scores * 1e-4, -1.0, 1e-2), curriculum_weights(scores, -1.0, 1e-2))
    # easy first: higher MRD, drawn more often; hard first: the reverse
    assert curriculum_weights(scores, 1.0).argmax() == 3 and curriculum_weights(scores, -1.0).argmax() == 0
    torch.testing.assert_close(curriculum_weights(torch.zeros(5)), torch.full((5,), 0.2, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite and >= 0"):
        curriculum_weights(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        curriculum_weights(torch.tensor([1.0, -1.0]))
    stats = score_summary(scores, curriculum_weights(scores))
    assert stats["min"] == 0.0 and stats["max"] == pytest.approx(5e-3) and stats["q50"] == pytest.approx(1.5e-3)
    assert 1.0 <= stats["effective_samples"] <= 4.0


def test_constructor_validation():
    with pytest.raises(ValueError, match="every_n_epochs"):
        MRDCurriculum(every_n_epochs=0)
    with pytest.raises(ValueError, match="estimator"):
        MRDCurriculum(estimator="nope")
    with pytest.raises(ValueError, match="eps"):
        MRDCurriculum(eps=-1.0)
    with pytest.raises(ValueError, match="control_variate"):
        MRDCurriculum(estimator="analytic", control_variate=True)


def test_state_dict_round_trip(tmp_path):
    cb = MRDCurriculum(every_n_epochs=3, power=-1.0)
    cb.scores = torch.tensor([0.1, 0.2, 0.3])
    cb.weights = curriculum_weights(cb.scores, -1.0)
    cb.history = [{"epoch": 0, "step": 0, "stats": score_summary(cb.scores), "scores": cb.scores.tolist(),
                   "probabilities": cb.weights.tolist()}]
    cb.last_epoch, cb.last_step = 3, 17
    torch.save(cb.state_dict(), tmp_path / "state.pt")
    other = MRDCurriculum(every_n_epochs=3, power=-1.0)
    other.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert torch.equal(other.scores, cb.scores) and torch.equal(other.weights, cb.weights)
    assert other.history == cb.history and (other.last_epoch, other.last_step) == (3, 17)
    assert other.state_key == cb.state_key != MRDCurriculum(every_n_epochs=2).state_key


# ----------------------------------------------------------------------------------------------
# with the library's objectives and datamodule (tiny finetuned Llama, forget01 = 20 samples)


@pytest.fixture(scope="module")
def recording_ga():
    from lit_unlearn.objectives import GA

    class RecordingGA(GA):
        """GA that remembers which forget rows each epoch drew."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.drawn: dict[int, list[int]] = {}

        def training_step(self, batch, batch_idx):
            self.drawn.setdefault(self.current_epoch, []).extend(batch["forget"]["index"].tolist())
            return super().training_step(batch, batch_idx)

    return RecordingGA


def make_run(model_path, tokenizer, recording_ga):
    from lit_unlearn.data import UnlearningDataModule

    data = UnlearningDataModule(tokenizer=tokenizer, forget_split="forget01", retain_split=None,
                                batch_size=BATCH, max_length=64)
    module = recording_ga(model_path, tokenizer=tokenizer, lr=1e-4)
    return module, data


def test_weights_equal_direct_mrd_and_epoch_schedule(tmp_path, monkeypatch, finetuned_tiny, builtin_tokenizer_path,
                                                     recording_ga):
    calls = []
    real = mrd_curriculum_module.mrd_scores

    def spy(model, dataloader, **kwargs):
        out = real(model, dataloader, **kwargs)
        calls.append({"model": copy.deepcopy(model), "kwargs": kwargs, "scores": out.clone()})
        return out

    monkeypatch.setattr(mrd_curriculum_module, "mrd_scores", spy)
    module, data = make_run(finetuned_tiny, builtin_tokenizer_path, recording_ga)
    cb = MRDCurriculum(every_n_epochs=2, num_samples=K, power=1.0, eps=1e-3, png_every_scoring=True)
    trainer = make_trainer(tmp_path, [cb], max_epochs=5)
    trainer.fit(module, datamodule=data)

    # schedule: before training, then every 2 epochs
    assert [h["epoch"] for h in cb.history] == [0, 2, 4] and len(calls) == 3
    assert [h["step"] for h in cb.history] == [0, 10, 20]  # 20 samples / batch 4 = 5 steps per epoch
    for call, entry in zip(calls, cb.history):
        # the scores are exactly those of a direct mrd_scores call on the weights of that moment
        direct = mrd_scores(call["model"], data.forget_scoring_dataloader(BATCH), sigma=1e-5, num_samples=K,
                            estimator="mean_abs", seed=0, progress=False)
        torch.testing.assert_close(torch.tensor(entry["scores"]), direct, rtol=1e-6, atol=0)
        torch.testing.assert_close(torch.tensor(entry["probabilities"], dtype=torch.float64),
                                   naive_weights(direct, 1.0, 1e-3), rtol=1e-6, atol=0)
        assert call["kwargs"]["num_samples"] == K and call["kwargs"]["estimator"] == "mean_abs"
    assert not torch.allclose(torch.tensor(cb.history[0]["scores"]), torch.tensor(cb.history[1]["scores"]))
    # the sampler holds the latest weights and every epoch drew with the weights of its last scoring
    assert torch.equal(data.forget_sampler.weights, cb.weights)
    for epoch in range(5):
        source = cb.history[epoch // 2]
        assert module.drawn[epoch] == expected_draws(source["probabilities"], epoch, 20)

    # logged stats and files (default folder: default_root_dir/mrd without a logger)
    assert trainer.callback_metrics["mrd/mean"].item() == pytest.approx(cb.history[-1]["stats"]["mean"], rel=1e-6)
    assert trainer.callback_metrics["mrd/recomputations"].item() == 3
    out = tmp_path / "mrd"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["mrd_epoch0000_step0000000.png", "mrd_epoch0002_step0000010.png", "mrd_epoch0004_step0000020.png"]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    saved = json.loads((out / "mrd_history.json").read_text())
    assert [h["epoch"] for h in saved["history"]] == [0, 2, 4]
    assert all(entry["seconds"] > 0 for entry in saved["history"])  # scoring wall time is recorded
    assert saved["history"][1]["scores"] == pytest.approx(cb.history[1]["scores"])
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_step_schedule_hard_first(tmp_path, finetuned_tiny, builtin_tokenizer_path, recording_ga):
    module, data = make_run(finetuned_tiny, builtin_tokenizer_path, recording_ga)
    cb = MRDCurriculum(every_n_steps=3, num_samples=K, power=-1.0, output_dir=str(tmp_path / "plots"),
                       log_histogram=False, control_variate=True)
    trainer = make_trainer(tmp_path, [cb], max_epochs=2)
    trainer.fit(module, datamodule=data)
    from lit_unlearn.models.loading import load_causal_lm

    direct = mrd_scores(load_causal_lm(finetuned_tiny).float(), data.forget_scoring_dataloader(BATCH), num_samples=K, control_variate=True,
                        progress=False)  # the first scoring, before any update
    torch.testing.assert_close(torch.tensor(cb.history[0]["scores"]), direct, rtol=1e-6, atol=0)
    assert [(h["epoch"], h["step"]) for h in cb.history] == [(0, 0), (0, 3), (1, 6), (1, 9)]
    for entry in cb.history:
        torch.testing.assert_close(torch.tensor(entry["probabilities"], dtype=torch.float64),
                                   naive_weights(entry["scores"], -1.0, 1e-8), rtol=1e-6, atol=0)
    # mid-epoch weights take effect at the next epoch's draw: epoch 1 uses those of step 3
    assert module.drawn[0] == expected_draws(cb.history[0]["probabilities"], 0, 20)
    assert module.drawn[1] == expected_draws(cb.history[1]["probabilities"], 1, 20)
    assert (tmp_path / "plots" / "mrd_history.json").is_file()
    assert not list((tmp_path / "plots").glob("*.png"))  # log_histogram=False


def test_resume_matches_uninterrupted_run(tmp_path, finetuned_tiny, builtin_tokenizer_path, recording_ga):
    # uninterrupted: 5 epochs, scorings at epochs 0, 2, 4
    module_a, data_a = make_run(finetuned_tiny, builtin_tokenizer_path, recording_ga)
    cb_a = MRDCurriculum(every_n_epochs=2, num_samples=K, log_histogram=False)
    make_trainer(tmp_path / "a", [cb_a], max_epochs=5).fit(module_a, datamodule=data_a)

    # interrupted after epoch 2 (checkpoint at its end), resumed by a fresh callback, datamodule and module
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    module_b, data_b = make_run(finetuned_tiny, builtin_tokenizer_path, recording_ga)
    cb_b = MRDCurriculum(every_n_epochs=2, num_samples=K, log_histogram=False)
    make_trainer(tmp_path / "b", [cb_b, ckpt], max_epochs=3, checkpointing=True).fit(module_b, datamodule=data_b)
    assert [h["epoch"] for h in cb_b.history] == [0, 2]

    module_c, data_c = make_run(finetuned_tiny, builtin_tokenizer_path, recording_ga)
    cb_c = MRDCurriculum(every_n_epochs=2, num_samples=K, log_histogram=False)
    trainer_c = make_trainer(tmp_path / "c", [cb_c], max_epochs=5)
    trainer_c.fit(module_c, datamodule=data_c, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))

    assert sorted(module_c.drawn) == [3, 4]
    # epoch 3 draws with the restored weights of epoch 2 (no rescoring), epoch 4 rescored on the same weights
    assert [h["epoch"] for h in cb_c.history] == [0, 2, 4]
    for epoch in (3, 4):
        assert module_c.drawn[epoch] == module_a.drawn[epoch]
    for got, want in zip(cb_c.history, cb_a.history):
        assert (got["epoch"], got["step"]) == (want["epoch"], want["step"])
        torch.testing.assert_close(torch.tensor(got["scores"]), torch.tensor(want["scores"]), rtol=1e-6, atol=0)
    torch.testing.assert_close(cb_c.weights, cb_a.weights, rtol=1e-6, atol=0)
    torch.testing.assert_close(data_c.forget_sampler.weights, data_a.forget_sampler.weights, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------------------------
# drop-in: a plain LightningModule and LightningDataModule written here, following the protocol

V, LENGTH, N = 48, 12, 10


class TokenDataset(Dataset):
    def __init__(self, n: int = N, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for i in range(n):
            ids = torch.randint(3, V, (LENGTH,), generator=g)
            labels = ids.clone()
            labels[: 3 + i % 4] = -100  # a prompt of 3..6 tokens
            self.rows.append({"input_ids": ids, "labels": labels, "index": i})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def collate(items):
    return {
        "input_ids": torch.stack([x["input_ids"] for x in items]),
        "attention_mask": torch.ones(len(items), LENGTH, dtype=torch.long),
        "labels": torch.stack([x["labels"] for x in items]),
        "index": torch.tensor([x["index"] for x in items]),
    }


class PlainData(L.LightningDataModule):
    """The protocol: forget_dataset, forget_sampler (a WeightedDistributedSampler), collate."""

    def __init__(self, n: int = N):
        super().__init__()
        self.forget_dataset = TokenDataset(n)
        self.forget_sampler = None
        self.batch_size = 2
        self.collate = collate

    def train_dataloader(self):
        self.forget_sampler = WeightedDistributedSampler(self.forget_dataset, num_replicas=self.trainer.world_size,
                                                         rank=self.trainer.global_rank, seed=7)
        return DataLoader(self.forget_dataset, batch_size=self.batch_size, sampler=self.forget_sampler,
                          collate_fn=collate)


class PlainGA(L.LightningModule):
    """Not an UnlearningModule: a tiny Llama at ``self.model`` and a gradient-ascent loss."""

    def __init__(self):
        super().__init__()
        self.model = tiny_llama(seed=0, vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64)
        self.drawn: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.drawn.setdefault(self.current_epoch, []).extend(batch["index"].tolist())
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, mask = token_logprobs(logits, batch["labels"])
        return (logp * mask).sum() / mask.sum()  # minimising the mean log-prob = gradient ascent on the NLL

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_drop_in_plain_lightning_module(tmp_path):
    module, data = PlainGA(), PlainData()
    initial = copy.deepcopy(module.model)
    cb = MRDCurriculum(every_n_epochs=1, num_samples=K, power=1.0, batch_size=3, output_dir=str(tmp_path / "mrd"))
    make_trainer(tmp_path, [cb], max_epochs=3).fit(module, datamodule=data)

    assert [h["epoch"] for h in cb.history] == [0, 1, 2]
    # scores of epoch 0 are MRD of the initial model, computed independently here
    loader = DataLoader(data.forget_dataset, batch_size=3, collate_fn=collate)
    direct = mrd_scores(initial, loader, num_samples=K, progress=False)
    torch.testing.assert_close(torch.tensor(cb.history[0]["scores"]), direct, rtol=1e-6, atol=0)
    # the weights reached the module's own sampler, and every epoch's draws follow them
    assert torch.equal(data.forget_sampler.weights, cb.weights)
    for epoch in range(3):
        probs = cb.history[epoch]["probabilities"]
        assert max(probs) > 1.5 * min(probs)  # a real curriculum, not uniform
        assert module.drawn[epoch] == expected_draws(probs, epoch, N, seed=7)
    # by default one PNG, of the last recomputation, written at the end of fit
    last = cb.history[-1]
    assert [p.name for p in (tmp_path / "mrd").glob("*.png")] == [f"mrd_epoch0002_step{last['step']:07d}.png"]


class Recorder(L.Callback):
    """Writes what each rank saw (draws, MRD history, sampler weights) to rank<k>.json (ddp_spawn loses state)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        cb = next(c for c in trainer.callbacks if isinstance(c, MRDCurriculum))
        record = {"drawn": pl_module.drawn, "history": cb.history,
                  "sampler_weights": trainer.datamodule.forget_sampler.weights.tolist(),
                  "world_size": trainer.world_size}
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)


def test_ddp_two_processes(tmp_path):
    """2 gloo processes: every rank gets the same scores (= one process's), and draws its slice of one sample."""
    n = 9  # odd: the sampler pads the draw to 10 = 2 x 5
    module, data = PlainGA(), PlainData(n)
    initial = copy.deepcopy(module.model)
    cb = MRDCurriculum(every_n_epochs=1, num_samples=K, log_histogram=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), callbacks=[cb, Recorder(str(tmp_path))])
    trainer.fit(module, datamodule=data)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    def without_timing(history: list[dict]) -> list[dict]:  # scoring wall time differs between ranks
        return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]

    assert without_timing(ranks[0]["history"]) == without_timing(ranks[1]["history"])
    assert ranks[0]["sampler_weights"] == ranks[1]["sampler_weights"]
    history = ranks[0]["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    loader = DataLoader(data.forget_dataset, batch_size=3, collate_fn=collate)
    direct = mrd_scores(initial, loader, num_samples=K, progress=False)
    torch.testing.assert_close(torch.tensor(history[0]["scores"]), direct, rtol=1e-5, atol=0)
    for epoch in range(2):
        full = expected_draws(history[epoch]["probabilities"], epoch, 10, seed=7)
        for rank in range(2):
            assert ranks[rank]["drawn"][str(epoch)] == full[rank::2]
    assert json.loads((tmp_path / "mrd" / "mrd_history.json").read_text())["history"] == history


def test_protocol_errors(tmp_path):
    class NoModel(L.LightningModule):
        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(ValueError, match=r"\.model"):
        MRDCurriculum().on_fit_start(make_trainer(tmp_path, [], 1), NoModel())

    class NoSampler(PlainData):
        def train_dataloader(self):
            return DataLoader(self.forget_dataset, batch_size=2, collate_fn=collate)

    with pytest.raises(ValueError, match="WeightedDistributedSampler"):
        make_trainer(tmp_path, [MRDCurriculum(num_samples=2)], 1).fit(PlainGA(), datamodule=NoSampler())
