"""lit_unlearn's callbacks on a plain LightningModule of your own: MRDCurriculum, GEffectMonitor and
ForgettingEarlyStopping need no lit_unlearn module or datamodule, only this protocol:

* the causal LM is ``module.model`` (any Hugging Face causal LM);
* a training batch is ``{"forget": batch, "retain": batch}`` (a ``CombinedLoader``), each batch holding
  ``input_ids``, ``attention_mask``, ``labels`` (−100 where no loss is taken) and, for forget batches,
  ``index`` (the row of the sample in the forget dataset);
* the datamodule has ``forget_dataset`` (items carry ``index``), ``collate`` (batches a list of items; used
  to build the in-order scoring loader) and ``forget_sampler``: the
  :class:`~lit_unlearn.data.samplers.WeightedDistributedSampler` of the forget loader, which
  MRDCurriculum re-weights;
* for GEffectMonitor(per_instance=True): ``module.forget_loss(forget_batch)``.

Run it on the demo's target model (``make demo`` writes it) or any causal LM folder:

    python docs/examples/callbacks_in_your_project.py --model outputs/demo/models/target --out outputs/callbacks_example
"""
from __future__ import annotations

import argparse
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_unlearn.callbacks import ForgettingEarlyStopping, GEffectMonitor, MRDCurriculum
from lit_unlearn.data.samplers import WeightedDistributedSampler
from lit_unlearn.data.sources import load_rows


class QADataset(Dataset):
    """(question, answer) pairs as token ids; the loss is taken on the answer and the final EOS only."""

    def __init__(self, tokenizer, pairs: list[tuple[str, str]], max_length: int = 64):
        self.items = []
        for i, (question, answer) in enumerate(pairs):
            prompt = tokenizer(f"Question: {question}\nAnswer: ", add_special_tokens=False)["input_ids"]
            target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = (prompt + target)[:max_length]
            labels = ([-100] * len(prompt) + target)[:max_length]
            self.items.append({"input_ids": ids, "labels": labels, "index": i})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


class Collate:
    """Right-pads a list of items; the attention mask comes from the lengths (never from ``ids != pad``)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        batch = {"input_ids": [], "attention_mask": [], "labels": [], "index": []}
        for item in items:
            n = len(item["input_ids"])
            batch["input_ids"].append(item["input_ids"] + [self.pad_id] * (width - n))
            batch["attention_mask"].append([1] * n + [0] * (width - n))
            batch["labels"].append(item["labels"] + [-100] * (width - n))
            batch["index"].append(item["index"])
        return {key: torch.tensor(value) for key, value in batch.items()}


class ForgetRetainData(L.LightningDataModule):
    def __init__(self, tokenizer, forget: list[tuple[str, str]], retain: list[tuple[str, str]], batch_size: int = 8):
        super().__init__()
        self.forget_dataset = QADataset(tokenizer, forget)
        self.retain_dataset = QADataset(tokenizer, retain)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.collate = Collate(pad_id)
        self.batch_size = batch_size
        self.forget_sampler: WeightedDistributedSampler | None = None

    def train_dataloader(self) -> CombinedLoader:
        # one sampler for the whole run: MRDCurriculum installs its weights on it before each epoch's draw
        if self.forget_sampler is None:
            self.forget_sampler = WeightedDistributedSampler(
                self.forget_dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, seed=0)
        forget = DataLoader(self.forget_dataset, batch_size=self.batch_size, sampler=self.forget_sampler,
                            collate_fn=self.collate)
        retain = DataLoader(self.retain_dataset, batch_size=self.batch_size, shuffle=True, collate_fn=self.collate)
        return CombinedLoader({"forget": forget, "retain": retain}, mode="min_size")  # an epoch = the forget set


class GradDiffUnlearner(L.LightningModule):
    """loss = −NLL(forget) + NLL(retain), token means; written without any lit_unlearn base class."""

    def __init__(self, model_dir: str, lr: float = 1e-4):
        super().__init__()
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).train()  # from_pretrained returns eval mode
        self.lr = lr

    def nll(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)

    def forget_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return -self.nll(batch)

    def training_step(self, batch: dict[str, dict], batch_idx: int) -> torch.Tensor:
        forget, retain = self.forget_loss(batch["forget"]), self.nll(batch["retain"])
        self.log_dict({"train/forget_loss": forget, "train/retain_loss": retain}, prog_bar=True)
        return forget + retain

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> GradDiffUnlearner:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="outputs/demo/models/target", help="a causal LM folder")
    parser.add_argument("--forget_split", default="forget10", help="builtin tofu-mini split to forget")
    parser.add_argument("--retain_split", default="retain90")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="outputs/callbacks_example")
    args = parser.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # your own data goes here; the builtin rows stand in for it
    forget = [(r["question"], r["answer"]) for r in load_rows("builtin:tofu-mini", args.forget_split)]
    retain = [(r["question"], r["answer"]) for r in load_rows("builtin:tofu-mini", args.retain_split)]
    data = ForgetRetainData(tokenizer, forget, retain)
    module = GradDiffUnlearner(args.model)

    callbacks = [
        # score the forget set before training and every epoch, draw p_i ∝ MRD_i (easy first)
        MRDCurriculum(every_n_epochs=1, estimator="analytic", output_dir=f"{args.out}/mrd"),
        # G-effect of each 2nd step's gradient on the forget and retain risks, per layer
        GEffectMonitor(every_n_steps=2, output_dir=f"{args.out}/geffect"),
        # stop once 90% of the forget samples fall below the initial model's mean MA and EL
        ForgettingEarlyStopping(fraction=0.9, verbose=True),
    ]
    trainer = L.Trainer(accelerator="cpu", max_epochs=args.epochs, callbacks=callbacks, logger=False,
                        enable_checkpointing=False, default_root_dir=args.out, enable_progress_bar=False)
    trainer.fit(module, datamodule=data)
    mrd = callbacks[0]
    print(f"MRD scorings: {len(mrd.history)}; G-effect files in {args.out}/geffect; "
          f"stopped early at epoch {callbacks[2].stopped_epoch}")
    return module


if __name__ == "__main__":
    main()
