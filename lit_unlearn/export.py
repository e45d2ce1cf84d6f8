"""``lit-unlearn export --ckpt_path CKPT --out DIR``: a Hugging Face ``save_pretrained`` folder from a checkpoint.

CKPT is either

* a plain Lightning checkpoint file (``*.ckpt``; single process, DDP, or a consolidated DeepSpeed file), or
* a DeepSpeed checkpoint **folder** as Lightning writes it under ZeRO-2/3 (``epoch=..-step=...ckpt/`` holding
  ``checkpoint/`` shards and ``latest``): the fp32 weights are consolidated from the shards with DeepSpeed's
  ``zero_to_fp32`` (:func:`get_fp32_state_dict_from_zero_checkpoint`, CPU only, no process group), the
  module's hyper-parameters come from the shards' client state.

The weights under ``model.`` are the causal LM; the frozen reference model (``ref_model.``) is never
exported. The model is rebuilt from the checkpoint's hyper-parameters (``model_name_or_path``, tokenizer,
dtype, seed; override with ``--model_name_or_path`` / ``--tokenizer`` when the original paths moved) and the
checkpoint's weights are loaded into it. Parameters a checkpoint does not hold — frozen ones, when the
DeepSpeed config sets ``exclude_frozen_parameters`` (e.g. RMU's untrained blocks) — keep the initial
model's values, which is what they are; they are listed in ``lit_unlearn.json`` (``filled_from_base``).

The folder (weights + tokenizer + ``lit_unlearn.json`` with the run metadata) appears atomically and
reloads with ``AutoModelForCausalLM.from_pretrained(DIR)``.

Checkpoints of an adapter run (``model.peft`` set; they hold the adapter weights only) export as the
``peft`` adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, ``save_pretrained`` of the
``peft`` model; reload with ``peft.PeftModel.from_pretrained(base, DIR)``), or with ``--merge`` as a full model
with the adapters merged into the base weights (``merge_and_unload``), which reloads with
``AutoModelForCausalLM.from_pretrained(DIR)`` alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

MODEL_PREFIX = "model."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-unlearn export",
        description="Write a Hugging Face save_pretrained folder (with tokenizer) from a Lightning checkpoint"
        " file or a DeepSpeed ZeRO checkpoint folder.",
    )
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt file or a DeepSpeed checkpoint folder")
    parser.add_argument("--out", required=True, help="the output folder")
    parser.add_argument("--model_name_or_path", default=None,
                        help="the base model (architecture, frozen weights); default: the checkpoint's")
    parser.add_argument("--tokenizer", default=None, help="the tokenizer to save; default: the checkpoint's")
    parser.add_argument("--dtype", default=None, help="cast the weights (float32, bfloat16, float16)")
    parser.add_argument("--tag", default=None, help="DeepSpeed checkpoint tag (default: the 'latest' file)")
    parser.add_argument("--merge", action="store_true",
                        help="for a checkpoint of an adapter run (model.peft): write the full model with the adapters"
                             " merged into the base weights instead of the adapter folder")
    parser.add_argument("--allow_nonfinite", action="store_true",
                        help="export even when a weight holds NaN/inf (refused by default, naming the first bad"
                             " tensor)")
    return parser


MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")  # ZeRO-1/2, ZeRO-3


def deepspeed_client_state(folder: str | Path, tag: str | None = None) -> dict[str, Any]:
    """What Lightning saved next to the shards of a DeepSpeed checkpoint folder (rank 0's model-states file:
    ``hyper_parameters``, callbacks' state, ``lit_unlearn_run`` ..., and DeepSpeed's ``module`` entry)."""
    folder = Path(folder)
    if tag is None:
        if (folder / "latest").is_file():
            tag = (folder / "latest").read_text().strip()
        else:
            tag = next(folder.glob("*/*model_states.pt")).parent.name
    for name in MODEL_STATES:
        if (folder / tag / name).is_file():
            return torch.load(folder / tag / name, map_location="cpu", weights_only=False)
    raise FileNotFoundError(f"No {' or '.join(MODEL_STATES)} in {str(folder / tag)!r}.")


def read_checkpoint(ckpt_path: str | Path, tag: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, checkpoint)`` of a Lightning checkpoint file or DeepSpeed checkpoint folder.

    ``state_dict`` holds the LightningModule's fp32 weights; ``checkpoint`` everything else Lightning saved
    (``hyper_parameters``, ``lit_unlearn_run``, ``global_step`` ...).
    """
    from lit_unlearn.utils.checkpoints import check_checkpoint_path, load_checkpoint_file

    path = check_checkpoint_path(ckpt_path)
    if path.is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        client = deepspeed_client_state(path, tag)
        state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag)
        checkpoint = {k: v for k, v in client.items() if k not in ("module", "optimizer", "lr_scheduler",
                                                                      "buffer_names", "param_shapes",
                                                                      "frozen_param_shapes",
                                                                      "frozen_param_fragments",
                                                                      "shared_params")}
        return dict(state), checkpoint
    checkpoint = load_checkpoint_file(path)
    if "state_dict" not in checkpoint:
        raise ValueError(f"{str(path)!r} has no 'state_dict': not a Lightning checkpoint.")
    return checkpoint.pop("state_dict"), checkpoint


