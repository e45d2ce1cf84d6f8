"""Peak memory of one NPO training step: full fine-tuning vs LoRA, unchunked vs chunked log-probs; a model of it.

**Measured** (one run, one fresh subprocess per configuration): NPO with a live reference (policy + reference
model, or with LoRA the adapter-disabled base), AdamW, two optimizer steps (the second one has the AdamW
moments), forget batch ``--batch`` × ``--seq`` tokens, on random-init Llama models of three sizes (~20 M, ~60 M,
~135 M weights, vocabulary 32 000, fp32; sizes a shared 2-core machine measures in minutes), for every
combination of

* full fine-tuning vs LoRA (``configs/peft/lora.yaml``: rank 8 on the 7 attention and MLP projections),
* the old log-probs (the whole ``(B, T, V)`` logits upcast and log-softmaxed at once) vs the chunked ones
  (:func:`lit_unlearn.functional.tokens.chunked_label_logprobs`; forced here with ``LOGPROB_MEMORY_BOUND = 0``),

plus, with gradient checkpointing on (``gradient_checkpointing=True``, see
:mod:`lit_unlearn.models.checkpointing`), full fine-tuning and LoRA with the chunked log-probs (18 in all).

On a CPU the peak is the process's resident-set high-water mark (``VmHWM`` of ``/proc/self/status``) minus the
resident set before the models were built (Python, torch and the batch); on CUDA it is
``torch.cuda.max_memory_allocated()`` minus what was allocated before.

**Model** of the peak (bytes), for P weights of which T train, vocabulary V, L layers of hidden size h and MLP
size i, batch B × S tokens, weights of b_w bytes and activations of b_a bytes::

    peak = P·b_w                          policy weights
         + P·b_w   (full fine-tuning)     live reference model (LoRA: 0, the adapter-disabled base)
         + T·b_g + 2·T·4                  gradients of the trainable weights + AdamW's two fp32 moments
         + a·L·B·S·(h + i)·b_a            activations saved for backward (a fitted: full and LoRA apart)
           or (c·L·B·S·h                  with checkpointing: per layer, its input hidden state (c fitted; 1
                                          would be the bare input, the measured c is larger)
               + a_ckpt·B·S·(h + i))·b_a  plus the one layer recomputed in the backward pass, with its
                                          backward buffers (a_ckpt fitted)
         + n·B·S·V·4                      the logits and their gradient (n fitted)
         + n_old·B·S·V·4                  old log-probs: the float32 log-softmax copies (n_old fitted)
           or 2·C                         chunked log-probs: one chunk of C = LOGPROB_CHUNK_BYTES forward and
                                          one in backward, whatever V is

The coefficients (a_full, a_lora, n, n_old, c, a_ckpt) are fitted by least squares on the relative error of all
eighteen measurements, and the ratio measured / model is printed for each (target: within 15 %). The model then
predicts a Llama-3-8B-shaped model (hidden 4096, 32 layers, MLP 14336, vocabulary 128 256, 32 heads / 8 KV
heads) in bf16 at batch 4 × 512 tokens: full fine-tuning under ZeRO-3 on N GPUs (per GPU: bf16 weights,
reference and gradients plus fp32 master weights and AdamW moments, all partitioned 1/N; activations and
logits are per GPU, not partitioned), LoRA (bf16 base, fp32 adapters as ``peft`` keeps them) and QLoRA (4-bit
NF4 base with double quantisation, ~4.13 bits per linear weight; embeddings and head stay bf16). The
activation coefficient measured on a CPU in fp32 carries over in units of saved elements (b_a = 2 in bf16);
with FlashAttention nothing grows with S², as in the CPU fit (PyTorch's CPU SDPA kernel is flash-style too).

    nice -n 19 python benchmarks/memory.py [--out benchmarks/results/memory.json] [--batch 4] [--seq 128] [--jobs 4]
    nice -n 19 python benchmarks/memory.py --quick --jobs 4     # ~8 M, 13 M, 27 M weights, 4 × 64 tokens
    python benchmarks/memory.py --render benchmarks/results/memory.json --page docs/peft.md   # the docs table
    python benchmarks/memory.py --render benchmarks/results/memory.json --summary --page README.md   # README's

Naive equivalent of one measurement: run the step in a fresh process and read ``VmHWM`` (``/usr/bin/time -v``'s
"Maximum resident set size").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK = 8
CHUNK_BYTES = 32 * 2**20  # lit_unlearn.functional.tokens.LOGPROB_CHUNK_BYTES
NF4_BYTES = 4.127 / 8  # 4-bit NF4 + double-quantised absmax (bitsandbytes, blocksize 64)
TOLERANCE = 0.15


# ----------------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    """A Llama-style decoder: untied embedding and head, grouped-query attention."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one block."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """Weights of the block projections (what QLoRA quantises)."""
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def params(self) -> int:
        """Every weight: embedding + head (V·h each), projections, two norms per block and the final norm."""
        return 2 * self.vocab * self.hidden + self.linear_params + (2 * self.layers + 1) * self.hidden

    @property
    def lora_params(self) -> int:
        """LoRA of rank r on every projection: r·(in + out) per projection and block."""
        return self.layers * sum(LORA_RANK * (a + b) for a, b in self.linear_shapes().values())


