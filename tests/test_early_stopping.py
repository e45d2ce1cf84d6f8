"""ForgettingEarlyStopping (callbacks/early_stopping.py): MRD paper App. E.4 thresholds, stopping, fraction, state."""
from __future__ import annotations

import copy
import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import lit_unlearn.callbacks.early_stopping as early_stopping_module
from lit_unlearn.callbacks.early_stopping import (
    ForgettingEarlyStopping,
    memorization_and_extraction,
    sample_extraction_likelihood,
)
from lit_unlearn.models.loading import load_causal_lm
from lit_unlearn.models.tiny import tiny_llama

torch.set_num_threads(1)

BATCH = 4


def make_trainer(root, callbacks, max_epochs: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root), callbacks=callbacks,
        num_sanity_val_steps=0,
    )


def make_run(model_path, tokenizer, lr):
    from lit_unlearn.data import UnlearningDataModule
    from lit_unlearn.objectives import GA

    data = UnlearningDataModule(tokenizer=tokenizer, forget_split="forget01", retain_split=None,
                                batch_size=BATCH, max_length=64)
    return GA(model_path, tokenizer=tokenizer, lr=lr), data


# ----------------------------------------------------------------------------------------------
# independent, naive MA and EL: one sample at a time, unpadded, token-by-token greedy decoding


def naive_overlap(generated: list[int], target: list[int], n: int) -> float:
    grams = [tuple(generated[i:i + n]) for i in range(len(generated) - n + 1)]
    if not grams:
        return 0.0
    target_grams = {tuple(target[i:i + n]) for i in range(len(target) - n + 1)}
    return sum(g in target_grams for g in grams) / len(grams)


@torch.no_grad()
def naive_ma_el(model, sample: dict, eos: int, n: int) -> tuple[float, float]:
    ids, labels = sample["input_ids"], sample["labels"]
    labelled = [t for t in range(len(ids)) if labels[t] != -100]
    prompt, answer = list(ids[: labelled[0]]), [ids[t] for t in labelled[:-1]]  # the final EOS excluded
    seq = prompt + answer
    preds = model(input_ids=torch.tensor([seq])).logits[0].argmax(-1).tolist()
    ma = sum(preds[len(prompt) + j - 1] == answer[j] for j in range(len(answer))) / len(answer)
    big_n = len(answer)
    n = min(n, big_n - 1)
    overlaps = []
    for k in range(big_n - n):
        context, generated = prompt + answer[:k], []
        while len(generated) < big_n - k:
            token = model(input_ids=torch.tensor([context + generated])).logits[0, -1].argmax().item()
            if token == eos:
                break
            generated.append(token)
        overlaps.append(naive_overlap(generated, answer[k:], n))
    return ma, sum(overlaps) / len(overlaps)


def test_sample_extraction_likelihood_clamps_n():
    target = [5, 6, 7]
    perfect = [[5, 6, 7], [6, 7], [7]]
    assert sample_extraction_likelihood(perfect, target, n=10) == 1.0  # n clamped to 2
    assert sample_extraction_likelihood([[9, 9, 9], [9, 9], [9]], target, n=10) == 0.0
    assert sample_extraction_likelihood([[4]], [4], n=3) == 1.0 and sample_extraction_likelihood([[3]], [4], n=3) == 0.0


def test_constructor_validation():
    with pytest.raises(ValueError, match="fraction"):
        ForgettingEarlyStopping(fraction=0.0)
    with pytest.raises(ValueError, match="fraction"):
        ForgettingEarlyStopping(fraction=1.5)
    with pytest.raises(ValueError, match="check_every_n_epochs"):
        ForgettingEarlyStopping(check_every_n_epochs=0)