def model_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The causal LM's weights (keys under ``model.``, prefix removed); the reference model is dropped."""
    weights = {k[len(MODEL_PREFIX):]: v for k, v in state_dict.items() if k.startswith(MODEL_PREFIX)}
    if not weights:
        raise ValueError(f"The checkpoint holds no weights under {MODEL_PREFIX!r} (keys: {sorted(state_dict)[:5]}"
                         "...); export expects a lit_unlearn module whose causal LM is `self.model`.")
    return weights


def export_checkpoint(
    ckpt_path: str | Path,
    out: str | Path,
    model_name_or_path: str | None = None,
    tokenizer: str | None = None,
    dtype: str | None = None,
    tag: str | None = None,
    allow_nonfinite: bool = False,
    merge: bool = False,
) -> Path:
    """Write the Hugging Face folder ``out`` from ``ckpt_path`` (see the module docstring); returns ``out``.

    Weights holding NaN/±inf are refused (:class:`~lit_unlearn.utils.finite.NonFiniteWeightsError` naming the
    first bad tensor, nothing written) unless ``allow_nonfinite``.
    """
    from lit_unlearn.models.loading import _dtype, load_causal_lm, load_tokenizer
    from lit_unlearn.utils.finite import check_state_dict_finite
    from lit_unlearn.utils.io import atomic_directory

    state, checkpoint = read_checkpoint(ckpt_path, tag)
    weights = model_weights(state)
    if not allow_nonfinite:
        check_state_dict_finite(weights, f"The checkpoint {str(ckpt_path)!r}",
                                "Nothing was exported; export an earlier checkpoint, or pass --allow_nonfinite to"
                                " export it anyway.")
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    base = model_name_or_path or hparams.get("model_name_or_path")
    tok_name = tokenizer or hparams.get("tokenizer") or base
    if base is None:
        raise ValueError("The checkpoint has no `model_name_or_path` hyper-parameter; pass --model_name_or_path.")
    peft_spec = hparams.get("peft")
    if merge and peft_spec is None:
        raise ValueError(f"--merge merges adapters, but {str(ckpt_path)!r} is a full fine-tuning checkpoint (no"
                         " model.peft); export it without --merge.")
    tok = load_tokenizer(tok_name)
    seed = int(hparams.get("seed", 0) or 0)
    model = load_causal_lm(base, tok, dtype=None, seed=seed)
    if peft_spec is not None:
        from lit_unlearn.models.adapters import adapter_parameter_names, wrap_with_adapters

        model = wrap_with_adapters(model, peft_spec, seed=seed, base_name=base)
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"The checkpoint's weights do not fit {base!r}: unexpected keys "
                         f"{result.unexpected_keys[:10]}. Pass the right --model_name_or_path.")
    missing = sorted(result.missing_keys)
    if peft_spec is not None:
        # the base weights are not in the checkpoint by design; only adapter weights missing from it are reported
        missing = sorted(set(missing) & adapter_parameter_names(model))
        if merge:
            model = model.merge_and_unload()
    target = dtype or hparams.get("dtype")
    if target is not None:
        model = model.to(_dtype(target))
    info = {
        **(checkpoint.get("lit_unlearn_run") or {}),
        "model_name_or_path": hparams.get("model_name_or_path", base),
        "exported_from": str(Path(ckpt_path).resolve()),
        "checkpoint_format": "deepspeed" if Path(ckpt_path).is_dir() else "lightning",
        "global_step": checkpoint.get("global_step"),
        "epoch": checkpoint.get("epoch"),
        "module": hparams.get("_class_path") or None,
        "filled_from_base": missing,
    }
    if peft_spec is not None:
        info["peft"] = {"config": peft_spec, "merged": merge}
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (Path(tmp) / "lit_unlearn.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    return Path(out)


def export_main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = export_checkpoint(args.ckpt_path, args.out, args.model_name_or_path, args.tokenizer, args.dtype,
                                args.tag, allow_nonfinite=args.allow_nonfinite, merge=args.merge)
    except (FileNotFoundError, ValueError) as err:
        print(f"lit-unlearn export: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    export_main()