MEASURED_SHAPES = (
    Shape("llama-20M", hidden=256, layers=4, intermediate=688, vocab=32000, heads=4, kv_heads=4),
    Shape("llama-60M", hidden=512, layers=8, intermediate=1376, vocab=32000, heads=8, kv_heads=8),
    Shape("llama-135M", hidden=768, layers=12, intermediate=2048, vocab=32000, heads=12, kv_heads=12),
)
#: ``--quick``: smaller shapes (vocabulary 16 000) that a busy shared machine measures in a few CPU-minutes
QUICK_SHAPES = (
    Shape("llama-8M", hidden=192, layers=4, intermediate=512, vocab=16000, heads=4, kv_heads=4),
    Shape("llama-13M", hidden=256, layers=6, intermediate=688, vocab=16000, heads=4, kv_heads=4),
    Shape("llama-27M", hidden=384, layers=8, intermediate=1024, vocab=16000, heads=6, kv_heads=6),
)
SHAPES = {s.name: s for s in (*MEASURED_SHAPES, *QUICK_SHAPES)}
LLAMA3_8B = Shape("Llama-3-8B", hidden=4096, layers=32, intermediate=14336, vocab=128256, heads=32, kv_heads=8)


# ----------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Coefficients:
    """Fitted: activation elements saved per (layer × token × (h + i)), full and LoRA, and float32 (B, S, V)
    copies of the logits (+ gradient) and of the old log-softmax."""

    a_full: float
    a_lora: float
    n_logits: float
    n_old: float
    #: with gradient checkpointing: saved elements per (layer × token × h), the layers' input hidden states
    c_ckpt: float = 1.0
    #: with gradient checkpointing: elements per (token × (h + i)) of the one layer recomputed in the backward
    #: pass (None: the mode's a_full / a_lora)
    a_ckpt: float | None = None


def predict(shape: Shape, mode: str, logprobs: str, batch: int, seq: int, coef: Coefficients,
            weight_bytes: float = 4, act_bytes: float = 4, world: int = 1, qlora: bool = False,
            checkpointing: bool = False) -> dict[str, float]:
    """The modelled peak of one NPO step, per component in bytes (``total`` is their sum).

    ``mode``: ``"full"`` (with ``world`` > 1: ZeRO-3, the weights, reference, gradients, fp32 master copy and
    AdamW moments partitioned over ``world`` GPUs) or ``"lora"`` (``qlora``: the projections in NF4).
    ``logprobs``: ``"old"`` or ``"chunked"``. ``checkpointing``: gradient checkpointing (the activation term
    becomes the layers' input hidden states plus one layer's activations). See the module docstring.
    """
    p, tokens = shape.params, batch * seq
    out: dict[str, float] = {}
    if mode == "full":
        trainable = p
        out["weights"] = p * weight_bytes / world
        out["reference"] = p * weight_bytes / world
        out["gradients"] = trainable * weight_bytes / world
        master = 4 if weight_bytes < 4 else 0  # mixed precision keeps an fp32 master copy (ZeRO-3 bf16)
        out["optimizer"] = trainable * (8 + master) / world
        a = coef.a_full
    elif mode == "lora":
        trainable = shape.lora_params
        if qlora:
            out["weights"] = shape.linear_params * NF4_BYTES + (p - shape.linear_params) * weight_bytes
        else:
            out["weights"] = p * weight_bytes
        out["weights"] += trainable * 4  # peft keeps adapters in fp32 on a bf16/fp16 base
        out["reference"] = 0.0
        out["gradients"] = trainable * 4
        out["optimizer"] = trainable * 8
        a = coef.a_lora
    else:
        raise ValueError(f"mode must be 'full' or 'lora', got {mode!r}")
    if checkpointing and coef.a_ckpt is not None:
        a = coef.a_ckpt
    out["activations"] = activation_elements(shape, tokens, a, coef.c_ckpt, checkpointing) * act_bytes
    out["logits"] = coef.n_logits * tokens * shape.vocab * 4
    if logprobs == "old":
        out["logprobs"] = coef.n_old * tokens * shape.vocab * 4
    elif logprobs == "chunked":
        out["logprobs"] = 2.0 * CHUNK_BYTES
    else:
        raise ValueError(f"logprobs must be 'old' or 'chunked', got {logprobs!r}")
    out["total"] = sum(out.values())
    return out


