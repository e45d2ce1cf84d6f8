"""Multiple-choice accuracy of an in-memory model on lm-evaluation-harness tasks (WMDP, MMLU, any task).

:func:`evaluate_tasks` wraps the model object of a run (a ``transformers`` ``PreTrainedModel`` or a
``peft`` model, not only a saved folder) in lm-eval's own ``HFLM`` (``HFLM(pretrained=model,
tokenizer=tokenizer)``) and runs ``lm_eval.simple_evaluate`` with a ``TaskManager`` that also indexes a
local task folder (``include_path``) written in lm-eval's YAML task format. lm-eval is an optional
dependency: ``pip install "lit_unlearn[lmeval]"``.

How accuracy is computed (lm-eval's ``multiple_choice`` output type; Gao et al., *A framework for
few-shot language model evaluation*, EleutherAI, 2021-2024). For a document with context ``c``
(``doc_to_text``, with the few-shot examples before it), choices ``a_1..a_K`` (``doc_to_choice``) and
gold index ``g`` (``doc_to_target``)::

    ll_k      = sum_t log p(tok_t | c, tok_<t)   over the tokens of target_delimiter + a_k
                (the tokens of encode(c + " " + a_k) after the first len(encode(c)) ones)
    acc       = 1[argmax_k ll_k == g]
    acc_norm  = 1[argmax_k ll_k / len(a_k) == g]          (len = characters of the choice string)

and the task score is the mean over documents; ``acc_stderr`` is the sample standard error of that mean.
Naive equivalent: for each choice, one forward pass over ``c + " " + a_k``, ``log_softmax`` of the logits,
the sum of the continuation tokens' log-probabilities; argmax against the gold index
(``tests/test_lm_eval.py`` checks exactly this). WMDP (Li et al., 2024, *The WMDP Benchmark: Measuring
and Reducing Malicious Use With Unlearning*) scores the letter ``A``/``B``/``C``/``D`` after a prompt
that lists the four answers, zero-shot, and reports ``acc``.

Distributed (DDP): :func:`evaluate_tasks` is collective when ``torch.distributed`` is initialised with
more than one process and ``distributed`` is left at ``None`` (or ``True``): every rank must call it;
each rank evaluates its share of the documents (lm-eval's own sharding: document ``i`` goes to rank
``i % world_size``), the per-document scores are gathered on rank 0 (``torch.distributed.gather_object``),
rank 0 aggregates, and the result is broadcast so that every rank returns the same dict. lm-eval
supports this for a model object through its ``rank``/``world_size``/``all_gather``/``gather_object``/
``barrier`` hooks, which :class:`_DistributedHFLM` implements with ``torch.distributed`` (any backend:
gloo on CPU, NCCL on GPUs). Pass ``distributed=False`` to evaluate the whole task in the calling process
only (e.g. on rank 0 while the other ranks wait at a barrier of their own). Each rank needs the full
parameters (DDP, DeepSpeed ZeRO-1/2); ZeRO-3 / FSDP-sharded parameters are refused with an error
(save the model and evaluate the folder, or gather the parameters first).
"""
from __future__ import annotations

import copy
import difflib
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

INSTALL_HINT = 'pip install "lit_unlearn[lmeval]"'

__all__ = ["LmEvalTaskError", "check_tasks", "evaluate_tasks", "import_lm_eval", "INSTALL_HINT"]


class LmEvalTaskError(ValueError):
    """Raised at setup for an unknown lm-eval task name or a local task folder lm-eval cannot use."""


def import_lm_eval():
    """``lm_eval``, or an ImportError that names the install command."""
    try:
        import lm_eval
        import lm_eval.tasks  # noqa: F401  (the TaskManager lives here)
    except ImportError as err:
        raise ImportError(
            f"lm-eval tasks were requested but lm-evaluation-harness is not installed ({err}). Install it"
            f" with: {INSTALL_HINT}   (or `pip install lm-eval`), or remove the lm-eval tasks from the"
            " evaluation config."
        ) from err
    return lm_eval


# ---------------------------------------------------------------------------
# Task lookup and checks
# ---------------------------------------------------------------------------

_MANAGERS: dict[tuple, Any] = {}


def _fingerprint(include_path: Path | None) -> tuple:
    if include_path is None:
        return ()
    files = sorted(include_path.rglob("*")) if include_path.is_dir() else [include_path]
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())


def _task_manager(include_path: Path | None, include_defaults: bool):
    """A cached ``lm_eval.tasks.TaskManager`` (indexing lm-eval's own ~15k task YAMLs takes seconds)."""
    import_lm_eval()
    from lm_eval.tasks import TaskManager

    key = (str(include_path), include_defaults, _fingerprint(include_path))
    if key not in _MANAGERS:
        while len(_MANAGERS) >= 8:  # keep a few (each holds a task index)
            _MANAGERS.pop(next(iter(_MANAGERS)))
        _MANAGERS[key] = TaskManager(
            include_path=str(include_path) if include_path is not None else None,
            include_defaults=include_defaults,
        )
    return _MANAGERS[key]