def test_thresholds_match_naive_and_ga_stops_early(tmp_path, finetuned_tiny, builtin_tokenizer_path):
    module, data = make_run(finetuned_tiny, builtin_tokenizer_path, lr=2e-4)  # a large lr: forgets in a few epochs
    cb = ForgettingEarlyStopping(fraction=1.0, el_n=3)
    trainer = make_trainer(tmp_path, [cb], max_epochs=12)
    trainer.fit(module, datamodule=data)

    # thresholds: means over the forget set of the initial model's per-sample MA and EL, computed naively
    initial = load_causal_lm(finetuned_tiny).eval()
    eos = initial.config.eos_token_id
    naive = [naive_ma_el(initial, data.forget_dataset[i], eos, 3) for i in range(len(data.forget_dataset))]
    naive_ma = torch.tensor([m for m, _ in naive], dtype=torch.float64)
    naive_el = torch.tensor([e for _, e in naive], dtype=torch.float64)
    torch.testing.assert_close(cb.initial_ma, naive_ma)
    torch.testing.assert_close(cb.initial_el, naive_el)
    assert cb.ma_threshold == pytest.approx(naive_ma.mean().item())
    assert cb.el_threshold == pytest.approx(naive_el.mean().item())
    assert cb.ma_threshold > 0.3 and cb.el_threshold > 0.1  # the finetuned model did memorise the forget set
    forgotten0 = ((naive_ma < cb.ma_threshold) & (naive_el < cb.el_threshold)).double().mean().item()
    assert cb.initial_fraction == pytest.approx(forgotten0) and forgotten0 < 1.0

    # stopped early, at the first check where every sample was forgotten
    assert cb.stopped_epoch is not None and 0 < cb.stopped_epoch < 11
    assert trainer.current_epoch == cb.stopped_epoch + 1  # Lightning counts the finished epoch
    fractions = [h["forgotten_fraction"] for h in cb.history]
    assert fractions[-1] == 1.0 and all(f < 1.0 for f in fractions[:-1])
    assert [h["epoch"] for h in cb.history] == list(range(cb.stopped_epoch + 1))
    assert trainer.callback_metrics["forget/forgotten_fraction"].item() == 1.0
    # the final model really is below both thresholds on every sample
    final = module.model.eval()
    for i in range(len(data.forget_dataset)):
        ma, el = naive_ma_el(final, data.forget_dataset[i], eos, 3)
        assert ma < cb.ma_threshold and el < cb.el_threshold


# ----------------------------------------------------------------------------------------------
# fraction semantics, check schedule and state, with scripted measurements on a plain tiny module

V, LENGTH, N = 48, 10, 4


class TokenDataset(Dataset):
    def __init__(self, n: int = N):
        g = torch.Generator().manual_seed(0)
        self.rows = []
        for i in range(n):
            ids = torch.randint(3, V, (LENGTH,), generator=g)
            labels = ids.clone()
            labels[:4] = -100
            self.rows.append({"input_ids": ids, "labels": labels, "index": i})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def collate(items):
    return {"input_ids": torch.stack([x["input_ids"] for x in items]),
            "attention_mask": torch.ones(len(items), LENGTH, dtype=torch.long),
            "labels": torch.stack([x["labels"] for x in items]),
            "index": torch.tensor([x["index"] for x in items])}


class PlainData(L.LightningDataModule):
    def __init__(self, n: int = N):
        super().__init__()
        self.forget_dataset, self.collate, self.batch_size = TokenDataset(n), collate, 2

    def train_dataloader(self):
        return DataLoader(self.forget_dataset, batch_size=2, collate_fn=collate)


class PlainModule(L.LightningModule):
    def __init__(self, memorize: int = 0):
        super().__init__()
        self.model = tiny_llama(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32)
        if memorize:  # partly memorise the first `memorize` rows, so MA and EL are not all zero
            batch = collate([TokenDataset(memorize)[i] for i in range(memorize)])
            optimizer = torch.optim.Adam(self.model.parameters(), lr=3e-2)
            for _ in range(8):
                optimizer.zero_grad()
                self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.backward()
                optimizer.step()

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def scripted(monkeypatch, measurements):
    """Replace the measurement with a list of (MA, EL): the first is the initial model's."""
    queue = [(torch.tensor(m, dtype=torch.float64), torch.tensor(e, dtype=torch.float64)) for m, e in measurements]
    monkeypatch.setattr(early_stopping_module.ForgettingEarlyStopping, "measure", lambda self, t, p: queue.pop(0))
    return queue


