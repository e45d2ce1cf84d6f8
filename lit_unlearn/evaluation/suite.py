"""The TOFU evaluation suite: one evaluator used by plain Python, ``torch.distributed`` and Lightning.

:class:`TOFUEvaluator` turns batches of :class:`~lit_unlearn.evaluation.data.EvalDataset` samples into the
torchmetrics states of every split (so DDP syncs them) and computes the raw results.
:class:`TOFUEvaluation` is the plain-Python driver: ``TOFUEvaluation(model_or_path, tokenizer).run()``.
:func:`lit_unlearn.evaluation.report.finalize_report` adds forget quality, model utility and privleak.

Per batch of B samples the evaluator runs

* one forward of the B questions, whose key/value cache every answer variant reuses
  (``EvalConfig.shared_prompt``, :mod:`lit_unlearn.functional.prompt_cache`; without it each variant below
  is a full question + answer forward);
* one forward of the B answers: probability, memorization accuracy, extraction strength, MIA scores;
* one forward of the B paraphrased answers (forget/retain; elsewhere the answer's NLL is reused);
* one forward of the B·J perturbed answers: truth ratio (and normalised probability on real-authors and
  world-facts);
* one batched, left-padded, KV-cached greedy ``generate`` from the B questions: ROUGE-L recall;
* for extraction likelihood, batched greedy continuations of every answer prefix of the B samples.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lit_unlearn.evaluation.config import EVAL_KEYS, MIA_SCORES, EvalConfig, resolve_split_map
from lit_unlearn.evaluation.core import (  # noqa: F401 (eval_dataloader, base_metadata: re-exported)
    base_metadata,
    dist_world,
    eval_dataloader,
    gather_objects,
    load_model_and_tokenizer,
    model_dtype,
    model_label,
    run_metadata,
)
from lit_unlearn.evaluation.data import EvalCollator, EvalDataset, EvalSplit, build_eval_datasets
from lit_unlearn.functional import metrics as F
from lit_unlearn.functional.generation import (
    assemble_prefix_continuations,
    check_generation_ids,
    continues_answer,
    greedy_generate,
    split_prompt_answer,
)
from lit_unlearn.functional.prompt_cache import shared_prompt_logits
from lit_unlearn.functional.tokens import sequence_nll_mean, token_logprobs
from lit_unlearn.metrics import (
    MIAAUC,
    ExtractionLikelihood,
    ExtractionStrength,
    MemorizationAccuracy,
    PerSampleMetric,
    Probability,
    Rouge,
    RougeLRecall,
    TruthRatio,
)

#: ``EvalConfig.metric_variants`` ROUGE names -> (rouge_type, measure), scored like ``rouge_l_recall``
_ROUGE_VARIANTS = {"rouge1_recall": ("rouge1", "recall"), "rouge1_f1": ("rouge1", "f1"), "rouge_l_f1": ("rougeL", "f1")}


# ----------------------------------------------------------------------------- small metric additions


def extraction_likelihood_any_length(continuations: Sequence[Sequence[int]], target: Sequence[int], n: int) -> float:
    """EL_n that also scores answers with ``N <= n`` tokens, using ``n' = N − 1`` (``n' = 1`` when N = 1,
    i.e. whether the first greedy token is the answer). ``N > n`` is exactly ``F.extraction_likelihood``."""
    num = len(target)
    if num > n:
        return F.extraction_likelihood(continuations, target, n)
    if num >= 2:
        return F.extraction_likelihood(continuations, target, num - 1)
    return F.ngram_overlap(list(continuations[0][:1]), list(target), 1)


class ExtractionLikelihoodAnyLength(ExtractionLikelihood):
    """:class:`~lit_unlearn.metrics.ExtractionLikelihood` robust to short answers (see
    :func:`extraction_likelihood_any_length`). The report counts the samples scored with ``n' < n``
    (``el_reduced_n``)."""

    def update(self, continuations, targets, index: Tensor | None = None) -> None:
        if len(continuations) != len(targets):
            raise ValueError(f"{len(continuations)} continuation lists but {len(targets)} targets")
        values = [extraction_likelihood_any_length(c, t, self.n) for c, t in zip(continuations, targets)]
        self._append(torch.tensor(values, dtype=torch.float32), index)


class NormalizedProbability(PerSampleMetric):
    """TOFU normalised probability p_c / (p_c + Σ_j p_w,j) per question (``F.normalized_probability``)."""

    higher_is_better = True
    is_differentiable = False

    def update(self, correct_avg_nll: Tensor, perturbed_avg_nll: Tensor, index: Tensor | None = None) -> None:
        self._append(F.normalized_probability(correct_avg_nll, perturbed_avg_nll), index)


# ----------------------------------------------------------------------------- distributed helpers


_dist_world = dist_world  # the old private names, kept
_gather_objects = gather_objects


def _zero3_enabled() -> bool:
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        return bool(is_deepspeed_zero3_enabled())
    except Exception:  # pragma: no cover - transformers without the integration
        return False


def _max_over_ranks(value: int, device: torch.device) -> int:
    world, _ = _dist_world()
    if world == 1:
        return value
    backend = torch.distributed.get_backend()
    t = torch.tensor([value], device=device if backend == "nccl" else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


# ----------------------------------------------------------------------------- the evaluator


class TOFUEvaluator:
    """Metric states of the TOFU suite for a set of evaluation splits.

    Args:
        config: :class:`EvalConfig` (generation length, EL n, MIA k ...).
        specs: the evaluated splits (``EvalSplit(key, split)``).
        tokenizer: decodes generations (and supplies EOS/pad ids for generation).

    Use: :meth:`update` for every batch of every split (any number of ranks, any order), then
    :meth:`compute` on every rank (collective under ``torch.distributed``).
    """

    def __init__(self, config: EvalConfig, specs: Sequence[EvalSplit], tokenizer):
        self.config = EvalConfig.coerce(config)
        if not specs:
            raise ValueError("TOFUEvaluator needs at least one evaluation split.")
        self.specs = {s.key: s for s in sorted(specs, key=lambda s: EVAL_KEYS.index(s.key))}
        self.tokenizer = tokenizer
        self.reset()

    def check_model(self, model) -> None:
        """Raise a clear ``ValueError`` now when generation (ROUGE-L, EL) would fail on ``model``: the
        tokenizer's eos/pad ids must lie in the model's vocabulary (see ``check_generation_ids``)."""
        if any("rouge_l_recall" in m or "extraction_likelihood" in m for m in self.metrics.values()):
            check_generation_ids(model, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id,
                                 who="TOFU evaluation")

    @property
    def has_mia(self) -> bool:
        return "forget" in self.specs and "holdout" in self.specs

    def reset(self) -> None:
        self.metrics: dict[str, dict[str, Any]] = {key: self._split_metrics(spec) for key, spec in self.specs.items()}
        self.mia = {score: MIAAUC(score=score, k=self.config.mia_k) for score in MIA_SCORES} if self.has_mia else {}
        self.generations: dict[str, dict[int, str]] = {key: {} for key in self.specs}
        self.el_reduced: dict[str, set[int]] = {key: set() for key in self.specs}

    def _split_metrics(self, spec: EvalSplit) -> dict[str, Any]:
        m: dict[str, Any] = {"probability": Probability()}
        if spec.role == "holdout":
            return m
        m["truth_ratio"] = TruthRatio(split=spec.truth_ratio_split)
        if self.config.variant_enabled("truth_ratio_prob_mean"):
            m["truth_ratio_prob_mean"] = TruthRatio(split="prob_mean")
        if spec.role == "general":
            m["normalized_probability"] = NormalizedProbability()
        m["memorization_accuracy"] = MemorizationAccuracy()
        m["extraction_strength"] = ExtractionStrength()
        if self.config.generation:
            m["rouge_l_recall"] = RougeLRecall()
            for name, (rouge_type, measure) in _ROUGE_VARIANTS.items():
                if self.config.variant_enabled(name):
                    m[name] = Rouge(rouge_type, measure)
        if self.config.el_enabled(spec.key):
            m["extraction_likelihood"] = ExtractionLikelihoodAnyLength(n=self.config.el_n)
        return m

    # -- per batch ------------------------------------------------------------------------------------
    @staticmethod
    def _logits(model, sub: Mapping[str, Tensor]) -> Tensor:
        device = next(model.parameters()).device
        out = model(input_ids=sub["input_ids"].to(device), attention_mask=sub["attention_mask"].to(device))
        return out.logits  # (B, T, V)

    def _avg_nll(self, model, sub: Mapping[str, Tensor]) -> Tensor:
        logits = self._logits(model, sub)
        logp, mask = token_logprobs(logits, sub["labels"].to(logits.device))  # (B, T-1)
        return sequence_nll_mean(logp, mask)  # (B,)

    def _shared_prompt_logits(self, model, batch: Mapping[str, Any], spec: EvalSplit) -> dict[str, tuple[Tensor, Tensor]]:
        """``(logits, labels)`` of the answer, the paraphrase and the perturbed answers from one pass of the
        questions (:func:`~lit_unlearn.functional.prompt_cache.shared_prompt_logits`)."""
        groups = {"answer": (batch["answer"], 1)}
        if spec.truth_ratio_split is not None:
            if "correct" in batch:
                groups["correct"] = (batch["correct"], 1)
            groups["perturbed"] = (batch["perturbed"], int(batch["num_perturbed"]))
        return shared_prompt_logits(model, batch["prompt_ids"], groups, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def update(self, key: str, batch: Mapping[str, Any], model) -> None:
        """Score one collated batch (:class:`EvalCollator`) of split ``key`` with ``model`` (a HF causal LM)."""
        if key not in self.specs:
            raise KeyError(f"Unknown evaluation split {key!r}; this evaluator has {list(self.specs)}.")
        spec, m = self.specs[key], self.metrics[key]
        index = batch["index"]
        answer = batch["answer"]

        shared = self._shared_prompt_logits(model, batch, spec) if self.config.shared_prompt else {}
        if shared:  # (B, A+1, V): the question's last logits, then the answer's (prompt_cache)
            logits, labels = shared.pop("answer")
        else:  # (B, T, V): one forward for every answer-based metric
            logits = self._logits(model, answer)
            labels = answer["labels"].to(logits.device)
        index = index.to(logits.device)
        m["probability"].update(logits, labels, index=index)
        if spec.role != "holdout":
            m["memorization_accuracy"].update(logits, labels, index=index)
            m["extraction_strength"].update(logits, labels, index=index)
        if key in ("forget", "holdout"):
            for metric in self.mia.values():
                metric.update(logits, labels, member=key == "forget", texts=batch["answer_text"], index=index)
        logp, mask = token_logprobs(logits, labels)
        answer_nll = sequence_nll_mean(logp, mask)  # (B,)
        predicted: list[list[int]] | None = None
        if "extraction_likelihood" in m:  # the greedy token at every answer position (teacher forcing)
            predicted = [row[v].tolist() for row, v in zip(logits[:, :-1].argmax(dim=-1), mask)]
            scored = [row[v].tolist() for row, v in zip(labels[:, 1:], mask)]
        del logits, logp

        if spec.truth_ratio_split is not None:
            num_perturbed = int(batch["num_perturbed"])
            if shared:
                correct_nll = sequence_nll_mean(*token_logprobs(*shared["correct"])) if "correct" in shared else answer_nll
                perturbed_nll = sequence_nll_mean(*token_logprobs(*shared["perturbed"])).view(-1, num_perturbed)
            else:
                correct_nll = self._avg_nll(model, batch["correct"]) if "correct" in batch else answer_nll
                perturbed_nll = self._avg_nll(model, batch["perturbed"]).view(-1, num_perturbed)  # (B, J)
            del shared
            m["truth_ratio"].update(correct_nll, perturbed_nll, index=index)
            if "truth_ratio_prob_mean" in m:
                m["truth_ratio_prob_mean"].update(correct_nll, perturbed_nll, index=index)
            if "normalized_probability" in m:
                m["normalized_probability"].update(correct_nll, perturbed_nll, index=index)

        if "rouge_l_recall" in m:
            generated = self._generate([list(p) for p in batch["prompt_ids"]], model, self.config.max_new_tokens)
            texts = [t.strip() for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
            m["rouge_l_recall"].update(texts, list(batch["answer_text"]), index=index)
            for name in _ROUGE_VARIANTS:
                if name in m:
                    m[name].update(texts, list(batch["answer_text"]), index=index)
            if self.config.store_generations:
                self.generations[key].update({int(i): t for i, t in zip(index.tolist(), texts)})

        if "extraction_likelihood" in m:
            pairs = split_prompt_answer(answer["input_ids"].cpu(), answer["labels"].cpu(),
                                        answer["attention_mask"].cpu(), exclude_last=True)
            if not all(t[: len(a)] == a for t, (_, a) in zip(scored, pairs)):
                predicted = None  # pragma: no cover - the answer pass scored other tokens: generate every prefix
            continuations = self._prefix_continuations(model, pairs, predicted)
            targets = [a for _, a in pairs]
            m["extraction_likelihood"].update(continuations, targets, index=index)
            self.el_reduced[key].update(int(i) for i, t in zip(index.tolist(), targets) if len(t) <= self.config.el_n)

    def _generate(self, prompts: list[list[int]], model, max_new_tokens: int) -> list[list[int]]:
        return greedy_generate(model, prompts, max_new_tokens, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)

    def _prefix_continuations(self, model, pairs: list[tuple[list[int], list[int]]],
                              predicted: list[list[int]] | None = None) -> list[list[list[int]]]:
        """Greedy continuation of prompt + y_<k for every sample and k = 0..N−1, batched across samples.

        With ``predicted`` (the model's argmax at each answer position, from the answer's forward pass) only
        the prefixes whose first greedy token is not the answer's are generated; the others follow from the
        next prefix (:func:`~lit_unlearn.functional.generation.assemble_prefix_continuations`), so a model
        that still knows an answer costs few generations. The jobs are ordered by the length they must
        generate (N − k, longest first; ties by sample and k), so a batch of ``el_batch_size`` prefixes
        generates about as many steps as its rows need rather than the longest answer's."""
        eos = self.tokenizer.eos_token_id
        jobs = [(s, k) for s, (_, answer) in enumerate(pairs) for k in range(len(answer))
                if predicted is None or not continues_answer(answer, predicted[s], k, eos)]
        jobs.sort(key=lambda job: (-(len(pairs[job[0]][1]) - job[1]), job))
        generated: list[dict[int, list[int]]] = [{} for _ in pairs]
        size = self.config.el_batch_size
        chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        for chunk in chunks:
            prompts = [pairs[s][0] + pairs[s][1][:k] for s, k in chunk]
            longest = max(len(pairs[s][1]) - k for s, k in chunk)
            for (s, k), g in zip(chunk, self._generate(prompts, model, longest)):
                generated[s][k] = g[: len(pairs[s][1]) - k]
        if predicted is None:
            out = [[generated[s][k] for k in range(len(answer))] for s, (_, answer) in enumerate(pairs)]
        else:
            out = [assemble_prefix_continuations(answer, predicted[s], generated[s], eos)
                   for s, (_, answer) in enumerate(pairs)]
        if _zero3_enabled():  # generate syncs ranks under ZeRO-3: every rank must call it equally often
            device = next(model.parameters()).device
            for _ in range(_max_over_ranks(len(chunks), device) - len(chunks)):
                self._generate([[self.tokenizer.eos_token_id]], model, 1)
        return out

    # -- results --------------------------------------------------------------------------------------
    def compute(self) -> dict[str, Any]:
        """Aggregates and per-sample values of every split (collective under ``torch.distributed``).

        Returns ``{"splits": {key: {"split", "num_samples", "metrics", "per_sample", "generations",
        "el_reduced_n"}}, "mia": {score: {"auc": ...}}}``. ``per_sample["truth_ratio"]`` holds the raw
        TR_i (what forget quality needs from a retain model's report).
        """
        splits: dict[str, Any] = {}
        for key, spec in self.specs.items():
            metrics, per_sample = {}, {}
            for name, metric in self.metrics[key].items():
                metrics[name] = float(metric.compute())
                per_sample[name] = metric.value_by_index()
            if "memorization_accuracy" in metrics and key == "forget":
                metrics["unlearning_accuracy"] = float(F.unlearning_accuracy(metrics["memorization_accuracy"]))
            generations: dict[int, str] = {}
            for part in _gather_objects(self.generations[key]):
                generations.update(part)
            reduced = set().union(*_gather_objects(self.el_reduced[key]))
            splits[key] = {
                "split": spec.split,
                "role": spec.role,
                "num_samples": len(per_sample["probability"]),
                "metrics": metrics,
                "per_sample": per_sample,
                "generations": dict(sorted(generations.items())),
                "el_reduced_n": len(reduced) if "extraction_likelihood" in metrics else None,
            }
        mia = {score: {"auc": float(metric.compute())} for score, metric in self.mia.items()}
        return {"splits": splits, "mia": mia}


