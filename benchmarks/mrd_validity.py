"""Is MRD a valid difficulty measure? Spearman(MRD, GA updates needed to forget), MRD paper §5.

    python benchmarks/mrd_validity.py              # 30 forget samples, K=100; minutes on 2 CPU cores
    python benchmarks/mrd_validity.py --quick      # 10 samples, K=20, fewer updates: a smoke run
    python benchmarks/mrd_validity.py --model /path/to/hf_causal_lm_folder

Protocol (paper §5 "MRD validity", App. E.4 stopping rule):
 1. On the initial (target) model, per-sample memorization accuracy MA and extraction likelihood EL over
    the whole forget split; their means are the thresholds τ_MA, τ_EL.
 2. For each of ``--samples`` forget samples, alone (batch of 1), from the same initial weights each time:
    gradient-ascent updates (fixed lr, plain SGD by default so every sample gets the same optimiser) until
    its MA < τ_MA and EL < τ_EL; the count is capped at ``--max-updates`` (capped samples are reported).
    Samples already below both thresholds on the initial model (0 updates; by E.4's mean thresholds a
    sizeable share) are left out of the draw unless ``--include-forgotten``.
 3. MRD of the same samples on the initial model with the three estimators (``mean_abs`` = Algorithm 1,
    ``abs_mean`` = Definition 3.1 with antithetic pairs, ``analytic``).
 4. Spearman(MRD, updates) with its p-value per estimator. The paper predicts a *negative* correlation:
    a higher MRD means an easier sample, i.e. fewer updates.

Default model: the demo's cached target model (trained once, then reused:
``lit_unlearn.pipeline.cached_finetune("target", target_config(), tokenizer)``).
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch.utils.data import DataLoader, Dataset

from lit_unlearn.analysis.mrd import mrd_scores
from lit_unlearn.callbacks.early_stopping import memorization_and_extraction
from lit_unlearn.functional import losses, tokens
from lit_unlearn.functional.metrics import memorization_accuracy


class Reindexed(Dataset):
    """Some rows of a dataset, their ``index`` renumbered 0..n-1 (what ``mrd_scores`` expects)."""

    def __init__(self, dataset, rows: list[int]):
        self.items = [{**dataset[r], "index": i} for i, r in enumerate(rows)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def resolve_model(path: str | None, source: str) -> str:
    if path:
        return path
    from lit_unlearn.models.loading import builtin_tokenizer_dir
    from lit_unlearn.pipeline import cached_finetune, target_config

    tokenizer = str(builtin_tokenizer_dir(source))
    start = time.perf_counter()
    folder, cached = cached_finetune("target", target_config(source), tokenizer)
    print(f"target model: {folder} ({'cached' if cached else f'trained in {time.perf_counter() - start:.0f}s'})")
    return str(folder)


def forgotten(model, batch, ma_threshold: float, el_threshold: float, el_n: int) -> bool:
    """E.4: MA < τ_MA and EL < τ_EL for this one-sample batch (EL, the costly one, only when MA passes)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if memorization_accuracy(logits, batch["labels"]).item() >= ma_threshold:
            return False
    _, el = memorization_and_extraction(model, SingleBatch(batch), el_n)
    return el.item() < el_threshold


class SingleBatch:
    """A one-batch 'dataloader' over a one-sample dataset, as :func:`memorization_and_extraction` expects."""

    def __init__(self, batch):
        self.batch = {**batch, "index": torch.zeros(1, dtype=torch.long)}
        self.dataset = [None]

    def __iter__(self):
        return iter([self.batch])