def activation_elements(shape: Shape, tokens: int, a: float, c: float, checkpointing: bool) -> float:
    """Elements saved for backward at the peak: ``a·L·N·(h + i)``, or with checkpointing ``c·L·N·h`` (every
    layer's input hidden state) ``+ a·N·(h + i)`` (the one layer being recomputed), for N = B·S tokens."""
    if checkpointing:
        return c * shape.layers * tokens * shape.hidden + a * tokens * (shape.hidden + shape.intermediate)
    return a * shape.layers * tokens * (shape.hidden + shape.intermediate)


def fit(measurements: list[dict[str, Any]], batch: int, seq: int) -> Coefficients:
    """Least squares on the relative error: minimise Σ ((model − measured) / measured)² over (a_full, a_lora,
    n_logits, n_old, c_ckpt, a_ckpt); the model is linear in them, so this is a weighted linear least-squares problem.
    Measurements without a ``checkpointing`` key are without checkpointing."""
    import numpy as np

    rows, targets = [], []
    shapes = SHAPES
    zero = Coefficients(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for m in measurements:
        shape = shapes[m["shape"]]
        ckpt = bool(m.get("checkpointing", False))
        fixed = predict(shape, m["mode"], m["logprobs"], batch, seq, zero)["total"]  # weights, grads, AdamW, chunk
        tokens = batch * seq
        act = activation_elements(shape, tokens, 1.0, 0.0, ckpt) * 4
        hidden = activation_elements(shape, tokens, 0.0, 1.0, ckpt) * 4
        v = tokens * shape.vocab * 4
        row = [act if m["mode"] == "full" and not ckpt else 0.0, act if m["mode"] == "lora" and not ckpt else 0.0,
               v, v if m["logprobs"] == "old" else 0.0, hidden, act if ckpt else 0.0]
        rows.append([x / m["peak_bytes"] for x in row])
        targets.append((m["peak_bytes"] - fixed) / m["peak_bytes"])
    matrix = np.array(rows)
    if not matrix[:, 4].any():  # no checkpointed measurement: c keeps its nominal value (one hidden state)
        solution, *_ = np.linalg.lstsq(matrix[:, :4], np.array(targets), rcond=None)
        return Coefficients(*(float(x) for x in solution), c_ckpt=1.0, a_ckpt=None)
    solution, *_ = np.linalg.lstsq(matrix, np.array(targets), rcond=None)
    return Coefficients(*(float(x) for x in solution))


# ----------------------------------------------------------------------------------------------- measuring


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process: build, two NPO steps, report the peak."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lit_unlearn.functional import tokens
    from lit_unlearn.objectives import NPO

    torch.set_num_threads(cfg["threads"])
    tokens.LOGPROB_MEMORY_BOUND = 0 if cfg["logprobs"] == "chunked" else 1 << 62
    shape = SHAPES[cfg["shape"]]
    device = torch.device(cfg["device"])
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, shape.vocab, (cfg["batch"], cfg["seq"]), generator=gen)
    labels = ids.clone()
    labels[:, : cfg["seq"] // 4] = -100  # a prompt
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
             "labels": labels.to(device), "index": torch.arange(cfg["batch"]).to(device)}
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                         intermediate_size=shape.intermediate, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=max(2048, cfg["seq"]),
                         tie_word_embeddings=False, attn_implementation="sdpa")

    class RandomInitNPO(NPO):
        def build_model(self):
            torch.manual_seed(0)
            return LlamaForCausalLM(config).to(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _proc_status_kib("VmRSS") * 1024
    peft = {"r": LORA_RANK, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": list(LORA_TARGETS)} \
        if cfg["mode"] == "lora" else None
    module = RandomInitNPO("random-init", tokenizer="random-init", reference="live", retain_loss="none", lr=1e-5,
                           peft=peft, gradient_checkpointing=bool(cfg.get("checkpointing", False)))
    module.configure_model()
    module.train()
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-5)
    start = time.perf_counter()
    for _ in range(2):
        loss = module.forget_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _proc_status_kib("VmHWM") * 1024 - base
    return {**cfg, "peak_bytes": int(peak), "baseline_bytes": int(base), "seconds": round(seconds, 2),
            "recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "params": sum(p.numel() for p in module.model.parameters()),
            "trainable": sum(p.numel() for p in module.trainable_parameters()), "loss": float(loss)}


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """:func:`child` in a fresh interpreter (so each high-water mark is its configuration's own)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], env=env, capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {cfg} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- report


def predictions(coef: Coefficients, batch: int = 4, seq: int = 512, shape: Shape = LLAMA3_8B) -> list[dict]:
    """Modelled per-GPU peaks of the 8B shape in bf16 (GiB), for the configurations of the docs table."""
    rows = []
    for label, mode, world, qlora in (("full, 1 GPU", "full", 1, False), ("full + ZeRO-3, 2 GPUs", "full", 2, False),
                                      ("full + ZeRO-3, 4 GPUs", "full", 4, False),
                                      ("full + ZeRO-3, 8 GPUs", "full", 8, False), ("LoRA, 1 GPU", "lora", 1, False),
                                      ("QLoRA, 1 GPU", "lora", 1, True)):
        for logprobs, checkpointing in (("old", False), ("chunked", False), ("chunked", True)):
            parts = predict(shape, mode, logprobs, batch, seq, coef, weight_bytes=2, act_bytes=2, world=world,
                            qlora=qlora, checkpointing=checkpointing)
            rows.append({"config": label, "logprob_mode": logprobs, "checkpointing": checkpointing, "world": world,
                         **{k: round(v / GIB, 3) for k, v in parts.items()},
                         "fits_40GB": parts["total"] <= 40e9, "fits_80GB": parts["total"] <= 80e9})
    return rows


def config_key(cfg: dict[str, Any]) -> tuple:
    """What makes two measurements the same configuration."""
    return (cfg["shape"], cfg["mode"], cfg["logprobs"], bool(cfg.get("checkpointing", False)), cfg["batch"],
            cfg["seq"], cfg["threads"], cfg["device"])


def reusable(path: str, configs: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """``--reuse``: the measurements of a recorded run (same shape, mode, log-probs, checkpointing, batch,
    sequence, threads and device) for configurations of this run, each marked with the date it was recorded
    (``recorded``), so a run adding configurations need not measure the others again."""
    recorded = json.loads(Path(path).read_text())
    wanted = {config_key(c) for c in configs}
    out = {}
    for m in recorded["measurements"]:
        m = {**m, "checkpointing": bool(m.get("checkpointing", False)),
             "recorded": m.get("recorded", recorded["date"])}
        m.pop("model_bytes", None), m.pop("ratio", None)
        if config_key(m) in wanted:
            out[config_key(m)] = m
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lit_unlearn.utils.environment import environment_info

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    from concurrent.futures import ThreadPoolExecutor

    shapes = [s for s in (QUICK_SHAPES if args.quick else MEASURED_SHAPES) if not args.shapes or s.name in args.shapes]
    variants = [(mode, logprobs, False) for mode in ("full", "lora") for logprobs in ("old", "chunked")]
    variants += [(mode, "chunked", True) for mode in ("full", "lora")]
    configs = [{"shape": shape.name, "mode": mode, "logprobs": logprobs, "checkpointing": ckpt, "batch": args.batch,
                "seq": args.seq, "threads": args.threads, "device": device}
               for shape in shapes for mode, logprobs, ckpt in variants]
    # each configuration is its own process, so running several at once leaves every high-water mark its own
    # (CPU only: on one GPU the allocator statistics would mix)
    jobs = args.jobs if device == "cpu" else 1
    reused = reusable(args.reuse, configs) if args.reuse else {}
    todo = [c for c in configs if config_key(c) not in reused]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        measurements = [reused[k] for k in map(config_key, configs[::-1]) if k in reused]
        for m in measurements:
            print(f"reused   {m['shape']:<11} {m['mode']:<4} {m['logprobs']:<7} peak {m['peak_bytes'] / GIB:7.3f} GiB"
                  f" (recorded {m['recorded']})", flush=True)
        for result in pool.map(measure, todo[::-1]):  # largest first
            measurements.append(result)
            print(f"measured {result['shape']:<11} {result['mode']:<4} {result['logprobs']:<7} "
                  f"{'ckpt' if result['checkpointing'] else '    '} peak "
                  f"{result['peak_bytes'] / GIB:7.3f} GiB ({result['seconds']:.1f} s)", flush=True)
    order = {config_key(c): i for i, c in enumerate(configs)}
    measurements.sort(key=lambda m: order[config_key(m)])
    coef = fit(measurements, args.batch, args.seq)
    by_name = SHAPES
    for m in measurements:
        model = predict(by_name[m["shape"]], m["mode"], m["logprobs"], args.batch, args.seq, coef,
                        checkpointing=m["checkpointing"])["total"]
        m["model_bytes"] = int(model)
        m["ratio"] = round(m["peak_bytes"] / model, 4)
    eight_b = predictions(coef)
    old = predict(LLAMA3_8B, "lora", "old", 4, 512, coef, 2, 2)["logprobs"]
    new = predict(LLAMA3_8B, "lora", "chunked", 4, 512, coef, 2, 2)["logprobs"]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": environment_info(),
        "device": device,
        "batch": args.batch, "seq": args.seq,
        "shapes": {s.name: {**asdict(s), "params": s.params, "lora_params": s.lora_params} for s in
                   (*shapes, LLAMA3_8B)},
        "coefficients": asdict(coef),
        "measurements": measurements,
        "max_relative_error": round(max(abs(m["ratio"] - 1) for m in measurements), 4),
        "prediction_8b": eight_b,
        "logprob_part_8b_gib": {"old": round(old / GIB, 3), "chunked": round(new / GIB, 3),
                                "reduction": round(old / new, 1)},
    }


def reuse_note(result: dict[str, Any]) -> str:
    """A sentence naming the measurements taken over from an earlier run (``--reuse``), or ''."""
    dates = sorted(m["recorded"] for m in result["measurements"] if m.get("recorded", result["date"]) != result["date"])
    if not dates:
        return ""
    when = dates[0] if dates[0] == dates[-1] else f"between {dates[0]} and {dates[-1]}"
    return (f" {len(dates)} of the {len(result['measurements'])} measurements are taken over from earlier runs of the"
            f" same script and settings (`--reuse`), recorded {when}.")


def ckpt_note(c: dict[str, Any]) -> str:
    """The recomputed layer's fitted coefficient, when fitted."""
    if c.get("a_ckpt") is None:
        return ""
    return f" and a_ckpt = {c['a_ckpt']:.1f} per token and (h + i) for the recomputed layer"


def recorded_on(result: dict[str, Any]) -> str:
    """The machine a recorded run measured on: the GPU names on CUDA, else the CPU model."""
    env = result["environment"]
    if result["device"] == "cuda" and env.get("gpus"):
        return ", ".join(str(g) for g in env["gpus"]) if isinstance(env["gpus"], list) else str(env["gpus"])
    return env.get("cpu") or env.get("processor") or env.get("machine") or "an unrecorded machine"


def render_summary(result: dict[str, Any]) -> str:
    """README.md's ``memory`` block: the 8B predictions with chunked log-probs and gradient checkpointing."""
    lines = [f"Predicted per-GPU peak of one NPO step (policy + reference + AdamW) for a Llama-3-8B-shaped model in"
             f" bf16, batch 4 × 512 tokens, chunked log-probs and gradient checkpointing; the memory model was"
             f" fitted to {len(result['measurements'])} measurements recorded {result['date']} on"
             f" {recorded_on(result)} ({result['device']}; largest deviation"
             f" {result['max_relative_error'] * 100:.1f} %):", "",
             "| configuration | GiB per GPU | ≤ 40 GB | ≤ 80 GB |", "|---|---|---|---|"]
    for r in result["prediction_8b"]:
        if r["logprob_mode"] == "chunked" and r.get("checkpointing"):
            lines.append(f"| {r['config']} | {r['total']:.1f} | {'yes' if r['fits_40GB'] else 'no'} | "
                         f"{'yes' if r['fits_80GB'] else 'no'} |")
    return "\n".join(lines) + "\n"


def render(result: dict[str, Any]) -> str:
    """The Markdown tables of a recorded run (docs/peft.md's ``memory`` block)."""
    env = result["environment"]
    lines = [f"Recorded {result['date']} on {recorded_on(result)} "
             f"({result['device']}, torch {env.get('packages', {}).get('torch', '?')}), by `benchmarks/memory.py`: "
             f"NPO with a live reference, AdamW, batch {result['batch']} × {result['seq']} tokens, fp32."
             f"{reuse_note(result)}",
             "",
             "| model | weights | fine-tuning | log-probs | checkpointing | measured peak | model | measured / model |",
             "|---|---|---|---|---|---|---|---|"]
    for m in result["measurements"]:
        shape = result["shapes"][m["shape"]]
        ckpt = "yes" if m.get("checkpointing") else "no"
        lines.append(f"| {m['shape']} | {shape['params'] / 1e6:.0f} M | {m['mode']} | {m['logprobs']} | {ckpt} | "
                     f"{m['peak_bytes'] / GIB:.2f} GiB | {m['model_bytes'] / GIB:.2f} GiB | {m['ratio']:.2f} |")
    c = result["coefficients"]
    lines += ["", f"Fitted: a_full = {c['a_full']:.1f}, a_lora = {c['a_lora']:.1f} saved activation elements per "
              f"layer, token and (h + i); with checkpointing c = {c.get('c_ckpt', 1.0):.1f} per layer, token and h"
              f"{ckpt_note(c)}; n = {c['n_logits']:.2f} float32 copies of the logits (with their "
              f"gradient), n_old = {c['n_old']:.2f} more for the old log-softmax. Largest deviation "
              f"{result['max_relative_error'] * 100:.1f} %.", "",
              "Predicted per-GPU peak for a Llama-3-8B-shaped model (8.0 B weights, vocabulary 128 256) in bf16, "
              "batch 4 × 512 tokens:", "",
              "| configuration | log-probs | checkpointing | weights | reference | gradients | optimizer | "
              "activations | logits + log-probs | total | ≤ 40 GB | ≤ 80 GB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["prediction_8b"]:
        ckpt = "yes" if r.get("checkpointing") else "no"
        lines.append(f"| {r['config']} | {r['logprob_mode']} | {ckpt} | {r['weights']:.1f} | {r['reference']:.1f} | "
                     f"{r['gradients']:.1f} | {r['optimizer']:.1f} | {r['activations']:.1f} | "
                     f"{r['logits'] + r['logprobs']:.1f} | **{r['total']:.1f}** | {'yes' if r['fits_40GB'] else 'no'} | "
                     f"{'yes' if r['fits_80GB'] else 'no'} |")
    lp = result["logprob_part_8b_gib"]
    lines += ["", f"GiB. The log-prob part at vocabulary 128 256: {lp['old']:.2f} GiB old, {lp['chunked']:.2f} GiB "
              f"chunked ({lp['reduction']:.0f}× less).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory.json"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, help="tokens per sequence (default 128; 64 with --quick)")
    parser.add_argument("--quick", action="store_true", help="the smaller QUICK_SHAPES (~8 M, 13 M, 27 M weights)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", help="only these measured shapes (names of MEASURED_SHAPES)")
    parser.add_argument("--jobs", type=int, default=1, help="CPU: configurations measured at once (separate processes)")
    parser.add_argument("--reuse", help="a recorded JSON whose measurements of the same configurations are taken"
                        " instead of measuring them again (each keeps its `recorded` date)")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even when CUDA is available")
    parser.add_argument("--render", help="print (or with --page, write into the page) the tables of a recorded JSON")
    parser.add_argument("--page", help="the Markdown page whose `memory` generated block --render rewrites")
    parser.add_argument("--summary", action="store_true",
                        help="with --render: only the 8B predictions with checkpointing (README.md's block)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.render:
        recorded = json.loads(Path(args.render).read_text())
        text = render_summary(recorded) if args.summary else render(recorded)
        if args.page:
            from lit_unlearn.results import replace_block

            page = Path(args.page)
            page.write_text(replace_block(page.read_text(), "memory", text))
            print(f"{page}: block 'memory' written")
        else:
            print(text)
        return
    args.seq = args.seq or (64 if args.quick else 128)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(render(result))
    print(f"written {out}; largest |measured / model − 1| = {result['max_relative_error']:.3f} "
          f"(target ≤ {TOLERANCE})")
    for r in result["prediction_8b"]:
        if r["config"] == "LoRA, 1 GPU" and r["logprob_mode"] == "chunked":
            print(f"LoRA NPO at 8B (chunked, checkpointing {'on' if r['checkpointing'] else 'off'}): "
                  f"{r['total']:.1f} GiB; ≤ 40 GB: {r['fits_40GB']}")


if __name__ == "__main__":
    main()