# ----------------------------------------------------------------------------- plain-Python driver


_model_dtype = model_dtype


class TOFUEvaluation:
    """Evaluate one model on the TOFU suite in plain Python (single process, or each rank of an already
    initialised ``torch.distributed`` group, which then shards the samples).

    Args:
        model_or_path: a Hugging Face causal LM, or a folder/hub name loaded with ``load_causal_lm``.
        tokenizer: a tokenizer or its name/path; default: ``model_or_path`` when that is a path.
        source: the data source (``builtin:tofu-mini``, a folder, a hub name).
        splits: ``{key: split}`` for keys ``forget``, ``retain``, ``real_authors``, ``world_facts``,
            ``holdout``; ``None`` = the full suite (``forget10_perturbed`` ... ``holdout10``).
        retain_report: the retain model's ``report.json`` (or its folder) for forget quality and privleak.
        max_new_tokens, el_n, el_splits, generation, mia_k, plots, store_generations: see :class:`EvalConfig`.
        batch_size: samples per batch (per rank).
        max_length: tokens per (question, answer variant).
        max_samples: evaluate only the first rows of every split (an int, or ``{key: int}``).
        out_dir: when set, rank 0 writes ``report.json``, ``report.md`` and PNGs there.
        device: where to run (default: the model's device, else CUDA if available, else CPU).
        dtype: dtype when loading from a path.
        progress: tqdm progress bars on rank 0.
        config: an :class:`EvalConfig` instead of the individual settings.
        datasets: already built datasets (:func:`build_eval_datasets` with this tokenizer) instead of
            building them from ``source``/``splits``/``max_length``/``max_samples``: tokenise once, evaluate
            many models (``source`` and ``seed`` are still what the report records).

    Example::

        report = TOFUEvaluation("outputs/tofu_mini/target", retain_report="outputs/retain/report").run()
        report["forget_quality"]["value"], report["model_utility"]["value"]
    """

    def __init__(
        self,
        model_or_path,
        tokenizer=None,
        source: str = "builtin:tofu-mini",
        splits: dict[str, str] | None = None,
        retain_report: str | os.PathLike | None = None,
        max_new_tokens: int = 200,
        batch_size: int = 16,
        max_length: int = 128,
        max_samples: int | dict[str, int] | None = None,
        el_n: int = 10,
        el_splits: list[str] | None = None,
        generation: bool = True,
        mia_k: float = 0.4,
        out_dir: str | os.PathLike | None = None,
        plots: bool = True,
        store_generations: bool = True,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        progress: bool = True,
        seed: int = 0,
        config: EvalConfig | None = None,
        datasets: Sequence[EvalDataset] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self._datasets = None if datasets is None else list(datasets)
        self.config = config or EvalConfig(
            max_new_tokens=max_new_tokens, generation=generation, el_n=el_n, el_splits=el_splits, mia_k=mia_k,
            retain_report=None if retain_report is None else str(retain_report),
            report_dir=None if out_dir is None else str(out_dir), plots=plots, store_generations=store_generations,
        )
        self.model_or_path = model_or_path
        self.tokenizer = tokenizer
        self.source = source
        self.splits = resolve_split_map(splits)
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_samples = max_samples
        self.device = device
        self.dtype = dtype
        self.progress = progress
        self.seed = seed

    def _load(self):
        return load_model_and_tokenizer(self.model_or_path, self.tokenizer, self.device, self.dtype,
                                        who="TOFUEvaluation")

    def datasets(self, tokenizer) -> list[EvalDataset]:
        if self._datasets is not None:
            return self._datasets
        return build_eval_datasets(tokenizer, self.source, self.splits, self.max_length, self.max_samples, self.seed)

    def run(self) -> dict[str, Any]:
        """Evaluate, add forget quality/model utility/privleak, write the report (rank 0) and return it."""
        from tqdm.auto import tqdm

        from lit_unlearn.data.sources import source_version
        from lit_unlearn.evaluation.report import check_retain_report, finalize_report, write_report

        model, tokenizer = self._load()
        datasets = self.datasets(tokenizer)
        forget = next((d for d in datasets if d.spec.key == "forget"), None)
        check_retain_report(self.config.retain_report, forget)  # fail before the long part, not after it
        world_size, rank = _dist_world()
        evaluator = TOFUEvaluator(self.config, [d.spec for d in datasets], tokenizer)
        evaluator.check_model(model)
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        try:
            for dataset in datasets:
                loader = eval_dataloader(dataset, self.batch_size, world_size, rank)
                desc = f"eval {dataset.spec.key}"
                for batch in tqdm(loader, desc=desc, disable=not self.progress or rank != 0, leave=False):
                    evaluator.update(dataset.spec.key, batch, model)
            results = evaluator.compute()
        finally:
            model.train(was_training)
        metadata = {
            **base_metadata(),
            "source": self.source,
            "data_version": source_version(self.source, self.seed),
            **run_metadata(self.model_or_path, model, world_size, self.batch_size),
            "max_length": self.max_length,
            "max_samples": self.max_samples,
            "eval_config": self.config.to_dict(),
            "splits": dict(self.splits),
            "runtime_s": round(time.perf_counter() - start, 3),
        }
        report = finalize_report(results, metadata, self.config.retain_report)
        if rank == 0 and self.config.report_dir and self.config.write_report:
            write_report(report, self.config.report_dir, plots=self.config.plots)
        return report


_model_label = model_label