def updates_to_forget(model, initial_state, batch, lr: float, optimizer_name: str, max_updates: int,
                      ma_threshold: float, el_threshold: float, el_n: int) -> int:
    """GA updates on this one sample, from the initial weights, until forgotten (capped at ``max_updates``)."""
    model.load_state_dict(initial_state)
    model.eval()  # no dropout: the count depends on the sample only
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr) if optimizer_name == "sgd" else torch.optim.AdamW(params, lr=lr,
                                                                                                weight_decay=0.0)
    for update in range(max_updates + 1):
        if forgotten(model, batch, ma_threshold, el_threshold, el_n):
            return update
        if update == max_updates:
            break
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = losses.ga(*tokens.token_logprobs(logits, batch["labels"]))  # −NLL_mean: minimising ascends the NLL
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return max_updates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF causal LM folder (default: the demo's cached target)")
    parser.add_argument("--source", default="builtin:tofu-mini")
    parser.add_argument("--forget-split", default="forget10")
    parser.add_argument("--samples", type=int, default=30, help="forget samples to unlearn one by one")
    parser.add_argument("--num-samples", type=int, default=100, help="MRD perturbations K")
    parser.add_argument("--sigma", type=float, default=1e-5)
    parser.add_argument("--lr", type=float, default=1e-3, help="GA learning rate (fixed)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--max-updates", type=int, default=300)
    parser.add_argument("--el-n", type=int, default=3, help="EL n-gram size (clamped per sample to N-1)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--include-forgotten", action="store_true",
                        help="also draw samples already below both thresholds on the initial model (0 updates)")
    parser.add_argument("--quick", action="store_true", help="10 samples, K=20, at most 100 updates")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.num_samples, args.max_updates = min(args.samples, 10), min(args.num_samples, 20), \
            min(args.max_updates, 100)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lit_unlearn.data import UnlearningDataModule
    from lit_unlearn.models.loading import load_causal_lm

    model_path = resolve_model(args.model, args.source)
    tokenizer = model_path if (Path(model_path) / "tokenizer_config.json").is_file() else args.source
    data = UnlearningDataModule(source=args.source, tokenizer=tokenizer, forget_split=args.forget_split,
                                retain_split=None, max_length=args.max_length, batch_size=32)
    data.setup("fit")
    forget = data.forget_dataset
    model = load_causal_lm(model_path).float().eval()
    initial_state = copy.deepcopy(model.state_dict())
    start = time.perf_counter()

    # 1. thresholds on the initial model over the whole forget split
    loader = DataLoader(forget, batch_size=32, collate_fn=data.collate)
    ma0, el0 = memorization_and_extraction(model, loader, args.el_n)
    ma_threshold, el_threshold = ma0.mean().item(), el0.mean().item()
    print(f"forget split {args.forget_split}: {len(forget)} samples; initial mean MA {ma_threshold:.4f}, "
          f"mean EL_{args.el_n} {el_threshold:.4f} (the thresholds)")

    # 2. updates to forget each chosen sample alone
    # samples below both thresholds already would need 0 updates: drawn from the others unless asked
    candidates = torch.arange(len(forget))
    if not args.include_forgotten:
        candidates = candidates[~((ma0 < ma_threshold) & (el0 < el_threshold))]
    gen = torch.Generator().manual_seed(args.seed)
    rows = sorted(candidates[torch.randperm(len(candidates), generator=gen)[: args.samples]].tolist())
    subset = Reindexed(forget, rows)
    updates = []
    for i in range(len(subset)):
        batch = data.collate([subset[i]])
        updates.append(updates_to_forget(model, initial_state, batch, args.lr, args.optimizer, args.max_updates,
                                         ma_threshold, el_threshold, args.el_n))
    model.load_state_dict(initial_state)
    updates_t = torch.tensor(updates, dtype=torch.float64)
    capped = sum(u >= args.max_updates for u in updates)
    print(f"GA updates to forget ({args.optimizer}, lr {args.lr}, batch 1, cap {args.max_updates}): "
          f"min {min(updates)}, median {int(updates_t.median())}, max {max(updates)}; "
          f"{capped} capped")

    # 3. MRD with the three estimators, 4. Spearman
    print(f"{'estimator':<10} {'K':>4} {'time':>7}  {'Spearman(MRD, updates)':>22}  {'p-value':>9}")
    score_loader = DataLoader(subset, batch_size=32, collate_fn=data.collate)
    results = {}
    for estimator in ("mean_abs", "abs_mean", "analytic"):
        t0 = time.perf_counter()
        scores = mrd_scores(model, score_loader, sigma=args.sigma, num_samples=args.num_samples,
                            estimator=estimator, seed=args.seed, progress=False)
        elapsed = time.perf_counter() - t0
        rho, p = spearmanr(scores.numpy(), updates_t.numpy())
        results[estimator] = (float(rho), float(p))
        k = "-" if estimator == "analytic" else str(args.num_samples)
        print(f"{estimator:<10} {k:>4} {elapsed:6.1f}s  {rho:>22.3f}  {p:>9.2g}")
    print(f"samples: {len(subset)} (forget rows {rows[:8]}{'...' if len(rows) > 8 else ''}); total "
          f"{time.perf_counter() - start:.0f}s. The paper predicts a negative correlation (higher MRD = easier).")


if __name__ == "__main__":
    main()