def _load_task_yaml(file: Path) -> Any:
    """Parse a task YAML the way lm-eval does (its ``!function`` tag and ``include:`` files resolved lazily)."""
    try:
        from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval >= 0.4.10
    except ImportError:  # older releases
        from lm_eval.utils import load_yaml_config

        return load_yaml_config(yaml_path=str(file), mode="simple")
    return load_yaml(file, resolve_func=False, recursive=True)


def _check_include_path(include_path: str | os.PathLike | None) -> Path | None:
    """The include path as a ``Path``; every ``*.yaml`` in it must parse (lm-eval would skip it silently)."""
    if include_path is None:
        return None
    path = Path(include_path).expanduser()
    if not path.exists():
        raise LmEvalTaskError(
            f"include_path {str(path)!r} does not exist: pass a folder holding lm-eval task YAML files"
            " (see docs/wmdp.md, 'Local tasks')."
        )
    files = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
    if not files:
        raise LmEvalTaskError(f"include_path {str(path)!r} holds no *.yaml task file.")
    for file in files:
        try:
            cfg = _load_task_yaml(file)
        except Exception as err:  # yaml.YAMLError, a missing `include:` file, a bad !function ...
            raise LmEvalTaskError(
                f"{file}: lm-eval cannot read this task file ({type(err).__name__}: {err}). Fix the YAML (an"
                " lm-eval task needs at least `task`, `dataset_path`, `output_type`, `doc_to_text`,"
                " `doc_to_target`) or move the file out of include_path."
            ) from None
        if not isinstance(cfg, dict):
            raise LmEvalTaskError(f"{file}: an lm-eval task file must hold a mapping (task: ..., dataset_path: ...),"
                                  f" got {type(cfg).__name__}.")
    return path.resolve()


def _normalise_tasks(tasks: Sequence[str]) -> list[str]:
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",")]
    tasks = list(tasks or [])
    if not tasks:
        raise LmEvalTaskError("No lm-eval task given: pass names such as ['wmdp_bio', 'wmdp_cyber', 'mmlu'].")
    bad = [t for t in tasks if not isinstance(t, str) or not t.strip()]
    if bad:
        raise LmEvalTaskError(f"lm-eval task names must be non-empty strings, got {bad!r}.")
    return [t.strip() for t in tasks]