INITIAL = ([1.0, 0.75, 0.5, 0.25], [0.5, 0.5, 0.75, 0.25])  # thresholds: MA 0.625, EL 0.5; sample 3 forgotten


@pytest.mark.parametrize("fraction, stop_epoch", [(0.25, 0), (0.5, 1), (0.75, 2), (1.0, None)])
def test_fraction_semantics(tmp_path, monkeypatch, fraction, stop_epoch):
    per_epoch = [
        INITIAL,  # sample 3 -> 0.25
        ([0.5, 0.75, 0.5, 0.25], [0.25, 0.5, 0.75, 0.25]),  # samples 0, 3 -> 0.5
        ([0.5, 0.75, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]),  # samples 0, 2, 3 (1 keeps MA 0.75) -> 0.75
        ([0.5, 0.625, 0.25, 0.25], [0.25, 0.25, 0.25, 0.5]),  # at a threshold is not below it: 0, 2 -> 0.5
    ]
    scripted(monkeypatch, [INITIAL, *per_epoch])
    cb = ForgettingEarlyStopping(fraction=fraction)
    trainer = make_trainer(tmp_path, [cb], max_epochs=4)
    trainer.fit(PlainModule(), datamodule=PlainData())
    assert (cb.ma_threshold, cb.el_threshold) == (0.625, 0.5)
    assert cb.initial_fraction == 0.25
    expected = [0.25, 0.5, 0.75, 0.5]
    checked = len(cb.history)
    assert [h["forgotten_fraction"] for h in cb.history] == expected[:checked]
    assert cb.stopped_epoch == stop_epoch
    assert checked == (4 if stop_epoch is None else stop_epoch + 1)
    assert trainer.current_epoch == checked
    assert trainer.callback_metrics["forget/forgotten_fraction"].item() == expected[checked - 1]


def test_check_every_n_epochs_and_state(tmp_path, monkeypatch):
    queue = scripted(monkeypatch, [INITIAL, ([0.1] * 4, [0.1] * 4), ([0.1] * 4, [0.1] * 4)])
    cb = ForgettingEarlyStopping(fraction=1.0, check_every_n_epochs=2)
    trainer = make_trainer(tmp_path, [cb], max_epochs=5)
    trainer.fit(PlainModule(), datamodule=PlainData())
    assert [h["epoch"] for h in cb.history] == [1] and cb.stopped_epoch == 1 and len(queue) == 1

    # state: a resumed callback keeps the original thresholds and does not remeasure the initial model
    other = ForgettingEarlyStopping(fraction=1.0, check_every_n_epochs=2)
    other.load_state_dict(cb.state_dict())
    assert (other.ma_threshold, other.el_threshold, other.history, other.stopped_epoch) == \
        (cb.ma_threshold, cb.el_threshold, cb.history, cb.stopped_epoch)
    assert torch.equal(other.initial_ma, cb.initial_ma) and other.state_key == cb.state_key
    monkeypatch.setattr(early_stopping_module.ForgettingEarlyStopping, "measure",
                        lambda self, t, p: pytest.fail("the initial model must not be measured again"))
    other.on_train_start(trainer, PlainModule())


class Recorder(L.Callback):
    """Writes each rank's view of the early-stopping state to rank<k>.json (ddp_spawn loses state)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        cb = next(c for c in trainer.callbacks if isinstance(c, ForgettingEarlyStopping))
        record = {"initial_ma": cb.initial_ma.tolist(), "initial_el": cb.initial_el.tolist(),
                  "thresholds": [cb.ma_threshold, cb.el_threshold], "history": cb.history,
                  "world_size": trainer.world_size}
        with open(f"{self.out_dir}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(record, f)


def test_ddp_two_processes_gather_the_shards(tmp_path):
    """2 gloo processes score their shards (5 samples, padded to 6) and agree with one process."""
    module, data = PlainModule(memorize=5), PlainData(5)
    initial = copy.deepcopy(module.model)
    cb = ForgettingEarlyStopping(el_n=2, batch_size=2)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), callbacks=[cb, Recorder(str(tmp_path))])
    trainer.fit(module, datamodule=data)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0] == ranks[1] and len(ranks[0]["history"]) == 1
    ma, el = memorization_and_extraction(initial, DataLoader(data.forget_dataset, batch_size=5, collate_fn=collate),
                                         el_n=2)
    assert ranks[0]["initial_ma"] == pytest.approx(ma.tolist()) and ranks[0]["initial_el"] == pytest.approx(el.tolist())
    assert ranks[0]["thresholds"] == pytest.approx([ma.mean().item(), el.mean().item()])
    assert 0.0 < ma.mean().item() and 0.0 < el.mean().item() and len(set(ma.tolist())) > 1


# ----------------------------------------------------------------------------------------------
# matched forgetting: criterion="mean_ma" with a given threshold, checked every k optimizer steps


def test_mean_ma_criterion_stops_at_the_first_check_at_or_below_the_threshold(tmp_path, monkeypatch):
    # 4 samples at batch 2: 2 steps per epoch; checks after steps 2, 4, 6 (check_every_n_steps=2)
    means = [0.9, 0.7, 0.5, 0.3]
    scripted(monkeypatch, [INITIAL, *[([m] * 4, [float("nan")] * 4) for m in means[1:]]])
    cb = ForgettingEarlyStopping(criterion="mean_ma", ma_threshold=0.5, check_every_n_steps=2)
    trainer = make_trainer(tmp_path, [cb], max_epochs=10)
    trainer.fit(PlainModule(), datamodule=PlainData())
    assert cb.ma_threshold == 0.5  # the given threshold, not the initial model's mean (0.625)
    assert [(h["step"], h["ma_mean"]) for h in cb.history] == [(2, 0.7), (4, 0.5)]  # 0.5 <= 0.5 stops
    assert cb.stopped_step == 4 and trainer.global_step == 4
    assert trainer.callback_metrics["forget/ma_mean"].item() == 0.5


def test_mean_ma_criterion_runs_to_the_cap_when_never_reached(tmp_path, monkeypatch):
    scripted(monkeypatch, [INITIAL, *[([0.9] * 4, [float("nan")] * 4)] * 3])
    cb = ForgettingEarlyStopping(criterion="mean_ma", ma_threshold=0.1, check_every_n_steps=2)
    trainer = make_trainer(tmp_path, [cb], max_epochs=3)
    trainer.fit(PlainModule(), datamodule=PlainData())
    assert [h["step"] for h in cb.history] == [2, 4, 6] and cb.stopped_step is None and trainer.global_step == 6


def test_mean_ma_measures_ma_only_and_equals_the_naive_mean(tmp_path):
    """Without EL no generation runs (EL is NaN) and MA is the same as with EL."""
    module, data = PlainModule(memorize=4), PlainData()
    loader = DataLoader(data.forget_dataset, batch_size=3, collate_fn=collate)
    ma, el = memorization_and_extraction(module.model, loader, el_n=2)
    ma_only, el_none = memorization_and_extraction(module.model, loader, el_n=2, extraction=False)
    assert torch.equal(ma, ma_only) and torch.isnan(el_none).all() and not torch.isnan(el).any()


def test_new_options_are_validated():
    with pytest.raises(ValueError, match="criterion must be 'samples'"):
        ForgettingEarlyStopping(criterion="median")
    with pytest.raises(ValueError, match="needs ma_threshold"):
        ForgettingEarlyStopping(criterion="mean_ma")
    with pytest.raises(ValueError, match="both ma_threshold and el_threshold"):
        ForgettingEarlyStopping(ma_threshold=0.5)
    with pytest.raises(ValueError, match="check_every_n_steps"):
        ForgettingEarlyStopping(criterion="mean_ma", ma_threshold=0.5, check_every_n_steps=0)