def _resolve(tasks: list[str], include_path: Path | None):
    """The TaskManager that knows every name in ``tasks``; only the local folder is indexed when it suffices."""
    if include_path is not None:
        local = _task_manager(include_path, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = _task_manager(include_path, include_defaults=True)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        lines = []
        for name in unknown:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            lines.append(f"{name!r}" + (f" (close matches: {', '.join(close)})" if close else ""))
        where = f" or in include_path {str(include_path)!r}" if include_path is not None else ""
        raise LmEvalTaskError(
            f"Unknown lm-eval task {'; '.join(lines)}: not among lm-eval's {len(manager.all_tasks)} tasks,"
            f" groups and tags{where}. List them with `lm-eval ls tasks`; a task of your own needs a YAML file"
            " with `task: NAME` in a folder passed as include_path."
        )
    return manager


def check_tasks(tasks: Sequence[str], include_path: str | os.PathLike | None = None) -> list[str]:
    """Check at setup that lm-eval is installed, ``include_path`` parses and every task name exists.

    Returns the task names (a comma-separated string is split). Raises ``ImportError`` (naming
    ``pip install "lit_unlearn[lmeval]"``) or :class:`LmEvalTaskError` (unknown name with close matches,
    unreadable task file naming the file).
    """
    import_lm_eval()
    names = _normalise_tasks(tasks)
    _resolve(names, _check_include_path(include_path))
    return names


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def _distributed_hflm_class():
    """``HFLM`` whose rank/world size and collectives come from ``torch.distributed`` (lm-eval's hooks)."""
    import torch
    import torch.distributed as dist
    from lm_eval.models.huggingface import HFLM

    class _DistributedHFLM(HFLM):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._rank = dist.get_rank()
            self._world_size = dist.get_world_size()

        def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
            flat = tensor.reshape(-1)
            parts = [torch.zeros_like(flat) for _ in range(self._world_size)]
            dist.all_gather(parts, flat)
            return torch.cat(parts)

        def gather_object(self, obj, dst: int = 0):
            out = [None] * self._world_size if self._rank == dst else None
            dist.gather_object(obj, out, dst=dst)
            return out

        def barrier(self) -> None:
            dist.barrier()

    return _DistributedHFLM


def _check_parameters_whole(model) -> None:
    for p in model.parameters():
        if hasattr(p, "ds_id") or type(p).__name__ in ("FlatParameter", "DTensor"):
            raise LmEvalTaskError(
                "evaluate_tasks needs the full parameters on every rank, but this model's parameters are sharded"
                " (DeepSpeed ZeRO-3 or FSDP). Save the model and evaluate the folder, or use ZeRO-1/2 / DDP."
            )
        break


def _use_distributed(distributed: bool | None) -> bool:
    import torch.distributed as dist

    ready = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and not ready:
        raise LmEvalTaskError("evaluate_tasks(distributed=True) needs an initialised torch.distributed process"
                              " group with more than one process.")
    return ready if distributed is None else bool(distributed)


@contextmanager
def _quiet(logger_name: str):
    """Only errors from ``logger_name`` inside the block."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass
class _Run:
    """What one ``simple_evaluate`` call returned (only rank 0 has ``raw``)."""

    summary: dict[str, dict[str, float]]
    raw: dict[str, Any] | None


def _summarise(raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {"acc": .., "acc_norm": .., "acc_stderr": .., "n": ..}}`` from lm-eval's results dict."""
    n_samples = raw.get("n-samples", {})
    subtasks = raw.get("group_subtasks", {})

    def count(name: str) -> int:
        if name in n_samples:
            return int(n_samples[name].get("effective", n_samples[name].get("original", 0)))
        return sum(count(child) for child in subtasks.get(name, []))

    out: dict[str, dict[str, float]] = {}
    for task, metrics in raw.get("results", {}).items():
        row: dict[str, float] = {}
        for key, value in metrics.items():
            if "," not in key or isinstance(value, str) or value is None:
                continue  # "alias", "N/A" stderr
            metric, filt = key.split(",", 1)
            row[metric if filt == "none" else f"{metric}/{filt}"] = float(value)
        row["n"] = count(task)
        out[task] = row
    return out


def _evaluate(model, tokenizer, tasks, include_path=None, batch_size: int = 8, limit: int | None = None,
              num_fewshot: int | None = None, distributed: bool | None = None, log_samples: bool = False,
              bootstrap_iters: int = 100_000) -> _Run:
    lm_eval = import_lm_eval()
    import torch.distributed as dist

    from lit_unlearn.utils.modes import eval_mode

    names = _normalise_tasks(tasks)
    manager = _resolve(names, _check_include_path(include_path))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LmEvalTaskError(f"batch_size must be a positive int, got {batch_size!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise LmEvalTaskError(f"limit must be a positive int (documents per task) or None, got {limit!r}.")
    model = getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model
    _check_parameters_whole(model)
    sharded = _use_distributed(distributed)
    if sharded:
        lm_class = _distributed_hflm_class()
    else:
        from lm_eval.models.huggingface import HFLM as lm_class

    # HFLM may set a pad token on the tokenizer it gets; keep the caller's tokenizer untouched.
    tokenizer = copy.deepcopy(tokenizer)
    with eval_mode(model):
        with _quiet("lm_eval.models.huggingface"):  # "an already-initialized model was passed": that is the point
            lm = lm_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            raw = lm_eval.simple_evaluate(
                model=lm, tasks=names, task_manager=manager, num_fewshot=num_fewshot, limit=limit,
                log_samples=log_samples, bootstrap_iters=bootstrap_iters,
                # leave the caller's global RNG streams alone (simple_evaluate reseeds them by default)
                random_seed=None, numpy_random_seed=None, torch_random_seed=None,
            )
        except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
            raise LmEvalTaskError(
                f"lm-eval could not evaluate {names} ({type(err).__name__}: {err}). For a local task check its"
                " dataset_path / dataset_kwargs.data_files (relative paths are resolved from the current"
                " directory, not from the YAML's folder) and doc_to_text / doc_to_choice / doc_to_target."
            ) from err
    summary = _summarise(raw) if raw is not None else None
    if sharded:
        box = [summary]
        dist.broadcast_object_list(box, src=0)
        summary = box[0]
    return _Run(summary=summary, raw=raw)


def evaluate_tasks(
    model,
    tokenizer,
    tasks: list[str],
    include_path: str | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    num_fewshot: int | None = None,
    distributed: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate the in-memory ``model`` on lm-eval ``tasks``; ``{task: {"acc", "acc_norm"?, "acc_stderr"?, "n"}}``.

    Args:
        model: a ``transformers`` causal LM or a ``peft`` model (on its device; left in its training mode).
        tokenizer: its tokenizer (copied; the caller's object is not changed).
        tasks: lm-eval task, group or tag names (``wmdp_bio``, ``wmdp_cyber``, ``mmlu`` ...), or names
            defined in ``include_path``. A group adds one entry per subtask and one for the group.
        include_path: a folder of lm-eval task YAML files (lm-eval's own format).
        batch_size: requests per forward pass.
        limit: the first ``limit`` documents of each task only (quick checks).
        num_fewshot: few-shot examples (``None``: the task's own setting, 0 when it has none).
        distributed: ``None``: shard the documents over ranks when ``torch.distributed`` runs more than one
            process (then every rank must call this); ``False``: this process evaluates everything.

    Every key of lm-eval's result becomes a float (``acc``, ``acc_norm``, ``acc_stderr`` ...; a filter other
    than ``none`` is appended as ``metric/filter``) and ``n`` is the number of documents scored.
    """
    return _evaluate(model, tokenizer, tasks, include_path, batch_size, limit, num_fewshot, distributed).summary
